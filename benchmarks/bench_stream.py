"""`pantau bench stream`: how fast a committed alert reaches the live stream's screens, with ingest
running beside, many screens connected and one of them not reading.

On private PostgreSQL and mosquitto: ingest and the API run as `pantau up` runs them; the load
generator publishes `--rate` readings/s (default 10,000) for `--load-sensors` stations of one city
(default 10,000); `--clients` SSE clients (default 200) watch the alerts' city and one more
connection subscribes and never reads. The bench then commits `--alerts` alert transitions (raise,
escalate, resolve; 4 a second) and records, for every client, the time from the commit's return to
the event's arrival. It also times a screen's first load of the 10,000-station city (the API
requests the screen makes at start, in parallel) and the API's RSS before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.bench_api import _ms, _operator_token, _rss_kib

CITY = "sampit"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rate", type=float, default=10_000, help="readings/s ingested beside (default 10,000)")
    p.add_argument("--load-sensors", type=int, default=10_000, help="stations of the load's city (default 10,000)")
    p.add_argument("--clients", type=int, default=200, help="stream clients (default 200)")
    p.add_argument("--alerts", type=int, default=200, help="alert transitions committed (default 200)")
    p.set_defaults(handler=run_bench)


def run_bench(args: argparse.Namespace, settings: Any) -> int:
    from pantau.supervisor import sigterm_as_interrupt

    with sigterm_as_interrupt():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from pantau.domain import City, Sensor
    from pantau.embedded import EmbeddedMosquitto, EmbeddedPostgres
    from pantau.mqtt import free_port
    from pantau.settings import StoreSettings
    from pantau.store import Store
    from simulators.load import LOAD_CITY, LoadConfig, load_sensors, run_load

    workdir = Path(tempfile.mkdtemp(prefix="pantau-bench-stream-"))
    pg, mq = EmbeddedPostgres(workdir / "pg"), EmbeddedMosquitto(workdir / "mq")
    procs: dict[str, subprocess.Popen[bytes]] = {}
    print(f"private PostgreSQL and mosquitto under {workdir}", file=sys.stderr)
    try:
        pg.start()
        mq.start()
        (workdir / "none.toml").write_text("")
        api_port = free_port()
        env = {**os.environ, "PANTAU_CONFIG": str(workdir / "none.toml"), "PANTAU_DATABASE_URL": pg.url,
               "PANTAU_MQTT_URL": mq.url, "PANTAU_INGEST_METRICS_PORT": "-1", "PANTAU_API_PORT": str(api_port),
               "PANTAU_HOME": str(workdir / "home")}  # fmt: skip
        pantau = [sys.executable, "-m", "pantau"]
        subprocess.run([*pantau, "db", "migrate"], env=env, check=True, capture_output=True)

        async def register() -> None:
            async with Store.open(pg.url, StoreSettings(pool_max_size=2)) as store:
                await store.upsert_sensors(load_sensors(args.load_sensors))
                await store.upsert_sensors([Sensor(id="SPT-WL-01", kind="flood", city=CITY)])  # type: ignore[arg-type]
                await store.upsert_city(City(id=CITY, name="Sampit", timezone="Asia/Jakarta"))

        asyncio.run(register())
        for name in ("ingest", "maintain", "api"):
            log = (workdir / f"{name}.log").open("wb")
            procs[name] = subprocess.Popen([*pantau, name], env=env, stdout=log, stderr=log)
        time.sleep(3.0)
        load = LoadConfig(host="127.0.0.1", port=mq.port, rate=args.rate, duration_s=3600.0,
                          sensors=args.load_sensors)  # fmt: skip
        threading.Thread(target=lambda: run_load(load), daemon=True).start()
        time.sleep(8.0)  # every load station has a latest value
        figures = asyncio.run(_measure(args, api_port, pg.url, procs["api"].pid, LOAD_CITY))
        _report(args, figures)
        return 0
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        mq.stop()
        pg.stop()
        shutil.rmtree(workdir, ignore_errors=True)


async def _measure(args: argparse.Namespace, port: int, db_url: str, api_pid: int, load_city: str) -> dict[str, Any]:
    import aiohttp

    from pantau.alerts import AlertStore
    from pantau.settings import StoreSettings
    from pantau.store import Store

    token = await _operator_token(db_url)
    headers = {"Authorization": f"Bearer {token}"}
    base = f"http://127.0.0.1:{port}"
    figures: dict[str, Any] = {}

    # A screen's first load of the 10,000-station city: the requests the screen makes at start.
    async with aiohttp.ClientSession(base, headers=headers) as http:
        loads = []
        for _ in range(5):
            t = time.perf_counter()
            q = {"city": load_city}
            paths = ["/api/v1/sensors", "/api/v1/latest", "/api/v1/alerts", "/api/v1/air/ispu",
                     "/api/v1/flood/rivers", "/api/v1/traffic/corridors", "/api/v1/rain"]  # fmt: skip

            async def get(path: str, http: aiohttp.ClientSession = http, q: dict[str, str] = q) -> None:
                async with http.get(path, params=q) as r:
                    await r.read()
                    assert r.status == 200, path

            await asyncio.gather(*(get(p) for p in paths))
            loads.append(time.perf_counter() - t)
        figures["first load"] = _ms(loads)

    rss_before = _rss_kib(api_pid)
    arrivals: dict[int, list[float]] = {}
    committed: dict[int, float] = {}
    stalled = socket.create_connection(("127.0.0.1", port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(
        f"GET /api/v1/stream?city={CITY} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    )
    ready = 0

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal ready
        async with session.get(f"{base}/api/v1/stream", params={"city": CITY}) as response:
            ready += 1
            async for line in response.content:
                if line.startswith(b"id: "):
                    arrivals.setdefault(int(line[4:]), []).append(time.perf_counter())

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        tasks = [asyncio.create_task(client(session)) for _ in range(args.clients)]
        while ready < args.clients:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        async with Store.open(db_url, StoreSettings(pool_max_size=2)) as store:
            alerts = AlertStore(store)
            for i in range(args.alerts):
                scope = f"bench-{i // 3}"
                if i % 3 == 2:
                    moved = await alerts.resolve("bench", scope, reason="surut")
                else:
                    moved = await alerts.raise_alert("bench", scope, city=CITY, sensor_id="SPT-WL-01",
                                                 severity="warning" if i % 3 == 0 else "critical", value=1.0 + i,
                                                 event_ts=datetime.now(UTC), reason="bench")  # fmt: skip
                done = time.perf_counter()
                for event in moved.events:
                    committed[event.id] = done
                await asyncio.sleep(0.25)
        await asyncio.sleep(2.0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    stalled.close()
    latencies = [a - committed[i] for i, times in arrivals.items() if i in committed for a in times]
    expected = len(committed) * args.clients
    figures["stream"] = {"clients": args.clients, "events": len(committed), "deliveries": len(latencies),
                         "expected": expected, "ms": _ms(latencies)}  # fmt: skip
    figures["api_rss_mib"] = {"before": round(rss_before / 1024, 1), "after": round(_rss_kib(api_pid) / 1024, 1)}
    return figures


def _report(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    s, f, m = figures["stream"], figures["first load"], figures["api_rss_mib"]
    print("\npantau bench stream — 2 cores; PostgreSQL, mosquitto, ingest, the load, the API, the clients on one host")
    print(f"ingest beside: {args.rate:,.0f} readings/s for {args.load_sensors:,} stations")
    print(f"commit -> SSE event at {s['clients']} clients (one more not reading): {s['deliveries']:,} of"
          f" {s['expected']:,} deliveries, p50 {s['ms']['p50']} ms, p95 {s['ms']['p95']} ms, p99 {s['ms']['p99']} ms")
    print(f"first load of the {args.load_sensors:,}-station city (the screen's start requests): p50 {f['p50']} ms,"
          f" p95 {f['p95']} ms")  # fmt: skip
    print(f"API RSS: {m['before']} MiB before the clients, {m['after']} MiB after")
