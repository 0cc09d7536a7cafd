"""The rule engine's pure core (rules.engine): each kind's semantics in event time, restarts, and a
flash-flood day from the simulators through the real default rule pack."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pantau.alerts import Severity
from pantau.domain import Sensor
from pantau.indices import ISPU_P14_2020, ISPU_POLLUTANTS, IspuCategories, ispu_station
from pantau.metrics import SensorKind
from pantau.readings import Reading
from pantau.rulepack.config import load_rules, parse_rules
from rules.engine import Engine
from rules.kinds.index import IndexEvaluator
from rules.signals import Signal, SignalKind, Skip, Why
from rules.state import IndexState
from simulators.engine import SimConfig, Simulation
from simulators.fleet import load_fleet
from simulators.scenarios import load_scenario
from tests.support import MIN, T0, decoded_ticks, engine_state
from tests.support import minutes as at

ROOT = Path(__file__).resolve().parents[2]

AIR = Sensor(id="AQ-1", kind=SensorKind.AIR, city="testkota", district="Barat")
AIR_ELSEWHERE = Sensor(id="AQ-9", kind=SensorKind.AIR, city="lainkota", district="Timur")
GAUGE = Sensor(
    id="WL-1",
    kind=SensorKind.FLOOD,
    city="testkota",
    metadata={"river": "Sungai Uji", "order": 1, "siaga3_cm": 100, "siaga2_cm": 200, "siaga1_cm": 300},
)
COUNTER = Sensor(id="TC-1", kind=SensorKind.TRAFFIC, city="testkota", metadata={"capacity_pcu_h": 3600})
SENSORS = {s.id: s for s in (AIR, AIR_ELSEWHERE, GAUGE, COUNTER)}


def engine(*rules: dict[str, Any], sensors: dict[str, Sensor] | None = None, **kw: Any) -> Engine:
    return Engine(parse_rules({"version": 1, "rules": list(rules)}), sensors or SENSORS, **kw)


def threshold(**fields: Any) -> dict[str, Any]:
    rule = {"id": "pm25-high", "kind": "threshold", "select": {"kind": "air"}, "metric": "pm25"}
    rule.update({"op": ">", "value": 50, "severity": "warning"}, **fields)
    return rule


def series(sensor: str, metric: str, values: list[float], *, start: float = T0, step: float = 5 * MIN) -> list[Reading]:
    return [(start + k * step, sensor, metric, v) for k, v in enumerate(values)]


def feed(e: Engine, readings: list[Reading]) -> list[Signal]:
    """Each reading as its own batch, as a live feed delivers them."""
    out: list[Signal] = []
    for r in readings:
        out.extend(e.evaluate([r]))
    return out


# -- threshold -------------------------------------------------------------------------------------


def test_exactly_at_the_threshold_follows_the_op() -> None:
    gt, ge = engine(threshold(op=">")), engine(threshold(op=">="))
    assert feed(gt, series("AQ-1", "pm25", [50.0, 50.0])) == []
    out = feed(ge, series("AQ-1", "pm25", [50.0]))
    assert [(t.kind, t.why, t.severity, t.value) for t in out] == [
        (SignalKind.RAISE, Why.THRESHOLD_CROSSED, Severity.WARNING, 50.0)
    ]
    assert out[0].scope == out[0].sensor_id == "AQ-1" and out[0].city == "testkota" and out[0].district == "Barat"
    # The default clear is the negation: `< 50` for `>= 50`, so 50 again does not clear, 49.9 does.
    assert feed(ge, [(T0 + 600, "AQ-1", "pm25", 50.0)]) == []
    (clear,) = feed(ge, [(T0 + 900, "AQ-1", "pm25", 49.9)])
    assert (clear.kind, clear.why, clear.severity) == (SignalKind.CLEAR, Why.CLEAR_CROSSED, None)


def test_for_raises_once_when_held_long_enough_in_event_time() -> None:
    e = engine(threshold(**{"for": "15m"}))
    out = feed(e, series("AQ-1", "pm25", [60, 61, 62, 63, 64, 65]))
    assert [(at(t), t.why) for t in out] == [(15.0, Why.THRESHOLD_HELD_FOR)]
    assert "for 15m" in out[0].reason


def test_a_dip_restarts_the_for() -> None:
    e = engine(threshold(**{"for": "10m"}))
    out = feed(e, series("AQ-1", "pm25", [60, 60, 40, 60, 60, 60]))
    assert [at(t) for t in out] == [25.0]


def test_hysteresis_band_does_not_clear_and_clear_for_holds() -> None:
    e = engine(threshold(clear={"op": "<", "value": 40, "for": "10m"}))
    values = [60, 45, 41, 45, 39, 38, 30]  # 45 and 41 are inside the band (not > 50, not < 40)
    out = feed(e, series("AQ-1", "pm25", values))
    assert [(at(t), t.kind, t.why) for t in out] == [
        (0.0, SignalKind.RAISE, Why.THRESHOLD_CROSSED),
        (30.0, SignalKind.CLEAR, Why.CLEAR_HELD_FOR),  # < 40 from 20 min, held 10 min at 30
    ]


def test_a_data_gap_interrupts_a_pending_for() -> None:
    e = engine(threshold(**{"for": "30m"}))
    # Above the threshold at 0, 5, 10 min, then nothing until 30 min: a 20-minute gap, longer than
    # the 15-minute tolerance (3 × 5-minute cadence), so the 30 min are not known to have held.
    readings = series("AQ-1", "pm25", [60, 60, 60]) + series("AQ-1", "pm25", [60] * 8, start=T0 + 30 * MIN)
    out = feed(e, readings)
    assert [at(t) for t in out] == [60.0]  # counted afresh from the reading after the gap


def test_gap_tolerance_is_configurable_and_learns_the_cadence() -> None:
    # With 1-minute readings the tolerance is still the 15-minute floor; a 10-minute gap is no gap.
    e = engine(threshold(**{"for": "20m"}))
    readings = series("AQ-1", "pm25", [60] * 11, step=MIN) + series("AQ-1", "pm25", [60] * 11, start=T0 + 20 * MIN)
    assert [at(t) for t in feed(e, readings)] == [20.0]
    strict = engine(threshold(**{"for": "20m"}), min_gap_s=5 * MIN)
    assert [at(t) for t in feed(strict, readings)] == [40.0]


def test_late_and_duplicate_readings_are_ignored_and_counted() -> None:
    e = engine(threshold(**{"for": "15m"}))
    out = feed(e, series("AQ-1", "pm25", [60, 60, 60]))
    # A reading from before the last processed one (below the threshold) must not reset the
    # pending `for`; a second reading at the last timestamp is a duplicate.
    out += e.evaluate([(T0 + 2 * MIN, "AQ-1", "pm25", 10.0), (T0 + 10 * MIN, "AQ-1", "pm25", 10.0)])
    out += feed(e, series("AQ-1", "pm25", [60], start=T0 + 15 * MIN))
    assert [at(t) for t in out] == [15.0]
    assert e.stats.skipped[Skip.LATE] == 1 and e.stats.skipped[Skip.DUPLICATE] == 1


def test_a_batch_out_of_order_within_itself_is_sorted_by_event_time() -> None:
    e = engine(threshold(**{"for": "10m"}))
    batch = series("AQ-1", "pm25", [60, 60, 60, 40])
    out = e.evaluate(list(reversed(batch)))
    assert [(at(t), t.kind) for t in out] == [(10.0, SignalKind.RAISE), (15.0, SignalKind.CLEAR)]
    assert e.stats.skipped[Skip.LATE] == 0


def test_restart_while_pending_raises_once_at_the_right_time() -> None:
    rule = threshold(**{"for": "15m"})
    first = engine(rule)
    assert feed(first, series("AQ-1", "pm25", [60, 60])) == []
    second = engine(rule)
    assert second.restore(engine_state(first)) == []
    out = feed(second, series("AQ-1", "pm25", [60, 60, 60], start=T0 + 10 * MIN))
    assert [at(t) for t in out] == [15.0]
    # Restart again after the raise: the alert is active, nothing is raised twice.
    third = engine(rule)
    third.restore(engine_state(second))
    assert feed(third, series("AQ-1", "pm25", [70, 80], start=T0 + 25 * MIN)) == []
    # Replayed readings (already processed before the restart) are duplicates, not new evidence.
    assert third.evaluate(series("AQ-1", "pm25", [60, 60, 60], start=T0 + 10 * MIN)) == []
    assert third.stats.skipped[Skip.DUPLICATE] + third.stats.skipped[Skip.LATE] == 3


def test_restore_drops_state_of_rules_that_are_gone_or_changed_kind() -> None:
    first = engine(threshold())
    feed(first, series("AQ-1", "pm25", [60]))
    state = engine_state(first)
    other = engine({"id": "pm25-high", "kind": "absence", "select": {"kind": "air"}, "for": "15m", "severity": "info"})
    assert other.restore(state) == ["pm25-high"]
    with pytest.raises(ValueError, match="version"):
        other.restore({**state, "version": 99})


def test_aggregate_mean_over_a_trailing_window() -> None:
    e = engine(threshold(aggregate="mean", window="30m", value=50, clear={"op": "<", "value": 30}))
    # Mean of the readings in (t - 30m, t]: 40, 50, 60 → 50 (not > 50); with 70 → 55: raise at 15.
    # At 35 the window holds 60, 70, 0, 0, 0, 0 → 21.7 < 30: clear.
    out = feed(e, series("AQ-1", "pm25", [40, 50, 60, 70, 0, 0, 0, 0, 0, 0]))
    assert [(at(t), t.kind, t.value) for t in out] == [
        (15.0, SignalKind.RAISE, 55.0),
        (35.0, SignalKind.CLEAR, pytest.approx(130 / 6)),
    ]
    assert "mean pm25 over 30m 55 > 50" in out[0].reason


def test_rules_whose_selector_does_not_match_never_evaluate() -> None:
    e = engine(threshold(select={"kind": "air", "city": "testkota"}))
    assert feed(e, series("AQ-9", "pm25", [500, 500])) == []
    assert "AQ-9" not in e.state()["rules"]["pm25-high"]["series"]
    assert [t.sensor_id for t in feed(e, series("AQ-1", "pm25", [500]))] == ["AQ-1"]


def test_unknown_sensors_are_skipped_and_counted() -> None:
    e = engine(threshold())
    assert e.evaluate(series("AQ-404", "pm25", [500, 500])) == []
    assert e.stats.skipped[Skip.UNKNOWN_SENSOR] == 2


# -- absence ---------------------------------------------------------------------------------------


def absence(**fields: Any) -> dict[str, Any]:
    return {
        "id": "air-offline",
        "kind": "absence",
        "select": {"kind": "air"},
        "for": "15m",
        "severity": "warning",
    } | fields


def test_absence_raises_on_tick_and_clears_on_the_next_reading() -> None:
    e = engine(absence(select={"kind": "air", "sensor": "AQ-1"}))
    feed(e, series("AQ-1", "pm25", [10, 10]))  # last at 5 min
    assert e.tick(T0 + 19 * MIN) == []
    (raised,) = e.tick(T0 + 20 * MIN)
    assert (raised.kind, raised.why, raised.severity, at(raised)) == (
        SignalKind.RAISE,
        Why.ABSENT,
        Severity.WARNING,
        20.0,
    )
    assert raised.value == 15 * MIN
    assert e.tick(T0 + 60 * MIN) == []  # once
    (cleared,) = e.evaluate([(T0 + 61 * MIN, "AQ-1", "no2", 12.0)])
    assert (cleared.kind, cleared.why, cleared.value, at(cleared)) == (
        SignalKind.CLEAR, Why.READING_RETURNED, 12.0, 61.0
    )  # fmt: skip
    assert e.evaluate([(T0 + 66 * MIN, "AQ-1", "no2", 12.0)]) == []


def test_absence_of_one_metric_and_of_a_never_seen_sensor() -> None:
    rule = {"id": "level-offline", "kind": "absence", "select": {"kind": "flood"}, "metric": "water_level_cm"}
    e = engine(rule | {"for": "15m", "severity": "warning"}, absence())
    # The gauge keeps sending rain but no level: offline for the level rule.
    feed(e, series("WL-1", "water_level_cm", [50]) + series("WL-1", "rain_mm", [0, 0, 0, 0, 0], start=T0 + MIN))
    out = e.tick(T0 + 15 * MIN)
    # AQ-9 and AQ-1 never reported: their clock starts at the first event time the engine saw.
    assert sorted((t.rule_id, t.sensor_id) for t in out) == [
        ("air-offline", "AQ-1"), ("air-offline", "AQ-9"), ("level-offline", "WL-1")
    ]  # fmt: skip


def test_absence_measures_silence_from_the_last_arrival_not_event_time() -> None:
    # The worker ticks on the wall clock. A backfill of day-old readings that arrived a minute ago
    # is not a silent sensor; silence counts from that arrival.
    e = engine(absence(select={"kind": "air", "sensor": "AQ-1"}))
    now = T0 + 86400
    backlog = series("AQ-1", "pm25", [10] * 12, start=T0)  # the first hour of yesterday
    assert e.evaluate(backlog, arrived=now) == []
    assert e.tick(now + MIN) == []
    assert e.tick(now + 14 * MIN) == []
    (raised,) = e.tick(now + 15 * MIN)
    assert (raised.why, raised.event_ts, raised.value) == (Why.ABSENT, now + 15 * MIN, 15 * MIN)
    assert "last arrived" in raised.reason
    # Without arrivals the same backlog is a day of silence at once (event time: the old behaviour).
    old = engine(absence(select={"kind": "air", "sensor": "AQ-1"}))
    old.evaluate(backlog)
    (stale,) = old.tick(now + MIN)
    assert stale.event_ts == backlog[-1][0] + 15 * MIN and "last at" in stale.reason


def test_arrivals_are_per_metric_and_a_late_reading_is_no_arrival() -> None:
    rule = {"id": "level-offline", "kind": "absence", "select": {"kind": "flood"}, "metric": "water_level_cm"}
    e = engine(rule | {"for": "15m", "severity": "warning"})
    now = T0 + 3600
    e.evaluate(series("WL-1", "water_level_cm", [50, 51]), arrived=now)
    # Rain keeps arriving, the level does not: offline for the level measured from its own arrival.
    for k in range(1, 4):
        e.evaluate(series("WL-1", "rain_mm", [0.0], start=T0 + k * 10 * MIN), arrived=now + k * 5 * MIN)
    # A level reading older than the watermark arrives: late, not evidence of a live level series.
    e.evaluate([(T0, "WL-1", "water_level_cm", 49.0)], arrived=now + 14 * MIN)
    assert e.stats.skipped[Skip.LATE] == 1
    (raised,) = e.tick(now + 15 * MIN)
    assert (raised.rule_id, raised.event_ts) == ("level-offline", now + 15 * MIN)


def test_never_seen_sensors_count_from_the_first_arrival_when_arrivals_are_known() -> None:
    e = engine(absence())  # AQ-1 and AQ-9
    now = T0 + 86400
    e.evaluate(series("AQ-1", "pm25", [10], start=T0), arrived=now)  # a backfill: event time T0
    assert e.tick(now + 10 * MIN) == []  # AQ-9 silent for 10 minutes of the engine's life, not a day
    out = e.tick(now + 15 * MIN)
    assert [(t.sensor_id, t.event_ts) for t in out] == [("AQ-1", now + 15 * MIN), ("AQ-9", now + 15 * MIN)]


def test_arrivals_survive_a_restart() -> None:
    rule = absence(select={"kind": "air", "sensor": "AQ-1"})
    now = T0 + 86400
    first = engine(rule)
    first.evaluate(series("AQ-1", "pm25", [10, 10], start=T0), arrived=now)
    state = engine_state(first)
    assert state["arrivals"] == {"AQ-1": {"pm25": now}} and state["first_arrival"] == now
    second = engine(rule)
    second.restore(state)
    assert second.tick(now + 14 * MIN) == []
    assert [t.event_ts for t in second.tick(now + 16 * MIN)] == [now + 15 * MIN]
    # A state written before arrivals existed restores as "no arrivals known": event time again.
    legacy = {k: v for k, v in state.items() if k not in ("arrivals", "first_arrival")}
    third = engine(rule)
    third.restore(legacy)
    assert [t.event_ts for t in third.tick(now)] == [T0 + 5 * MIN + 15 * MIN]


def test_absence_survives_a_restart_without_a_second_raise() -> None:
    rule = absence(select={"kind": "air", "sensor": "AQ-1"})
    first = engine(rule)
    feed(first, series("AQ-1", "pm25", [10]))
    assert len(first.tick(T0 + 16 * MIN)) == 1
    second = engine(rule)
    second.restore(engine_state(first))
    assert second.tick(T0 + 30 * MIN) == []
    assert [t.why for t in second.evaluate(series("AQ-1", "pm25", [10], start=T0 + 31 * MIN))] == [Why.READING_RETURNED]


# -- index band: Siaga and LOS ---------------------------------------------------------------------


def siaga(**fields: Any) -> dict[str, Any]:
    return {"id": "river-siaga", "kind": "index_band", "index": "siaga", "select": {"kind": "flood"}} | fields


def test_siaga_crossing_up_and_back_down() -> None:
    e = engine(siaga())
    levels = [50, 100, 150, 200, 300, 250, 199.9, 99.9, 50]
    out = feed(e, series("WL-1", "water_level_cm", levels))
    assert [(at(t), t.kind, t.severity, t.why) for t in out] == [
        (5.0, SignalKind.RAISE, Severity.INFO, Why.INDEX_LEVEL_REACHED),  # exactly 100: Waspada (higher)
        (15.0, SignalKind.RAISE, Severity.WARNING, Why.INDEX_LEVEL_CHANGED),  # Siaga 2
        (20.0, SignalKind.RAISE, Severity.CRITICAL, Why.INDEX_LEVEL_CHANGED),  # Siaga 1 (Awas)
        (25.0, SignalKind.RAISE, Severity.WARNING, Why.INDEX_LEVEL_CHANGED),  # back to Siaga 2
        (30.0, SignalKind.RAISE, Severity.INFO, Why.INDEX_LEVEL_CHANGED),  # Waspada
        (35.0, SignalKind.CLEAR, None, Why.INDEX_LEVEL_CLEARED),  # Normal
    ]
    assert "Siaga 1 (Awas)" in out[2].reason and out[2].value == 300


def test_siaga_at_threshold_lower_and_clear_for() -> None:
    e = engine(siaga(at_threshold="lower", clear={"for": "10m"}))
    out = feed(e, series("WL-1", "water_level_cm", [100, 100.5, 90, 95, 101, 90, 80, 70]))
    # 100 exactly stays Normal; 100.5 is Waspada; 90 then 95 is 5 min below, back up at 101 (no
    # clear); 90, 80, 70 hold below for 10 min → clear at the third.
    assert [(at(t), t.kind) for t in out] == [(5.0, SignalKind.RAISE), (35.0, SignalKind.CLEAR)]


def test_siaga_escalation_waits_for_and_takes_the_level_held_throughout() -> None:
    e = engine(siaga(**{"for": "10m"}))
    out = feed(e, series("WL-1", "water_level_cm", [50, 250, 150, 350, 350, 350]))
    # From 5 min the level is at least Waspada (250 Siaga, 150 Waspada, 350 Awas): Waspada at 15;
    # Awas from 15 held 10 min → Awas at 25 (escalation straight from Waspada).
    assert [(at(t), t.severity) for t in out] == [(15.0, Severity.INFO), (25.0, Severity.CRITICAL)]


def test_siaga_gauge_without_thresholds_is_reported_not_fatal() -> None:
    bare = Sensor(id="WL-2", kind=SensorKind.FLOOD, city="testkota")
    e = engine(siaga(), sensors={"WL-2": bare, **SENSORS})
    assert e.evaluate(series("WL-2", "water_level_cm", [500]) + series("WL-1", "water_level_cm", [500])) != []
    assert "siaga3_cm" in e.metadata_errors[("river-siaga", "WL-2")]
    assert e.stats.skipped[Skip.BAD_METADATA] == 1


def los(**fields: Any) -> dict[str, Any]:
    return {"id": "traffic-jam", "kind": "index_band", "index": "los", "select": {"kind": "traffic"}} | fields


def counts(values: list[float], *, start: float = T0, interval: float = 300.0) -> list[Reading]:
    out: list[Reading] = []
    for k, v in enumerate(values):
        ts = start + k * interval
        out += [(ts, "TC-1", "interval_s", interval), (ts, "TC-1", "vehicle_count", v)]
    return out


def test_los_from_count_interval_and_capacity() -> None:
    # capacity 3600 pcu/h, 5-minute counts: DS = count / 300. E: 0.84 < DS ≤ 1.00, F: DS > 1.00.
    e = engine(los())
    out = feed(e, counts([252, 253, 300, 301, 300, 100]))
    assert [(at(t), t.kind, t.severity) for t in out] == [
        (5.0, SignalKind.RAISE, Severity.WARNING),  # 253/300 = 0.843 > 0.84: E
        (15.0, SignalKind.RAISE, Severity.CRITICAL),  # 301/300 > 1.00: F (300 is exactly 1.00: E)
        (20.0, SignalKind.RAISE, Severity.WARNING),
        (25.0, SignalKind.CLEAR, None),
    ]
    assert "LOS F" in out[1].reason and out[1].value == pytest.approx(301 / 300)


def test_los_for_and_a_count_without_interval() -> None:
    e = engine(los(**{"for": "15m", "clear": {"for": "15m"}}))
    assert e.evaluate([(T0, "TC-1", "vehicle_count", 400.0)]) == []
    assert e.stats.skipped[Skip.NO_INTERVAL] == 1
    out = feed(e, counts([400, 280, 400, 400, 100, 100, 100, 100], start=T0 + 5 * MIN))
    # E or worse from 5 min (F, E, F, F): E held for 15 min → warning at 20; better from 25 → clear at 40.
    assert [(at(t), t.kind, t.severity) for t in out] == [
        (20.0, SignalKind.RAISE, Severity.WARNING),
        (40.0, SignalKind.CLEAR, None),
    ]


# -- rate of change --------------------------------------------------------------------------------


def rise(**fields: Any) -> dict[str, Any]:
    rule = {"id": "river-rising-fast", "kind": "rate_of_change", "select": {"kind": "flood"}}
    return rule | {"metric": "water_level_cm", "direction": "rise", "delta": 30, "window": "30m"} | fields


def test_rate_of_change_rise_within_the_window() -> None:
    e = engine(rise(severity="warning", clear={"delta": 15, "for": "10m"}))
    # 100 → 130 over exactly 30 min is a rise of 30 (≥ 30: raise); the window is [t - 30m, t].
    levels = [100, 105, 110, 115, 120, 125, 130, 131, 132, 133, 134, 135, 136, 137]
    out = feed(e, series("WL-1", "water_level_cm", levels))
    # The 30-minute rise drops under 15 at 50 min (135 - 120) and stays there 10 min: clear at 60.
    assert [(at(t), t.kind, t.why, t.value) for t in out] == [
        (30.0, SignalKind.RAISE, Why.RATE_EXCEEDED, 30.0),
        (60.0, SignalKind.CLEAR, Why.RATE_SUBSIDED, 6.0),
    ]


def test_rate_of_change_just_under_delta_and_fall() -> None:
    e = engine(rise(severity="warning"))
    assert feed(e, series("WL-1", "water_level_cm", [100, 110, 120, 129.9])) == []
    fall = engine(rise(direction="fall", severity="info"))
    out = feed(fall, series("WL-1", "water_level_cm", [200, 180, 165, 170]))
    assert [(at(t), t.kind, t.value) for t in out] == [(10.0, SignalKind.RAISE, 35.0)]


# -- index band: ISPU ------------------------------------------------------------------------------


def test_ispu_escalates_on_one_scope_and_clears() -> None:
    rule = {"id": "air-ispu", "kind": "index_band", "index": "ispu", "select": {"kind": "air"}}
    e = engine(rule | {"pollutants": ["pm25", "no2"], "windows": {"pm25": "1h"}})
    # Hourly means: 100 µg/m³ → Tidak Sehat (ISPU 147), 200 → Sangat Tidak Sehat, 400 → Berbahaya.
    hours = [10.0] * 12 + [100.0] * 12 + [200.0] * 12 + [400.0] * 12 + [10.0] * 12
    readings = series("AQ-1", "pm25", hours) + series("AQ-1", "no2", [20.0] * len(hours))
    out = feed(e, sorted(readings))
    assert {t.scope for t in out} == {"AQ-1"}
    turn = T0 + 48 * 5 * MIN  # back to clean air
    up = [t for t in out if t.event_ts < turn]
    down = [t for t in out if t.event_ts >= turn]
    assert all(t.kind is SignalKind.RAISE for t in up)
    assert [t.reason.split("(")[1].split(")")[0] for t in up] == ["Tidak Sehat", "Sangat Tidak Sehat", "Berbahaya"]
    assert [t.severity for t in up] == [Severity.WARNING, Severity.CRITICAL, Severity.CRITICAL]
    assert [t.why for t in up] == [Why.INDEX_LEVEL_REACHED, Why.INDEX_LEVEL_CHANGED, Why.INDEX_LEVEL_CHANGED]
    assert "critical pollutant pm25" in up[-1].reason and up[-1].value is not None and up[-1].value > 300
    # De-escalation: RAISEs with falling levels on the same scope, then one CLEAR.
    assert [t.kind for t in down] == [SignalKind.RAISE, SignalKind.RAISE, SignalKind.CLEAR]
    assert [t.severity for t in down] == [Severity.CRITICAL, Severity.WARNING, None]
    assert down[-1].why is Why.INDEX_LEVEL_CLEARED


def test_ispu_state_round_trips_mid_window() -> None:
    rule = {"id": "air-ispu", "kind": "index_band", "index": "ispu", "select": {"kind": "air"}}
    rule |= {"pollutants": ["pm25"], "windows": {"pm25": "1h"}}
    values = [10.0] * 6 + [300.0] * 12
    whole = feed(engine(rule), series("AQ-1", "pm25", values))
    first = engine(rule)
    split = feed(first, series("AQ-1", "pm25", values[:8]))
    second = engine(rule)
    second.restore(engine_state(first))
    split += feed(second, series("AQ-1", "pm25", values[8:], start=T0 + 8 * 5 * MIN))
    assert split == whole and len(whole) >= 2


def test_ispu_per_reading_category_and_transition_text_match_the_full_station_ispu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Per reading the engine scores only the station's category (pantau.indices.IspuCategories) and
    # computes the index and reason text when the alert moves. Shadow every step with the full
    # `ispu_station` of the same window means: the same category, and `describe` gives exactly the
    # value and text a transition at that step carries. Values straddle category edges and breakpoints,
    # go beyond the table, arrive in mixed batches and leave short windows; clean spells clear.
    fast = IndexEvaluator._ispu
    scored = 0

    def shadowed(self: IndexEvaluator, sensor: Sensor, st: IndexState, ts: float, values: dict[str, float]) -> Any:
        nonlocal scored
        got = fast(self, sensor, st, ts, values)
        station = ispu_station({p: max(w.mean, 0.0) for p, w in st.windows.items() if len(w)})
        if station is None:
            assert got is None
            return got
        level, describe = got
        assert level is station.category, (ts, values)
        text = f"ISPU {station.index} ({station.category.label}), critical pollutant {station.critical}"
        assert describe() == (float(station.index), text)
        scored += 1
        return got

    monkeypatch.setattr(IndexEvaluator, "_ispu", shadowed)
    windows = {"pm25": "30m", "pm10": "20m", "no2": "10m", "o3": "1h", "co": "15m", "so2": "5m", "hc": "40m"}
    rule = {"id": "air-ispu", "kind": "index_band", "index": "ispu", "select": {"kind": "air"}}
    e = engine(rule | {"pollutants": list(ISPU_POLLUTANTS), "windows": windows})
    edges = IspuCategories().edges
    rng = np.random.default_rng(7)
    readings: list[Reading] = []
    for k in range(600):
        for p in ISPU_POLLUTANTS:
            if rng.random() < 0.4:
                row = ISPU_P14_2020.breakpoints[p]
                near = float(rng.choice([*row, *edges[p]])) * float(rng.choice([1.0, rng.uniform(0.9, 1.1)]))
                value = row[-1] * 1.5 if rng.random() < 0.03 else near
                if (k // 90) % 2:  # a clean spell
                    value = float(rng.uniform(0, edges[p][0]))
                readings.append((T0 + k * MIN, "AQ-1", p, value))
    out: list[Signal] = []
    start = 0
    while start < len(readings):
        size = int(rng.integers(1, 12))
        out += e.evaluate(readings[start : start + size])
        start += size
    assert scored > 300 and len(out) > 20
    assert {t.kind for t in out} == {SignalKind.RAISE, SignalKind.CLEAR}


def test_ispu_skips_a_nan_mean_as_the_station_ispu_does() -> None:
    # A NaN reading (ingest drops them; the engine's API does not) leaves its pollutant out of the
    # station, as `ispu_station` leaves out NaN: no Berbahaya from it, and no crash.
    rule = {"id": "air-ispu", "kind": "index_band", "index": "ispu", "select": {"kind": "air"}}
    e = engine(rule | {"pollutants": ["pm25", "no2"], "windows": {"pm25": "1h"}})
    readings = [
        (T0, "AQ-1", "no2", 20.0),
        (T0 + MIN, "AQ-1", "pm25", float("nan")),
        (T0 + 2 * MIN, "AQ-1", "pm25", 10.0),
    ]
    assert feed(e, readings) == []


# -- the real rule pack and the simulators ---------------------------------------------------------


def test_default_pack_loads_and_evaluates_every_rule() -> None:
    rules = load_rules(ROOT / "deploy" / "rules.yaml")
    e = Engine(rules, SENSORS)
    assert len(e.evaluators) + len(e.disabled_rules) == len(rules)
    assert {ev.tag for ev in e.evaluators} >= {"data_quality/stuck", "data_quality/out_of_range", "composite"}
    out = feed(e, series("WL-1", "water_level_cm", [50, 150, 250, 350]))
    assert [(t.rule_id, t.severity) for t in out if t.rule_id == "river-siaga"] == [
        ("river-siaga", Severity.INFO), ("river-siaga", Severity.WARNING), ("river-siaga", Severity.CRITICAL)
    ]  # fmt: skip
    json.dumps(e.state())


def test_flash_flood_day_raises_siaga_upstream_first_and_clears() -> None:
    start = datetime(2024, 3, 4, tzinfo=timezone(timedelta(hours=7))).timestamp()
    fleet = load_fleet("sampit")
    sim = Simulation(
        fleet, load_scenario("flash-flood"), SimConfig(start=start, duration_s=3 * 86400, step_s=300, seed=1), faults={}
    )
    sensors = {s.id: s for s in fleet.sensors}
    e = Engine(load_rules(ROOT / "deploy" / "rules.yaml"), sensors)
    out: list[Signal] = []
    for t, rows in decoded_ticks(sim.ticks()):
        out += e.evaluate(rows)
        out += e.tick(t)
    siaga = [t for t in out if t.rule_id == "river-siaga"]
    first_raise: dict[str, float] = {}
    for t in siaga:
        if t.kind is SignalKind.RAISE:
            first_raise.setdefault(t.sensor_id, t.event_ts)
    gauges = [s for s in fleet.sensors if s.kind is SensorKind.FLOOD]
    for river in {s.metadata["river"] for s in gauges}:
        ordered = sorted((s for s in gauges if s.metadata["river"] == river), key=lambda s: s.metadata["order"])
        times = [first_raise[s.id] for s in ordered]
        assert times == sorted(times) and len(set(times)) == len(times), river
        # Each gauge escalates to Awas at some point, and ends cleared.
        for s in ordered:
            mine = [t for t in siaga if t.sensor_id == s.id]
            assert any(t.severity is Severity.CRITICAL for t in mine), s.id
            assert mine[-1].kind is SignalKind.CLEAR, s.id
    assert not [t for t in out if t.why is Why.ABSENT]  # no faults: nobody went offline
