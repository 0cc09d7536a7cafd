"""`pantau bench stream`: how fast a committed alert reaches the live stream's screens and a real
browser's screen, with ingest running beside, many screens connected and one of them not reading.

On private PostgreSQL and mosquitto: ingest and the API run as `pantau up` runs them; the load
generator publishes `--rate` readings/s (default 10,000) for `--load-sensors` stations of one city
(default 10,000, placed on a grid over Sampit); `--clients` SSE clients (default 200) watch the
alerts' city (Sampit) and one more connection subscribes and never reads. Debian's Chromium
(through Playwright, as the browser tests) signs in as an operator of the 10,000-station city.

The bench times the browser's first loads of that city (navigation to the screen drawn: map,
alerts, panels) and the API's part of it, then commits `--alerts` alert transitions (raise,
escalate, resolve; 4 a second) in each city through the kernel's `AlertStore`, and records the
time from each commit's return to the event's arrival at every SSE client, and to the screen's
alert list showing it in the browser (after the next frame), and the API's RSS before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import shutil
import socket
import sys
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from benchmarks.bench_api import _ms, _operator_token, _rss_kib

CITY = "sampit"
OPERATOR, PASSWORD = "bench-operator", "kata-sandi-bench-1"
# What the screen's alert list shows, as (alert id, what) -> the first time it was seen (ms since
# the epoch, after the next frame): "warning"/"critical" while open, "gone" once resolved.
WATCH_LIST = """() => {
  window.benchSeen = {};
  let present = new Set();
  const scan = () => requestAnimationFrame(() => {
    const now = Date.now(), ids = new Set();
    for (const li of document.querySelectorAll("#alert-list li.alert")) {
      ids.add(li.dataset.alert);
      const key = `${li.dataset.alert}:${li.dataset.severity}`;
      if (!(key in benchSeen)) benchSeen[key] = now;
    }
    for (const id of present) if (!ids.has(id) && !(`${id}:gone` in benchSeen)) benchSeen[`${id}:gone`] = now;
    present = ids;
  });
  new MutationObserver(scan).observe(document.querySelector("#alert-list"), { childList: true });
}"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rate", type=float, default=10_000, help="readings/s ingested beside (default 10,000)")
    p.add_argument("--load-sensors", type=int, default=10_000, help="stations of the load's city (default 10,000)")
    p.add_argument("--clients", type=int, default=200, help="stream clients (default 200)")
    p.add_argument("--alerts", type=int, default=200, help="alert transitions committed in each city (default 200)")
    p.add_argument("--loads", type=int, default=5, help="the browser's first loads timed (default 5)")
    p.add_argument("--no-browser", dest="browser", action="store_false", help="SSE clients only")
    p.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium", help="the browser")
    p.set_defaults(handler=run_bench)


def run_bench(args: argparse.Namespace, settings: Any) -> int:
    from pantau.supervisor import sigterm_as_interrupt

    with sigterm_as_interrupt():
        return _run(args)


def placed(n: int) -> list[Any]:
    """The load generator's stations on a grid over Sampit, in sixteen districts."""
    from simulators.load import load_sensors

    side = math.ceil(math.sqrt(n))
    out = []
    for i, sensor in enumerate(load_sensors(n)):
        row, col = divmod(i, side)
        district = f"Kecamatan Uji {1 + (row * 4 // side) * 4 + col * 4 // side}"
        out.append(replace(sensor, lat=-2.45 - 0.2 * row / side, lon=112.85 + 0.25 * col / side, district=district))
    return out


def _run(args: argparse.Namespace) -> int:
    from benchmarks.stack import Stack, private_stack
    from pantau.domain import City, Sensor
    from pantau.settings import StoreSettings
    from pantau.store import Store
    from simulators.load import LOAD_CITY, LoadConfig, run_load

    def prepare(stack: Stack) -> None:
        async def register() -> None:
            async with Store.open(stack.pg.url, StoreSettings(pool_max_size=2)) as store:
                await store.upsert_sensors(placed(args.load_sensors))
                await store.upsert_sensors([Sensor(id="SPT-WL-01", kind="flood", city=CITY)])  # type: ignore[arg-type]
                await store.upsert_city(City(id=CITY, name="Sampit", timezone="Asia/Jakarta"))
                await store.upsert_city(City(id=LOAD_CITY, name="Kota Uji Beban", timezone="Asia/Jakarta"))

        asyncio.run(register())
        stack.pantau("users", "add", OPERATOR, "--role", "operator", "--city", LOAD_CITY, "--password-stdin",
                     stdin=PASSWORD + "\n")  # fmt: skip

    with private_stack("pantau-bench-stream-", prepare=prepare, settle_s=3.0) as stack:
        load = LoadConfig(host="127.0.0.1", port=stack.mq.port, rate=args.rate, duration_s=3600.0,
                          sensors=args.load_sensors)  # fmt: skip
        threading.Thread(target=lambda: run_load(load), daemon=True).start()
        time.sleep(8.0)  # every load station has a latest value
        figures = asyncio.run(_measure(args, stack.api_port, stack.pg.url, stack.procs["api"].pid, LOAD_CITY))
        _report(args, figures)
        return 0


async def _measure(args: argparse.Namespace, port: int, db_url: str, api_pid: int, load_city: str) -> dict[str, Any]:
    import aiohttp

    token = await _operator_token(db_url)
    headers = {"Authorization": f"Bearer {token}"}
    base = f"http://127.0.0.1:{port}"
    figures: dict[str, Any] = {}

    # A screen's first load of the 10,000-station city: the requests the screen makes at start.
    async with aiohttp.ClientSession(base, headers=headers) as http:
        loads = []
        for _ in range(args.loads):
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

    if not args.browser:
        return figures | await _stream(args, port, db_url, api_pid, token, load_city, None)
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        page = await browser.new_page(viewport={"width": 1920, "height": 1080})
        await page.goto(base + "/")
        await page.fill("input[name=username]", OPERATOR)
        await page.fill("input[name=password]", PASSWORD)
        await page.click("button[type=submit]")
        await page.wait_for_selector("#app:not([hidden])")
        page.on("pageerror", lambda e: print(f"the screen: {e}", file=sys.stderr))
        drawn, markers = [], 0
        for _ in range(args.loads):  # navigation start -> the first load drawn (the screen's own mark)
            await page.reload()
            ready = await page.wait_for_function(
                "performance.getEntriesByName('pantau:ready').map(e => e.startTime)[0]", timeout=60_000
            )
            drawn.append(float(await ready.json_value()) / 1000)
            markers = await page.evaluate("document.querySelectorAll('#map circle.marker').length")
        figures["browser first load"] = _ms(drawn) | {"markers": markers}
        await page.wait_for_function("document.querySelector('#conn').dataset.state === 'live'")
        await page.evaluate(WATCH_LIST)
        figures |= await _stream(args, port, db_url, api_pid, token, load_city, page)
        await browser.close()
    return figures


async def _stream(args: argparse.Namespace, port: int, db_url: str, api_pid: int, token: str, load_city: str,
                  page: Any) -> dict[str, Any]:  # fmt: skip
    """The SSE clients and the browser while alert transitions are committed in both cities."""
    import aiohttp

    from pantau.alerts import AlertStore
    from pantau.settings import StoreSettings
    from pantau.store import Store

    headers = {"Authorization": f"Bearer {token}"}
    base = f"http://127.0.0.1:{port}"
    rss_before = _rss_kib(api_pid)
    arrivals: dict[int, list[float]] = {}
    committed: dict[int, float] = {}
    shown: dict[str, float] = {}  # what the browser should show -> commit time (ms since the epoch)
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
                for city, sensor in ((CITY, "SPT-WL-01"), (load_city, "LOAD-00000")):
                    scope = f"bench-{city}-{i // 3}"
                    if i % 3 == 2:
                        moved = await alerts.resolve("bench", scope, reason="surut")
                    else:
                        moved = await alerts.raise_alert("bench", scope, city=city, sensor_id=sensor,
                                                     severity="warning" if i % 3 == 0 else "critical", value=1.0 + i,
                                                     event_ts=datetime.now(UTC), reason="bench")  # fmt: skip
                    done, wall = time.perf_counter(), time.time() * 1000
                    if city == CITY:
                        for event in moved.events:
                            committed[event.id] = done
                    elif moved.alert is not None:
                        what = "gone" if i % 3 == 2 else moved.alert.severity
                        shown[f"{moved.alert.id}:{what}"] = wall
                await asyncio.sleep(0.25)
        await asyncio.sleep(2.0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    stalled.close()
    latencies = [a - committed[i] for i, times in arrivals.items() if i in committed for a in times]
    expected = len(committed) * args.clients
    figures: dict[str, Any] = {
        "stream": {"clients": args.clients, "events": len(committed), "deliveries": len(latencies),
                   "expected": expected, "ms": _ms(latencies)},
        "api_rss_mib": {"before": round(rss_before / 1024, 1), "after": round(_rss_kib(api_pid) / 1024, 1)},
    }  # fmt: skip
    if page is not None:
        seen: dict[str, float] = await page.evaluate("window.benchSeen")
        in_browser = [(seen[k] - t) / 1000 for k, t in shown.items() if k in seen]
        figures["browser"] = {"expected": len(shown), "shown": len(in_browser),
                              "ms": _ms(in_browser) if in_browser else None,
                              "not shown": [k for k in shown if k not in seen and not _overtaken(k, seen)],
                              "overtaken": [k for k in shown if k not in seen and _overtaken(k, seen)]}  # fmt: skip
    return figures


def _overtaken(key: str, seen: dict[str, float]) -> bool:
    """Whether a later state of the key's alert was drawn: the list shows an alert as it is now."""
    alert, what = key.split(":")
    later = {"warning": ("critical", "gone"), "critical": ("gone",), "gone": ()}[what]
    return any(f"{alert}:{w}" in seen for w in later)


def _report(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    s, f, m = figures["stream"], figures["first load"], figures["api_rss_mib"]
    print("\npantau bench stream — 2 cores; PostgreSQL, mosquitto, ingest, the load, the API, the clients on one host")
    print(f"ingest beside: {args.rate:,.0f} readings/s for {args.load_sensors:,} stations")
    print(f"commit -> SSE event at {s['clients']} clients (one more not reading): {s['deliveries']:,} of"
          f" {s['expected']:,} deliveries, p50 {s['ms']['p50']} ms, p95 {s['ms']['p95']} ms,"
          f" p99 {s['ms']['p99']} ms")  # fmt: skip
    if "browser" in figures:
        b = figures["browser"]
        ms = b["ms"] or {"p50": "-", "p95": "-", "p99": "-"}
        print(f"commit -> shown in the browser's alert list ({args.load_sensors:,}-station city): {b['shown']} of"
              f" {b['expected']}, p50 {ms['p50']} ms, p95 {ms['p95']} ms, p99 {ms['p99']} ms")  # fmt: skip
        if b["not shown"]:
            print(f"  never shown: {', '.join(b['not shown'][:20])}")
        if b["overtaken"]:
            print(f"  {len(b['overtaken'])} overtaken (a later state of the alert was drawn first, as it should be):"
                  f" {', '.join(b['overtaken'][:10])}")  # fmt: skip
        d = figures["browser first load"]
        print(f"the browser's first load of that city, navigation -> drawn ({d['markers']:,} markers):"
              f" p50 {d['p50']} ms, p95 {d['p95']} ms")  # fmt: skip
    print(f"first load of the {args.load_sensors:,}-station city (the screen's start requests, API part): p50"
          f" {f['p50']} ms, p95 {f['p95']} ms")  # fmt: skip
    print(f"API RSS: {m['before']} MiB before the clients, {m['after']} MiB after")
