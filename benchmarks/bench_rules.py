"""`pantau bench rules`: publish→alert latency with the whole stack under load.

On private PostgreSQL and mosquitto instances (under a temporary directory), with `pantau ingest`
and `pantau rules` running as the separate processes they are in production:

- background load: `--sensors` synthetic air stations (city `loadtest`) publishing `--rate`
  readings/s through the load generator, every reading evaluated against a pack of `--rules`
  rules (the default pack's air rules plus thresholds, windows and rates that the load never
  trips, so each reading does the full evaluation work);
- probes: every `--probe-interval` one probe station (city `probe`) publishes PM2.5 900 µg/m³,
  which raises an alert at once (threshold, no `for`); a second later it publishes 10, which
  resolves it. Each probe is stamped with its publish time.

The latency of a probe is from its publish to the alert event arriving on MQTT
`pantau/v1/probe/alerts` (and, separately, to the alert row's commit: the event's `at`). The
run fails (exit 1) when an event is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from benchmarks.stack import stop

PROBE_CITY = "probe"
PROBE_PREFIX = "PROBE"
_RAISE_VALUE = 900.0
_CLEAR_VALUE = 10.0
_CLEAR_AFTER_S = 1.0
# Warm-up probes (one every 2 s) until the first alert event comes back.
_WARM_UP_TRIES = 30


def bench_rules(n_rules: int) -> dict[str, Any]:
    """A pack of `n_rules` rules over the load city's air stations, plus the probe rule."""
    load = {"kind": "air", "city": "loadtest"}
    rules: list[dict[str, Any]] = [
        {
            "id": "load-ispu",
            "kind": "index_band",
            "index": "ispu",
            "select": load,
            "pollutants": ["pm10", "pm25", "so2", "co", "o3", "no2", "hc"],
            "windows": {"pm25": "24h"},
            "levels": {"tidak_sehat": "warning", "sangat_tidak_sehat": "critical", "berbahaya": "critical"},
            "clear": {"for": "1h"},
        },
        {"id": "load-offline", "kind": "absence", "select": load, "for": "15m", "severity": "warning"},
        {
            "id": "load-stuck",
            "kind": "data_quality",
            "check": "stuck",
            "select": load,
            "metric": "pm25",
            "window": "1h",
            "tolerance": 0,
            "min_readings": 6,
            "severity": "info",
        },
        {
            "id": "load-rising",
            "kind": "rate_of_change",
            "select": load,
            "metric": "pm25",
            "direction": "rise",
            "delta": 400,
            "window": "30m",
            "severity": "warning",
        },
    ]
    k = 0
    while len(rules) < n_rules:
        rule: dict[str, Any] = {
            "id": f"load-high-{k}",
            "kind": "threshold",
            "select": load,
            "metric": "pm25",
            "op": ">",
            "value": 500 + 10 * k,
            "clear": {"op": "<", "value": 400},
            "severity": "warning",
        }
        if k % 2:
            rule |= {"for": f"{5 + k}m"}
        if k % 3 == 0:
            rule |= {"aggregate": "mean", "window": f"{10 + k}m"}
        rules.append(rule)
        k += 1
    rules.append(
        {
            "id": "probe-high",
            "kind": "threshold",
            "select": {"kind": "air", "city": PROBE_CITY},
            "metric": "pm25",
            "op": ">",
            "value": 500,
            "clear": {"op": "<", "value": 100},
            "severity": "critical",
        }
    )
    return {"version": 1, "rules": rules}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sensors", type=int, default=10_000, help="load stations (default 10,000)")
    p.add_argument("--rules", type=int, default=20, help="rules each load reading is evaluated against (default 20)")
    p.add_argument("--rate", type=float, default=10_000, help="background readings/s (default 10,000)")
    p.add_argument("--batch", type=int, default=1, help="readings per load message (default 1)")
    p.add_argument("--seconds", type=float, default=30, help="length of the run (default 30 s)")
    p.add_argument("--probe-interval", type=float, default=0.1, help="seconds between probes (default 0.1)")
    p.add_argument("--procs", type=int, default=1, help="load publisher processes (default 1)")
    p.add_argument("--json", metavar="FILE", help="also write the figures, and each probe's latency, as JSON")
    p.set_defaults(handler=run_bench)


def run_bench(args: argparse.Namespace, settings: Any) -> int:
    # The benchmark drives processes and waits; it blocks this loop on purpose.
    from pantau.supervisor import sigterm_as_interrupt

    with sigterm_as_interrupt():
        return _run(args)


class _Listener:
    """Alert events on pantau/v1/probe/alerts, with their arrival times."""

    def __init__(self, host: str, port: int) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.events: list[tuple[float, dict[str, Any]]] = []
        self.subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="pantau-bench-listener")
        self.client.on_message = lambda _c, _u, msg: self.events.append((time.time(), json.loads(msg.payload)))
        self.client.on_subscribe = lambda *_a: self.subscribed.set()
        self.client.on_connect = lambda c, *_a: c.subscribe(f"pantau/v1/{PROBE_CITY}/alerts", qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _run(args: argparse.Namespace) -> int:
    import asyncio

    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    from pantau.domain import Sensor
    from pantau.embedded import EmbeddedMosquitto, EmbeddedPostgres
    from pantau.settings import StoreSettings
    from pantau.store import Store
    from pantau.telemetry import HostCpu
    from simulators.load import LoadConfig, LoadReport, load_sensors, run_load

    workdir = Path(tempfile.mkdtemp(prefix="pantau-bench-rules-"))
    pg = EmbeddedPostgres(workdir / "pg")
    mq = EmbeddedMosquitto(workdir / "mq")
    procs: list[subprocess.Popen[bytes]] = []
    n_probes = int(args.seconds / args.probe_interval) + 2
    print(f"private PostgreSQL and mosquitto under {workdir}", file=sys.stderr)
    try:
        pg.start()
        mq.start()

        async def prepare() -> None:
            async with Store.open(pg.url, StoreSettings(pool_max_size=2)) as store:
                await store.migrate()
                await store.upsert_sensors(load_sensors(args.sensors))
                await store.upsert_sensors(
                    Sensor(id=f"{PROBE_PREFIX}-{i:05d}", kind="air", city=PROBE_CITY)  # type: ignore[arg-type]
                    for i in range(n_probes + _WARM_UP_TRIES)
                )

        asyncio.run(prepare())
        pack = workdir / "rules.yaml"
        pack.write_text(yaml.safe_dump(bench_rules(args.rules), sort_keys=False))
        (workdir / "none.toml").write_text("")
        env = {
            **os.environ,
            "PANTAU_CONFIG": str(workdir / "none.toml"),
            "PANTAU_DATABASE_URL": pg.url,
            "PANTAU_MQTT_URL": mq.url,
            "PANTAU_INGEST_METRICS_PORT": "-1",
            "PANTAU_RULES_FILE": str(pack),
        }
        for name in ("ingest", "rules"):
            log = (workdir / f"{name}.log").open("wb")
            procs.append(subprocess.Popen([sys.executable, "-m", "pantau", name], env=env, stdout=log, stderr=log))
        listener = _Listener("127.0.0.1", mq.port)
        probe = paho.Client(CallbackAPIVersion.VERSION2, client_id="pantau-bench-probe")
        probe.connect("127.0.0.1", mq.port)
        probe.loop_start()

        def publish(i: int, value: float) -> float:
            t = time.time()
            sid = f"{PROBE_PREFIX}-{i:05d}"
            probe.publish(f"pantau/v1/{PROBE_CITY}/air/{sid}", b'{"ts":%.6f,"pm25":%.1f}' % (t, value), qos=1)
            return t

        # Warm-up: the whole chain answers before the clock starts (ingest may not have subscribed
        # yet, so probe again every 2 s, each time as a new station).
        if not listener.subscribed.wait(30):
            raise RuntimeError("listener did not subscribe")
        for k in range(_WARM_UP_TRIES):
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"a component exited; see {workdir}/*.log")
            publish(n_probes + k, _RAISE_VALUE)
            deadline = time.monotonic() + 2.0
            while not listener.events and time.monotonic() < deadline:
                time.sleep(0.05)
            if listener.events:
                break
        else:
            raise RuntimeError(f"no alert within {2 * _WARM_UP_TRIES} s of warm-up probes; see {workdir}/*.log")
        time.sleep(0.5)
        listener.events.clear()
        print(
            f"stack ready; {args.rate:,.0f} readings/s from {args.sensors:,} stations for {args.seconds:.0f} s,"
            f" {args.rules} rules each, a probe every {args.probe_interval * 1000:.0f} ms",
            file=sys.stderr,
        )

        report: list[LoadReport] = []
        cfg = LoadConfig(
            host="127.0.0.1",
            port=mq.port,
            rate=args.rate,
            duration_s=args.seconds,
            procs=args.procs,
            batch=args.batch,
            sensors=args.sensors,
        )
        loader = threading.Thread(target=lambda: report.append(run_load(cfg)), daemon=True)
        cpu = HostCpu.now()
        loader.start()
        time.sleep(1.0)  # let the load reach its rate
        sent: dict[tuple[str, str], float] = {}
        start = time.monotonic()
        i = 0
        clears: list[tuple[float, int]] = []
        while time.monotonic() - start < args.seconds - 2 * _CLEAR_AFTER_S:
            sent[(f"{PROBE_PREFIX}-{i:05d}", "opened")] = publish(i, _RAISE_VALUE)
            clears.append((time.monotonic() + _CLEAR_AFTER_S, i))
            while clears and clears[0][0] <= time.monotonic():
                _, j = clears.pop(0)
                sent[(f"{PROBE_PREFIX}-{j:05d}", "resolved")] = publish(j, _CLEAR_VALUE)
            i += 1
            time.sleep(max(0.0, start + i * args.probe_interval - time.monotonic()))
        for when, j in clears:
            time.sleep(max(0.0, when - time.monotonic()))
            sent[(f"{PROBE_PREFIX}-{j:05d}", "resolved")] = publish(j, _CLEAR_VALUE)
        loader.join()
        busy, steal = HostCpu.share_since(cpu) or (None, None)
        wait_until = time.monotonic() + 10
        while time.monotonic() < wait_until and len(listener.events) < len(sent):
            time.sleep(0.1)
        listener.close()
        probe.loop_stop()
        probe.disconnect()

        to_event, to_commit = [], []
        timeline: list[tuple[float, float]] = []  # (publish s after the first probe, ms to the event)
        first_sent = min(sent.values(), default=0.0)
        seen: set[tuple[str, str]] = set()
        for arrived, doc in listener.events:
            key = (doc["alert"]["sensor_id"], doc["event"]["kind"])
            if key in sent and key not in seen:
                seen.add(key)
                to_event.append(arrived - sent[key])
                to_commit.append(datetime.fromisoformat(doc["event"]["at"]).timestamp() - sent[key])
                timeline.append((round(sent[key] - first_sent, 3), round((arrived - sent[key]) * 1000, 1)))
        load = report[0] if report else LoadReport()
        figures = {
            "load_readings_per_s": round(load.rate),
            "sensors": args.sensors,
            "rules_per_reading": args.rules,
            "probes_sent": len(sent),
            "events_received": len(seen),
            "missing": len(sent) - len(seen),
            **_percentiles("publish_to_event_ms", to_event),
            **_percentiles("publish_to_commit_ms", to_commit),
            # How busy the machine was during the load, and how much of its CPU the hypervisor
            # took: a run with steal is no measure of the code (pantau.telemetry.HostCpu).
            "host_cpu_busy_pct": None if busy is None else round(busy, 1),
            "host_cpu_steal_pct": None if steal is None else round(steal, 1),
        }
        print(json.dumps(figures, indent=2))
        if args.json:  # with every probe's latency in publish order, to see when the tail happened
            doc = figures | {"probes": sorted(timeline)}
            Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        ok = figures["missing"] == 0
        if not ok:
            print(f"events missing; logs kept in {workdir}", file=sys.stderr)
        return 0 if ok else 1
    finally:
        stop(procs)
        mq.stop()
        pg.stop()
        # The database is big; the logs are small and kept for a look after a failed run.
        shutil.rmtree(workdir / "pg", ignore_errors=True)


def _percentiles(name: str, values: list[float]) -> dict[str, float | None]:
    if not values:
        return {f"{name}_p50": None, f"{name}_p99": None, f"{name}_max": None}
    a = np.asarray(values) * 1000
    return {
        f"{name}_p50": round(float(np.percentile(a, 50)), 1),
        f"{name}_p95": round(float(np.percentile(a, 95)), 1),
        f"{name}_p99": round(float(np.percentile(a, 99)), 1),
        f"{name}_max": round(float(a.max()), 1),
    }
