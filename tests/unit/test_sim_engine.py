"""The simulation stream: payloads ingest accepts, byte-for-byte determinism, fault rates and log."""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from ingest.decode import Decoder
from pantau.domain import Reason
from pantau.metrics import SensorKind
from simulators.engine import SimConfig, Simulation
from simulators.faults import EPISODE_FAULTS, FAULTS, FaultLog, parse_faults
from simulators.fleet import load_fleet, scale_fleet
from simulators.scenarios import load_scenario

START = datetime(2024, 3, 4, tzinfo=timezone(timedelta(hours=7))).timestamp()
DECODER = Decoder(max_payload_bytes=65536, max_future_s=300, retention_s=3650 * 86400)


def _decode(topic: str, payload: bytes, received: float) -> tuple[list, list]:
    _, _, _city, kind, sensor_id = topic.split("/")
    rows: list = []
    rejections: list = []
    DECODER.decode(payload, sensor_id, SensorKind(kind), received, rows, rejections)
    return rows, rejections


def _run(fmt: str = "json", faults: dict[str, float] | None = None, seed: int = 7, n: int | None = None):
    fleet = load_fleet("sampit")
    if n:
        fleet = scale_fleet(fleet, n, seed=seed)
    log = io.StringIO()
    sim = Simulation(
        fleet,
        load_scenario("flash-flood+rush-hour-jam"),
        SimConfig(start=START, duration_s=86400, step_s=300, seed=seed, fmt=fmt),
        faults=faults or {},
        fault_log=FaultLog(log),
    )
    ticks = list(sim.ticks())
    return sim, ticks, log.getvalue()


@pytest.mark.parametrize("fmt", ["json", "senml"])
def test_every_payload_is_accepted_by_ingest_and_counts_match(fmt: str) -> None:
    sim, ticks, _ = _run(fmt)
    stored = 0
    for tick in ticks:
        for topic, payload in tick.messages:
            rows, rejections = _decode(topic, payload, tick.t + 1)
            assert rejections == [], (topic, payload, rejections)
            assert all(r[0] <= tick.t for r in rows)
            stored += len(rows)
    n_sensors = len(sim.fleet.sensors)
    assert sim.stats.messages == n_sensors * 288
    assert stored == sim.stats.readings
    first = ticks[0].messages[0][1]
    assert first.startswith(b'{"ts":' if fmt == "json" else b'[{"bn":"SPT-')


def test_same_seed_gives_the_same_bytes_and_another_seed_does_not() -> None:
    everything = dict.fromkeys(FAULTS, 0.005)
    _, a, log_a = _run("senml", everything, seed=3)
    _, b, log_b = _run("senml", everything, seed=3)
    _, c, _ = _run("senml", everything, seed=4)
    assert [t.messages for t in a] == [t.messages for t in b]
    assert log_a == log_b and log_a
    assert [t.messages for t in a] != [t.messages for t in c]


def test_faults_happen_at_their_rates_and_are_in_the_side_log() -> None:
    rates = {name: (0.002 if name in EPISODE_FAULTS else 0.01) for name in FAULTS}
    sim, _, log = _run("json", rates, n=200)
    logged = Counter(json.loads(line)["fault"] for line in log.splitlines())
    stats = sim.faults.stats
    for name in FAULTS:
        n, k, p = stats.opportunities[name], stats.injected[name], rates[name]
        assert n > 10_000, name
        # Within 4 binomial standard deviations of the configured rate.
        assert abs(k - n * p) <= 4 * math.sqrt(n * p * (1 - p)) + 2, (name, k, n * p)
        if name != "duplicate":  # a malformed message is not duplicated as well
            assert logged[name] == k, name
        else:
            assert abs(logged[name] - n * p) <= 4 * math.sqrt(n * p) + 2
    for line in log.splitlines()[:50]:
        entry = json.loads(line)
        assert set(entry) >= {"time", "sensor", "fault"}
        assert entry["time"].endswith("Z")


def test_malformed_and_unregistered_messages_are_what_ingest_rejects() -> None:
    sim, ticks, log = _run("json", {"malformed": 0.02, "unregistered": 0.01})
    reasons: Counter[str] = Counter()
    stored = 0
    ghosts = 0
    for tick in ticks:
        for topic, payload in tick.messages:
            if "-UNREG-" in topic:
                ghosts += 1
                continue
            rows, rejections = _decode(topic, payload, tick.t + 1)
            stored += len(rows)
            reasons.update(r[0] for r in rejections)
            assert len(rejections) <= 1
    assert sum(reasons.values()) == sim.stats.malformed > 20
    assert set(reasons) <= {Reason.MALFORMED_JSON, Reason.NON_FINITE}
    assert ghosts == sim.stats.unregistered > 10
    assert stored == sim.stats.readings
    ghost_ids = {json.loads(line)["sensor"] for line in log.splitlines() if '"unregistered"' in line}
    assert not ghost_ids & {s.id for s in sim.fleet.sensors}


def test_burst_sends_one_senml_pack_of_buffered_readings() -> None:
    sim, ticks, log = _run("json", {"burst": 0.01})
    packs = [p for t in ticks for _, p in t.messages if p.startswith(b"[")]
    assert packs and len(packs) == sum(1 for line in log.splitlines() if '"burst"' in line) - _unflushed(sim)
    for tick in ticks:
        for topic, payload in tick.messages:
            if payload.startswith(b"["):
                rows, rejections = _decode(topic, payload, tick.t + 1)
                assert not rejections
                assert len({r[0] for r in rows}) >= 4  # several buffered intervals in one pack


def _unflushed(sim: Simulation) -> int:
    return len(sim._buffer)


def test_clock_skew_and_stuck_and_out_of_order_change_what_is_sent() -> None:
    sim, ticks, log = _run("json", {"clock_skew": 0.01, "stuck": 0.01, "out_of_order": 0.02})
    late = 0
    for tick in ticks:
        for _topic, payload in tick.messages:
            ts = json.loads(payload)["ts"]
            if ts != tick.t:
                late += 1
    assert late > 0 and sim.stats.skewed_readings > 0
    faults = Counter(json.loads(line)["fault"] for line in log.splitlines())
    assert faults["clock_skew"] and faults["stuck"] and faults["out_of_order"]


def test_sensor_outage_silences_a_district() -> None:
    sim, ticks, log = _run_outage()
    district = sim.fleet.districts[0].name
    members = {s.topic for s in sim.fleet.sensors if s.district == district}
    hours = [(t.t - START) / 3600 for t in ticks]
    during = [t for t, h in zip(ticks, hours, strict=True) if 2.5 <= h <= 4.5]
    assert during and all(not (members & {m[0] for m in t.messages}) for t in during)
    assert '"outage"' in log


def _run_outage():
    fleet = load_fleet("sampit")
    log = io.StringIO()
    sim = Simulation(
        fleet,
        load_scenario("sensor-outage"),
        SimConfig(start=START, duration_s=8 * 3600, seed=1),
        faults={},
        fault_log=FaultLog(log),
    )
    return sim, list(sim.ticks()), log.getvalue()


def test_parse_faults_names_the_option() -> None:
    assert parse_faults("dropout=0.01,spike=0.5", {"malformed": 0.1}) == {
        "malformed": 0.1,
        "dropout": 0.01,
        "spike": 0.5,
    }
    for bad in ("dropout", "nosuch=0.1", "dropout=x", "dropout=2"):
        with pytest.raises(Exception, match="--faults"):
            parse_faults(bad)
