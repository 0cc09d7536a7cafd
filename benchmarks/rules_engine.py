"""Rule engine evaluation cost per reading: a simulated fleet through the default rule pack.

    .venv/bin/python benchmarks/rules_engine.py [--sensors 10000] [--hours 2] [--batch 2000]

Readings come from the simulators (fleet scaled to --sensors, flash-flood and rush-hour scenario,
5-minute reports), decoded as ingest decodes them and cut into batches of --batch readings. As the
rule worker does, each batch carries its named rejections and its arrival time (the receive time),
and `tick` runs on that clock. Only `Engine.evaluate` and `Engine.tick` (once per 5-minute tick) are
timed. Prints the cost per reading and per reading × applicable rule (out_of_range checks read
rejections, not readings, and are not applicable rules here). No timing is asserted anywhere: this
is for docs/performance.md.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from ingest.decode import Decoder
from pantau.domain import Reason
from pantau.metrics import SensorKind
from pantau.readings import Reading, Rejection
from pantau.rulepack.config import load_rules
from rules.engine import Engine
from rules.signals import Signal
from simulators.engine import SimConfig, Simulation
from simulators.fleet import load_fleet, scale_fleet
from simulators.scenarios import load_scenario

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sensors", type=int, default=10_000)
    parser.add_argument("--hours", type=float, default=2.0, help="event time to simulate")
    parser.add_argument("--batch", type=int, default=2000, help="readings per evaluated batch")
    parser.add_argument("--fleet", default="sampit")
    args = parser.parse_args()

    fleet = scale_fleet(load_fleet(args.fleet), args.sensors, seed=1)
    sensors = {s.id: s for s in fleet.sensors}
    rules = load_rules(ROOT / "deploy" / "rules.yaml")
    engine = Engine(rules, sensors)
    # Local 12:00 on a weekday: afternoon storms and the evening rush within a few hours.
    start = datetime(2024, 3, 4, 12, tzinfo=timezone(timedelta(hours=7))).timestamp()
    sim = Simulation(
        fleet,
        load_scenario("flash-flood+rush-hour-jam"),
        SimConfig(start=start, duration_s=args.hours * 3600, step_s=300, seed=1),
        faults={},
    )
    decoder = Decoder(max_payload_bytes=65536, max_future_s=300, retention_s=3650 * 86400)

    print(f"generating {args.hours:g} h of readings from {len(sensors)} sensors ...", flush=True)
    ticks: list[tuple[float, list[Reading], list[Rejection]]] = []
    for tick in sim.ticks():
        rows: list[Reading] = []
        named: list[Rejection] = []
        for topic, payload in tick.messages:
            _, _, _city, kind, sensor_id = topic.split("/")
            rejected: list[tuple[Reason, str]] = []
            decoder.decode(payload, sensor_id, SensorKind(kind), tick.t + 1, rows, rejected)
            named += [(tick.t + 1, sensor_id, reason.value) for reason, _detail in rejected]
        ticks.append((tick.t + 1, rows, named))

    readings = sum(len(rows) for _, rows, _ in ticks)
    applicable = sum(len(engine.route(s)) for s in sensors.values())
    out: list[Signal] = []
    elapsed = 0.0
    for arrived, rows, named in ticks:
        t0 = time.perf_counter()
        for i in range(0, max(len(rows), 1), args.batch):
            rejections = named if i == 0 else []
            out.extend(engine.evaluate(rows[i : i + args.batch], rejections, arrived=arrived))
        out.extend(engine.tick(arrived))
        elapsed += time.perf_counter() - t0

    per_reading_us = elapsed / readings * 1e6
    rules_per_sensor = applicable / len(sensors)
    print(f"rules: {len(rules)} in the pack, {len(engine.evaluators)} evaluated")
    print(f"sensors: {len(sensors)}, applicable evaluated rules per sensor: {rules_per_sensor:.1f}")
    print(f"readings: {readings} in {len(ticks)} ticks, batches of {args.batch}; transitions: {len(out)}")
    print(f"engine time: {elapsed:.2f} s → {per_reading_us:.2f} µs per reading, "
          f"{per_reading_us / rules_per_sensor:.2f} µs per reading × applicable rule, "
          f"{readings / elapsed:,.0f} readings/s on one core")  # fmt: skip


if __name__ == "__main__":
    main()
