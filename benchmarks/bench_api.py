"""`pantau bench api`: the API's latency, export rate and memory on a year of a city, with ingest
taking 10,000 readings/s beside it (issue 12).

On private PostgreSQL and mosquitto instances (under a temporary directory), with `pantau ingest`,
`pantau maintain` and `pantau api` running as the separate processes they are in production:

1. the store: the Sampit fleet scaled to `--sensors` stations simulated over `--days` days at
   `--speed max` into the real ingest (48 stations over 360 days: about 21 million readings), then
   the rollups refreshed and the tables analysed;
2. beside the measurements, the load generator publishes `--rate` readings/s (default 10,000) for
   `--load-sensors` synthetic air stations (default 10,000: the wall map's `latest`);
3. each query `--requests` times, one at a time, with the same answer's bare SQL timed on its own
   connection right after (the API's cost over the database's): latest values of the 10,000
   stations, one station's PM2.5 over the whole span at `step=auto`, the daily ISPU report of the
   city; then a CSV export of every reading of the city, its rows/s and the API's RSS growth;
   then a mixed screen load (latest, overview, series, alerts) from `--concurrency` clients for
   `--seconds`, its requests/s and tail.

Figures only, never asserted; `docs/performance.md` keeps them with this command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

CITY = "sampit"
ZONE = ZoneInfo("Asia/Jakarta")
STATION = "SPT-AQ-01"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--days", type=int, default=360, help="days of the city simulated into the store (default 360)")
    p.add_argument("--sensors", type=int, default=48, help="the city's stations (default 48: ~21 M readings a year)")
    p.add_argument("--rate", type=float, default=10_000, help="readings/s ingested beside the queries (default 10,000)")
    p.add_argument("--load-sensors", type=int, default=10_000, help="stations of the load, the wall map's (10,000)")
    p.add_argument("--requests", type=int, default=200, help="requests per query for its percentiles (default 200)")
    p.add_argument("--seconds", type=float, default=20.0, help="the mixed load's length (default 20 s)")
    p.add_argument("--concurrency", type=int, default=16, help="the mixed load's clients (default 16)")
    p.add_argument("--json", help="also write the figures to this file")
    p.set_defaults(handler=run_bench)


def run_bench(args: argparse.Namespace, settings: Any) -> int:
    # The benchmark drives processes and waits; it blocks this loop on purpose.
    from pantau.supervisor import sigterm_as_interrupt

    with sigterm_as_interrupt():
        return _run(args)


def _ms(values: list[float]) -> dict[str, float]:
    a = np.asarray(values) * 1000
    return {p: round(float(np.percentile(a, q)), 1) for p, q in (("p50", 50), ("p95", 95), ("p99", 99))}


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _count(url: str, *, exact: bool = False) -> int:
    """Readings stored: from the statistics while ingest works (a count(*) of millions of rows each
    second would take a core from it), exactly at the end."""
    import psycopg

    query = "SELECT count(*) FROM readings" if exact else (
        "SELECT coalesce(sum(n_tup_ins), 0) FROM pg_stat_user_tables WHERE relid IN"
        " (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'readings'::regclass)")  # fmt: skip
    with psycopg.connect(url) as conn:
        row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


def _run(args: argparse.Namespace) -> int:
    from benchmarks.stack import Stack, private_stack
    from pantau.settings import StoreSettings
    from pantau.store import Store
    from pantau.store.maintenance import refresh_rollups
    from pantau.telemetry import HostCpu
    from simulators.load import LoadConfig, load_sensors, run_load

    def prepare(stack: Stack) -> None:
        manifest = stack.workdir / "fleet.yaml"
        stack.pantau("simulate", "--fleet", CITY, "--sensors", str(args.sensors), "--write-manifest", str(manifest))
        stack.pantau("sensors", "import", str(manifest))

        async def register_load() -> None:
            async with Store.open(stack.pg.url, StoreSettings(pool_max_size=2)) as store:
                await store.upsert_sensors(load_sensors(args.load_sensors))

        asyncio.run(register_load())

    with private_stack("pantau-bench-api-", prepare=prepare) as stack:
        pg, workdir = stack.pg, stack.workdir
        # 1. A year of the city through the real ingest.
        started = time.monotonic()
        said = stack.pantau("simulate", "--fleet", CITY, "--sensors", str(args.sensors), f"--start=-{args.days}d",
                            "--duration", f"{args.days}d", "--speed", "max", "--out", "mqtt", "--qos", "1")  # fmt: skip
        sent = int(said.split(" messages (")[1].split(" readings)")[0].replace(",", ""))
        last, moved = -1, time.monotonic()
        while last < sent:  # drained when every published reading is stored
            time.sleep(1.0)
            now = _count(pg.url)
            if now != last:
                last, moved = now, time.monotonic()
            elif time.monotonic() - moved > 120:
                raise RuntimeError(f"ingest stopped at {now:,} of {sent:,} readings; see {workdir}/ingest.log")
            print(f"\r  {now:,} of {sent:,} readings stored", end="", file=sys.stderr, flush=True)
        build_s = time.monotonic() - started
        stored = _count(pg.url, exact=True)
        print(f"\nstore: {stored:,} readings in {build_s:.0f} s", file=sys.stderr)

        async def settle() -> tuple[int, int]:
            async with Store.open(pg.url, StoreSettings(pool_max_size=2)) as store, store.connection() as conn:
                refreshed = await refresh_rollups(conn)
                await conn.execute("ANALYZE")
                return refreshed

        t = time.monotonic()
        asyncio.run(settle())
        print(f"rollups refreshed and tables analysed in {time.monotonic() - t:.0f} s", file=sys.stderr)

        # 2. Ingest beside the queries.
        measure_s = 3600.0  # stopped with the run
        load = LoadConfig(host="127.0.0.1", port=stack.mq.port, rate=args.rate, duration_s=measure_s,
                          sensors=args.load_sensors)  # fmt: skip
        threading.Thread(target=lambda: run_load(load), daemon=True).start()
        time.sleep(5.0)  # every load station has a latest value

        cpu = HostCpu.now()
        figures = asyncio.run(_measure(args, f"http://127.0.0.1:{stack.api_port}", pg.url, stack.procs["api"].pid))
        share = HostCpu.share_since(cpu)
        figures |= {"store_readings": stored, "store_build_s": round(build_s), "ingest_rate": args.rate,
                    "host_cpu_busy_pct": None if share is None else round(share[0], 1),
                    "host_cpu_steal_pct": None if share is None else round(share[1], 1)}  # fmt: skip
        _report(figures)
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
        return 0


async def _timed(n: int, call: Callable[[], Awaitable[Any]]) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        await call()
        out.append(time.perf_counter() - t)
    return out


async def _operator_token(db_url: str, role: str = "operator") -> str:
    """A token of `role` for every city (an operator's, as the screens read)."""
    from pantau.access import Access
    from pantau.audit import Actor
    from pantau.settings import StoreSettings
    from pantau.store import Store

    async with Store.open(db_url, StoreSettings(pool_max_size=1)) as store:
        _token, secret = await Access(store).create_token(Actor.cli("bench"), f"bench-{role}", role)
    return secret


async def _measure(args: argparse.Namespace, base: str, db_url: str, api_pid: int) -> dict[str, Any]:
    import aiohttp
    import psycopg

    now = datetime.now(UTC)
    yesterday = (datetime.now(ZONE) - timedelta(days=1)).date()
    day_start = datetime(yesterday.year, yesterday.month, yesterday.day, tzinfo=ZONE)
    span = {"from": (now - timedelta(days=args.days)).isoformat(), "to": now.isoformat()}
    figures: dict[str, Any] = {}
    # The screens' load reads as an operator with a token, as scripts do: its check is in each figure.
    headers = {"Authorization": f"Bearer {await _operator_token(db_url)}"}
    async with (
        aiohttp.ClientSession(base, headers=headers) as http,
        await psycopg.AsyncConnection.connect(db_url) as sql,
    ):
        air = [r[0] for r in await (await sql.execute(
            "SELECT id FROM sensors WHERE city = %s AND kind = 'air' ORDER BY id", (CITY,))).fetchall()]  # fmt: skip

        async def get(path: str, **params: Any) -> bytes:
            async with http.get(path, params=params) as answer:
                body = await answer.read()
                if answer.status != 200:
                    raise RuntimeError(f"{path} {params}: {answer.status} {body[:300]!r}")
                return body

        async def query(q: str, params: Any) -> None:
            await (await sql.execute(q, params)).fetchall()

        # The bare SQL of the same answer: the level `auto` chose, read the way a hand query would.
        chosen = json.loads(await get("/api/v1/series", sensor=STATION, metric="pm25", step="auto", **span))
        step = chosen["series"][0]["step"]
        bounds = (STATION, now - timedelta(days=args.days), now)
        series_sql: tuple[str, Any] = {
            "raw": ("SELECT ts, value FROM readings WHERE sensor_id = %s AND metric = 'pm25' AND ts >= %s AND ts < %s"
                    " ORDER BY ts", bounds),
            "1m": ("SELECT bucket, avg_value FROM readings_1m WHERE sensor_id = %s AND metric = 'pm25'"
                   " AND bucket >= %s AND bucket < %s ORDER BY bucket", bounds),
            "1h": ("SELECT bucket, avg_value FROM readings_1h WHERE sensor_id = %s AND metric = 'pm25'"
                   " AND bucket >= %s AND bucket < %s ORDER BY bucket", bounds),
            "1d": ("SELECT date_trunc('day', bucket AT TIME ZONE 'Asia/Jakarta'), sum(avg_value * n) / sum(n)"
                   " FROM readings_1h WHERE sensor_id = %s AND metric = 'pm25' AND bucket >= %s AND bucket < %s"
                   " GROUP BY 1 ORDER BY 1", bounds),
        }[step]  # fmt: skip
        figures["series_step_chosen"] = step

        cases: list[tuple[str, Callable[[], Awaitable[Any]], Callable[[], Awaitable[Any]], float]] = [
            (f"latest, {args.load_sensors:,} stations", lambda: get("/api/v1/latest", city="loadtest"), lambda: query(
                "SELECT s.id, s.city, s.kind, l.metric, l.ts, l.value FROM latest_readings l JOIN sensors s"
                " ON s.id = l.sensor_id WHERE s.city = %s ORDER BY s.id, l.metric", ("loadtest",)), 50.0),
            (f"series, a station over {args.days} d, auto", lambda: get(
                "/api/v1/series", sensor=STATION, metric="pm25", step="auto", **span), lambda: query(
                *series_sql), 100.0),
            ("daily ISPU report of the city", lambda: get(
                "/api/v1/air/ispu/daily", city=CITY, date=yesterday.isoformat()), lambda: query(
                "SELECT sensor_id, metric, bucket, n, avg_value * n FROM readings_1h WHERE sensor_id = ANY(%s)"
                " AND bucket >= %s AND bucket < %s", (air, day_start, day_start + timedelta(days=1))), 200.0),
        ]  # fmt: skip
        for name, api_call, sql_call, target in cases:
            await api_call()  # warm
            api_t = await _timed(args.requests, api_call)
            sql_t = await _timed(args.requests, sql_call)
            a, s = _ms(api_t), _ms(sql_t)
            figures[name] = {"api_ms": a, "sql_ms": s, "api_over_sql_p50": round(a["p50"] / max(s["p50"], 0.01), 2),
                             "target_p95_ms": target}  # fmt: skip

        # CSV export of the whole city: rows/s, and the API's RSS while it streams.
        rss_before, rss_peak, rows = _rss_kib(api_pid), 0, -1
        t = time.perf_counter()
        agency = {"Authorization": f"Bearer {await _operator_token(db_url, 'agency')}"}  # who may export
        async with http.get("/api/v1/export", params={"city": CITY, **span}, headers=agency) as answer:
            if answer.status != 200:
                raise RuntimeError(f"the export answered {answer.status}: {(await answer.read())[:300]!r}")
            async for chunk in answer.content.iter_chunked(1 << 20):
                rows += chunk.count(b"\n")
                rss_peak = max(rss_peak, _rss_kib(api_pid))
        export_s = time.perf_counter() - t
        t = time.perf_counter()
        copied = 0
        copy_all = psycopg.sql.SQL(
            "COPY (SELECT r.ts, r.sensor_id, r.metric, r.value FROM readings r JOIN sensors s ON s.id = r.sensor_id"
            " WHERE s.city = {} ORDER BY r.sensor_id, r.metric, r.ts) TO STDOUT (FORMAT csv)"
        ).format(psycopg.sql.Literal(CITY))
        async with sql.cursor().copy(copy_all) as copy:
            async for block in copy:
                copied += bytes(block).count(b"\n")
        copy_s = time.perf_counter() - t
        figures["csv export of the city"] = {
            "rows": rows, "seconds": round(export_s, 1), "rows_per_s": round(rows / export_s),
            "api_rss_growth_mib": round((rss_peak - rss_before) / 1024, 1),
            "sql_copy_rows_per_s": round(copied / copy_s),
            "target_rows_per_s": 300_000, "target_rss_growth_mib": 50,
        }  # fmt: skip

        # Mixed screen load.
        day = {"from": (now - timedelta(hours=24)).isoformat(), "to": now.isoformat()}
        screen = [("/api/v1/latest", {"city": CITY}), ("/api/v1/overview", {"city": CITY}),
                  ("/api/v1/series", {"sensor": STATION, "metric": "pm25", "step": "auto", **day}),
                  ("/api/v1/alerts", {"city": CITY})]  # fmt: skip
        latencies: list[float] = []
        by_path: dict[str, list[float]] = {path: [] for path, _ in screen}
        errors = 0
        stop = time.monotonic() + args.seconds

        async def client(k: int) -> None:
            nonlocal errors
            i = k
            while time.monotonic() < stop:
                path, params = screen[i % len(screen)]
                i += 1
                t0 = time.perf_counter()
                async with http.get(path, params=params) as answer:
                    await answer.read()
                    errors += answer.status != 200
                latencies.append(time.perf_counter() - t0)
                by_path[path].append(latencies[-1])

        t = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(args.concurrency)))
        elapsed = time.perf_counter() - t
        figures["mixed screen load"] = {
            "requests": len(latencies), "errors": errors, "requests_per_s": round(len(latencies) / elapsed),
            "ms": _ms(latencies), "clients": args.concurrency, "target_rps": 500, "target_p99_ms": 100,
            "ms_by_path": {path: _ms(values) for path, values in by_path.items() if values},
        }  # fmt: skip
    return figures


def _report(figures: dict[str, Any]) -> None:
    print("\npantau bench api — 2 cores; PostgreSQL, mosquitto, ingest, the load and the API on one machine")
    print(f"store {figures['store_readings']:,} readings; ingest {figures['ingest_rate']:,.0f} readings/s beside;"
          f" host busy {figures['host_cpu_busy_pct']} %, steal {figures['host_cpu_steal_pct']} %")  # fmt: skip
    print(f"{'query':38} {'api p50':>8} {'p95':>7} {'p99':>7} {'sql p50':>8} {'api/sql':>8} {'target p95':>11}")
    for name, f in figures.items():
        if isinstance(f, dict) and "api_ms" in f:
            a, s = f["api_ms"], f["sql_ms"]
            print(f"{name:38} {a['p50']:>8} {a['p95']:>7} {a['p99']:>7} {s['p50']:>8} {f['api_over_sql_p50']:>8}"
                  f" {f['target_p95_ms']:>11}")  # fmt: skip
    e = figures["csv export of the city"]
    print(f"csv export: {e['rows']:,} rows in {e['seconds']} s = {e['rows_per_s']:,} rows/s (bare COPY"
          f" {e['sql_copy_rows_per_s']:,}); API RSS +{e['api_rss_growth_mib']} MiB")  # fmt: skip
    m = figures["mixed screen load"]
    print(f"mixed screen load: {m['requests_per_s']:,} requests/s from {m['clients']} clients, p50 {m['ms']['p50']}"
          f" p95 {m['ms']['p95']} p99 {m['ms']['p99']} ms, {m['errors']} errors")  # fmt: skip
    for path, ms in m["ms_by_path"].items():
        print(f"  {path:30} p50 {ms['p50']} p95 {ms['p95']} p99 {ms['p99']} ms")
