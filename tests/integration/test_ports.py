"""Listening ports: chosen free by default, so a second ingest starts beside the first; a fixed
port that is taken stops pantau with one line naming the port, its setting and its holder."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import psycopg

from pantau.embedded import EmbeddedMosquitto
from tests.support import pantau_env, run_pantau, start_ingest_process, wait_until


def _env(database_url: str, broker: EmbeddedMosquitto, **extra: str) -> dict[str, str]:
    """Default settings but for where the services are (and the client id when asked)."""
    return pantau_env(PANTAU_DATABASE_URL=database_url, PANTAU_MQTT_URL=broker.url, **extra)


def test_a_second_ingest_starts_beside_the_first(database_url: str, broker: EmbeddedMosquitto, tmp_path: Path) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute("INSERT INTO sensors (id, kind, city) VALUES ('SPG-AQ-01', 'air', 'sampang')")
    procs: list[subprocess.Popen[bytes]] = []
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    try:
        for n, log in enumerate(logs):
            procs.append(start_ingest_process(_env(database_url, broker, PANTAU_INGEST_CLIENT_ID=f"ingest-{n}"), log))
        for proc, log in zip(procs, logs, strict=True):
            wait_until(
                lambda p=proc, lg=log: p.poll() is not None or "connected to" in lg.read_text(),
                timeout_s=30,
                what=f"{log.name}: connected",
            )
            assert proc.poll() is None, log.read_text()
            assert "ingest metrics on http://127.0.0.1:" in log.read_text()
        ports = {log.read_text().split("ingest metrics on http://127.0.0.1:")[1].split("/")[0] for log in logs}
        assert len(ports) == 2, "each ingest took a metrics port of its own"
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)


def test_a_taken_metrics_port_is_one_line_naming_it(database_url: str, broker: EmbeddedMosquitto) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_pantau(["ingest"], _env(database_url, broker, PANTAU_INGEST_METRICS_PORT=str(port)), timeout_s=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"pantau: port {port} on 127.0.0.1 is taken by pid {os.getpid()} ("), last
    assert last.endswith(": set PANTAU_INGEST_METRICS_PORT to another port, or to 0 for a free one"), last


def test_up_checks_a_fixed_metrics_port_before_it_starts_anything(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        env = pantau_env(PANTAU_HOME=str(tmp_path / "home"), PANTAU_INGEST_METRICS_PORT=str(port))
        result = run_pantau(["up"], env, timeout_s=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"pantau: port {port} on 127.0.0.1 is taken by pid")


def test_a_taken_api_port_is_one_line_naming_it(database_url: str, broker: EmbeddedMosquitto) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_pantau(["api"], _env(database_url, broker, PANTAU_API_PORT=str(port)), timeout_s=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"pantau: port {port} on 127.0.0.1 is taken by pid {os.getpid()} ("), last
    assert last.endswith(": set PANTAU_API_PORT to another port, or to 0 for a free one"), last
