"""Nothing lost, nothing doubled: kill -9, broker restarts, database restarts and outage, memory bound.

Ingest runs as a real `pantau ingest` process; a publisher thread streams QoS 1 messages with
unique (sensor, ts) keys, so the final row count must equal the number published exactly.

The faults come at moments drawn from a seeded random generator, independent of what ingest has
committed: several per run, on the wall clock from the start of the stream (a kill right after a
commit was seen is the one moment when no batch sits between acknowledgement and commit, and a
test that kills only then cannot see an acknowledgement made too early). The seed is printed;
`PANTAU_TEST_FAULT_SEED=<seed>` replays a run's moments.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
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
    """Wait for `expected` rows; the unique keys make any other count a loss or a double."""
    try:
        wait_until(lambda: _count(url) >= expected, timeout_s=timeout_s, what=f"{expected} readings")
    except AssertionError:
        raise AssertionError(f"{_count(url)} readings stored of {expected} after {timeout_s:.0f} s") from None
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
        # paho waits 1 s, then 2, 4, ... between attempts to reach a broker that is away; a gateway
        # that stayed silent for seconds after each restart would leave the kills nothing to meet.
        self._pub.client.reconnect_delay_set(min_delay=0.1, max_delay=0.5)
        self._thread = threading.Thread(target=self._run, args=(messages,), daemon=True)
        self._thread.start()

    def _run(self, messages: list[tuple[str, bytes]]) -> None:
        try:
            self._pub.publish_all(messages, timeout_s=120, rate_per_s=RATE_PER_S)
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

    def start(db_url: str = database_url, *, wait: bool = True, **env: str) -> subprocess.Popen[bytes]:
        port = free_port()
        proc = start_ingest_process(
            ingest_env(
                db_url, broker.url, PANTAU_INGEST_METRICS_PORT=str(port), PANTAU_INGEST_MQTT_PROTOCOL=protocol, **env
            ),
            tmp_path / "ingest.log",
        )
        procs.append(proc)
        state["metrics_port"] = port
        if wait:
            wait_until(lambda: _metric_or_none(port), timeout_s=30, what="ingest metrics endpoint")
        return proc

    state["start"] = start
    _register(database_url, SENSORS)
    yield state
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class Faults:
    """Fault moments on the wall clock, drawn from a seeded generator (printed, to replay a run)."""

    def __init__(self) -> None:
        self.seed = int(os.environ.get("PANTAU_TEST_FAULT_SEED") or time.time_ns() % 2**32)
        self.rng = random.Random(self.seed)
        print(f"fault seed {self.seed} (PANTAU_TEST_FAULT_SEED={self.seed} replays these moments)")

    def moments(self, n: int, *, between: Sequence[tuple[float, float]] = ()) -> list[float]:
        """`n` moments from the stream's start, each 1 to 2.2 s after the one before (the first
        within 1.5 s): a restarted ingest is connected after about 0.7 s here, so each kill finds
        one that is taking messages, at a moment of its work that nobody chose. A moment from
        0.3 s before one of the `between` outages to 1 s after it (ingest reconnecting) moves to
        just after that: a broker that is away hands ingest nothing to lose."""
        out: list[float] = []
        t = self.rng.uniform(0.2, 1.5)
        while len(out) < n:
            for down, up in between:
                if down - 0.3 <= t < up + 1.0:
                    t = up + 1.0 + self.rng.uniform(0.0, 0.5)
            out.append(t)
            t += self.rng.uniform(1.0, 2.2)
        return out

    def outages(self, n: int) -> list[tuple[float, float]]:
        """`n` (down, up) windows from the stream's start, each down for 0.3 to 2 s, 0.5 to 3 s apart."""
        out: list[tuple[float, float]] = []
        t = 0.0
        for _ in range(n):
            down = t + self.rng.uniform(0.5, 3.0)
            t = down + self.rng.uniform(0.3, 2.0)
            out.append((down, t))
        return out


@pytest.fixture
def faults() -> Faults:
    return Faults()


def _run_schedule(events: list[tuple[float, str, Callable[[], None]]]) -> None:
    """Run each (offset s, what, action) at its offset from now, in order; print what happened when."""
    t0 = time.monotonic()
    for offset, what, action in sorted(events, key=lambda e: e[0]):
        time.sleep(max(0.0, t0 + offset - time.monotonic()))
        action()
        print(f"{time.monotonic() - t0:6.2f} s  {what}")


def _killer(ingest_proc: dict[str, object], proc: subprocess.Popen[bytes]) -> Callable[[], None]:
    """An action that kill -9s the running ingest and starts another without waiting for it."""
    running = [proc]
    start = ingest_proc["start"]

    def kill() -> None:
        running[0].send_signal(signal.SIGKILL)
        running[0].wait()
        running[0] = start(wait=False)  # type: ignore[operator]

    return kill


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


# Each fault test streams this many messages at this rate, 20 s: its faults, in the first 10-20 s,
# meet an ingest that is taking a stream (published as fast as paho goes, the stream ended before
# the last faults on a fast host, and a kill of an idle ingest shows nothing).
TOTAL = 40000
RATE_PER_S = 2000.0


def test_kill_9_at_random_moments_loses_and_doubles_nothing(
    ingest_proc: dict[str, object], database_url: str, broker: EmbeddedMosquitto, faults: Faults
) -> None:
    proc = ingest_proc["start"]()  # type: ignore[operator]
    _wait_subscribed(broker, database_url, "")
    kill = _killer(ingest_proc, proc)
    stream = Stream(broker.port, _messages(0, TOTAL))
    _run_schedule([(t, "kill -9 ingest, start another", kill) for t in faults.moments(8)])
    stream.join()
    _settle(database_url, TOTAL + 1)


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


def test_broker_restarts_and_kills_at_random_moments(
    ingest_proc: dict[str, object], database_url: str, broker: EmbeddedMosquitto, faults: Faults
) -> None:
    """The broker stopped (SIGTERM: it saves sessions and queues) and started again on its port
    three times, and ingest killed eight times while the broker is up, each at its own random moment."""
    proc = ingest_proc["start"]()  # type: ignore[operator]
    _wait_subscribed(broker, database_url, "")
    events: list[tuple[float, str, Callable[[], None]]] = []
    outages = faults.outages(3)
    for down, up in outages:
        events += [(down, "broker stopped", broker.stop), (up, "broker started", broker.start)]
    kill = _killer(ingest_proc, proc)
    events += [(t, "kill -9 ingest, start another", kill) for t in faults.moments(8, between=outages)]
    # The publisher has a persistent session too: paho resends its unacknowledged messages after
    # each restart, as a sensor gateway would.
    stream = Stream(broker.port, _messages(0, TOTAL))
    _run_schedule(events)
    stream.join()
    _settle(database_url, TOTAL + 1)


def test_database_restarts_and_kills_at_random_moments(
    ingest_proc: dict[str, object],
    database_url: str,
    broker: EmbeddedMosquitto,
    pg_server: PgServer,
    faults: Faults,
) -> None:
    """PostgreSQL stopped (fast: sessions cut, no commits in flight survive) and started again three
    times, and ingest killed six times, each at its own random moment (a kill while the database
    is away meets batches ingest holds and retries)."""
    if pg_server.embedded is None:
        pytest.skip("restarting the server needs the private test cluster (PANTAU_TEST_DATABASE_URL is set)")
    embedded = pg_server.embedded
    proc = ingest_proc["start"]()  # type: ignore[operator]
    _wait_subscribed(broker, database_url, "")
    events: list[tuple[float, str, Callable[[], None]]] = []
    for down, up in faults.outages(3):
        events += [(down, "PostgreSQL stopped", embedded.stop), (up, "PostgreSQL started", embedded.start)]
    kill = _killer(ingest_proc, proc)
    events += [(t, "kill -9 ingest, start another", kill) for t in faults.moments(6)]
    stream = Stream(broker.port, _messages(0, TOTAL))
    try:
        _run_schedule(events)
    finally:
        if embedded.running_pid() is None:
            embedded.start()
    stream.join()
    _settle(database_url, TOTAL + 1)


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
