"""`pantau simulate`: run a city fleet, replay a recording, or generate load.

pantau simulate --fleet CITY|FILE --scenario NAME [--sensors N] [--start T] [--duration D]
                [--speed X|max] [--seed N] [--out mqtt|FILE.jsonl] [--format json|senml]
                [--qos 0|1] [--step D] [--faults NAME=RATE,...] [--fault-log FILE]
                [--write-manifest FILE]
pantau simulate replay FILE [--speed X|max] [--qos 0|1]
pantau simulate load --rate R|max --duration D [--procs K] [--batch N] [--sensors N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from pathlib import Path
from typing import IO, Any

from pantau.errors import ConfigError
from pantau.service import Commands
from pantau.settings import Settings
from simulators.scenarios import parse_duration


def register(sub: Commands) -> None:
    """Add the `simulate` command (and its `replay` and `load` forms) to pantau's CLI."""
    p = sub.add_parser(
        "simulate",
        help="simulate a city's sensors over MQTT or into a file; replay; generate load",
        description="Simulate a city fleet under a scenario (see docs/simulators.md).",
    )
    p.add_argument("--fleet", help="reference city (kotamobagu, mojokerto, sampang, sampit) or a fleet YAML file")
    p.add_argument("--scenario", default="normal-day", help="normal-day, rush-hour-jam, haze-episode, flash-flood, "
                   "sensor-outage, a YAML file, or several joined with '+' (default normal-day)")  # fmt: skip
    p.add_argument("--sensors", type=int, help="scale the fleet to N sensors spread over its districts")
    p.add_argument("--start", default="now", help="event time to start: now, --start=-2d, 2024-09-01 (local "
                   "midnight) or 2024-09-01T06:00+07:00 (default now)")  # fmt: skip
    p.add_argument("--duration", default="24h", help="event time to simulate, e.g. 90m, 24h, 3d (default 24h)")
    p.add_argument("--speed", default="1", help="event seconds per wall second, or max (default 1 = real time)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same output")
    p.add_argument("--out", default="mqtt", help="mqtt (PANTAU_MQTT_URL or `pantau up`) or FILE.jsonl")
    p.add_argument("--format", dest="fmt", choices=["json", "senml"], default="json", help="payload form")
    p.add_argument("--qos", type=int, choices=[0, 1], default=1)
    p.add_argument("--step", default="5m", help="reporting interval of every sensor (default 5m)")
    p.add_argument("--faults", help="fault rates, e.g. dropout=0.002,malformed=0.001 (see docs/simulators.md)")
    p.add_argument("--fault-log", help="JSONL side log of injected faults (default: next to a JSONL --out)")
    p.add_argument("--write-manifest", metavar="FILE", help="write the (scaled) fleet manifest to FILE and exit")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(handler=cmd_simulate)
    modes = p.add_subparsers(dest="simulate_mode", metavar="MODE")

    r = modes.add_parser("replay", help="publish a recorded JSONL file at its own pace or faster")
    r.add_argument("file")
    r.add_argument("--speed", dest="replay_speed", default="1", help="multiple of the recorded pace, or max")
    r.add_argument("--qos", dest="replay_qos", type=int, choices=[0, 1], default=1)
    r.set_defaults(handler=cmd_replay)

    lp = modes.add_parser("load", help="hold a target rate of readings/s with several processes")
    lp.add_argument("--rate", required=True, help="readings per second in total, or max")
    lp.add_argument("--duration", dest="load_duration", required=True, help="how long, e.g. 30s")
    lp.add_argument("--procs", type=int, default=1, help="publishing processes (default 1)")
    lp.add_argument("--batch", type=int, default=1, help="readings per message; > 1 sends SenML packs (default 1)")
    lp.add_argument("--sensors", dest="load_sensors", type=int, default=1000, help="synthetic sensors (default 1000)")
    lp.add_argument("--qos", dest="load_qos", type=int, choices=[0, 1], default=1)
    lp.add_argument("--write-manifest", dest="load_manifest", metavar="FILE",
                    help="write the synthetic sensors as a manifest to FILE and exit")  # fmt: skip
    lp.set_defaults(handler=cmd_load)


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _positive_int(key: str, value: int | None, low: int = 1) -> None:
    if value is not None and value < low:
        raise ConfigError(key, f"must be at least {low}, got {value}")


async def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from simulators.engine import SimConfig, Simulation
    from simulators.faults import FaultLog, parse_faults
    from simulators.fleet import load_fleet, scale_fleet
    from simulators.output import JsonlSink, MqttSink, Progress, mqtt_endpoint, parse_speed, parse_start
    from simulators.output import wait_for_event_time as wait_due
    from simulators.scenarios import load_scenario

    if not args.fleet:
        raise ConfigError("--fleet", "required: a reference city (kotamobagu, mojokerto, sampang, sampit) or a file")
    fleet = load_fleet(args.fleet)
    _positive_int("--sensors", args.sensors)
    if args.sensors:
        fleet = scale_fleet(fleet, args.sensors, seed=args.seed)
    if args.write_manifest:
        fleet.write_manifest(Path(args.write_manifest))
        print(f"wrote {len(fleet.sensors)} sensors of {fleet.city} to {args.write_manifest}")
        return 0
    scenario = load_scenario(args.scenario)
    faults = parse_faults(args.faults, scenario.faults)
    duration = parse_duration("--duration", args.duration)
    step = parse_duration("--step", args.step)
    if not 1 <= step <= 3600:
        raise ConfigError("--step", "must be between 1s and 1h")
    if duration < step:
        raise ConfigError("--duration", f"must be at least one --step ({args.step})")
    speed = parse_speed(args.speed)
    start = parse_start(args.start, fleet.utc_offset_h)
    if speed is None and start + duration > time.time() + 300:
        print(
            "pantau simulate: warning: at --speed max readings run ahead of the clock; ingest rejects those more "
            "than 300 s in the future (future_timestamp)",
            file=sys.stderr,
        )
    if args.out == "mqtt":
        endpoint = mqtt_endpoint(settings)
        sink: Any = MqttSink(endpoint, qos=args.qos, client_id=f"pantau-sim-{fleet.city}-{time.time_ns() % 10**9}")
        where = f"mqtt://{endpoint.host}:{endpoint.port}"
        log_path = Path(args.fault_log) if args.fault_log else None
    else:
        out = Path(args.out)
        if out.suffix.lower() != ".jsonl":
            raise ConfigError("--out", f"expected mqtt or a .jsonl file, got {args.out!r}")
        sink = JsonlSink(out)
        where = str(out)
        log_path = Path(args.fault_log) if args.fault_log else out.with_suffix(".faults.jsonl")
    log_file: IO[str] | None = log_path.open("w", encoding="utf-8") if log_path else None
    sim = Simulation(
        fleet,
        scenario,
        SimConfig(start=start, duration_s=duration, step_s=step, seed=args.seed, fmt=args.fmt),
        faults=faults,
        fault_log=FaultLog(log_file),
    )
    progress = Progress(utc_offset_h=fleet.utc_offset_h, enabled=not args.quiet, clock=start)
    stop = _stop_event()
    wall0 = time.monotonic()
    print(
        f"simulating {fleet.name} ({len(fleet.sensors)} sensors), scenario {scenario.name}, "
        f"{args.duration} from {progress_clock(start, fleet.utc_offset_h)} at speed {args.speed} → {where}",
        file=sys.stderr,
    )
    ticks_sent = 0
    try:
        for tick in sim.ticks():
            await wait_due(tick.t, t0=start, wall0=wall0, speed=speed, stop=stop)
            if stop.is_set():
                break
            sink.send(tick.t, tick.messages)
            if speed is not None:
                sink.flush()  # paced: every tick is acknowledged before the next is due
            # Counted here, not from sim.stats: a tick computed but cut short by Ctrl-C was not sent.
            if tick.index <= sim.n_ticks:  # the trailing release of out-of-order messages is no tick
                ticks_sent += 1
            progress.sent += len(tick.messages)
            progress.readings += tick.readings
            progress.faults = sum(sim.faults.stats.injected.values())
            progress.clock = tick.t
            progress.update()
    finally:
        progress.finish()
        with contextlib.suppress(Exception):
            sink.close()
        if log_file is not None:
            log_file.close()
    verb = "interrupted after sending" if stop.is_set() else "sent"
    injected = {k: v for k, v in sim.faults.stats.injected.items() if v}
    print(
        f"{verb} {progress.sent:,} messages ({progress.readings:,} readings) over {ticks_sent} ticks in "
        f"{time.monotonic() - wall0:.1f} s; event time up to {progress_clock(progress.clock, fleet.utc_offset_h)}"
        + (f"; faults {injected}" if injected else "")
        + (f"; fault log {log_path}" if log_path and injected else ""),
        file=sys.stderr,
    )
    return 130 if stop.is_set() else 0


def progress_clock(t: float, offset_h: float) -> str:
    from simulators.output import local_clock

    return local_clock(t, offset_h)


async def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from simulators.output import MqttSink, Progress, mqtt_endpoint, parse_speed, read_recording
    from simulators.output import wait_for_event_time as wait_due

    path = Path(args.file)
    speed = parse_speed(args.replay_speed)
    endpoint = mqtt_endpoint(settings)
    # The whole file is checked before anything is published: a bad line 90,000 must not leave
    # the first 89,999 messages on the broker. Streaming it twice keeps memory flat.
    for _ in read_recording(path):
        pass
    groups = read_recording(path)
    sink = MqttSink(endpoint, qos=args.replay_qos, client_id=f"pantau-replay-{time.time_ns() % 10**9}")
    stop = _stop_event()
    progress = Progress()
    wall0 = time.monotonic()
    t0: float | None = None
    try:
        for t, messages in groups:
            if t0 is None:
                t0 = t
            await wait_due(t, t0=t0, wall0=wall0, speed=speed, stop=stop)
            if stop.is_set():
                break
            sink.send(t, messages)
            if speed is not None:
                sink.flush()
            progress.sent += len(messages)
            progress.clock = t
            progress.update()
    finally:
        progress.finish()
        sink.close()
    verb = "interrupted after replaying" if stop.is_set() else "replayed"
    print(f"{verb} {progress.sent:,} messages from {path} in {time.monotonic() - wall0:.1f} s", file=sys.stderr)
    return 130 if stop.is_set() else 0


async def cmd_load(args: argparse.Namespace, settings: Settings) -> int:
    from simulators.load import LoadConfig, load_sensors, run_load
    from simulators.output import mqtt_endpoint

    _positive_int("--procs", args.procs)
    _positive_int("--batch", args.batch)
    _positive_int("--sensors", args.load_sensors)
    if args.batch > 1000:
        raise ConfigError("--batch", "at most 1000 readings per message (ingest's payload limit)")
    if args.load_manifest:
        from simulators.fleet import Fleet

        sensors = load_sensors(args.load_sensors)
        Fleet("loadtest", "load test", 7.0, (), (), tuple(sensors)).write_manifest(Path(args.load_manifest))
        print(f"wrote {len(sensors)} load sensors to {args.load_manifest}")
        return 0
    rate = None if args.rate.strip().lower() == "max" else _float("--rate", args.rate)
    duration = parse_duration("--duration", args.load_duration)
    if duration <= 0:
        raise ConfigError("--duration", "must be positive")
    if args.load_sensors < args.procs:
        raise ConfigError("--sensors", "need at least one sensor per process")
    endpoint = mqtt_endpoint(settings)
    host, port = endpoint.host, endpoint.port
    if endpoint.username is not None and args.procs > 1:
        # Each of pantau's accounts is bound to one client id: two processes would take turns.
        raise ConfigError("--procs", "on a secured broker the simulator account connects once: use --procs 1")
    cfg = LoadConfig(
        host=host,
        port=port,
        username=endpoint.username,
        password=endpoint.password,
        client_id=endpoint.client_id,
        rate=rate,
        duration_s=duration,
        procs=args.procs,
        batch=args.batch,
        sensors=args.load_sensors,
        qos=args.load_qos,
    )
    stop = _stop_event()
    loop = asyncio.get_running_loop()
    target = "max" if rate is None else f"{rate:,.0f}"
    print(
        f"load: {target} readings/s for {duration:g} s, {args.procs} process(es), {args.batch} reading(s)/message, "
        f"QoS {args.load_qos} → mqtt://{host}:{port}",
        file=sys.stderr,
    )

    def on_second(second: int, per_s: float, total: int) -> None:
        print(f"{second:>5} s  {per_s:>12,.0f} readings/s  {per_s / args.batch:>10,.0f} msg/s  total {total:,}",
              file=sys.stderr, flush=True)  # fmt: skip

    # run_load blocks (it polls worker counters); the loop keeps serving Ctrl-C meanwhile.
    report = await loop.run_in_executor(None, lambda: run_load(cfg, on_second=on_second, should_stop=stop.is_set))
    full = report.per_second[1:-1] or report.per_second
    print(
        f"{'interrupted: ' if report.interrupted else ''}acknowledged {report.readings:,} readings in "
        f"{report.messages:,} messages over {report.elapsed_s:.1f} s = {report.rate:,.0f} readings/s "
        f"({report.rate / args.batch:,.0f} msg/s); slowest full second {min(full) if full else 0:,.0f}/s",
        file=sys.stderr,
    )
    for err in report.errors:
        print(f"error: {err}", file=sys.stderr)
    if report.errors:
        return 1
    return 130 if report.interrupted else 0


def _float(key: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(key, f"expected a number, got {text!r}") from None
    if not value > 0:
        raise ConfigError(key, f"must be positive, got {text!r}")
    return value
