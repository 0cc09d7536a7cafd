"""composite: all (or any) of named threshold and rate-of-change conditions held, each by some
sensor of one scope (a district, or a river of a city), within a window; one alert per scope.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from pantau.alerts import Severity
from pantau.domain import Sensor
from pantau.rulepack.durations import format_seconds
from pantau.rulepack.model import (
    Aggregate,
    CompositeCondition,
    CompositeRule,
    Direction,
    Match,
    RateCondition,
    Scope,
    ThresholdCondition,
)
from rules.kinds.base import BaseEvaluator, Context, Series, holds, state_of
from rules.signals import Signal, SignalKind, Skip, Why
from rules.state import ConditionState, Satisfied, ScopeState
from rules.windows import Window

__all__ = ["CompositeEvaluator"]


class _Member(NamedTuple):
    """A sensor in a composite: its scope key (None without the metadata the scope needs), the
    scope's city and district ("" for a river), and the indices of the conditions selecting it."""

    key: str | None
    city: str
    district: str
    conds: tuple[int, ...]


@dataclass(slots=True)
class _Pending:
    """A composite scope's share of the batch: its newest event time and the satisfactions seen,
    as (ts, condition index, sensor id, value, reading)."""

    city: str
    district: str
    clock: float
    hits: list[tuple[float, int, str, float, float]] = field(default_factory=list)


class CompositeEvaluator(BaseEvaluator):
    """composite: all (or any) of the named conditions satisfied, each by some sensor of one scope
    (a district, or a river of a city), within `window` of each other; one alert per scope.

    Each condition is evaluated per sensor as its own kind: a threshold (on the reading or its
    aggregate over the condition's window, held for the condition's `for`) or a rate of change (as
    `RateEvaluator`). A sensor satisfies it at each reading where it holds; the scope keeps each
    condition's latest satisfaction. At the scope's event time t (the newest reading of its
    sensors) the combination holds when every (`all`) or some (`any`) condition was satisfied in
    [t - window, t]: RAISE (`composite_matched`) at the satisfaction that completes it. It lapses
    at the oldest needed satisfaction + window (`all`; the newest for `any`): CLEAR
    (`composite_lapsed`) with that event time once the scope's time has passed it. The batch's
    satisfactions are taken in event-time order across the scope's sensors (`finish`); one older
    than the scope's time (another sensor already reported later) counts as of the scope's time.
    `tick(now)` lets a silent scope lapse: with arrivals, its time advances by the wall-clock
    time since its last batch arrived; without, `now` is event time.
    """

    def __init__(self, rule: CompositeRule, ctx: Context) -> None:
        self.rule = rule
        self._r = rule
        self.tag = rule.kind.value
        self._ctx = ctx
        self._window_s = rule.window.total_seconds()
        self._conditions = rule.conditions
        self._cond_window_s = [c.window.total_seconds() if c.window is not None else 0.0 for c in rule.conditions]
        self._cond_for_s = [
            c.for_.total_seconds() if isinstance(c, ThresholdCondition) else 0.0 for c in rule.conditions
        ]
        self.scopes: dict[str, ScopeState] = {}
        self.conditions: dict[str, dict[str, ConditionState]] = {c.name: {} for c in rule.conditions}
        self._members: dict[str, _Member] = {}
        self._pending: dict[str, _Pending] = {}
        self.wanted = None

    def _member(self, sensor: Sensor) -> _Member:
        """The sensor's scope and the conditions that select it (cached); a sensor that lacks what
        the scope groups by has no scope key, and the problem goes to metadata_errors."""
        member = self._members.get(sensor.id)
        if member is not None:
            return member
        conds = tuple(i for i, c in enumerate(self._conditions) if c.select.matches(sensor))
        if self._r.scope is Scope.RIVER:
            river = sensor.metadata.get("river")
            if isinstance(river, str) and river:
                member = _Member(f"river:{sensor.city}/{river}", sensor.city, "", conds)
            else:
                problem = "no metadata 'river' (the composite's scope groups sensors by river)"
        elif sensor.district:
            member = _Member(f"district:{sensor.city}/{sensor.district}", sensor.city, sensor.district, conds)
        else:
            problem = "no district (the composite's scope groups sensors by district)"
        if member is None:
            self._ctx.metadata_errors[(self._r.id, sensor.id)] = f"sensor {sensor.id}: {problem}"
            member = _Member(None, sensor.city, "", conds)
        self._members[sensor.id] = member
        return member

    def feed(self, sensor: Sensor, series: Mapping[str, Series], out: list[Signal]) -> None:
        key, city, district, conds = self._member(sensor)
        if key is None:
            if any(self._conditions[i].metric in series for i in conds):
                self._ctx.stats.skipped[Skip.BAD_METADATA] += 1
            return
        pending: _Pending | None = None
        for i in conds:
            c = self._conditions[i]
            s = series.get(c.metric)
            if s is None:
                continue
            if pending is None:
                pending = self._pending.get(key)
                if pending is None:
                    pending = self._pending[key] = _Pending(city, district, s.ts[-1])
            if s.ts[-1] > pending.clock:
                pending.clock = s.ts[-1]
            st = state_of(self.conditions[c.name], sensor.id, ConditionState)
            hits, sid, width = pending.hits, sensor.id, self._cond_window_s[i]
            if isinstance(c, ThresholdCondition):
                trigger, aggregate, for_s = c.trigger, c.aggregate, self._cond_for_s[i]
                for ts, v, gap in zip(s.ts, s.values, s.gaps, strict=True):
                    if gap:
                        st.since = None
                    if aggregate is None:
                        x = v
                    else:
                        st.window.push(ts, v, width)
                        x = _aggregate(st.window, aggregate)
                    if not holds(trigger, x):
                        st.since = None
                        continue
                    if st.since is None:
                        st.since = ts
                    if ts - st.since >= for_s:
                        hits.append((ts, i, sid, x, v))
            else:
                rise, delta = c.direction is Direction.RISE, c.delta
                for ts, v in zip(s.ts, s.values, strict=True):
                    st.window.push(ts, v, width, closed=True)
                    change = v - st.window.low if rise else st.window.high - v
                    if change >= delta:
                        hits.append((ts, i, sid, change, v))

    def finish(self, out: list[Signal]) -> None:
        arrived = self._ctx.arrived
        for key, pending in self._pending.items():
            sc = self.scopes.get(key)
            if sc is None:
                sc = self.scopes[key] = ScopeState(city=pending.city, district=pending.district)
            if len(pending.hits) > 1:
                pending.hits.sort()
            for ts, i, sid, value, reading in pending.hits:
                t = ts if sc.clock is None else max(sc.clock, ts)
                self._lapse(key, sc, t, out)
                name = self._conditions[i].name
                last = sc.last.get(name)
                if last is None or ts >= last.ts:
                    sc.last[name] = Satisfied(ts, sid, value, reading)
                sc.clock = t
                ends = self._ends(sc)
                if not sc.active and ends is not None and t <= ends:
                    sc.active = True
                    out.append(self._matched(key, sc, t, value))
            t = pending.clock if sc.clock is None else max(sc.clock, pending.clock)
            self._lapse(key, sc, t, out)
            sc.clock = t
            if arrived is not None:
                sc.arrived = arrived
        self._pending.clear()

    def _recent(self, sc: ScopeState) -> list[tuple[CompositeCondition, Satisfied]]:
        return [(c, sc.last[c.name]) for c in self._conditions if c.name in sc.last]

    def _ends(self, sc: ScopeState) -> float | None:
        """The last event time at which the combination holds, or None if it never held."""
        recent = self._recent(sc)
        if not recent:
            return None
        if self._r.match is Match.ALL:
            if len(recent) < len(self._conditions):
                return None
            return min(s.ts for _, s in recent) + self._window_s
        return max(s.ts for _, s in recent) + self._window_s

    def _lapse(self, key: str, sc: ScopeState, t: float, out: list[Signal]) -> None:
        """Clear an active scope whose combination stopped holding before `t`."""
        if not sc.active:
            return
        ends = self._ends(sc)
        if ends is not None and t <= ends:
            return
        sc.active = False
        recent = self._recent(sc)
        at = ends if ends is not None else t
        w = format_seconds(self._window_s)
        if self._r.match is Match.ALL and recent:
            c, s = min(recent, key=lambda cs: cs[1].ts)
            reason = f"{c.name} not met within {w} (last by {s.sensor_id} at {_iso(s.ts)})"
            value: float | None = s.value
        else:
            reason = f"no condition met within {w}"
            value = max(recent, key=lambda cs: cs[1].ts)[1].value if recent else None
        out.append(self._signal(key, sc, SignalKind.CLEAR, Why.COMPOSITE_LAPSED, at, value, None, reason))

    def _matched(self, key: str, sc: ScopeState, t: float, value: float) -> Signal:
        r = self._r
        parts = []
        for c, s in self._recent(sc):
            if t - s.ts > self._window_s:
                continue
            earlier = f", {format_seconds(t - s.ts)} earlier" if s.ts < t else ""
            parts.append(f"{c.name} ({s.sensor_id}: {_describe(c, s)}{earlier})")
        reason = f"{r.match.value} of {', '.join(parts)} within {format_seconds(self._window_s)}"
        return self._signal(key, sc, SignalKind.RAISE, Why.COMPOSITE_MATCHED, t, value, r.severity, reason)

    def _signal(
        self,
        key: str,
        sc: ScopeState,
        kind: SignalKind,
        why: Why,
        ts: float,
        value: float | None,
        severity: Severity | None,
        reason: str,
    ) -> Signal:
        return Signal(
            rule_id=self._r.id,
            scope=key,
            sensor_id=None,
            city=sc.city,
            district=sc.district,
            kind=kind,
            why=why,
            event_ts=ts,
            value=value,
            severity=severity,
            reason=reason,
        )

    def tick(self, now: float, out: list[Signal]) -> None:
        for key, sc in self.scopes.items():
            if not sc.active or sc.clock is None:
                continue
            if sc.arrived is not None:
                t = sc.clock + max(0.0, now - sc.arrived)
            elif self._ctx.first_arrival is None:
                t = now  # no arrivals: `now` is event time
            else:
                continue  # arrivals in use but none recorded for this scope (older state): wait for a reading
            self._lapse(key, sc, t, out)

    def registry_changed(self, sensors: Mapping[str, Sensor]) -> None:
        self._members.clear()  # scopes follow the sensors' new metadata

    def export(self) -> dict[str, Any]:
        return {
            "scopes": {key: sc.export() for key, sc in self.scopes.items()},
            "conditions": {
                name: {sid: st.export() for sid, st in states.items()} for name, states in self.conditions.items()
            },
        }

    def load(self, data: Mapping[str, Any]) -> None:
        self.scopes = {key: ScopeState.load(d) for key, d in data["scopes"].items()}
        for name, states in data["conditions"].items():
            if name in self.conditions:  # a condition since removed from the rule is forgotten
                width = self._cond_window_s[[c.name for c in self._conditions].index(name)]
                self.conditions[name] = {sid: ConditionState.load(d, width) for sid, d in states.items()}


def _describe(c: CompositeCondition, s: Satisfied) -> str:
    if isinstance(c, RateCondition):
        sign = "+" if c.direction is Direction.RISE else "-"
        return f"{c.metric} {sign}{s.value:g} within {format_seconds(c.window.total_seconds())} (at {s.reading:g})"
    what = (
        c.metric
        if c.aggregate is None or c.window is None
        else f"{c.aggregate.value} {c.metric} over {format_seconds(c.window.total_seconds())}"
    )
    return f"{what} {s.value:g} {c.trigger}"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _aggregate(window: Window, aggregate: Aggregate) -> float:
    """A threshold condition's aggregate over its own window (conditions keep theirs per sensor)."""
    if aggregate is Aggregate.MEAN:
        return window.mean
    if aggregate is Aggregate.SUM:
        return window.total
    if aggregate is Aggregate.MIN:
        return window.low
    return window.high
