"""data_quality rules in the pure engine (rules.engine): `stuck` over event time, `out_of_range` over
ingest rejections (receive time); limits, gaps, late input, restarts and clearing."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from ingest.decode import Decoder
from pantau.alerts import Severity
from pantau.domain import Sensor
from pantau.metrics import SensorKind
from pantau.readings import Reading, Rejection
from pantau.rulepack.config import load_rules, parse_rules
from rules.engine import Engine
from rules.signals import Signal, SignalKind, Skip, Why
from simulators.engine import SimConfig, Simulation
from simulators.faults import FaultLog
from simulators.fleet import load_fleet
from simulators.scenarios import load_scenario
from tests.support import MIN, T0, continued
from tests.support import minutes as at

ROOT = Path(__file__).resolve().parents[2]

AIR = Sensor(id="AQ-1", kind=SensorKind.AIR, city="testkota", district="Barat")
AIR2 = Sensor(id="AQ-2", kind=SensorKind.AIR, city="testkota", district="Timur")
GAUGE = Sensor(id="WL-1", kind=SensorKind.FLOOD, city="testkota", metadata={"river": "Sungai Uji", "order": 1})
SENSORS = {s.id: s for s in (AIR, AIR2, GAUGE)}


def engine(*rules: dict[str, Any]) -> Engine:
    return Engine(parse_rules({"version": 1, "rules": list(rules)}), SENSORS)


def series(sensor: str, metric: str, values: list[float], *, start: float = T0, step: float = 5 * MIN) -> list[Reading]:
    return [(start + k * step, sensor, metric, v) for k, v in enumerate(values)]


def feed(e: Engine, readings: list[Reading]) -> list[Signal]:
    out: list[Signal] = []
    for r in readings:
        out.extend(e.evaluate([r]))
    return out


# -- stuck -----------------------------------------------------------------------------------------


def stuck(**fields: Any) -> dict[str, Any]:
    rule = {"id": "pm25-stuck", "kind": "data_quality", "check": "stuck", "select": {"kind": "air"}}
    return rule | {"metric": "pm25", "window": "30m", "min_readings": 7, "severity": "info"} | fields


def test_stuck_raises_exactly_when_the_run_spans_the_window_with_min_readings() -> None:
    # 7 equal readings 5 minutes apart span exactly 30 minutes: raise at the 7th (30 min), once.
    e = engine(stuck())
    out = feed(e, series("AQ-1", "pm25", [12.3] * 10))
    assert [(at(t), t.kind, t.why, t.value, t.severity) for t in out] == [
        (30.0, SignalKind.RAISE, Why.STUCK, 12.3, Severity.INFO)
    ]
    assert out[0].sensor_id == out[0].scope == "AQ-1"
    assert "pm25 unchanged at 12.3 for 30m, 7 readings" in out[0].reason


def test_stuck_needs_both_the_window_and_min_readings() -> None:
    # Six readings over 30 minutes (one report missing, no gap): the window is spanned but the
    # evidence is one reading short; the next reading makes seven.
    readings = [r for k, r in enumerate(series("AQ-1", "pm25", [5.0] * 8)) if k != 3]
    e = engine(stuck())
    assert [at(t) for t in feed(e, readings)] == [35.0]
    # Seven readings a minute apart are plenty of evidence but span only 6 minutes.
    assert feed(engine(stuck()), series("AQ-1", "pm25", [5.0] * 7, step=MIN)) == []


def test_stuck_tolerance_is_the_span_of_the_run_inclusive() -> None:
    e = engine(stuck(tolerance=0.5))
    # Span exactly 0.5 (10.0 .. 10.5) is unchanged; 10.6 widens it beyond: a change.
    values = [10.0, 10.5, 10.2, 10.0, 10.5, 10.1, 10.3, 10.6]
    out = feed(e, series("AQ-1", "pm25", values))
    assert [(at(t), t.kind, t.why) for t in out] == [
        (30.0, SignalKind.RAISE, Why.STUCK),
        (35.0, SignalKind.CLEAR, Why.VALUE_CHANGED),
    ]
    assert "spanning 0.5 ≤ 0.5" in out[0].reason
    assert out[1].value == 10.6 and "changed to 10.6 (was 10..10.5" in out[1].reason


def test_any_change_clears_and_a_new_run_can_raise_again() -> None:
    e = engine(stuck())
    out = feed(e, series("AQ-1", "pm25", [7.0] * 8 + [7.1] + [7.1] * 6 + [7.1]))
    # Raise at 30; 7.1 at 40 clears; the run of 7.1 from 40 spans 30 minutes at 70.
    assert [(at(t), t.why, t.value) for t in out] == [
        (30.0, Why.STUCK, 7.0),
        (40.0, Why.VALUE_CHANGED, 7.1),
        (70.0, Why.STUCK, 7.1),
    ]


def test_stuck_only_watches_its_metric_and_sensors() -> None:
    e = engine(stuck())
    readings = series("AQ-1", "pm10", [40.0] * 10) + series("WL-1", "water_level_cm", [100.0] * 10)
    assert e.evaluate(readings) == []
    assert "WL-1" not in e.state()["rules"]["pm25-stuck"]["series"]


def test_a_data_gap_restarts_the_observation() -> None:
    e = engine(stuck())
    # Five equal readings (0..20 min), a 20-minute gap (beyond the 15-minute tolerance), then the
    # same value again: the run counts afresh from 40 min and raises at 70, not at 45.
    readings = series("AQ-1", "pm25", [3.0] * 5) + series("AQ-1", "pm25", [3.0] * 7, start=T0 + 40 * MIN)
    assert [at(t) for t in feed(e, readings)] == [70.0]


def test_a_gap_while_stuck_keeps_the_alert_unless_the_value_changed() -> None:
    e = engine(stuck())
    out = feed(e, series("AQ-1", "pm25", [3.0] * 7))  # raised at 30
    out += feed(e, series("AQ-1", "pm25", [3.0, 3.0], start=T0 + 60 * MIN))  # after a gap: same value
    assert [t.kind for t in out] == [SignalKind.RAISE]
    out += feed(e, series("AQ-1", "pm25", [4.0], start=T0 + 90 * MIN))  # after another gap: changed
    assert [(at(t), t.kind, t.why) for t in out][1:] == [(90.0, SignalKind.CLEAR, Why.VALUE_CHANGED)]


def test_a_late_reading_does_not_break_a_run() -> None:
    e = engine(stuck())
    out = feed(e, series("AQ-1", "pm25", [8.0] * 4))
    # A different value stamped before the watermark arrives late: dropped, counted, no effect.
    out += e.evaluate([(T0 + 2 * MIN, "AQ-1", "pm25", 99.0), (T0 + 15 * MIN, "AQ-1", "pm25", 99.0)])
    assert e.stats.skipped[Skip.LATE] == 1 and e.stats.skipped[Skip.DUPLICATE] == 1
    out += feed(e, series("AQ-1", "pm25", [8.0] * 3, start=T0 + 20 * MIN))
    assert [at(t) for t in out] == [30.0]


def test_a_batch_in_any_order_gives_the_same_stuck_signals() -> None:
    readings = series("AQ-1", "pm25", [1.0] * 7 + [2.0]) + series("AQ-2", "pm25", [5.0] * 8)
    in_order = feed(engine(stuck()), sorted(readings))
    reversed_batch = engine(stuck()).evaluate(list(reversed(readings)))
    # Signals come in event-time order; ties between sensors in processing order.
    key = lambda t: (t.event_ts, t.scope)  # noqa: E731
    assert sorted(reversed_batch, key=key) == sorted(in_order, key=key)
    assert [(t.sensor_id, at(t), t.kind) for t in sorted(in_order, key=key)] == [
        ("AQ-1", 30.0, SignalKind.RAISE),
        ("AQ-2", 30.0, SignalKind.RAISE),
        ("AQ-1", 35.0, SignalKind.CLEAR),
    ]


def test_stuck_restart_while_pending_raises_once_at_the_same_time() -> None:
    values = [6.0] * 12
    whole = feed(engine(stuck()), series("AQ-1", "pm25", values))
    first = engine(stuck())
    split = feed(first, series("AQ-1", "pm25", values[:4]))
    second = continued(first, engine(stuck()))
    split += feed(second, series("AQ-1", "pm25", values[4:], start=T0 + 20 * MIN))
    assert split == whole and [at(t) for t in whole] == [30.0]
    # A restart while raised: no second raise; the change still clears.
    third = continued(second, engine(stuck()))
    tail = feed(third, series("AQ-1", "pm25", [6.0, 6.0, 6.5], start=T0 + 60 * MIN))
    assert [(at(t), t.why) for t in tail] == [(70.0, Why.VALUE_CHANGED)]


def test_default_pack_stuck_air_sensors_match_the_simulated_stuck_faults() -> None:
    # Two days of the simulated Sampit fleet with `stuck` episodes injected (the fault log says
    # which sensor repeated its values from when, for how many 5-minute ticks).
    start = datetime(2024, 3, 4, tzinfo=timezone(timedelta(hours=7))).timestamp()
    fleet = load_fleet("sampit")
    log = io.StringIO()
    config = SimConfig(start=start, duration_s=2 * 86400, step_s=300, seed=3)
    sim = Simulation(fleet, load_scenario("flash-flood"), config, faults={"stuck": 0.01}, fault_log=FaultLog(log))
    decoder = Decoder(max_payload_bytes=65536, max_future_s=300, retention_s=3650 * 86400)
    e = Engine(load_rules(ROOT / "deploy" / "rules.yaml"), {s.id: s for s in fleet.sensors})
    out: list[Signal] = []
    for tick in sim.ticks():
        rows: list[Reading] = []
        for topic, payload in tick.messages:
            _, _, _city, kind, sensor_id = topic.split("/")
            decoder.decode(payload, sensor_id, SensorKind(kind), tick.t + 1, rows, [])
        out += e.evaluate(rows, arrived=tick.t + 1)
        out += e.tick(tick.t + 1)
    air = {s.id for s in fleet.sensors if s.kind is SensorKind.AIR}
    episodes = [json.loads(line) for line in log.getvalue().splitlines()]
    spans = [
        (x["sensor"], datetime.fromisoformat(x["time"]).timestamp(), x["ticks"])
        for x in episodes
        if x["fault"] == "stuck" and x["sensor"] in air
    ]
    raised = [t for t in out if t.rule_id == "air-pm25-stuck" and t.kind is SignalKind.RAISE]
    assert raised, "the injected episodes must be seen"
    # The frozen values can equal the real reading of a tick or two before the episode (pm25 has
    # 0.1 resolution), so a run may start up to two ticks early.
    early = 2 * 300
    # No false alarm: each raise lies in an episode of that sensor, an hour after its run began.
    for t in raised:
        inside = [(first, n) for sid, first, n in spans if sid == t.sensor_id]
        assert any(first + 3600 - early <= t.event_ts < first + n * 300 for first, n in inside), t
    # No miss: every episode of at least 13 ticks (13 equal readings over an hour) raised.
    for sid, first, n in spans:
        if n >= 13:
            assert any(t.sensor_id == sid and 0 <= first + 3600 - t.event_ts <= early for t in raised), (sid, first)
    # Every raise cleared when the sensor came back to life, except possibly one still stuck at the end.
    cleared = [t for t in out if t.rule_id == "air-pm25-stuck" and t.kind is SignalKind.CLEAR]
    assert len(raised) - len(cleared) in (0, 1) and all(t.why is Why.VALUE_CHANGED for t in cleared)


# -- out of range ----------------------------------------------------------------------------------


def oor(**fields: Any) -> dict[str, Any]:
    rule = {"id": "out-of-range", "kind": "data_quality", "check": "out_of_range"}
    return rule | {"count": 3, "window": "1h", "severity": "warning"} | fields


def rejected(
    sensor: str, minutes: list[float], reason: str = "out_of_range", metric: str | None = "pm25"
) -> list[Rejection]:
    about = metric if reason in ("out_of_range", "non_finite") else None  # only value rejections name one
    return [(T0 + m * MIN, sensor, reason, about) for m in minutes]


def test_out_of_range_raises_exactly_at_the_count() -> None:
    e = engine(oor())
    assert e.evaluate([], rejected("AQ-1", [0, 10])) == []
    (raised,) = e.evaluate([], rejected("AQ-1", [20]))
    assert (at(raised), raised.kind, raised.why, raised.value, raised.severity) == (
        20.0,
        SignalKind.RAISE,
        Why.REJECTIONS_REACHED,
        3.0,
        Severity.WARNING,
    )
    assert raised.scope == raised.sensor_id == "AQ-1" and raised.district == "Barat"
    assert "3 rejections (out_of_range) within 1h: limit 3" in raised.reason
    assert e.evaluate([], rejected("AQ-1", [25, 30])) == []  # already raised
    assert e.stats.rejections == 5


def test_out_of_range_window_excludes_its_start() -> None:
    # (t - 1h, t]: the first rejection leaves the window exactly when the third arrives an hour later.
    e = engine(oor())
    assert e.evaluate([], rejected("AQ-1", [0, 30, 60])) == []
    assert [at(t) for t in e.evaluate([], rejected("AQ-1", [61]))] == [61.0]


def test_out_of_range_counts_only_its_reasons_and_sensors() -> None:
    e = engine(oor(select={"kind": "air"}), oor(id="bad-json", reasons=["malformed_json", "wrong_type"], count=2))
    batch = rejected("AQ-1", [0, 1, 2], "malformed_json") + rejected("WL-1", [0, 1, 2]) + rejected("AQ-2", [3], "x")
    out = e.evaluate([], batch)
    assert [(t.rule_id, t.sensor_id, at(t)) for t in out] == [("bad-json", "AQ-1", 1.0)]
    out = e.evaluate([], rejected("AQ-1", [3, 4, 5]) + rejected("AQ-1", [6], "wrong_type"))
    assert [(t.rule_id, t.sensor_id, at(t)) for t in out] == [("out-of-range", "AQ-1", 5.0)]


def test_out_of_range_clears_on_tick_when_rejections_stop() -> None:
    e = engine(oor())
    assert [t.kind for t in e.evaluate([], rejected("AQ-1", [0, 10, 20]))] == [SignalKind.RAISE]
    # The count falls to 2 when the rejection at 0 leaves the window: at 60 exactly.
    assert e.tick(T0 + 59 * MIN) == []
    (cleared,) = e.tick(T0 + 75 * MIN)
    assert (at(cleared), cleared.kind, cleared.why, cleared.value) == (
        60.0,
        SignalKind.CLEAR,
        Why.REJECTIONS_SUBSIDED,
        2.0,
    )
    assert e.tick(T0 + 200 * MIN) == []
    assert e.state()["rules"]["out-of-range"]["series"]["sensors"] == {}  # forgotten once empty


def test_out_of_range_clears_on_a_later_batch_by_its_arrival() -> None:
    e = engine(oor())
    e.evaluate([], rejected("AQ-1", [0, 10, 20]), arrived=T0 + 20 * MIN)
    # Readings (no rejections) committed at 70 min: the clock passes 60, the alert clears.
    (cleared,) = e.evaluate(series("AQ-2", "pm25", [10.0]), arrived=T0 + 70 * MIN)
    assert (cleared.kind, at(cleared)) == (SignalKind.CLEAR, 60.0)


def test_a_gap_between_rejections_clears_then_raises_again() -> None:
    e = engine(oor())
    out = e.evaluate([], rejected("AQ-1", [0, 1, 2]))
    # The count fell to 2 when the rejection at 0 left the window at 60 (clear at 60); rejections
    # resume at 90 and reach 3 again at 92.
    out += e.evaluate([], rejected("AQ-1", [90, 91, 92]))
    assert [(t.kind, at(t)) for t in out] == [
        (SignalKind.RAISE, 2.0),
        (SignalKind.CLEAR, 60.0),
        (SignalKind.RAISE, 92.0),
    ]


def test_out_of_order_rejections() -> None:
    # A batch in any order is sorted; a rejection from before the clock still inside the window
    # counts; one already outside it is counted as expired.
    e = engine(oor())
    assert [at(t) for t in e.evaluate([], rejected("AQ-1", [20, 0, 10]))] == [20.0]
    late = engine(oor())
    assert late.evaluate([], rejected("AQ-1", [50, 55]) + rejected("AQ-2", [200])) == []
    assert late.stats.rejections_skipped[Skip.EXPIRED] == 0
    # 52, 100 and 140 are at or before 200 - 60: outside (200 - 1h, 200] already.
    out = late.evaluate([], rejected("AQ-1", [52]) + rejected("AQ-2", [100, 140]))
    assert out == [] and late.stats.rejections_skipped[Skip.EXPIRED] == 3
    assert [at(t) for t in late.evaluate([], rejected("AQ-1", [201, 202, 150]))] == [202.0]


def test_rejections_of_unknown_sensors_are_counted_not_evaluated() -> None:
    e = engine(oor())
    assert e.evaluate([], rejected("NOBODY", [0, 1, 2, 3])) == []
    assert e.stats.rejections_skipped[Skip.UNKNOWN_SENSOR] == 4


def test_out_of_range_restart_while_pending_and_while_raised() -> None:
    first = engine(oor())
    assert first.evaluate([], rejected("AQ-1", [0, 10])) == []
    second = continued(first, engine(oor()))
    (raised,) = second.evaluate([], rejected("AQ-1", [20]))
    assert at(raised) == 20.0
    third = continued(second, engine(oor()))
    assert third.evaluate([], rejected("AQ-1", [30])) == []  # still raised: no duplicate
    (cleared,) = third.tick(T0 + 90 * MIN)
    assert at(cleared) == 70.0  # the 3rd newest (10) + 1h: 20 and 30 left


def test_default_pack_counts_rejections_of_any_sensor() -> None:
    e = Engine(load_rules(ROOT / "deploy" / "rules.yaml"), SENSORS)
    batch = rejected("WL-1", [0, 1, 2, 3]) + rejected("WL-1", [3.5], "malformed_json")
    assert e.evaluate([], batch, arrived=T0 + 4 * MIN) == []
    (raised,) = e.evaluate([], rejected("WL-1", [5]), arrived=T0 + 5 * MIN)
    assert (raised.rule_id, raised.sensor_id, raised.value) == ("out-of-range-readings", "WL-1", 5.0)
    (cleared,) = [t for t in e.tick(T0 + 2 * 3600) if t.rule_id == "out-of-range-readings"]
    assert (cleared.sensor_id, cleared.event_ts, cleared.value) == ("WL-1", T0 + 3600, 4.0)  # 0 left the window
    assert datetime.fromtimestamp(cleared.event_ts, UTC) == cleared.event_time


def test_out_of_range_of_one_metric_counts_only_that_metrics_rejections() -> None:
    e = engine(oor(id="pm25-rejected", metric="pm25", reasons=["out_of_range", "non_finite"]), oor())
    batch = rejected("AQ-1", [0, 1], metric="pm10") + rejected("AQ-1", [2], "malformed_json")
    batch += rejected("AQ-1", [3], "non_finite") + rejected("AQ-1", [4], metric="pm25")
    # The sensor-wide rule counts out_of_range of any metric (0, 1, 4); the pm25 one only 3 and 4.
    assert [(t.rule_id, at(t)) for t in e.evaluate([], batch)] == [("out-of-range", 4.0)]
    (raised,) = e.evaluate([], rejected("AQ-1", [5], metric="pm25") + rejected("AQ-1", [6], metric="o3"))
    assert (raised.rule_id, at(raised)) == ("pm25-rejected", 5.0)
