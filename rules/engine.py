"""The rule engine's pure core: batches of readings in, alert transitions out. No I/O, no asyncio.

Everything runs in event time (the readings' timestamps); the engine never reads a clock. A batch
goes through a pipeline of small stages (after alertmanager's route → group → inhibit → dedup):

    group     readings → per sensor, per metric, in event-time order
    order     drop readings at or before the series' watermark (late or duplicate): `Skip`;
              record each series' arrival when the caller says when the batch arrived
    route     the evaluators whose rule selects the sensor (cached per sensor)
    evaluate  each `Evaluator` (one per rule; the Protocol in rules.kinds.base) advances its
              per-sensor state and appends `Signal`s (rules.signals), each with a named `Why`
    finish    cross-sensor work once every sensor of the batch is fed (composite scopes)
    reject    the batch's ingest rejections that name a sensor → the out_of_range counters

`tick(now)` drives what needs time to pass without readings: absence, out_of_range clearing,
composite lapses. `state()` exports everything a restart needs (pending `for`s, active alerts and
levels, windows, watermarks, arrivals, rejection counts, composite scopes) as JSON;
`Engine.restore(state)` loads it into a new engine, so a restart neither loses a pending `for` nor
fires a duplicate.

Kinds evaluated, a module each in rules.kinds: threshold (with aggregate + window), rate_of_change,
index_band (ispu, siaga, los, rain), absence, data_quality (stuck, out_of_range, also of one
`metric`) and composite. Semantics (gaps, late readings, levels, arrivals, windows) are in
docs/rules.md, "Evaluation".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pantau.domain import Sensor
from pantau.readings import Reading, Rejection
from pantau.rulepack.model import (
    AbsenceRule,
    CompositeRule,
    IndexBandRule,
    OutOfRangeRule,
    RateOfChangeRule,
    Rule,
    RuleSet,
    StuckRule,
    ThresholdRule,
)
from rules.kinds.absence import AbsenceEvaluator
from rules.kinds.base import Batch, Context, Evaluator, Series
from rules.kinds.composite import CompositeEvaluator
from rules.kinds.index import IndexEvaluator
from rules.kinds.quality import OutOfRangeEvaluator, StuckEvaluator
from rules.kinds.rate import RateEvaluator
from rules.kinds.threshold import ThresholdEvaluator
from rules.signals import EngineStats, Signal, Skip
from rules.state import interval_step
from rules.windows import History

__all__ = ["STATE_VERSION", "Engine"]

# 2: the series' cadence moved from each rule's state to the engine's (`intervals`), idle series
# keep no state, per-series state exports as lists, windows as slot entries (rules.windows).
# 3: aggregated thresholds read shared histories (the engine's "histories"), keep `recent`.
STATE_VERSION = 3
# Default shortest data gap that interrupts a pending `for`: three missed reports of the default
# 5-minute cadence, the same silence the default pack calls a sensor offline (deploy/rules.yaml).
DEFAULT_MIN_GAP_S = 900.0


class Engine:
    """Evaluates a RuleSet over batches of readings from a sensor registry, in event time."""

    def __init__(self, rules: RuleSet, sensors: Mapping[str, Sensor], *, min_gap_s: float = DEFAULT_MIN_GAP_S) -> None:
        if min_gap_s <= 0:
            raise ValueError(f"min_gap_s: {min_gap_s!r} must be positive")
        self.rules = rules
        self.sensors = dict(sensors)
        self._ctx = Context(min_gap_s=min_gap_s)
        disabled: list[str] = []
        evaluators: list[Evaluator] = []
        counters: list[OutOfRangeEvaluator] = []
        for rule in rules:
            if not rule.enabled:
                disabled.append(rule.id)
                continue
            if isinstance(rule, ThresholdRule):
                evaluators.append(ThresholdEvaluator(rule, self._ctx))
            elif isinstance(rule, RateOfChangeRule):
                evaluators.append(RateEvaluator(rule, self._ctx))
            elif isinstance(rule, IndexBandRule):
                evaluators.append(IndexEvaluator(rule, self._ctx))
            elif isinstance(rule, AbsenceRule):
                evaluators.append(AbsenceEvaluator(rule, self._ctx, list(self.sensors.values())))
            elif isinstance(rule, StuckRule):
                evaluators.append(StuckEvaluator(rule, self._ctx))
            elif isinstance(rule, OutOfRangeRule):
                counters.append(OutOfRangeEvaluator(rule, self._ctx, self.sensors))
            else:
                evaluators.append(CompositeEvaluator(rule, self._ctx))
        self.disabled_rules: tuple[str, ...] = tuple(disabled)
        # Readings are routed to `_readers`; rejections to `_counters` (they read no readings).
        self._readers: tuple[Evaluator, ...] = tuple(evaluators)
        self._counters: tuple[OutOfRangeEvaluator, ...] = tuple(counters)
        self.evaluators: tuple[Evaluator, ...] = (*evaluators, *counters)
        self._routes: dict[str, tuple[Evaluator, ...]] = {}
        self._history_routes: dict[str, tuple[History, ...]] = {}
        # The metrics whose series some rule reads with `Series.gaps`: only theirs keep a cadence
        # (a sampit air station reports a dozen metrics; most are read by no such rule).
        self._ctx.gap_metrics = frozenset(m for ev in evaluators for m in _gap_metrics(ev.rule))
        self._counter_routes: dict[str, tuple[OutOfRangeEvaluator, ...]] = {}

    def set_sensors(self, sensors: Mapping[str, Sensor]) -> None:
        """Evaluate over a new sensor registry from now on (sensors added, removed or edited),
        keeping every rule's state: what `state()` and `restore()` into a new engine would give,
        without copying the state (which took seconds at 10,000 sensors × 20 rules)."""
        self.sensors = dict(sensors)
        self._routes.clear()
        self._history_routes.clear()
        self._counter_routes.clear()
        self._ctx.metadata_errors.clear()  # found again as the sensors report
        for ev in self.evaluators:
            ev.registry_changed(self.sensors)

    @property
    def stats(self) -> EngineStats:
        """Counters since start: readings, evaluated, skipped by `Skip`."""
        return self._ctx.stats

    @property
    def metadata_errors(self) -> Mapping[tuple[str, str], str]:
        """(rule id, sensor id) → why that sensor's metadata cannot be used by that rule."""
        return self._ctx.metadata_errors

    # -- stages --------------------------------------------------------------------------------

    def evaluate(
        self, readings: Sequence[Reading], rejections: Sequence[Rejection] = (), *, arrived: float | None = None
    ) -> list[Signal]:
        """Evaluate one batch (any order); the transitions in event-time order.

        `rejections` are the same batch's ingest rejections that named a sensor (for out_of_range
        checks). `arrived` is when ingest committed the batch (wall clock, epoch seconds): given,
        it becomes the last arrival of every series with an in-order reading, and absence rules
        measure silence from it (call `tick` with the wall clock then); None in event-time-only use.
        """
        out: list[Signal] = []
        ctx = self._ctx
        ctx.arrived = arrived
        if arrived is not None and (ctx.first_arrival is None or arrived < ctx.first_arrival):
            ctx.first_arrival = arrived
        if readings:
            self._readings(readings, out)
        if rejections or (arrived is not None and self._counters):
            self._rejections(rejections, arrived, out)
        ctx.arrived = None
        out.sort(key=_event_ts)
        return out

    def _readings(self, readings: Sequence[Reading], out: list[Signal]) -> None:
        stats = self._ctx.stats
        stats.readings += len(readings)
        ts_col, sid_col, metric_col, value_col = zip(*readings, strict=True)
        grouped = self._group(sid_col, metric_col)
        batch = Batch(ts_col, np.asarray(value_col, dtype=np.float64), sid_col, metric_col)
        readers = self._readers
        for ev in readers:
            ev.prepare(batch)
        for sid, by_metric in grouped.items():
            sensor = self.sensors.get(sid)
            if sensor is None:
                stats.skipped[Skip.UNKNOWN_SENSOR] += sum(len(ix) for ix in by_metric.values())
                continue
            series = self._order(sid, by_metric, ts_col, value_col)
            if not series:
                continue
            for ev in self.route(sensor):
                wanted = ev.wanted
                if wanted is None or sid in wanted:
                    ev.feed(sensor, series, out)
            for history in self._history_route(sensor):  # after the rules: they read the batch apart
                s = series.get(history.metric)
                if s is not None:
                    history.push(sid, s.ts, s.values)
        for ev in readers:
            ev.finish(out)

    def _rejections(self, rejections: Sequence[Rejection], arrived: float | None, out: list[Signal]) -> None:
        """Route the batch's rejections to the out_of_range counters, then advance their clocks."""
        stats = self._ctx.stats
        stats.rejections += len(rejections)
        by_sensor: dict[str, list[tuple[float, str, str | None]]] = {}
        newest = arrived
        for received_at, sid, reason, metric, *_ in rejections:
            if sid not in self.sensors:
                stats.rejections_skipped[Skip.UNKNOWN_SENSOR] += 1
                continue
            by_sensor.setdefault(sid, []).append((received_at, reason, metric))
            if newest is None or received_at > newest:
                newest = received_at
        for sid, items in by_sensor.items():
            sensor = self.sensors[sid]
            items.sort(key=_received_at)
            for ev in self._counter_route(sensor):
                received = [t for t, reason, metric in items if ev.counts(reason, metric)]
                if received:
                    ev.reject(sensor, received, out)
        if newest is not None:
            for ev in self._counters:
                ev.tick(newest, out)

    @staticmethod
    def _group(sids: Sequence[str], metrics: Sequence[str]) -> dict[str, dict[str, list[int]]]:
        """Reading positions per sensor and metric."""
        grouped: dict[str, dict[str, list[int]]] = {}
        for i, (sid, metric) in enumerate(zip(sids, metrics, strict=True)):
            by_metric = grouped.get(sid)
            if by_metric is None:
                grouped[sid] = {metric: [i]}
            else:
                by_metric.setdefault(metric, []).append(i)
        return grouped

    def _order(
        self, sid: str, by_metric: dict[str, list[int]], ts_col: Sequence[float], value_col: Sequence[float]
    ) -> dict[str, Series]:
        """Each metric's readings in event-time order, without those at or before its watermark;
        records the batch's arrival for each metric with an in-order reading."""
        ctx = self._ctx
        marks = ctx.watermarks.get(sid)
        if marks is None:
            marks = ctx.watermarks[sid] = {}
        intervals = ctx.intervals.get(sid)
        if intervals is None:
            intervals = ctx.intervals[sid] = {}
        min_gap_s = ctx.min_gap_s
        gap_metrics = ctx.gap_metrics
        arrivals: dict[str, float] | None = None
        arrived = 0.0
        if ctx.arrived is not None:
            arrived = ctx.arrived
            arrivals = ctx.arrivals.get(sid)
            if arrivals is None:
                arrivals = ctx.arrivals[sid] = {}
        skipped = ctx.stats.skipped
        first = ctx.origin
        evaluated = 0
        out: dict[str, Series] = {}
        for metric, idx in by_metric.items():
            last = marks.get(metric)
            interval = intervals.get(metric)
            cadence = metric in gap_metrics
            if len(idx) == 1:  # the common case (one message per sensor and batch): no sort, no loop
                i = idx[0]
                ts = ts_col[i]
                if last is not None and ts <= last:
                    skipped[Skip.LATE if ts < last else Skip.DUPLICATE] += 1
                    continue
                if cadence:
                    gap, interval = interval_step(last, interval, ts, min_gap_s)
                    s = Series([ts], [value_col[i]], idx, [gap])
                else:
                    s = Series([ts], [value_col[i]], idx)
            else:
                idx.sort(key=ts_col.__getitem__)
                s = Series()
                for i in idx:
                    ts = ts_col[i]
                    if last is not None and ts <= last:
                        skipped[Skip.LATE if ts < last else Skip.DUPLICATE] += 1
                        continue
                    if cadence:
                        gap, interval = interval_step(last, interval, ts, min_gap_s)
                        s.gaps.append(gap)
                    s.ts.append(ts)
                    s.values.append(value_col[i])
                    s.idx.append(i)
                    last = ts
                if not s.ts:
                    continue
            if interval is not None:
                intervals[metric] = interval
            evaluated += len(s.ts)
            marks[metric] = s.ts[-1]
            if arrivals is not None:
                arrivals[metric] = arrived
            out[metric] = s
            if first is None or s.ts[0] < first:
                first = s.ts[0]
        ctx.stats.evaluated += evaluated
        ctx.origin = first
        return out

    def route(self, sensor: Sensor) -> tuple[Evaluator, ...]:
        """The evaluators that read this sensor's readings: their rule (or a composite's condition)
        selects it (cached). out_of_range checks read rejections, not readings, and are not here."""
        route = self._routes.get(sensor.id)
        if route is None:
            route = self._routes[sensor.id] = tuple(ev for ev in self._readers if _selects(ev.rule, sensor))
        return route

    def _history_route(self, sensor: Sensor) -> tuple[History, ...]:
        """The histories the sensor's readings go to: those of the aggregated thresholds selecting it."""
        route = self._history_routes.get(sensor.id)
        if route is None:
            histories = (ev.history for ev in self.route(sensor) if isinstance(ev, ThresholdEvaluator))
            route = self._history_routes[sensor.id] = tuple(dict.fromkeys(h for h in histories if h is not None))
        return route

    def _counter_route(self, sensor: Sensor) -> tuple[OutOfRangeEvaluator, ...]:
        route = self._counter_routes.get(sensor.id)
        if route is None:
            route = self._counter_routes[sensor.id] = tuple(ev for ev in self._counters if _selects(ev.rule, sensor))
        return route

    def tick(self, now: float) -> list[Signal]:
        """Time has reached `now`: absence rules whose `for` has passed raise, out_of_range counts
        and composite scopes that have lapsed clear. `now` is the wall clock when batches are
        evaluated with `arrived`, else event time."""
        if self._ctx.origin is None:
            self._ctx.origin = now
        out: list[Signal] = []
        for ev in self.evaluators:
            ev.tick(now, out)
        out.sort(key=_event_ts)
        return out

    # -- state ---------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything a restart needs, as JSON-serialisable data."""
        ctx = self._ctx
        return {
            "version": STATE_VERSION,
            "origin": ctx.origin,
            "watermarks": {sid: dict(m) for sid, m in ctx.watermarks.items() if m},
            "intervals": {sid: dict(m) for sid, m in ctx.intervals.items() if m},
            "first_arrival": ctx.first_arrival,
            "arrivals": {sid: dict(m) for sid, m in ctx.arrivals.items() if m},
            "histories": {key: h.export() for key, h in ctx.histories.items()},
            "rules": {ev.rule.id: {"tag": ev.tag, "series": ev.export()} for ev in self.evaluators},
        }

    def restore(self, state: Mapping[str, Any]) -> list[str]:
        """Load `state()` output into this (fresh) engine; returns the rule ids whose state was dropped
        (no longer in the rule set, or now of another kind or index)."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"engine state version {state.get('version')!r} is not {STATE_VERSION}")
        self._ctx.origin = state["origin"]
        marks = state["watermarks"]
        self._ctx.watermarks = {sid: {m: float(t) for m, t in ms.items()} for sid, ms in marks.items()}
        intervals = state["intervals"]
        self._ctx.intervals = {sid: {m: float(t) for m, t in ms.items()} for sid, ms in intervals.items()}
        # Arrivals came later within state version 1 (and are kept in version 2): a state without
        # them restores as "none known".
        self._ctx.first_arrival = state.get("first_arrival")
        arrivals = state.get("arrivals", {})
        self._ctx.arrivals = {sid: {m: float(t) for m, t in ms.items()} for sid, ms in arrivals.items()}
        for key, windows in state["histories"].items():
            history = self._ctx.histories.get(key)
            if history is not None:  # else no rule reads it any more
                history.load(windows)
        by_id = {ev.rule.id: ev for ev in self.evaluators}
        dropped: list[str] = []
        for rule_id, saved in state["rules"].items():
            ev = by_id.get(rule_id)
            if ev is None or ev.tag != saved["tag"]:
                dropped.append(rule_id)
                continue
            ev.load(saved["series"])
        return dropped


def _gap_metrics(rule: Rule) -> tuple[str, ...]:
    """The metrics a rule reads per reading with their series' data gaps (`Series.gaps`)."""
    if isinstance(rule, ThresholdRule | RateOfChangeRule | StuckRule):
        return (rule.metric,)
    if isinstance(rule, CompositeRule):
        return tuple(c.metric for c in rule.conditions)
    return ()


def _selects(rule: Rule, sensor: Sensor) -> bool:
    if isinstance(rule, CompositeRule):
        return any(c.select.matches(sensor) for c in rule.conditions)
    return rule.select.matches(sensor)


def _event_ts(t: Signal) -> float:
    return t.event_ts


def _received_at(item: tuple[float, str, str | None]) -> float:
    return item[0]
