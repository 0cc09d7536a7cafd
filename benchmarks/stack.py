"""A private stack for the whole-system benchmarks: PostgreSQL and mosquitto under a temporary
directory, the database migrated, then pantau's services started as `pantau up` runs them.

    with private_stack("pantau-bench-api-", prepare=register) as stack:
        ... stack.api_port, stack.pg.url, stack.procs["api"].pid ...

The services run as child processes with their logs in the directory; on the way out they are
stopped (SIGTERM, then SIGKILL after 30 s), the servers too, and the directory is removed unless
the run failed, when it is kept for its logs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pantau.embedded import EmbeddedMosquitto, EmbeddedPostgres

PANTAU = [sys.executable, "-m", "pantau"]


@dataclass
class Stack:
    """The running stack: its directory, servers, environment for `pantau` commands and services."""

    workdir: Path
    pg: EmbeddedPostgres
    mq: EmbeddedMosquitto
    api_port: int
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def pantau(self, *args: str, stdin: str | None = None) -> str:
        """A `pantau` command against this stack; its output, or its error raised."""
        done = subprocess.run([*PANTAU, *args], env=self.env, capture_output=True, text=True, input=stdin)
        if done.returncode != 0:
            raise RuntimeError(f"pantau {' '.join(args)} failed:\n{done.stderr[-2000:]}")
        return done.stdout + done.stderr


def stop(procs: Iterable[subprocess.Popen[bytes]]) -> None:
    """Stop services as `pantau up` would: SIGTERM to all, then SIGKILL to any not gone in 30 s."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


@contextmanager
def private_stack(
    prefix: str,
    *,
    services: tuple[str, ...] = ("ingest", "maintain", "api"),
    prepare: Callable[[Stack], None] | None = None,
    settle_s: float = 2.0,
) -> Iterator[Stack]:
    """Servers up, database migrated, `prepare(stack)` run (registering sensors, say), then the
    services started and given `settle_s` to connect."""
    from pantau.embedded import EmbeddedMosquitto, EmbeddedPostgres
    from pantau.mqtt import free_port

    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    pg, mq = EmbeddedPostgres(workdir / "pg"), EmbeddedMosquitto(workdir / "mq")
    print(f"private PostgreSQL and mosquitto under {workdir}", file=sys.stderr)
    failed = True
    stack: Stack | None = None
    try:
        pg.start()
        mq.start()
        (workdir / "none.toml").write_text("")
        api_port = free_port()
        env = {**os.environ, "PANTAU_CONFIG": str(workdir / "none.toml"), "PANTAU_DATABASE_URL": pg.url,
               "PANTAU_MQTT_URL": mq.url, "PANTAU_INGEST_METRICS_PORT": "-1", "PANTAU_API_PORT": str(api_port),
               "PANTAU_HOME": str(workdir / "home")}  # fmt: skip
        stack = Stack(workdir, pg, mq, api_port, env)
        stack.pantau("db", "migrate")
        if prepare is not None:
            prepare(stack)
        for name in services:
            log = (workdir / f"{name}.log").open("wb")
            stack.procs[name] = subprocess.Popen([*PANTAU, name], env=env, stdout=log, stderr=log)
        time.sleep(settle_s)
        yield stack
        failed = False
    finally:
        stop(list(stack.procs.values()) if stack else [])
        mq.stop()
        pg.stop()
        if failed:
            shutil.rmtree(workdir / "pg", ignore_errors=True)
            print(f"the run failed; the services' logs are kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
