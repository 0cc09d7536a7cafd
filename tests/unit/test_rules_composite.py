"""Composite rules in the pure engine (rules.engine): conditions per sensor, combined per river or
district within a window; limits, scopes, gaps, order, restarts, lapses, and the default pack's
flood early warning on the Sampit fleet."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from pantau.alerts import Severity
from pantau.domain import Sensor
from pantau.metrics import SensorKind
from pantau.readings import Reading
from pantau.rulepack.config import load_rules, parse_rules
from rules.engine import Engine
from rules.signals import Signal, SignalKind, Skip, Why
from simulators.fleet import load_fleet
from tests.support import MIN, T0, continued
from tests.support import minutes as at

ROOT = Path(__file__).resolve().parents[2]
RIVER = "river:testkota/Sungai Uji"


def rain(sid: str, district: str, river: str | None, order: int) -> Sensor:
    meta: dict[str, Any] = {"order": order} | ({"river": river} if river else {})
    return Sensor(id=sid, kind=SensorKind.RAIN, city="testkota", district=district, metadata=meta)


def gauge(sid: str, district: str, river: str, order: int) -> Sensor:
    return Sensor(
        id=sid, kind=SensorKind.FLOOD, city="testkota", district=district, metadata={"river": river, "order": order}
    )


SENSORS = {
    s.id: s
    for s in (
        rain("RG-1", "Hulu", "Sungai Uji", 1),
        gauge("WL-1", "Hulu", "Sungai Uji", 1),
        gauge("WL-2", "Hilir", "Sungai Uji", 2),
        rain("RG-4", "Hilir", "Sungai Uji", 3),
        rain("RG-9", "Hulu", "Sungai Lain", 1),
        gauge("WL-9", "Hilir", "Sungai Lain", 2),
        rain("RG-X", "Hulu", None, 1),  # no river metadata
    )
}


def warning(**fields: Any) -> dict[str, Any]:
    """The default pack's flood early warning (deploy/rules.yaml)."""
    rule = {"id": "flood-warning", "kind": "composite", "scope": "river", "match": "all", "window": "3h"}
    heavy = {"name": "heavy-rain-upstream", "kind": "threshold", "select": {"kind": "rain", "order": 1}}
    heavy |= {"metric": "rain_mm", "aggregate": "sum", "window": "1h", "op": ">=", "value": 10}
    rising = {
        "name": "level-rising-downstream",
        "kind": "rate_of_change",
        "select": {"kind": "flood", "order": {"min": 2}},
    }
    rising |= {"metric": "water_level_cm", "direction": "rise", "delta": 20, "window": "1h"}
    return rule | {"severity": "warning", "conditions": [heavy, rising]} | fields


def plain(**fields: Any) -> dict[str, Any]:
    """Two plain thresholds (no aggregate): rain_mm ≥ 10 at a rain gauge, level ≥ 200 at a river gauge."""
    rule = {"id": "wet", "kind": "composite", "scope": "river", "match": "all", "window": "3h", "severity": "info"}
    a = {"name": "rain", "kind": "threshold", "select": {"kind": "rain"}, "metric": "rain_mm", "op": ">=", "value": 10}
    b = {"name": "high", "kind": "threshold", "select": {"kind": "flood"}, "metric": "water_level_cm"}
    b |= {"op": ">=", "value": 200}
    return rule | {"conditions": [a, b]} | fields


def engine(*rules: dict[str, Any], sensors: dict[str, Sensor] | None = None) -> Engine:
    return Engine(parse_rules({"version": 1, "rules": list(rules)}), sensors or SENSORS)


def series(sensor: str, metric: str, values: list[float], *, start: float = 0.0) -> list[Reading]:
    """Readings every 5 minutes from `start` minutes after T0."""
    return [(T0 + (start + 5 * k) * MIN, sensor, metric, v) for k, v in enumerate(values)]


def live(e: Engine, readings: list[Reading], **kw: Any) -> list[Signal]:
    """One batch per timestamp, in event-time order, as a live feed delivers them."""
    by_ts: dict[float, list[Reading]] = defaultdict(list)
    for r in readings:
        by_ts[r[0]].append(r)
    out: list[Signal] = []
    for ts in sorted(by_ts):
        out += e.evaluate(by_ts[ts], **kw)
    return out


# Rain at RG-1: 3 mm per 5 minutes for 20 minutes: the hourly sum reaches 12 at 15 min and holds
# until the first reading leaves the window at 60 (last satisfied at 55).
RAIN = series("RG-1", "rain_mm", [3.0] * 4 + [0.0] * 44)
# WL-2 flat at 100 cm until 55 min, then +5 cm per 5 minutes for 40 minutes, then flat (to 240 min):
# +20 within the hour at 75.
LEVEL = series("WL-2", "water_level_cm", [100.0] * 12 + [100.0 + 5 * k for k in range(1, 9)] + [140.0] * 29)
SCENARIO = RAIN + LEVEL


def test_all_conditions_within_the_window_raise_once_per_scope_and_lapse() -> None:
    out = live(engine(warning()), SCENARIO)
    assert [(at(t), t.kind, t.why) for t in out] == [
        (75.0, SignalKind.RAISE, Why.COMPOSITE_MATCHED),  # +20 within 1h at WL-2; the rain 20 min before
        (235.0, SignalKind.CLEAR, Why.COMPOSITE_LAPSED),  # the rain's last satisfaction (55) + 3h
    ]
    raised, cleared = out
    assert (raised.scope, raised.sensor_id, raised.city, raised.district) == (RIVER, None, "testkota", "")
    assert (raised.severity, raised.value) == (Severity.WARNING, 20.0)
    assert raised.reason == (
        "all of heavy-rain-upstream (RG-1: sum rain_mm over 1h 12 >= 10, 20m earlier), "
        "level-rising-downstream (WL-2: water_level_cm +20 within 1h (at 120)) within 3h"
    )
    assert cleared.severity is None and cleared.value == 12.0
    assert cleared.reason.startswith("heavy-rain-upstream not met within 3h (last by RG-1 at ")


def test_exactly_at_the_window_holds_and_just_beyond_does_not() -> None:
    dry = series("RG-1", "rain_mm", [10.0] + [0.0] * 40)
    # The rain condition held only at 0; the level reaches 200 exactly 3 hours later: still within
    # (the window is closed), for that instant: the next reading, at 185, finds it lapsed at 180.
    just = live(engine(plain()), dry + series("WL-2", "water_level_cm", [150.0] * 36 + [200.0]))
    assert [(at(t), t.kind, t.value) for t in just] == [
        (180.0, SignalKind.RAISE, 200.0),
        (180.0, SignalKind.CLEAR, 10.0),
    ]
    late = live(engine(plain()), dry + series("WL-2", "water_level_cm", [150.0] * 37 + [200.0]))
    assert late == []
    # Exactly at the thresholds: >= 10 and >= 200 are met by 10 and 200; 9.9 is not.
    assert live(engine(plain()), series("RG-1", "rain_mm", [9.9]) + series("WL-2", "water_level_cm", [200.0])) == []


def test_conditions_combine_within_one_river_only() -> None:
    e = engine(plain())
    # Rain on Sungai Lain, high water on Sungai Uji: two scopes, neither complete.
    assert live(e, series("RG-9", "rain_mm", [12.0]) + series("WL-2", "water_level_cm", [210.0])) == []
    out = live(e, series("RG-1", "rain_mm", [11.0], start=10))
    assert [(t.scope, at(t)) for t in out] == [(RIVER, 10.0)]
    out = live(e, series("WL-9", "water_level_cm", [250.0], start=20))
    assert [(t.scope, at(t)) for t in out] == [("river:testkota/Sungai Lain", 20.0)]


def test_match_any_and_district_scope() -> None:
    e = engine(plain(scope="district", match="any"))
    out = live(e, series("RG-4", "rain_mm", [15.0, 0.0]) + series("WL-2", "water_level_cm", [100.0] * 40))
    assert [(at(t), t.kind, t.scope, t.district) for t in out] == [
        (0.0, SignalKind.RAISE, "district:testkota/Hilir", "Hilir"),
        (180.0, SignalKind.CLEAR, "district:testkota/Hilir", "Hilir"),  # nothing met since 0
    ]
    assert out[0].reason == "any of rain (RG-4: rain_mm 15 >= 10) within 3h"
    assert out[1].reason == "no condition met within 3h"
    # Rain in Hulu and high water in Hilir: all-of per district never combines them.
    e = engine(plain(scope="district"))
    assert live(e, series("RG-1", "rain_mm", [15.0]) + series("WL-2", "water_level_cm", [250.0])) == []
    out = live(e, series("RG-4", "rain_mm", [15.0], start=5))  # rain in Hilir too
    assert [(t.scope, t.kind, at(t), t.value) for t in out] == [
        ("district:testkota/Hilir", SignalKind.RAISE, 5.0, 15.0)
    ]


def test_a_data_gap_restarts_a_condition_for() -> None:
    rule = plain()
    rule["conditions"][0] |= {"value": 5, "for": "30m"}
    e = engine(rule)
    high = series("WL-2", "water_level_cm", [210.0] * 30)
    # Rain ≥ 5 at 0, 5, 10, then nothing until 30 (a 20-minute gap), then ≥ 5 every 5 minutes: the
    # 30 minutes count from 30, so the rain condition (and with it the composite) holds at 60.
    wet = series("RG-1", "rain_mm", [6.0] * 3) + series("RG-1", "rain_mm", [6.0] * 8, start=30)
    assert [at(t) for t in live(e, high + wet)] == [60.0]
    # Without the gap the same readings satisfy it at 30.
    assert [at(t) for t in live(engine(rule), high + series("RG-1", "rain_mm", [6.0] * 8))] == [30.0]


def test_a_batch_in_any_order_gives_the_same_signals() -> None:
    expected = live(engine(warning()), SCENARIO)
    # The whole scenario as one batch, newest first (so WL-2, whose rise comes later in event time,
    # is fed before RG-1): the scope still combines the satisfactions in event-time order.
    assert engine(warning()).evaluate(list(reversed(SCENARIO))) == expected
    # A batch holding a rain satisfaction at 0 and a rise 3h05m later must not combine them.
    dry = series("RG-1", "rain_mm", [10.0] + [0.0] * 38)
    late_rise = series("WL-2", "water_level_cm", [150.0] * 37 + [200.0])
    assert engine(plain()).evaluate(list(reversed(dry + late_rise))) == []
    # One batch can both raise and lapse: every reading of the scope advances its time, not only the
    # satisfying ones (here WL-2's readings after its high mark at 10 run on to 200).
    batch = series("RG-1", "rain_mm", [10.0, 0.0, 0.0]) + series(
        "WL-2", "water_level_cm", [150.0, 150.0, 200.0] + [150.0] * 38
    )
    assert [(at(t), t.kind) for t in engine(plain()).evaluate(batch)] == [
        (10.0, SignalKind.RAISE),
        (180.0, SignalKind.CLEAR),
    ]


def test_a_late_reading_is_no_satisfaction() -> None:
    e = engine(plain())
    live(e, series("RG-1", "rain_mm", [0.0] * 4) + series("WL-2", "water_level_cm", [210.0] * 4))
    # Heavy rain stamped before RG-1's watermark: dropped as late, the composite stays quiet.
    assert e.evaluate([(T0 + 7 * MIN, "RG-1", "rain_mm", 30.0)]) == []
    assert e.stats.skipped[Skip.LATE] == 1


def test_restart_while_pending_and_while_raised() -> None:
    whole = live(engine(warning()), SCENARIO)
    first = engine(warning())
    # Up to 70 min: the rain condition held (15..55), the rise not yet (at 70: +10).
    split = live(first, [r for r in SCENARIO if r[0] <= T0 + 70 * MIN])
    assert split == []
    second = continued(first, engine(warning()))
    split += live(second, [r for r in SCENARIO if T0 + 70 * MIN < r[0] <= T0 + 120 * MIN])
    third = continued(second, engine(warning()))
    split += live(third, [r for r in SCENARIO if r[0] > T0 + 120 * MIN])
    assert split == whole and [t.kind for t in whole] == [SignalKind.RAISE, SignalKind.CLEAR]


def test_restore_forgets_conditions_no_longer_in_the_rule() -> None:
    first = engine(plain())
    live(first, series("RG-1", "rain_mm", [12.0]))
    renamed = plain()
    renamed["conditions"][0]["name"] = "downpour"
    second = engine(renamed)
    second.restore(json.loads(json.dumps(first.state())))
    # The old "rain" satisfaction does not count as "downpour".
    assert live(second, series("WL-2", "water_level_cm", [220.0], start=5)) == []


def test_tick_lets_a_silent_scope_lapse_in_event_time() -> None:
    e = engine(warning())
    out = live(e, [r for r in SCENARIO if r[0] <= T0 + 100 * MIN])
    assert [at(t) for t in out] == [75.0]
    assert e.tick(T0 + 235 * MIN) == []  # still holds at 235 (within 3h of 55)
    (cleared,) = e.tick(T0 + 236 * MIN)
    assert (at(cleared), cleared.why) == (235.0, Why.COMPOSITE_LAPSED)
    assert e.tick(T0 + 300 * MIN) == []


def test_with_arrivals_a_wall_clock_tick_advances_the_scope_by_the_time_since_it_last_arrived() -> None:
    # A backfill: yesterday's readings up to 100 min arrive now. A wall-clock tick an hour later
    # puts the scope at 100 + 60 = 160 min of its event time: still within the window.
    now = T0 + 86400
    e = engine(warning())
    out = e.evaluate([r for r in SCENARIO if r[0] <= T0 + 100 * MIN], arrived=now)
    assert [at(t) for t in out] == [75.0]
    assert e.tick(now + 60 * MIN) == []
    assert e.tick(now + 135 * MIN) == []  # 235: the last instant it holds
    (cleared,) = e.tick(now + 140 * MIN)
    assert at(cleared) == 235.0
    # The scope's arrival is part of the state.
    assert json.loads(json.dumps(e.state()))["rules"]["flood-warning"]["series"]["scopes"][RIVER]["arrived"] == now


def test_a_sensor_without_the_scope_metadata_is_reported() -> None:
    e = engine(warning())
    assert live(e, series("RG-X", "rain_mm", [20.0, 20.0]) + series("WL-2", "water_level_cm", [100.0, 150.0])) == []
    assert "no metadata 'river'" in e.metadata_errors[("flood-warning", "RG-X")]
    assert e.stats.skipped[Skip.BAD_METADATA] == 2


def test_default_pack_flood_early_warning_on_the_sampit_fleet() -> None:
    fleet = load_fleet("sampit")
    sensors = {s.id: s for s in fleet.sensors}
    e = Engine(load_rules(ROOT / "deploy" / "rules.yaml"), sensors)
    assert sensors["SPT-RG-01"].metadata["order"] == 1 and sensors["SPT-WL-02"].metadata["order"] == 2
    steps = 12 * 10  # ten hours of 5-minute reports
    readings: list[Reading] = []
    for k in range(steps):
        ts = T0 + k * 5 * MIN
        # Upstream on the Mentaya: a 30-minute downpour (4 mm per 5 minutes) from the second hour.
        readings.append((ts, "SPT-RG-01", "rain_mm", 4.0 if 12 <= k < 18 else 0.0))
        readings.append((ts, "SPT-RG-03", "rain_mm", 0.0))  # dry on the Cempaga
        # Downstream on the Mentaya: +3 cm per 5 minutes for an hour from the third hour.
        rise = 3.0 * min(max(k - 24, 0), 12)
        readings.append((ts, "SPT-WL-02", "water_level_cm", 200.0 + rise))
        readings.append((ts, "SPT-WL-03", "water_level_cm", 220.0))
        # The Cempaga rises too, but without rain upstream: no early warning there.
        readings.append((ts, "SPT-WL-05", "water_level_cm", 120.0 + 2 * min(k, 40)))
    out = [t for t in live(e, readings, arrived=None) if t.rule_id == "flood-early-warning"]
    assert [(t.kind, t.scope) for t in out] == [
        (SignalKind.RAISE, "river:sampit/Sungai Mentaya"),
        (SignalKind.CLEAR, "river:sampit/Sungai Mentaya"),
    ]
    raised, cleared = out
    # The rain sums 12 mm within the hour at 1h10m (k = 14); the level has risen 21 cm within the
    # hour at 2h35m (k = 31), 1h25m later: raise there, valued at the rise.
    assert (raised.event_ts - T0, raised.value, raised.severity) == (31 * 5 * MIN, 21.0, Severity.WARNING)
    assert (raised.sensor_id, raised.city, raised.district) == (None, "sampit", "")
    assert "SPT-RG-01" in raised.reason and "SPT-WL-02" in raised.reason
    # The hourly sum stays ≥ 10 until k = 26 (12 mm: k = 15, 16, 17), its last satisfaction; the
    # alert lapses 3 hours after it, seen at the next reading.
    assert (cleared.event_ts - T0, cleared.why) == ((26 + 36) * 5 * MIN, Why.COMPOSITE_LAPSED)
    assert cleared.reason.startswith("heavy-rain-upstream not met within 3h (last by SPT-RG-01")
