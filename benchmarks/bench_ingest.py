"""`pantau bench ingest`: committed readings/s, publish→commit latency and RSS, vs a naive baseline.

Runs on private PostgreSQL and mosquitto instances (under a temporary directory) so figures are
not disturbed by, and do not disturb, anything else. Capacity is measured the way DOMAIN.md
advises: queue a backlog in the broker for ingest's persistent session while ingest is stopped,
then start ingest and time the drain, so the load generator cannot be the bottleneck. Latency is
measured live: publishers send at a fixed rate, each reading stamped with its publish time, and
the ingest process computes commit time minus that stamp for every committed reading.

Scenarios: `single` (one reading per message, QoS 1), `senml` (50-reading SenML packs), `live`
(latency at a fixed rate) and `naive` (one INSERT and COMMIT per message, acked after commit).

`--auth` runs them on the broker `pantau up` runs (pantau.broker: the dynamic-security plugin,
anonymous access off): ingest logs in with an account of the ingest role and each publisher
process with one of the simulator role, each bound to its client id, so every CONNECT is
authenticated and every PUBLISH and SUBSCRIBE passes the plugin's ACL check.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from pantau.telemetry import HostCpu

# Messages handed to the publisher at a time; at a fixed rate, 50 keep the pacing smooth (10 ms
# apart at 5,000 msg/s) without a syscall per message.
_CHUNK = 50
_SENSOR_PREFIX = "BENCH-"
_CITY = "kotamobagu"


# -- workloads ------------------------------------------------------------------------------------


def sensor_ids(n: int) -> list[str]:
    return [f"{_SENSOR_PREFIX}{i:05d}" for i in range(n)]


def _single_messages(sensors: list[str], start: int, count: int, t0: float) -> Iterable[tuple[str, bytes]]:
    n = len(sensors)
    for i in range(start, start + count):
        sid = sensors[i % n]
        yield f"pantau/v1/{_CITY}/traffic/{sid}", b'{"ts":%.3f,"vehicle_count":%d}' % (t0 + i // n, i % 97)


def _senml_messages(sensors: list[str], start: int, count: int, t0: float, pack: int) -> Iterable[tuple[str, bytes]]:
    n = len(sensors)
    tail = b"".join(b',{"n":"vehicle_count","t":%d,"v":%d}' % (k, k % 53) for k in range(1, pack))
    for i in range(start, start + count):
        sid = sensors[i % n]
        bt = t0 + (i // n) * pack
        head = b'[{"bn":"%s:","bt":%d,"n":"vehicle_count","v":%d}' % (sid.encode(), bt, i % 53)
        yield f"pantau/v1/{_CITY}/traffic/{sid}", head + tail + b"]"


def _live_messages(sensors: list[str], start: int, count: int) -> Iterable[tuple[str, bytes]]:
    """Readings stamped with their publish time (the generator is lazy: stamps are taken as sent)."""
    n = len(sensors)
    for i in range(start, start + count):
        sid = sensors[i % n]
        yield (
            f"pantau/v1/{_CITY}/traffic/{sid}",
            b'{"ts":%.6f,"vehicle_count":%d}' % (time.time(), i % 97),
        )


def _publisher_proc(
    kind: str,
    host: str,
    port: int,
    sensors: list[str],
    count: int,
    t0: float,
    pack: int,
    rate: float | None,
    result: Any,
    login: tuple[str, str, str] | None,
) -> None:
    from simulators.fastmqtt import FastPublisher

    if kind == "single":
        msgs: Iterable[tuple[str, bytes]] = _single_messages(sensors, 0, count, t0)
    elif kind == "senml":
        msgs = _senml_messages(sensors, 0, count, t0, pack)
    else:
        msgs = _live_messages(sensors, 0, count)
    began = time.monotonic()
    sent = 0
    client_id, username, password = login or (f"bench-pub-{secrets.token_hex(4)}", None, None)
    with FastPublisher(host, port, client_id, username=username, password=password) as pub:
        chunk: list[tuple[str, bytes]] = []
        for message in msgs:
            chunk.append(message)
            if len(chunk) >= _CHUNK:
                pub.send(chunk)
                sent += len(chunk)
                chunk = []
                if rate:  # pace: sleep until this many messages are due
                    ahead = sent / rate - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)
        if chunk:
            pub.send(chunk)
            sent += len(chunk)
        pub.flush()
    result.put((sent, time.monotonic() - began))


def publish_parallel(
    kind: str,
    host: str,
    port: int,
    sensors: list[str],
    count: int,
    *,
    procs: int,
    t0: float,
    pack: int = 1,
    rate: float | None = None,
    logins: list[tuple[str, str, str]] | None = None,
) -> tuple[int, float]:
    """Publish `count` messages from `procs` processes (with `logins[k]` as (client id, user,
    password) on a secured broker); returns (sent, wall seconds)."""
    ctx = mp.get_context("fork")
    result = ctx.Queue()
    share = count // procs
    workers = []
    began = time.monotonic()
    for k in range(procs):
        part = share if k < procs - 1 else count - share * (procs - 1)
        # Each process owns a disjoint slice of sensors so keys never collide across processes.
        mine = sensors[k::procs]
        login = logins[k] if logins else None
        workers.append(
            ctx.Process(
                target=_publisher_proc,
                args=(kind, host, port, mine, part, t0, pack, rate / procs if rate else None, result, login),
            )
        )
    for w in workers:
        w.start()
    sent = sum(result.get()[0] for _ in workers)
    for w in workers:
        w.join()
    return sent, time.monotonic() - began


# -- the ingest side ------------------------------------------------------------------------------


def _ingest_child(settings_env: dict[str, str], stats_path: str, ready: Any) -> None:
    """Run the real IngestService; record publish→commit latency of every committed reading."""
    os.environ.update(settings_env)
    from ingest.service import IngestService
    from pantau.settings import load_settings
    from pantau.store.migrations import Backend

    settings = load_settings()
    latencies: list[np.ndarray] = []
    counters = {"committed": 0, "first": 0.0, "last": 0.0}

    def on_commit(rows: list[tuple[float, str, str, float]], committed: float) -> None:
        ts = np.fromiter((r[0] for r in rows), dtype=np.float64, count=len(rows))
        latencies.append(committed - ts)
        if not counters["first"]:
            counters["first"] = committed
        counters["last"] = committed
        counters["committed"] += len(rows)

    async def main() -> None:
        service = IngestService(settings, backend=Backend(settings_env["BENCH_BACKEND"]), on_commit=on_commit)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, service.stop)
        task = asyncio.create_task(service.run())
        await service.ready.wait()
        await service.mqtt.wait_connected()
        ready.set()
        await task

    asyncio.run(main())
    lat = np.concatenate(latencies) if latencies else np.zeros(0)
    Path(stats_path).write_text(
        json.dumps(
            {
                **counters,
                "latency_p50_ms": float(np.percentile(lat, 50) * 1000) if lat.size else None,
                "latency_p99_ms": float(np.percentile(lat, 99) * 1000) if lat.size else None,
            }
        )
    )


@dataclass
class Run:
    name: str
    readings: int
    seconds: float
    rss_peak_mib: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    note: str = ""
    host: tuple[float, float] | None = None  # the machine's busy and steal % over the run (HostCpu)

    @property
    def rate(self) -> float:
        return self.readings / self.seconds if self.seconds else 0.0


class IngestProcess:
    """The ingest service in a child process, with RSS sampling."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env = env
        self.stats_path = workdir / f"stats-{secrets.token_hex(3)}.json"
        ctx = mp.get_context("spawn")
        self.ready = ctx.Event()
        self.proc = ctx.Process(target=_ingest_child, args=(env, str(self.stats_path), self.ready))
        self.rss_peak_kib = 0

    def start(self) -> None:
        self.proc.start()
        if not self.ready.wait(60):
            raise RuntimeError("ingest did not start in 60 s")

    def sample_rss(self) -> int:
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        kib = int(line.split()[1])
                        self.rss_peak_kib = max(self.rss_peak_kib, kib)
                        return kib
        except OSError:
            pass
        return 0

    def stop(self) -> dict[str, Any]:
        assert self.proc.pid is not None
        os.kill(self.proc.pid, signal.SIGTERM)
        self.proc.join(60)
        return dict(json.loads(self.stats_path.read_text()))


def _count(conn: Any) -> int:
    row = conn.execute("SELECT count(*) FROM readings").fetchone()
    return int(row[0]) if row else 0


def _wait_count(url: str, target: int, proc: IngestProcess, timeout_s: float, progress: bool) -> float:
    """Wait until `target` readings are stored; returns the time it happened."""
    import psycopg

    deadline = time.monotonic() + timeout_s
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            proc.sample_rss()
            n = _count(conn)
            if progress:
                print(f"\r  {n:>10,} / {target:,} readings stored", end="", file=sys.stderr, flush=True)
            if n >= target:
                if progress:
                    print(file=sys.stderr)
                return time.monotonic()
            time.sleep(0.25)
        raise RuntimeError(f"only {_count(conn)} of {target} readings stored after {timeout_s} s")


async def _naive_ingest(db_url: str, mqtt_url: str, expected: int, ready: Any, done: Any) -> None:
    """The baseline: decode, one INSERT per reading and a COMMIT per message, then ack."""
    import psycopg

    from ingest.decode import Decoder
    from pantau.metrics import SensorKind
    from pantau.mqtt import AsyncMqttClient, BrokerAddress

    decoder = Decoder(max_payload_bytes=65536, max_future_s=300, retention_s=365 * 86400)
    queue: asyncio.Queue[Any] = asyncio.Queue()
    client = AsyncMqttClient(
        BrokerAddress.parse(mqtt_url),
        client_id="bench-naive",
        on_message=lambda *message: queue.put_nowait(message),
        subscriptions=(("pantau/v1/#", 1),),
        receive_maximum=1000,
        manual_ack=True,
    )
    conn = await psycopg.AsyncConnection.connect(db_url, autocommit=True)
    async with client:
        await client.wait_connected(30)
        ready.set()
        handled = 0
        while handled < expected:
            topic, payload, _qos, mid = await queue.get()
            rows: list[Any] = []
            decoder.decode(payload, topic.rsplit("/", 1)[1], SensorKind.TRAFFIC, time.time(), rows, [])
            async with conn.transaction():
                for ts, sid, metric, value in rows:
                    await conn.execute(
                        "INSERT INTO readings (ts, sensor_id, metric, value) VALUES (to_timestamp(%s), %s, %s, %s)"
                        " ON CONFLICT DO NOTHING",
                        (ts, sid, metric, value),
                    )
            client.ack(mid, client.generation)
            handled += 1
        done.set()
    await conn.close()


def _naive_child(db_url: str, mqtt_url: str, expected: int, ready: Any, done: Any) -> None:
    asyncio.run(_naive_ingest(db_url, mqtt_url, expected, ready, done))


# -- the command ------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sensors", type=int, default=1000, help="registered sensors (default 1000)")
    p.add_argument("--messages", type=int, default=300_000, help="single-reading messages (default 300k)")
    p.add_argument("--packs", type=int, default=30_000, help="SenML packs (default 30k)")
    p.add_argument("--pack-size", type=int, default=50, help="readings per SenML pack (default 50)")
    p.add_argument("--live-rate", type=float, default=10_000, help="msg/s for the latency run (default 10k)")
    p.add_argument("--live-seconds", type=float, default=20, help="length of the latency run (default 20 s)")
    p.add_argument("--naive-messages", type=int, default=20_000, help="messages for the naive baseline")
    p.add_argument("--procs", type=int, default=2, help="publisher processes (default 2)")
    p.add_argument(
        "--only",
        choices=["single", "senml", "live", "naive"],
        action="append",
        help="run only these scenarios (repeatable)",
    )
    p.add_argument(
        "--auth",
        action="store_true",
        help="on pantau up's secured broker: accounts, ACLs (dynamic security), no anonymous access",
    )
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.set_defaults(handler=run_bench)


def run_bench(args: argparse.Namespace, settings: Any) -> int:
    # The benchmark drives processes and waits; it blocks this loop on purpose.
    from pantau.supervisor import sigterm_as_interrupt

    with sigterm_as_interrupt():
        return _run_bench_sync(args)


async def _bench_accounts(mq: Any, ingest_ids: list[str], publisher_ids: list[str]) -> dict[str, Any]:
    """On the secured broker: pantau's service roles, and an account per ingest run and per
    publisher process, bound to its client id (pantau.broker)."""
    from pantau.broker import ADMIN, INGEST, SIMULATOR, Account, DynsecControl, ensure_service_accounts, new_password
    from pantau.mqtt import BrokerAddress

    book = mq.accounts()
    made = {cid: Account(cid, new_password(), cid) for cid in [*ingest_ids, *publisher_ids]}
    async with DynsecControl(book[ADMIN].url(BrokerAddress.parse(mq.url))) as control:
        await ensure_service_accounts(control, book)
        await control.run(
            [
                {
                    "command": "createClient",
                    "username": a.username,
                    "password": a.password,
                    "clientid": a.client_id,
                    "roles": [{"rolename": INGEST if cid in ingest_ids else SIMULATOR}],
                }
                for cid, a in made.items()
            ]
        )
    return made


def _run_bench_sync(args: argparse.Namespace) -> int:
    import psycopg

    from pantau.domain import Sensor
    from pantau.embedded import EmbeddedMosquitto, EmbeddedPostgres
    from pantau.errors import ConfigError
    from pantau.metrics import SensorKind
    from pantau.mqtt import BrokerAddress
    from pantau.settings import StoreSettings
    from pantau.store import Backend, Store
    from pantau.store.maintenance import ensure_partitions

    only = set(args.only or (["single", "senml", "live"] if args.auth else ["single", "senml", "live", "naive"]))
    if args.auth and "naive" in only:
        raise ConfigError(
            "--only", "the naive baseline subscribes to pantau/v1/#, which no account may; not with --auth"
        )
    workdir = Path(tempfile.mkdtemp(prefix="pantau-bench-"))
    pg = EmbeddedPostgres(workdir / "pg")
    mq = EmbeddedMosquitto(workdir / "mq", secure=args.auth)
    runs: list[Run] = []
    print(f"private PostgreSQL and mosquitto under {workdir}", file=sys.stderr)
    try:
        pg.start()
        mq.start()
        sensors = sensor_ids(args.sensors)
        logins: list[tuple[str, str, str]] | None = None
        accounts: dict[str, str] = {}  # ingest's client id → its broker URL with the account
        if args.auth:
            ingest_ids = [f"bench-ingest-{name}" for name in ("single", "senml", "live")]
            publisher_ids = [f"bench-pub-{k}" for k in range(args.procs)]
            made = asyncio.run(_bench_accounts(mq, ingest_ids, publisher_ids))
            accounts = {cid: made[cid].url(BrokerAddress.parse(mq.url)) for cid in ingest_ids}
            logins = [(made[cid].client_id, made[cid].username, made[cid].password) for cid in publisher_ids]

        async def prepare(db: str) -> str:
            url = pg.url.rsplit("/", 1)[0] + "/" + db
            async with Store.open(url, StoreSettings(pool_max_size=2)) as store:
                backend, _ = await store.migrate()
                await store.upsert_sensors(Sensor(id=s, kind=SensorKind.TRAFFIC, city=_CITY) for s in sensors)
                if backend is Backend.POSTGRES:  # the backlog is stamped from 3 days ago
                    today = datetime.now(UTC).date()
                    async with store.connection() as conn:
                        await ensure_partitions(conn, {today - timedelta(days=d) for d in range(-2, 5)})
            return backend.value

        def fresh_db(name: str) -> tuple[str, str]:
            with psycopg.connect(pg.admin_url, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            url = pg.url.rsplit("/", 1)[0] + "/" + name
            return url, asyncio.run(prepare(name))

        def env_for(url: str, backend: str, client_id: str) -> dict[str, str]:
            return {
                "PANTAU_DATABASE_URL": url,
                "PANTAU_MQTT_URL": accounts.get(client_id, mq.url),
                "PANTAU_INGEST_METRICS_PORT": "-1",
                "PANTAU_INGEST_CLIENT_ID": client_id,
                "BENCH_BACKEND": backend,
                "PANTAU_CONFIG": str(workdir / "none.toml"),
            }

        (workdir / "none.toml").write_text("")

        def drain(name: str, kind: str, count: int, pack: int) -> None:
            url, backend = fresh_db(f"bench_{name}")
            env = env_for(url, backend, f"bench-ingest-{name}")
            # Make ingest's persistent session, stop it, queue the backlog, then time the drain.
            proc = IngestProcess(env, workdir)
            proc.start()
            proc.stop()
            t0 = time.time() - 3 * 86400
            print(f"{name}: queueing {count:,} messages in the broker ...", file=sys.stderr)
            sent, pub_s = publish_parallel(
                kind, "127.0.0.1", mq.port, sensors, count, procs=args.procs, t0=t0, pack=pack, logins=logins
            )
            print(
                f"{name}: load generator published {sent:,} msg in {pub_s:.1f} s "
                f"({sent / pub_s:,.0f} msg/s, {sent * pack / pub_s:,.0f} readings/s)",
                file=sys.stderr,
            )
            proc = IngestProcess(env, workdir)
            began, cpu = time.monotonic(), HostCpu.now()
            proc.start()
            finished = _wait_count(url, count * pack, proc, timeout_s=1800, progress=True)
            host = HostCpu.share_since(cpu)
            stats = proc.stop()
            # Timed from the first to the last commit: excludes process start-up.
            seconds = stats["last"] - stats["first"] if stats["last"] > stats["first"] else finished - began
            runs.append(
                Run(
                    name,
                    count * pack,
                    seconds,
                    proc.rss_peak_kib / 1024,
                    note=f"drain of a queued backlog; publisher {sent * pack / pub_s:,.0f} readings/s",
                    host=host,
                )
            )

        if "single" in only:
            drain("single", "single", args.messages, 1)
        if "senml" in only:
            drain("senml", "senml", args.packs, args.pack_size)
        if "live" in only:
            url, backend = fresh_db("bench_live")
            proc = IngestProcess(env_for(url, backend, "bench-ingest-live"), workdir)
            proc.start()
            count = int(args.live_rate * args.live_seconds)
            print(f"live: publishing {count:,} messages at {args.live_rate:,.0f} msg/s ...", file=sys.stderr)
            cpu = HostCpu.now()
            _sent, pub_s = publish_parallel(
                "live", "127.0.0.1", mq.port, sensors, count, procs=args.procs, t0=time.time(), rate=args.live_rate,
                logins=logins,
            )  # fmt: skip
            _wait_count(url, count, proc, timeout_s=600, progress=False)
            host = HostCpu.share_since(cpu)
            stats = proc.stop()
            runs.append(
                Run(
                    "live",
                    count,
                    pub_s,
                    proc.rss_peak_kib / 1024,
                    stats["latency_p50_ms"],
                    stats["latency_p99_ms"],
                    note=f"fixed rate {args.live_rate:,.0f} msg/s, QoS 1",
                    host=host,
                )
            )
        if "naive" in only:
            url, _backend = fresh_db("bench_naive")
            ctx = mp.get_context("spawn")
            ready, done = ctx.Event(), ctx.Event()
            child = ctx.Process(target=_naive_child, args=(url, mq.url, args.naive_messages, ready, done))
            child.start()
            if not ready.wait(60):
                raise RuntimeError("naive baseline did not start")
            assert child.pid is not None
            os.kill(child.pid, signal.SIGSTOP)  # queue the backlog while the baseline is paused
            t0 = time.time() - 3 * 86400
            publish_parallel("single", "127.0.0.1", mq.port, sensors, args.naive_messages, procs=args.procs, t0=t0)
            began = time.monotonic()
            os.kill(child.pid, signal.SIGCONT)
            while not done.wait(1.0):
                if not child.is_alive():
                    raise RuntimeError("naive baseline died; see its traceback above")
            seconds = time.monotonic() - began
            child.join(30)
            runs.append(
                Run(
                    "naive", args.naive_messages, seconds, 0.0, note="one INSERT + COMMIT per message, ack after commit"
                )
            )
    finally:
        mq.stop()
        pg.stop("immediate")
        shutil.rmtree(workdir, ignore_errors=True)
    _report(runs, args)
    return 0


def _report(runs: list[Run], args: argparse.Namespace) -> None:
    targets = {"single": 20_000, "senml": 100_000}
    auth = "authenticated (dynamic security, ACLs)" if args.auth else "anonymous broker"
    print(
        f"\npantau bench ingest — {os.cpu_count()} cores; broker, PostgreSQL, publishers and ingest on one machine;"
        f" {auth}"
    )
    print(
        f"{'scenario':<8} {'readings':>10} {'seconds':>8} {'readings/s':>11} {'target':>9} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'RSS MiB':>8} {'busy %':>6} {'steal %':>7}  note"
    )
    for r in runs:
        target = targets.get(r.name)
        verdict = "" if target is None else (f"{target:>9,}" if r.rate >= target else f"{target:>8,}!")
        p50 = f"{r.p50_ms:7.0f}" if r.p50_ms is not None else f"{'':>7}"
        p99 = f"{r.p99_ms:7.0f}" if r.p99_ms is not None else f"{'':>7}"
        rss = f"{r.rss_peak_mib:8.0f}" if r.rss_peak_mib else f"{'':>8}"
        host = f"{r.host[0]:6.0f} {r.host[1]:7.0f}" if r.host is not None else f"{'':>6} {'':>7}"
        figures = f"{r.readings:>10,} {r.seconds:>8.1f} {r.rate:>11,.0f} {verdict:>9} {p50} {p99} {rss} {host}"
        print(f"{r.name:<8} {figures}  {r.note}")
    if any(r.host is not None and r.host[1] >= 5 for r in runs):
        print("the hypervisor took (steal) 5 % or more of the machine's CPU in a run: its figures understate the code")
    naive = next((r for r in runs if r.name == "naive"), None)
    single = next((r for r in runs if r.name == "single"), None)
    if naive and single and naive.rate:
        print(f"batched COPY ingest is {single.rate / naive.rate:.0f}x the naive baseline (single readings)")
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ | {"rate": r.rate} for r in runs], indent=2))
