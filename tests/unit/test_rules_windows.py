"""Trailing windows (rules.windows) and the engine's sparse per-series state: exact aggregates at
normal cadence, bounded entries for fast series, export/restore round trips."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import msgspec
import pytest

from pantau.domain import Sensor
from pantau.metrics import SensorKind
from pantau.rulepack.config import parse_rules
from rules.engine import STATE_VERSION, Engine
from rules.signals import SignalKind
from rules.windows import MAX_RESOLUTION_S, Window, resolution_s

T0 = 1_700_000_000.0
DAY = 86400.0


def exact(points: list[tuple[float, float]], now: float, width: float, *, closed: bool = False) -> list[float]:
    return [v for t, v in points if (t >= now - width if closed else t > now - width) and t <= now]


def test_resolution_is_a_64th_of_the_width_and_at_most_a_minute() -> None:
    assert resolution_s(600.0) == 600.0 / 64
    assert resolution_s(DAY) == MAX_RESOLUTION_S == 60.0


@pytest.mark.parametrize(("width", "step"), [(DAY, 300.0), (DAY, 60.0), (1800.0, 60.0), (600.0, 10.0)])
def test_aggregates_are_exact_at_normal_cadence(width: float, step: float) -> None:
    rng = random.Random(1)
    w, points = Window(), []
    for k in range(int(1.5 * width / step)):
        ts, v = T0 + k * step + rng.uniform(0, 0.2), round(rng.uniform(0, 300), 1)
        points.append((ts, v))
        w.push(ts, v, width)
        inside = exact(points, ts, width)
        assert len(w) == w.entries == len(inside)
        assert w.total == pytest.approx(sum(inside), rel=1e-12)
        assert w.mean == pytest.approx(sum(inside) / len(inside), rel=1e-12)
        assert (w.low, w.high) == (min(inside), max(inside))


def test_closed_window_min_max_are_exact_for_rates() -> None:
    w, points = Window(), []
    for k, v in enumerate([5, 1, 9, 3, 7, 2, 8, 4, 6, 0] * 5):
        ts = T0 + k * 300.0
        points.append((ts, float(v)))
        w.push(ts, float(v), 1800.0, closed=True)
        inside = exact(points, ts, 1800.0, closed=True)
        assert (w.low, w.high, len(w)) == (min(inside), max(inside), len(inside))


def test_a_1hz_series_in_a_24h_window_keeps_bounded_entries_and_approximates_the_edge() -> None:
    w, points = Window(), []
    res = resolution_s(DAY)
    for k in range(int(1.2 * DAY)):
        ts, v = T0 + k, float(k % 97)
        points.append((ts, v))
        w.push(ts, v, DAY)
    assert w.entries <= DAY / res + 1 < 1500  # not 86,400 readings
    now = points[-1][0]
    # The far edge is exact to within one resolution: between (now - width + res, now] and (now - width, now].
    assert len(exact(points, now, DAY - res)) <= len(w) <= len(exact(points, now, DAY))
    inside = exact(points, now, DAY)
    assert w.mean == pytest.approx(sum(inside) / len(inside), rel=1e-3)
    assert (w.low, w.high) == (0.0, 96.0)


@pytest.mark.parametrize("step", [300.0, 1.0])
def test_export_and_load_round_trip_through_json_and_msgpack(step: float) -> None:
    width = 1800.0
    w = Window()
    for k in range(3000):
        w.push(T0 + k * step, float(k % 13), width)
    data = w.export()
    assert len(data) == (2 if step == 300.0 else 5)
    restored = [
        Window.load(json.loads(json.dumps(data)), width),
        Window.load(msgspec.msgpack.decode(msgspec.msgpack.encode(data)), width),
    ]
    for other in restored:
        assert other.export() == data
        assert (len(other), other.entries, other.low, other.high) == (len(w), w.entries, w.low, w.high)
        assert other.total == pytest.approx(w.total, rel=1e-12)
    # All three continue the same way (a fast series merging into the restored newest slot too).
    for k in range(3000, 3100):
        for x in (w, *restored):
            x.push(T0 + k * step + 0.5, 1.0, width)
    assert restored[0].export() == restored[1].export() == w.export()
    with pytest.raises(ValueError, match="columns"):
        Window.load([[1.0], [1.0, 2.0]], width)


# -- the engine's sparse state ---------------------------------------------------------------------

AIR = {f"AQ-{i}": Sensor(id=f"AQ-{i}", kind=SensorKind.AIR, city="testkota", district="Barat") for i in range(50)}


def engine(*rules: dict[str, Any]) -> Engine:
    return Engine(parse_rules({"version": 1, "rules": list(rules)}), AIR)


def high(**fields: Any) -> dict[str, Any]:
    rule = {"id": "pm25-high", "kind": "threshold", "select": {"kind": "air"}, "metric": "pm25", "op": ">"}
    rule.update({"value": 50, "clear": {"op": "<", "value": 40}, "severity": "warning"}, **fields)
    return rule


def test_idle_threshold_series_keep_no_state_and_pending_ones_do() -> None:
    e = engine(high(**{"for": "10m"}))
    readings = [(T0 + k * 300.0, sid, "pm25", 20.0) for k in range(3) for sid in AIR]
    readings.append((T0 + 900.0, "AQ-7", "pm25", 60.0))  # AQ-7 starts pending
    assert e.evaluate(readings) == []
    assert e.state()["rules"]["pm25-high"]["series"] == {"AQ-7": [False, T0 + 900.0]}
    out = e.evaluate([(T0 + 1200.0, "AQ-7", "pm25", 61.0), (T0 + 1500.0, "AQ-7", "pm25", 62.0)])
    assert [(t.kind, t.event_ts) for t in out] == [(SignalKind.RAISE, T0 + 1500.0)]
    assert e.state()["rules"]["pm25-high"]["series"] == {"AQ-7": [True, None]}
    # A reading in the hysteresis band of an active series still reaches it (it resets nothing
    # here); a clear reading clears, and the series is idle again: no state.
    assert e.evaluate([(T0 + 1800.0, "AQ-7", "pm25", 45.0)]) == []
    out = e.evaluate([(T0 + 2100.0, "AQ-7", "pm25", 30.0)])
    assert [t.kind for t in out] == [SignalKind.CLEAR]
    assert e.state()["rules"]["pm25-high"]["series"] == {}


def test_series_cadence_is_shared_and_survives_a_restart() -> None:
    # A 1-minute series: a 5-minute silence is a gap (over max(min_gap 120 s, 3 × 60 s)), so the
    # pending `for` restarts, also for a rule whose state was restored.
    rule = high(**{"for": "6m"})
    first = Engine(parse_rules({"version": 1, "rules": [rule]}), AIR, min_gap_s=120.0)
    first.evaluate([(T0 + k * 60.0, "AQ-1", "pm25", 20.0) for k in range(10)])
    first.evaluate([(T0 + 600.0, "AQ-1", "pm25", 60.0)])
    state = json.loads(json.dumps(first.state()))
    assert state["intervals"]["AQ-1"]["pm25"] == pytest.approx(60.0)
    second = Engine(parse_rules({"version": 1, "rules": [rule]}), AIR, min_gap_s=120.0)
    second.restore(state)
    # 5 minutes of silence, then readings each minute: the raise comes 6 minutes after the gap.
    out = second.evaluate([(T0 + 900.0 + k * 60.0, "AQ-1", "pm25", 60.0) for k in range(8)])
    assert [t.event_ts for t in out] == [T0 + 900.0 + 360.0]


def test_a_state_of_another_version_is_refused() -> None:
    e = engine(high())
    assert STATE_VERSION == 3
    with pytest.raises(ValueError, match="version 2 is not 3"):
        e.restore({**e.state(), "version": 2})


def test_aggregated_threshold_at_1hz_matches_the_exact_mean_within_the_resolution() -> None:
    e = engine(high(aggregate="mean", window="10m", value=50))
    # 1 Hz for 20 minutes at 40, then at 80: the exact 10-minute mean passes 50 after 150 s of 80
    # (0.25 × 80 + 0.75 × 40 = 50, so > 50 at the reading after); the slotted window may run up
    # to one resolution (9.4 s) ahead of that, never behind.
    readings = [(T0 + k, "AQ-1", "pm25", 40.0 if k < 1200 else 80.0) for k in range(1500)]
    out = []
    for i in range(0, len(readings), 100):
        out += e.evaluate(readings[i : i + 100])
    assert len(out) == 1 and out[0].kind is SignalKind.RAISE
    assert T0 + 1200 + 150 - resolution_s(600.0) <= out[0].event_ts <= T0 + 1200 + 151
    assert not math.isnan(out[0].value or math.nan)
