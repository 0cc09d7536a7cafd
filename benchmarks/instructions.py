"""CPU instructions per reading of pantau's hot paths, counted by valgrind's callgrind.

    .venv/bin/python benchmarks/instructions.py [engine] [senml] [single]

Seconds on a shared VM move by 2x between runs (CPU steal, neighbours); instruction counts repeat
to 0.1 %, so a change's effect on the code itself can be read off here when the timed benchmarks
cannot show it. Each workload runs in its own `valgrind --tool=callgrind` process with
instrumentation off during set-up and warm-up and on only around the measured part:

- engine: the rule engine at the load's shape (`benchmarks.bench_rules.bench_rules`, 20 rules; 2,000 load
  stations reporting pm25 at 1 Hz in batches of 1,000, as the outbox carries them), 10 s of
  event time to warm up, 5 s measured;
- senml: the decoder on 2,000 SenML packs of 50 traffic readings (the ingest benchmark's packs);
- single: the decoder on 50,000 one-reading JSON objects.

Needs valgrind (Debian package `valgrind`). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKLOADS = ("engine", "senml", "single")
T0 = 1_700_000_000.0


def _instrument(on: bool) -> None:
    switch = ["callgrind_control", "-i", "on" if on else "off", str(os.getpid())]
    subprocess.run(switch, check=True, capture_output=True)


def _engine() -> int:
    import numpy as np

    from benchmarks.bench_rules import bench_rules
    from pantau.outbox import decode_outbox, outbox_payload
    from pantau.rulepack.config import parse_rules
    from rules.engine import Engine
    from simulators.load import load_sensors

    n, warm_s, measured_s = 2000, 10, 5
    sensors = {s.id: s for s in load_sensors(n)}
    ids = sorted(sensors)
    engine = Engine(parse_rules(bench_rules(20)), sensors)
    rng = np.random.default_rng(1)
    batches = []
    for second in range(warm_s + measured_s):
        for half in (0, 1):
            first = second * n + half * n // 2
            values = np.round(np.abs(25.0 + 8.0 * rng.standard_normal(n // 2)), 1)
            rows = [(T0 + (first + k) / n, ids[(first + k) % n], "pm25", float(v)) for k, v in enumerate(values)]
            batches.append((decode_outbox(outbox_payload(rows, [])), T0 + first / n))
    for (readings, rejections), arrived in batches[: 2 * warm_s]:
        engine.evaluate(readings, rejections, arrived=arrived)
    _instrument(True)
    for (readings, rejections), arrived in batches[2 * warm_s :]:
        engine.evaluate(readings, rejections, arrived=arrived)
    _instrument(False)
    return measured_s * n


def _decoder(messages: list[tuple[str, bytes]], readings: int) -> int:
    from ingest.decode import Decoder
    from pantau.metrics import SensorKind
    from pantau.readings import Problem, Reading

    decoder = Decoder(max_payload_bytes=65536, max_future_s=300, retention_s=365 * 86400)
    now = time.time()
    rows: list[Reading] = []
    rejections: list[Problem] = []
    for sid, payload in messages[:100]:  # warm-up: the names the decoder remembers
        decoder.decode(payload, sid, SensorKind.TRAFFIC, now, rows, rejections)
    rows.clear()
    _instrument(True)
    for sid, payload in messages:
        decoder.decode(payload, sid, SensorKind.TRAFFIC, now, rows, rejections)
    _instrument(False)
    if rejections or len(rows) != readings:
        raise RuntimeError(f"decoded {len(rows)} of {readings} readings, {len(rejections)} rejections")
    return readings


def _senml() -> int:
    pack, count = 50, 2000
    tail = b"".join(b',{"n":"vehicle_count","t":%d,"v":%d}' % (k, k % 53) for k in range(1, pack))
    bt = int(time.time()) - 86400
    messages = [
        (f"LT-{i % 1000:05d}", b'[{"bn":"LT-%05d:","bt":%d,"n":"vehicle_count","v":%d}' % (i % 1000, bt + i, i % 53))
        for i in range(count)
    ]
    return _decoder([(sid, head + tail + b"]") for sid, head in messages], count * pack)


def _single() -> int:
    count = 50_000
    ts = time.time() - 60
    messages = [
        (f"LT-{i % 1000:05d}", b'{"ts":%.6f,"vehicle_count":%d}' % (ts + i / 1000, i % 97)) for i in range(count)
    ]
    return _decoder(messages, count)


def _child(workload: str, result: Path) -> None:
    readings = {"engine": _engine, "senml": _senml, "single": _single}[workload]()
    result.write_text(str(readings))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    choices = ", ".join(WORKLOADS)
    parser.add_argument("workloads", nargs="*", metavar="WORKLOAD", help=f"some of {choices} (default: all)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, Path(args.result))
        return
    unknown = sorted(set(args.workloads) - set(WORKLOADS))
    if unknown:
        parser.error(f"unknown workload {', '.join(unknown)}: choose from {', '.join(WORKLOADS)}")
    if shutil.which("valgrind") is None or shutil.which("callgrind_annotate") is None:
        raise SystemExit("needs valgrind: apt-get install valgrind")
    with tempfile.TemporaryDirectory(prefix="pantau-instructions-") as tmp:
        for workload in args.workloads or WORKLOADS:
            out, result = Path(tmp) / f"{workload}.out", Path(tmp) / f"{workload}.readings"
            print(f"{workload}: running under callgrind ...", file=sys.stderr)
            subprocess.run(
                [
                    "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                    sys.executable, __file__, "--child", workload, "--result", str(result),
                ],
                check=True,
                capture_output=True,
            )  # fmt: skip
            annotated = subprocess.run(["callgrind_annotate", str(out)], check=True, capture_output=True, text=True)
            total = next(line for line in annotated.stdout.splitlines() if "PROGRAM TOTALS" in line)
            instructions = int(total.split()[0].replace(",", ""))
            readings = int(result.read_text())
            print(f"{workload:<8} {instructions / readings:>10,.0f} instructions per reading ({readings:,} readings)")


if __name__ == "__main__":
    main()
