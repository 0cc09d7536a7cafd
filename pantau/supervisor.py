"""`pantau up`'s supervisor: components as child processes, restarted with backoff when they crash.

Each component is a `pantau` subcommand in its own process (a crash of one cannot take the others
down, and ingest and rules get a core each). SIGINT/SIGTERM stop every component with SIGTERM
(ingest then commits its batch in hand and keeps its MQTT session) and wait for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

# Restart backoff: 1 s doubling to 30 s; a component that ran this long is considered healthy
# again and restarts from the shortest delay.
_BACKOFF_START_S = 1.0
_BACKOFF_MAX_S = 30.0
_HEALTHY_AFTER_S = 60.0
_STOP_TIMEOUT_S = 20.0


_PR_SET_PDEATHSIG = 1


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM unwinds like Ctrl-C (KeyboardInterrupt), so that blocking tools
    such as the benchmarks always run their `finally` and stop the private services they started."""

    def _terminate(_sig: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def die_with_parent() -> None:
    """In a child before exec: get SIGTERM when the parent dies, even by kill -9 (Linux).

    Without it a killed `pantau up` would leave its components running, and the next `up` would
    start a second ingest with the same MQTT client id.
    """
    # Not Linux (no prctl): the component outlives a killed supervisor.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Component:
    """One supervised process: `pantau <args>` with extra environment."""

    name: str
    args: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    restarts: int = 0
    process: asyncio.subprocess.Process | None = None

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "pantau", *self.args]


class Supervisor:
    def __init__(self, components: Sequence[Component]) -> None:
        self.components = list(components)
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def _keep_running(self, comp: Component) -> None:
        delay = _BACKOFF_START_S
        while not self._stopping.is_set():
            started = time.monotonic()
            comp.process = await asyncio.create_subprocess_exec(
                *comp.argv(), env={**os.environ, **comp.env}, start_new_session=True, preexec_fn=die_with_parent
            )
            log.info("%s started (pid %d)", comp.name, comp.process.pid)
            waiter = asyncio.ensure_future(comp.process.wait())
            stopper = asyncio.ensure_future(self._stopping.wait())
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if self._stopping.is_set():
                await self._terminate(comp, waiter)
                return
            code = waiter.result()
            if time.monotonic() - started >= _HEALTHY_AFTER_S:
                delay = _BACKOFF_START_S
            comp.restarts += 1
            log.error("%s exited with code %s; restart %d in %.0f s", comp.name, code, comp.restarts, delay)
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
                return
            except TimeoutError:
                pass
            delay = min(delay * 2, _BACKOFF_MAX_S)

    @staticmethod
    async def _terminate(comp: Component, waiter: asyncio.Future[int]) -> None:
        proc = comp.process
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), _STOP_TIMEOUT_S)
        except TimeoutError:
            log.warning("%s did not stop in %.0f s; killing it", comp.name, _STOP_TIMEOUT_S)
            proc.kill()
            await waiter
        log.info("%s stopped", comp.name)

    async def run(self) -> None:
        """Run all components until `stop()`; returns once all have exited."""
        async with asyncio.TaskGroup() as tg:
            for comp in self.components:
                tg.create_task(self._keep_running(comp))
