"""Aggregated thresholds over the engine's shared histories: every aggregate and comparison against
a brute-force oracle (the exact window of each reading), whatever the batching, across restarts,
and the sensors a bounded rule skips; and the registry swap (`Engine.set_sensors`)."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from typing import Any

import pytest

from pantau.domain import Sensor
from pantau.metrics import SensorKind
from pantau.readings import Reading
from pantau.rulepack.config import parse_rules
from rules.engine import Engine
from rules.signals import Signal, SignalKind, Skip
from rules.windows import History, Window, history_resolution, resolution_s
from tests.support import T0, continued

SIDS = [f"AQ-{i}" for i in range(6)]
AIR = {sid: Sensor(id=sid, kind=SensorKind.AIR, city="testkota", district="Barat") for sid in SIDS}

AGGREGATES: dict[str, Callable[[list[float]], float]] = {
    "mean": lambda xs: sum(xs) / len(xs),
    "sum": sum,
    "min": min,
    "max": max,
}
OPS: dict[str, Callable[[float, float], bool]] = {
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
}
CLEAR_OF = {">": "<", ">=": "<", "<": ">", "<=": ">"}


def rule(aggregate: str, op: str, value: float, clear: float, window: str, rule_id: str = "agg") -> dict[str, Any]:
    return {
        "id": rule_id,
        "kind": "threshold",
        "select": {"kind": "air"},
        "metric": "pm25",
        "aggregate": aggregate,
        "window": window,
        "op": op,
        "value": value,
        "clear": {"op": CLEAR_OF[op], "value": clear},
        "severity": "warning",
    }


def engine(*rules: dict[str, Any], sensors: dict[str, Sensor] = AIR) -> Engine:
    return Engine(parse_rules({"version": 1, "rules": list(rules)}), sensors)


def stream(seed: int, *, step: float, n: int) -> list[Reading]:
    """Every sensor at `step` seconds (jittered), mostly calm with excursions up and down."""
    rng = random.Random(seed)
    out: list[Reading] = []
    for sid in SIDS:
        level = rng.uniform(20, 40)
        for k in range(n):
            if rng.random() < 0.04:
                level = rng.choice([5.0, 30.0, 80.0, 120.0])
            out.append((T0 + k * step + rng.uniform(0, 0.3 * step), sid, "pm25", round(level + rng.gauss(0, 6), 1)))
    return sorted(out)


def oracle(readings: list[Reading], r: dict[str, Any], width: float) -> list[tuple[str, SignalKind, float]]:
    """Raise when the exact aggregate over (ts - width, ts] meets the trigger, clear when it meets
    the clear condition: no `for`, no slots."""
    agg, trigger, clear = AGGREGATES[r["aggregate"]], OPS[r["op"]], OPS[r["clear"]["op"]]
    out: list[tuple[str, SignalKind, float]] = []
    for sid in SIDS:
        mine = [(ts, v) for ts, s, _, v in readings if s == sid]
        active = False
        for ts, _ in mine:
            x = agg([v for t, v in mine if ts - width < t <= ts])
            if not active and trigger(x, r["value"]):
                active = True
                out.append((sid, SignalKind.RAISE, ts))
            elif active and clear(x, r["clear"]["value"]):
                active = False
                out.append((sid, SignalKind.CLEAR, ts))
    return sorted(out, key=lambda s: (s[2], s[0]))


def run(e: Engine, readings: list[Reading], sizes: list[int], *, restart_every: int = 0) -> list[Signal]:
    """Evaluate `readings` in batches of the given sizes (cycled); optionally restart from the
    exported state (through JSON) every `restart_every` batches."""
    out: list[Signal] = []
    i = k = 0
    while i < len(readings):
        size = sizes[k % len(sizes)]
        out += e.evaluate(readings[i : i + size])
        i, k = i + size, k + 1
        if restart_every and k % restart_every == 0:
            e = continued(e, Engine(e.rules, e.sensors))
    return out


def keyed(signals: list[Signal]) -> list[tuple[str, SignalKind, float]]:
    return sorted(((s.scope, s.kind, s.event_ts) for s in signals), key=lambda s: (s[2], s[0]))


@pytest.mark.parametrize("aggregate", ["mean", "min", "max", "sum"])
@pytest.mark.parametrize("op", [">", ">=", "<", "<="])
def test_every_aggregate_and_comparison_matches_the_exact_window(aggregate: str, op: str) -> None:
    # 30-second readings in a 10-minute window: slower than any resolution involved (the rule's
    # 9.4 s, the history's 8 s), so each reading is its own entry and the aggregate is exact.
    width = 600.0
    readings = stream(7, step=30.0, n=400)
    high = op in (">", ">=")
    if aggregate == "sum":
        value, clear = (1200.0, 900.0) if high else (500.0, 700.0)
    else:
        value, clear = (60.0, 45.0) if high else (15.0, 22.0)
    r = rule(aggregate, op, value, clear, "10m")
    expected = oracle(readings, r, width)
    assert len(expected) >= 6, "the stream must cross the threshold a few times"
    # One reading at a time, several per sensor per batch, and uneven batches with restarts.
    for sizes, restart in (([1], 0), ([len(SIDS) * 7], 0), ([1, 13, 50, 2], 3)):
        assert keyed(run(engine(r), readings, sizes, restart_every=restart)) == expected, (sizes, restart)


def test_rules_of_nearby_widths_share_one_history_and_far_ones_do_not() -> None:
    e = engine(
        rule("mean", ">", 60, 45, "10m", "a"),
        rule("mean", ">", 60, 45, "13m", "b"),
        rule("max", ">", 60, 45, "16m", "c"),
        rule("mean", ">", 60, 45, "20m", "d"),
        rule("mean", ">", 60, 45, "24h", "e"),
    )
    e.evaluate(stream(3, step=30.0, n=20))
    keys = sorted(e.state()["histories"])
    # 10–16 min: resolution 9.4–15 s → 8 s; 20 min: 18.75 s → 16 s; 24 h: the 60 s cap.
    assert keys == ["pm25@16", "pm25@60", "pm25@8"]
    assert history_resolution(600.0) == 8.0 <= resolution_s(600.0)
    assert history_resolution(86400.0) == 60.0


def test_a_bounded_rule_sees_only_sensors_with_a_reading_meeting_the_trigger_in_its_window() -> None:
    e = engine(rule("mean", ">", 60, 45, "10m"))
    ev = e.evaluators[0]
    calm = [(T0 + k * 30.0, sid, "pm25", 30.0) for k in range(30) for sid in SIDS]
    assert e.evaluate(calm) == []
    assert ev.wanted == {}  # no sensor has had a reading over 60
    # AQ-1 spikes once: the mean stays under 60, but AQ-1 is watched until the spike leaves
    # its window; the other sensors are never fed.
    assert e.evaluate([(T0 + 900.0, "AQ-1", "pm25", 200.0)] + [(T0 + 900.0, s, "pm25", 30.0) for s in SIDS[2:]]) == []
    assert ev.wanted == {"AQ-1": T0 + 900.0}
    assert e.evaluate([(T0 + 900.0 + k * 30.0, "AQ-1", "pm25", 30.0) for k in range(1, 21)]) == []
    assert ev.wanted == {}
    # A sensor not watched before: its first reading over 60 is fed with the whole window behind
    # it (kept by the history): 10 readings at 30 in (1230, 1830], then 400 → mean 700 / 11.
    out = e.evaluate([(T0 + 1530.0 + k * 30.0, "AQ-2", "pm25", 30.0 if k < 10 else 400.0) for k in range(11)])
    assert [(s.scope, s.kind, s.event_ts) for s in out] == [("AQ-2", SignalKind.RAISE, T0 + 1830.0)]
    assert out[0].value == pytest.approx(700.0 / 11)


def test_an_active_rule_clears_even_when_no_reading_in_its_window_meets_the_trigger() -> None:
    # min over 10 minutes > 50: raised by readings all over 50, cleared by the first under 40.
    e = engine(rule("min", ">", 50, 40, "10m"))
    up = [(T0 + k * 60.0, "AQ-1", "pm25", 70.0) for k in range(12)]
    assert [s.kind for s in e.evaluate(up)] == [SignalKind.RAISE]
    out = e.evaluate([(T0 + 720.0, "AQ-1", "pm25", 30.0)])
    assert [(s.kind, s.value) for s in out] == [(SignalKind.CLEAR, 30.0)]


def test_history_summary_answers_for_narrower_windows() -> None:
    h = History("pm25", 8.0)
    h.width_s = 1200.0
    ts = [T0 + k * 30.0 for k in range(60)]
    values = [float(k % 7) for k in range(60)]
    h.push("AQ-1", ts, values)
    w = h.windows["AQ-1"]
    now = ts[-1]
    for width in (300.0, 600.0, 1200.0):
        inside = [v for t, v in zip(ts, values, strict=True) if t > now - width]
        got = w.summary(now - width, extremes=True)
        assert (got.readings, got.total, got.low, got.high) == (len(inside), sum(inside), min(inside), max(inside))
    empty = w.summary(now + 1.0, extremes=True)
    assert (empty.readings, empty.total, empty.low, empty.high) == (0, 0.0, math.inf, -math.inf)
    # The history keeps its widest reader's window, at its own resolution.
    assert w.entries == 40
    assert Window.load(w.export(), 1200.0, 8.0).summary(now - 600.0) == w.summary(now - 600.0)


# -- the registry swap -----------------------------------------------------------------------------


def gauge(sid: str, river: str, siaga: tuple[float, float, float]) -> Sensor:
    s3, s2, s1 = siaga
    return Sensor(
        id=sid,
        kind=SensorKind.FLOOD,
        city="sampit",
        district="Baamang",
        metadata={"river": river, "siaga3_cm": s3, "siaga2_cm": s2, "siaga1_cm": s1},
    )


SIAGA = {
    "id": "siaga",
    "kind": "index_band",
    "index": "siaga",
    "select": {"kind": "flood"},
    "levels": {"waspada": "info", "siaga": "warning", "awas": "critical"},
}
ABSENT = {"id": "offline", "kind": "absence", "select": {"kind": "flood"}, "for": "15m", "severity": "warning"}


def test_set_sensors_is_what_a_new_engine_restored_from_the_state_would_do() -> None:
    before = {s.id: s for s in (gauge("WL-1", "mentaya", (100, 150, 200)), gauge("WL-2", "mentaya", (100, 150, 200)))}
    after = {s.id: s for s in (gauge("WL-1", "mentaya", (50, 80, 120)), gauge("WL-3", "mentaya", (100, 150, 200)))}
    rules = parse_rules({"version": 1, "rules": [SIAGA, ABSENT]})
    first = [(T0 + k * 300.0, sid, "water_level_cm", 90.0) for k in range(3) for sid in before]
    later = [
        (T0 + 900.0 + k * 300.0, sid, "water_level_cm", 90.0) for k in range(3) for sid in ("WL-1", "WL-2", "WL-3")
    ]

    swapped = Engine(rules, before)
    assert swapped.evaluate(first) == []
    restored = Engine(rules, after)
    restored.restore(json.loads(json.dumps(swapped.state())))
    swapped.set_sensors(after)

    got = [
        [(x.rule_id, x.scope, x.kind, x.event_ts) for x in e.evaluate(later) + e.tick(T0 + 3600.0)]
        for e in (swapped, restored)
    ]
    assert got[0] == got[1]
    # WL-1's new thresholds put 90 cm at Siaga; WL-3 joined (normal at 90 cm); both fall silent
    # after 1500 s. WL-2 left the registry: its readings are unknown and its silence no alert.
    assert got[0] == [
        ("siaga", "WL-1", SignalKind.RAISE, T0 + 900.0),
        ("offline", "WL-1", SignalKind.RAISE, T0 + 2400.0),
        ("offline", "WL-3", SignalKind.RAISE, T0 + 2400.0),
    ]
    assert swapped.stats.skipped[Skip.UNKNOWN_SENSOR] == 3
    assert swapped.state()["rules"] == restored.state()["rules"]
