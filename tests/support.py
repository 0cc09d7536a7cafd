"""Test helpers: a cuttable TCP proxy, a QoS 1 publisher, polling, running ingest, and the rule
engine tests' event-time origin and restarts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from ingest.decode import Decoder
from pantau.metrics import SensorKind
from pantau.readings import Reading
from rules.engine import Engine
from rules.signals import Signal

REPO = Path(__file__).resolve().parent.parent


def wait_until(predicate: Callable[[], Any], timeout_s: float = 20.0, interval_s: float = 0.05, what: str = "") -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what or predicate} (last: {last!r})")


async def await_until(
    predicate: Callable[[], Any], timeout_s: float = 20.0, interval_s: float = 0.05, what: str = ""
) -> Any:
    """Async `wait_until`; `predicate` may be a coroutine function."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what or predicate} (last: {last!r})")


# Piece sizes a dribbling proxy cycles through: every boundary of a small packet (its first byte,
# inside its remaining length, topic and packet id) lands somewhere, and large payloads still move.
DRIBBLE_PIECES = (1, 2, 3, 5, 8, 13, 700, 4096)


class TcpProxy:
    """A loopback TCP proxy whose link can be cut and restored (like psycopg's test proxy).

    `dribble=True` forwards what the server sends in `DRIBBLE_PIECES`, each its own TCP segment,
    so the client reads packets split at every point."""

    def __init__(self, target_host: str, target_port: int, *, dribble: bool = False) -> None:
        self.target = (target_host, target_port)
        self.dribble = dribble
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(64)
        self.port = self._server.getsockname()[1]
        self._open = threading.Event()
        self._open.set()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._stop:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if not self._open.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b, dribble in ((client, upstream, False), (upstream, client, self.dribble)):
                threading.Thread(target=self._pump, args=(a, b, dribble), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, dribble: bool) -> None:
        if dribble:
            dst.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        k = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if not dribble:
                    dst.sendall(data)
                    continue
                view = memoryview(data)
                while view:
                    size = DRIBBLE_PIECES[k % len(DRIBBLE_PIECES)]
                    k += 1
                    dst.sendall(view[:size])
                    view = view[size:]
                    time.sleep(0.0002)  # its own segment: the reader sees the piece alone
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            src.close()  # each socket is the source of exactly one pump

    def cut(self) -> None:
        """Drop every open connection and refuse new ones until `restore`."""
        self._open.clear()
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass

    def restore(self) -> None:
        self._open.set()

    def close(self) -> None:
        self._stop = True
        self.cut()
        self._server.close()


class Publisher:
    """A paho QoS 1 publisher in its own thread; `publish_all` waits for every PUBACK."""

    def __init__(self, port: int, client_id: str = "", host: str = "127.0.0.1") -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311, clean_session=client_id == ""
        )
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        # Packet ids the broker acknowledged (taken out as `publish_all` sees them): paho's own
        # `wait_for_publish` raises for a message published while the broker was away, which paho
        # keeps (QoS 1) and sends once it is back.
        self._acked: set[int] = set()
        self._acks = threading.Condition()
        self.client.on_publish = self._on_publish
        self.client.connect(host, port)
        self.client.loop_start()

    def _on_publish(self, _client: Any, _userdata: Any, mid: int, _reason: Any, _properties: Any) -> None:
        with self._acks:
            self._acked.add(mid)
            self._acks.notify_all()

    def publish_all(
        self,
        messages: Iterable[tuple[str, bytes | str]],
        qos: int = 1,
        timeout_s: float = 60,
        rate_per_s: float | None = None,
    ) -> int:
        """Publish, at `rate_per_s` if given (else as fast as paho takes them), then wait for every
        PUBACK."""
        mids = []
        started = time.monotonic()
        for topic, payload in messages:
            mids.append(self.client.publish(topic, payload, qos=qos).mid)
            if rate_per_s is not None and len(mids) % 100 == 0:
                time.sleep(max(0.0, started + len(mids) / rate_per_s - time.monotonic()))
        assert len(mids) < 65536, "packet ids repeat past 65,535 messages in flight"
        deadline = time.monotonic() + timeout_s
        with self._acks:
            for mid in mids:
                while mid not in self._acked:
                    assert self._acks.wait(deadline - time.monotonic()), "broker did not acknowledge a publish"
                self._acked.discard(mid)
        return len(mids)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def pantau_env(**extra: str) -> dict[str, str]:
    """This process's environment without PANTAU_* settings, plus `extra` (and no pantau.toml)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PANTAU_")}
    env["PANTAU_CONFIG"] = str(REPO / "tests" / "empty.toml")
    env.update(extra)
    return env


def run_pantau(argv: list[str], env: dict[str, str], timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """The real `pantau` command, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "pantau", *argv], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout_s
    )


class Subscriber:
    """A paho client subscribed to pantau/v1/# at QoS 1; records (arrival time, topic, payload)."""

    # Topic of the subscriber's own markers (see `wait_for`); never recorded as received.
    MARKERS = "pantau/v1/_test/marker"

    def __init__(self, port: int) -> None:
        self.received: list[tuple[float, str, bytes]] = []
        self._markers: set[bytes] = set()
        self._subscribed = threading.Event()
        self.granted: list[int] = []
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311, clean_session=True)
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe("pantau/v1/#", qos=1)
        assert self._subscribed.wait(10), "no SUBACK from the broker"
        assert self.granted == [1], f"broker granted {self.granted}, not QoS 1"

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:  # type: ignore[no-untyped-def]
        self.granted = [rc.value for rc in reason_codes]
        self._subscribed.set()

    def _on_message(self, client, userdata, msg) -> None:  # type: ignore[no-untyped-def]
        if msg.topic == self.MARKERS:
            self._markers.add(msg.payload)
            return
        self.received.append((time.monotonic(), msg.topic, msg.payload))

    def messages(self) -> list[tuple[str, bytes]]:
        return [(topic, payload) for _, topic, payload in self.received]

    def wait_for(self, n: int, timeout_s: float = 30) -> None:
        """Wait for n messages, then make sure no more come from what was published before: a
        marker this client publishes arrives after everything the broker took before it (it
        handles publishes in order), so once it is back nothing published earlier is on its way."""
        wait_until(lambda: len(self.received) >= n, timeout_s=timeout_s, what=f"{n} messages")
        self.settle()
        assert len(self.received) == n

    def settle(self, timeout_s: float = 10) -> None:
        """Return once everything the broker took before this call has reached this subscriber."""
        marker = os.urandom(8).hex().encode()
        self.client.publish(self.MARKERS, marker, qos=1)
        wait_until(lambda: marker in self._markers, timeout_s=timeout_s, what="the subscriber's marker")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def ingest_env(database_url: str, mqtt_url: str, **extra: str) -> dict[str, str]:
    env = pantau_env()
    env.update(
        PANTAU_DATABASE_URL=database_url,
        PANTAU_MQTT_URL=mqtt_url,
        PANTAU_INGEST_METRICS_PORT="0",
        PANTAU_INGEST_LAST_SEEN_INTERVAL_S="0.5",
    )
    env.update(extra)
    return env


def start_ingest_process(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """`pantau ingest` as a child process (for kill -9 and memory tests)."""
    with open(log_path, "ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen([sys.executable, "-m", "pantau", "ingest"], env=env, stdout=log, stderr=log, cwd=REPO)


def rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def expected_rollups(rows: list[Reading], width_s: int) -> dict[datetime, tuple[int, float, float, float]]:
    """Bucket start -> (n, avg, min, max) of one sensor's distinct readings, computed in Python."""
    buckets: dict[float, list[float]] = defaultdict(list)
    for ts, _sensor, _metric, value in {(r[0], r[1], r[2]): r for r in rows}.values():
        buckets[ts // width_s * width_s].append(value)
    return {
        datetime.fromtimestamp(b, UTC): (len(v), sum(v) / len(v), min(v), max(v)) for b, v in sorted(buckets.items())
    }


def assert_rollups(rollups: list[dict[str, Any]], expected: dict[datetime, tuple[int, float, float, float]]) -> None:
    """The store's rollup rows are exactly the expected buckets."""
    found = {r["bucket"]: (r["n"], r["avg_value"], r["min_value"], r["max_value"]) for r in rollups}
    assert list(found) == list(expected)
    for bucket, want in expected.items():
        assert found[bucket] == pytest.approx(want), bucket


def decoded_ticks(ticks: Iterable[Any]) -> Iterator[tuple[float, list[Reading]]]:
    """A simulation's ticks (`Simulation.ticks()`) as ingest decodes them: (tick time, readings).

    Asserts that nothing is rejected (callers simulate without faults)."""
    decoder = Decoder(max_payload_bytes=65536, max_future_s=300, retention_s=3650 * 86400)
    for tick in ticks:
        rows: list[Reading] = []
        rejections: list[Any] = []
        for topic, payload in tick.messages:
            _, _, _city, kind, sensor_id = topic.split("/")
            decoder.decode(payload, sensor_id, SensorKind(kind), tick.t + 1, rows, rejections)
        assert rejections == []
        yield tick.t, rows


# -- rule engine unit tests ------------------------------------------------------------------------

T0 = 1_700_000_000.0  # the engine tests' event-time origin
MIN = 60.0


def minutes(signal: Signal) -> float:
    """A signal's event time in minutes after T0."""
    return (signal.event_ts - T0) / MIN


def engine_state(e: Engine) -> dict[str, Any]:
    """`e.state()` through JSON, as the rule worker stores it."""
    state: dict[str, Any] = json.loads(json.dumps(e.state()))
    return state


def continued(old: Engine, fresh: Engine) -> Engine:
    """`fresh` carrying on from `old`'s state (a restart), with nothing dropped."""
    assert fresh.restore(engine_state(old)) == []
    return fresh


async def bearer(
    store: Any, role: str = "operator", *, cities: list[str] | None = None, name: str = "rina"
) -> dict[str, str]:
    """The Authorization header of a new API token for `role` (scoped to `cities`, or all)."""
    from pantau.access import Access
    from pantau.audit import Actor

    _token, secret = await Access(store).create_token(Actor("test", "admin", "cli"), name, role, cities=cities)
    return {"Authorization": f"Bearer {secret}"}
