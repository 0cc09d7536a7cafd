"""The load generator: a target rate of readings per second from K processes, measured each second.

Each process owns one `FastPublisher` connection and a share of the synthetic sensors
(`LOAD-00000` … in city `loadtest`, kind air; register them with `load_sensors()` or
`pantau simulate load --write-manifest FILE` + `pantau sensors import FILE`). A message carries one
reading (`{"ts":…,"pm25":…}`) or, with `batch` > 1, a SenML pack of `batch` readings. Timestamps
step by 1 ms per reading per sensor from a few minutes ago, so every reading has its own key
(sensor, metric, ts) and ingest stores them all. Counts are PUBACKed readings, not sent ones.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import queue
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pantau.domain import Sensor
from pantau.errors import BrokerError

LOAD_CITY = "loadtest"
LOAD_PREFIX = "LOAD"
# Readings start this long before the run so that none is ahead of ingest's clock (it rejects
# readings more than 300 s in the future) and a long run never reaches the present.
_BACKDATE_S = 900


def load_sensors(n: int, *, city: str = LOAD_CITY, prefix: str = LOAD_PREFIX) -> list[Sensor]:
    """The synthetic air sensors the load generator publishes for."""
    return [
        Sensor(id=f"{prefix}-{i:05d}", kind="air", city=city, district="load", name=f"load sensor {i}")  # type: ignore[arg-type]
        for i in range(n)
    ]


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadConfig:
    """One load run."""

    host: str
    port: int
    rate: float | None  # readings per second in total; None = as fast as possible
    duration_s: float
    procs: int = 1
    batch: int = 1
    sensors: int = 1000
    city: str = LOAD_CITY
    prefix: str = LOAD_PREFIX
    qos: int = 1
    # A secured broker's account, bound to client_id (one process only).
    username: str | None = None
    password: str | None = None
    client_id: str | None = None


@dataclass
class LoadReport:
    """What a run achieved: PUBACKed readings and messages, per-second rates."""

    readings: int = 0
    messages: int = 0
    elapsed_s: float = 0.0
    per_second: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    interrupted: bool = False

    @property
    def rate(self) -> float:
        return self.readings / self.elapsed_s if self.elapsed_s > 0 else 0.0


def _payload_maker(batch: int, prefix: bytes) -> Callable[[bytes, int, int], bytes]:
    values = [b"%d.%d" % (8 + (k * 7) % 40, k % 10) for k in range(64)]
    if batch == 1:

        def one(sensor_id: bytes, ms: int, k: int) -> bytes:
            return b'{"ts":%d.%03d,"pm25":%s}' % (ms // 1000, ms % 1000, values[k & 63])

        return one
    tails = [
        b"".join(
            b',{"n":"pm25","t":%s,"v":%s}'
            % (b"0.%03d" % i if i < 1000 else b"%d.%03d" % (i // 1000, i % 1000), values[(v + i) & 63])
            for i in range(1, batch)
        )
        + b"]"
        for v in range(8)
    ]

    def pack(sensor_id: bytes, ms: int, k: int) -> bytes:
        head = b'[{"bn":"%s:","bt":%d.%03d,"n":"pm25","u":"ug/m3","v":%s}' % (
            sensor_id,
            ms // 1000,
            ms % 1000,
            values[k & 63],
        )
        return head + tails[k & 7]

    return pack


def _worker(cfg: LoadConfig, index: int, acked: Any, go: Any, stop: Any, t0: Any, events: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and tells us to stop
    from simulators.fastmqtt import FastPublisher

    mine = [
        s for i, s in enumerate(load_sensors(cfg.sensors, city=cfg.city, prefix=cfg.prefix)) if i % cfg.procs == index
    ]
    if not mine:
        events.put(("ready", index, ""))
        return
    topics = [s.topic for s in mine]
    ids = [s.id.encode() for s in mine]
    make = _payload_maker(cfg.batch, cfg.prefix.encode())
    try:
        pub = FastPublisher(
            cfg.host,
            cfg.port,
            cfg.client_id or f"pantau-load-{index}-{time.time_ns() % 10**9}",
            username=cfg.username,
            password=cfg.password,
        )
        pub.connect()
    except BrokerError as exc:
        events.put(("error", index, str(exc)))
        return
    events.put(("ready", index, ""))
    go.wait()
    base_ms = int((t0.value - _BACKDATE_S) * 1000)
    n_sensors = len(mine)
    seq = [0] * n_sensors
    msg_rate = None if cfg.rate is None else cfg.rate / cfg.batch / cfg.procs
    # Send in slices of about 10 ms of the target rate: fine-grained pacing, few syscalls.
    chunk = 1000 if msg_rate is None else max(1, min(1000, int(msg_rate * 0.01)))
    sent = 0
    j = 0
    try:
        while not stop.is_set():
            elapsed = time.time() - t0.value
            if elapsed >= cfg.duration_s:
                break
            if msg_rate is not None:
                ahead = sent - msg_rate * elapsed
                if ahead > 0:
                    time.sleep(min(ahead / msg_rate, 0.05))
                    acked[index] = pub.acked * cfg.batch
                    continue
            msgs = []
            for _ in range(chunk):
                s = j % n_sensors
                k = seq[s]
                seq[s] = k + 1
                msgs.append((topics[s], make(ids[s], base_ms + k * cfg.batch, j)))
                j += 1
            pub.send(msgs, cfg.qos)
            sent += chunk
            acked[index] = pub.acked * cfg.batch
        pub.flush()
        acked[index] = pub.acked * cfg.batch
    except BrokerError as exc:
        events.put(("error", index, str(exc)))
    finally:
        pub.close()
        events.put(("done", index, repr(time.time())))


def run_load(
    cfg: LoadConfig,
    *,
    on_second: Callable[[int, float, int], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> LoadReport:
    """Run the load; `on_second(second, readings_per_s, total)` is called once a second."""
    if cfg.procs < 1 or cfg.batch < 1 or cfg.sensors < cfg.procs:
        raise ValueError("procs, batch >= 1 and sensors >= procs")
    ctx = mp.get_context("spawn")  # no fork of a process that may hold threads and an event loop
    acked = ctx.Array("q", cfg.procs, lock=False)
    go, stop = ctx.Event(), ctx.Event()
    t0 = ctx.Value("d", 0.0, lock=False)
    events = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(cfg, i, acked, go, stop, t0, events), daemon=True) for i in range(cfg.procs)
    ]
    for p in procs:
        p.start()
    report = LoadReport()
    try:
        ready = 0
        while ready < cfg.procs:
            try:
                kind, index, text = events.get(timeout=30)
            except queue.Empty:
                raise BrokerError("load workers did not connect within 30 s") from None
            if kind == "error":
                raise BrokerError(f"load worker {index}: {text}")
            ready += kind == "ready"
        t0.value = time.time() + 0.05
        go.set()
        start = time.monotonic()
        last_total, second = 0, 0
        while any(p.is_alive() for p in procs):
            time.sleep(max(0.0, start + second + 1 - time.monotonic()))
            second += 1
            total = sum(acked)
            if on_second is not None and second <= cfg.duration_s + 0.5:
                on_second(second, float(total - last_total), total)
            if second <= cfg.duration_s + 0.5:
                report.per_second.append(float(total - last_total))
            last_total = total
            if should_stop() and not stop.is_set():
                stop.set()
                report.interrupted = True
            if second > cfg.duration_s + 60:
                stop.set()
    finally:
        stop.set()
        go.set()
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
                p.join()
        while True:
            try:
                kind, index, text = events.get_nowait()
            except (queue.Empty, OSError, ValueError):
                break
            if kind == "error":
                report.errors.append(f"worker {index}: {text}")
            elif kind == "done" and text:
                report.elapsed_s = max(report.elapsed_s, float(text) - t0.value)
        with contextlib.suppress(Exception):
            events.close()
    report.readings = sum(acked)
    report.messages = report.readings // cfg.batch
    return report
