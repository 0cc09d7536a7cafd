"""Nothing lost, nothing doubled: kill -9, broker restart, database restart and outage, memory bound.

Ingest runs as a real `pantau ingest` process; a publisher thread streams QoS 1 messages with
unique (sensor, ts) keys, so the final row count must equal the number published exactly.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pantau.domain import Sensor
from pantau.embedded import EmbeddedMosquitto
from pantau.mqtt import free_port
from pantau.sensors import sensor_from_mapping
from tests.conftest import PgServer
from tests.support import Publisher, TcpProxy, ingest_env, rss_kib, start_ingest_process, wait_until

pytestmark = pytest.mark.slow

SENSORS = [
    sensor_from_mapping({"id": f"SPG-TR-{i:03d}", "kind": "traffic", "city": "sampang"}, "test") for i in range(20)
]
BASE_TS = int(time.time()) - 86400  # yesterday: one reading per second per sensor stays in the past


def _register(url: str, sensors: list[Sensor]) -> None:
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO sensors (id, kind, city) VALUES (%s, %s, %s)", [(s.id, s.kind.value, s.city) for s in sensors]
        )


def _messages(start: int, count: int) -> list[tuple[str, bytes]]:
    """`count` single-reading messages with unique keys, numbered from `start`."""
    out = []
    for n in range(start, start + count):
        sensor = SENSORS[n % len(SENSORS)]
        ts = BASE_TS + n // len(SENSORS)
        out.append((sensor.topic, json.dumps({"ts": ts, "vehicle_count": n % 500}).encode()))
    return out


def _count(url: str) -> int:
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute("SELECT count(*), count(DISTINCT (sensor_id, metric, ts)) FROM readings").fetchone()
    assert row is not None and row[0] == row[1], f"duplicates stored: {row}"
    return int(row[0])


def _settle(url: str, expected: int, timeout_s: float = 60.0) -> None:
    """Wait for exactly `expected` rows, then make sure no extra row turns up."""
    wait_until(lambda: _count(url) >= expected, timeout_s=timeout_s, what=f"{expected} readings")
    time.sleep(1.0)
    assert _count(url) == expected


def _metric(port: int, name: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in body.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} not exposed")


class Stream:
    """Publishes messages from a background thread."""

    def __init__(self, port: int, messages: list[tuple[str, bytes]]) -> None:
        self.error: BaseException | None = None
        self._pub = Publisher(port, client_id=f"pub-{time.monotonic_ns()}")
        self._thread = threading.Thread(target=self._run, args=(messages,), daemon=True)
        self._thread.start()

    def _run(self, messages: list[tuple[str, bytes]]) -> None:
        try:
            self._pub.publish_all(messages, timeout_s=120)
        except BaseException as exc:
            self.error = exc

    def join(self) -> None:
        self._thread.join(150)
        self._pub.close()
        if self.error:
            raise self.error


@pytest.fixture(params=[4, 5], ids=["mqtt311", "mqtt5"])
def ingest_proc(
    request: pytest.FixtureRequest, database_url: str, broker: EmbeddedMosquitto, tmp_path: Path
) -> Iterator[dict[str, object]]:
    """Starts and restarts `pantau ingest` processes (MQTT 3.1.1 and 5); kills what is left."""
    protocol = str(request.param)
    procs: list[subprocess.Popen[bytes]] = []
    state: dict[str, object] = {"procs": procs}

    def start(db_url: str = database_url, **env: str) -> subprocess.Popen[bytes]:
        port = free_port()
        proc = start_ingest_process(
            ingest_env(
                db_url, broker.url, PANTAU_INGEST_METRICS_PORT=str(port), PANTAU_INGEST_MQTT_PROTOCOL=protocol, **env
            ),
            tmp_path / "ingest.log",
        )
        procs.append(proc)
        state["metrics_port"] = port
        wait_until(lambda: _metric_or_none(port), timeout_s=30, what="ingest metrics endpoint")
        return proc

    state["start"] = start
    _register(database_url, SENSORS)
    yield state
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _metric_or_none(port: int) -> float | None:
    try:
        return _metric(port, "pantau_ingest_connected") + 1  # +1: present even while 0
    except (OSError, AssertionError):
        return None


def _wait_subscribed(broker: EmbeddedMosquitto, url: str, topic: str) -> None:
    """Probe until a message goes through (ingest's subscription is live)."""
    probe_sensor = SENSORS[0]
    pub = Publisher(broker.port)
    try:
        ts = BASE_TS - 3600
        pub.publish_all([(probe_sensor.topic, json.dumps({"ts": ts, "vehicle_count": 1}))])
        wait_until(lambda: _count(url) >= 1, timeout_s=30, what="probe reading")
    finally:
        pub.close()


def test_kill_9_mid_stream_loses_and_doubles_nothing(
    ingest_proc: dict[str, object], database_url: str, broker: EmbeddedMosquitto
) -> None:
    start = ingest_proc["start"]
    proc = start()  # type: ignore[operator]
    _wait_subscribed(broker, database_url, "")
    total = 20000
    stream = Stream(broker.port, _messages(0, total))
    wait_until(lambda: _count(database_url) > 3000, timeout_s=60, what="stream under way")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    landed_at_kill = _count(database_url)
    assert landed_at_kill < total + 1, "the kill must come mid-stream"
    start()  # type: ignore[operator]
    stream.join()
    _settle(database_url, total + 1)


def test_graceful_stop_keeps_the_session(
    ingest_proc: dict[str, object], database_url: str, broker: EmbeddedMosquitto
) -> None:
    """SIGTERM disconnects without unsubscribing: what is published meanwhile arrives later."""
    start = ingest_proc["start"]
    proc = start()  # type: ignore[operator]
    _wait_subscribed(broker, database_url, "")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    pub = Publisher(broker.port)
    pub.publish_all(_messages(0, 3000))
    pub.close()
    assert _count(database_url) == 1
    start()  # type: ignore[operator]
    _settle(database_url, 3001)


def test_broker_restart_mid_stream(
    ingest_proc: dict[str, object], database_url: str, broker: EmbeddedMosquitto
) -> None:
    start = ingest_proc["start"]
    start()  # type: ignore[operator]
    _wait_subscribed(broker, database_url, "")
    total = 20000
    # The publisher has a persistent session too: paho resends its unacknowledged messages after
    # the restart, as a sensor gateway would.
    stream = Stream(broker.port, _messages(0, total))
    wait_until(lambda: _count(database_url) > 3000, timeout_s=60, what="stream under way")
    broker.restart()  # SIGTERM: mosquitto saves sessions and queues; same port
    stream.join()
    _settle(database_url, total + 1)


def test_database_restart_mid_stream(
    ingest_proc: dict[str, object], database_url: str, broker: EmbeddedMosquitto, pg_server: PgServer
) -> None:
    if pg_server.embedded is None:
        pytest.skip("restarting the server needs the private test cluster (PANTAU_TEST_DATABASE_URL is set)")
    start = ingest_proc["start"]
    start()  # type: ignore[operator]
    _wait_subscribed(broker, database_url, "")
    total = 15000
    stream = Stream(broker.port, _messages(0, total))
    wait_until(lambda: _count(database_url) > 2000, timeout_s=60, what="stream under way")
    pg_server.embedded.restart()
    stream.join()
    _settle(database_url, total + 1)


def test_memory_stays_bounded_while_the_database_is_down(
    ingest_proc: dict[str, object], database_url: str, broker: EmbeddedMosquitto, pg_server: PgServer
) -> None:
    """With the database cut off, ingest holds at most max_inflight messages; the broker the rest."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(database_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    proxied = urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.port}", f":{proxy.port}")))
    max_inflight = 500
    try:
        start = ingest_proc["start"]
        proc = start(proxied, PANTAU_INGEST_MAX_INFLIGHT=str(max_inflight))  # type: ignore[operator]
        port = int(ingest_proc["metrics_port"])  # type: ignore[call-overload]
        _wait_subscribed(broker, database_url, "")
        baseline = rss_kib(proc.pid)
        proxy.cut()
        # 4,000 packs of 50 readings (~3 KB each): 200,000 readings, far more than max_inflight.
        packs = []
        for n in range(4000):
            sensor = SENSORS[n % len(SENSORS)]
            t0 = BASE_TS + (n // len(SENSORS)) * 50
            pack = [{"bn": f"{sensor.id}:", "bt": t0, "n": "vehicle_count", "v": 1}] + [
                {"n": "vehicle_count", "t": i, "v": i} for i in range(1, 50)
            ]
            packs.append((sensor.topic, json.dumps(pack).encode()))
        stream = Stream(broker.port, packs)
        stream.join()  # the broker has them all (PUBACKed) while the database is down
        peak = baseline
        inflight_peak = 0.0
        for _ in range(20):
            peak = max(peak, rss_kib(proc.pid))
            inflight_peak = max(inflight_peak, _metric(port, "pantau_ingest_inflight_messages"))
            time.sleep(0.1)
        assert _metric(port, 'pantau_ingest_connected{peer="database"}') == 0
        print(f"rss growth {(peak - baseline) / 1024:.1f} MiB, in flight at most {inflight_peak:.0f}")
        growth_mib = (peak - baseline) / 1024
        # 500 packs held in memory are ~1.5 MB of payload and ~25k decoded rows (a few MB);
        # 4,000 packs buffered without a bound would be 200k rows (well over 60 MB).
        assert growth_mib < 40, f"ingest grew by {growth_mib:.1f} MiB while the database was down"
        assert 0 < inflight_peak <= max_inflight
        proxy.restore()
        _settle(database_url, 4000 * 50 + 1, timeout_s=120)
    finally:
        proxy.close()
