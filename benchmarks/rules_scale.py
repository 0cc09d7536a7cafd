"""Rule engine at the load target's scale: 10,000 sensors reporting pm25 at 1 Hz, 20 rules each.

    .venv/bin/python benchmarks/rules_scale.py [--sensors 10000] [--rules 20] [--seconds 180]

The pack is `benchmarks.bench_rules.bench_rules` (ISPU over a 24 h window, absence, stuck, a rate of change and
plain and aggregated thresholds, none met by this load), the sensors `simulators.load`'s. Every
sensor reports once per event-time second (10,000 readings/s), values a noisy level around 25 µg/m³,
encoded and decoded as the outbox carries them and evaluated with `arrived`, as the rule worker
does. Event time runs `--seconds` in batches of 5,000 readings (half a second of the fleet; the
first 20 s and the last 10 s are also timed in batches of 500), then the state a checkpoint
writes is measured: `state()`, msgpack encode, size, decode and `restore` into a new engine.
Prints figures; asserts nothing (docs/rules.md, "Evaluation", quotes them).
"""

from __future__ import annotations

import argparse
import time

import msgspec
import numpy as np

from benchmarks.bench_rules import bench_rules
from pantau.outbox import decode_outbox, outbox_payload
from pantau.rulepack.config import parse_rules
from rules.engine import Engine
from simulators.load import load_sensors

T0 = 1_700_000_000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sensors", type=int, default=10_000)
    parser.add_argument("--rules", type=int, default=20)
    parser.add_argument("--seconds", type=int, default=180, help="event time at 1 Hz per sensor")
    args = parser.parse_args()

    sensors = {s.id: s for s in load_sensors(args.sensors)}
    ids = sorted(sensors)
    engine = Engine(parse_rules(bench_rules(args.rules)), sensors)
    rng = np.random.default_rng(1)
    n = len(ids)

    def batch(first: int, size: int) -> bytes:
        """Readings first .. first + size of the fleet's 1 Hz stream, as the outbox carries them."""
        k = np.arange(first, first + size)
        values = np.round(np.abs(25.0 + 8.0 * rng.standard_normal(size)), 1)
        rows = [(T0 + int(j) / n, ids[int(j) % n], "pm25", float(v)) for j, v in zip(k, values, strict=True)]
        return outbox_payload(rows, [])

    timed: dict[int, list[float]] = {500: [0.0, 0], 5000: [0.0, 0]}
    first = 0
    end = args.seconds * n
    while first < end:
        # Batches of 500 for the first 20 s (series being created) and the last 10 s, else 5,000.
        size = 500 if first < 20 * n or first >= end - 10 * n else 5000
        readings, rejections = decode_outbox(batch(first, size))
        t = time.perf_counter()
        engine.evaluate(readings, rejections, arrived=T0 + first / n)
        timed[size][0] += time.perf_counter() - t
        timed[size][1] += size
        first += size
    for size, (elapsed, count) in timed.items():
        print(f"batches of {size}: {elapsed / count * 1e6:.1f} µs/reading over {count:,} readings")

    t = time.perf_counter()
    state = engine.state()
    t_state = time.perf_counter() - t
    t = time.perf_counter()
    blob = msgspec.msgpack.encode(state)
    t_encode = time.perf_counter() - t
    t = time.perf_counter()
    decoded = msgspec.msgpack.decode(blob)
    t_decode = time.perf_counter() - t
    fresh = Engine(parse_rules(bench_rules(args.rules)), sensors)
    t = time.perf_counter()
    fresh.restore(decoded)
    t_restore = time.perf_counter() - t
    print(
        f"after {args.seconds} s at 1 Hz: state() {t_state:.2f} s, encode {t_encode:.2f} s,"
        f" {len(blob) / 1e6:.1f} MB; decode {t_decode:.2f} s, restore {t_restore:.2f} s"
    )
    sizes = {rule: len(msgspec.msgpack.encode(v["series"])) // 1000 for rule, v in state["rules"].items()}
    print("kB per rule:", {rule: kb for rule, kb in sizes.items() if kb})
    rest = {k: len(msgspec.msgpack.encode(v)) // 1000 for k, v in state.items() if k != "rules"}
    print("kB engine-wide:", {k: kb for k, kb in rest.items() if kb})


if __name__ == "__main__":
    main()
