"""The rule engine's pure core: batches of readings in, alert transitions out. No I/O, no asyncio.

Everything runs in event time (the readings' timestamps); the engine never reads a clock. A batch
goes through a pipeline of small stages (after alertmanager's route → group → inhibit → dedup):

    group     readings → per sensor, per metric, in event-time order
    order     drop readings at or before the series' watermark (late or duplicate): `Skip`;
              record each series' arrival when the caller says when the batch arrived
    route     the evaluators whose rule selects the sensor (cached per sensor)
    evaluate  each `Evaluator` (one per rule; the Protocol below) advances its per-sensor state
              and appends `Signal`s, each with a named `Why`
    finish    cross-sensor work once every sensor of the batch is fed (composite scopes)
    reject    the batch's ingest rejections that name a sensor → the out_of_range counters

`tick(now)` drives what needs time to pass without readings: absence, out_of_range clearing,
composite lapses. `state()` exports everything a restart needs (pending `for`s, active alerts and
levels, windows, watermarks, arrivals, rejection counts, composite scopes) as JSON;
`Engine.restore(state)` loads it into a new engine, so a restart neither loses a pending `for` nor
fires a duplicate.

Kinds evaluated: threshold (with aggregate + window), rate_of_change, index_band (ispu, siaga, los,
rain), absence, data_quality (stuck, out_of_range, also of one `metric`) and composite. Semantics
(gaps, late readings, levels, arrivals, windows) are in docs/rules.md, "Evaluation".
"""

from __future__ import annotations

import bisect
import math
import operator
from collections import Counter
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import partial
from typing import Any, NamedTuple, Protocol, TypeVar

import numpy as np
from numpy.typing import NDArray

from pantau.alerts import Severity
from pantau.domain import Sensor
from pantau.readings import Reading, Rejection
from rules.durations import format_duration
from rules.errors import SensorMetadataError
from rules.indices import (
    IspuCategories,
    SiagaLevel,
    SiagaThresholds,
    capacity_pcu_h,
    degree_of_saturation,
    flow_pcu_h,
    ispu_station,
    level_of_service,
    rain_class,
    siaga_level,
    siaga_thresholds,
)
from rules.model import (
    AbsenceRule,
    Aggregate,
    CompositeCondition,
    CompositeRule,
    Condition,
    Direction,
    IndexBandRule,
    IndexLevel,
    IspuParams,
    LosParams,
    Match,
    Op,
    OutOfRangeRule,
    RainParams,
    RateCondition,
    RateOfChangeRule,
    Rule,
    RuleSet,
    Scope,
    SiagaParams,
    StuckRule,
    ThresholdCondition,
    ThresholdRule,
    level_order,
)
from rules.state import (
    AbsenceState,
    ConditionState,
    HoldState,
    IndexState,
    RejectionState,
    Satisfied,
    ScopeState,
    StuckState,
    WindowedState,
    interval_step,
)
from rules.windows import History, Summary, Window, history_resolution

__all__ = [
    "STATE_VERSION",
    "Engine",
    "EngineStats",
    "Evaluator",
    "Reading",
    "Rejection",
    "Series",
    "Signal",
    "SignalKind",
    "Skip",
    "Why",
]

# 2: the series' cadence moved from each rule's state to the engine's (`intervals`), idle series
# keep no state, per-series state exports as lists, windows as slot entries (rules.windows).
# 3: aggregated thresholds read shared histories (the engine's "histories"), keep `recent`.
STATE_VERSION = 3
# Default shortest data gap that interrupts a pending `for`: three missed reports of the default
# 5-minute cadence, the same silence the default pack calls a sensor offline (deploy/rules.yaml).
DEFAULT_MIN_GAP_S = 900.0


class SignalKind(StrEnum):
    """What the alert store should do: open/escalate/de-escalate (RAISE) or resolve (CLEAR)."""

    RAISE = "raise"
    CLEAR = "clear"


class Why(StrEnum):
    """Why a transition happened."""

    THRESHOLD_CROSSED = "threshold_crossed"  # trigger holds; the rule has no `for`
    THRESHOLD_HELD_FOR = "threshold_held_for"  # trigger held continuously for `for`
    CLEAR_CROSSED = "clear_crossed"  # clear condition holds; no clear `for`
    CLEAR_HELD_FOR = "clear_held_for"  # clear condition held continuously for its `for`
    RATE_EXCEEDED = "rate_exceeded"  # change within the window reached `delta`
    RATE_SUBSIDED = "rate_subsided"  # change stayed below `clear.delta` (for its `for`)
    INDEX_LEVEL_REACHED = "index_level_reached"  # an alerting level, from none
    INDEX_LEVEL_CHANGED = "index_level_changed"  # another alerting level: escalation or de-escalation
    INDEX_LEVEL_CLEARED = "index_level_cleared"  # back to a level that maps to no severity
    ABSENT = "absent"  # no reading for the absence rule's `for` (on tick)
    READING_RETURNED = "reading_returned"  # the next reading after an absence
    STUCK = "stuck"  # data_quality/stuck: the value has not changed (within tolerance) for `window`
    VALUE_CHANGED = "value_changed"  # a stuck sensor's value changed beyond the tolerance
    REJECTIONS_REACHED = "rejections_reached"  # data_quality/out_of_range: `count` rejections in `window`
    REJECTIONS_SUBSIDED = "rejections_subsided"  # fewer than `count` rejections left in `window`
    COMPOSITE_MATCHED = "composite_matched"  # all/any conditions held in one scope within `window`
    COMPOSITE_LAPSED = "composite_lapsed"  # the combination no longer holds within `window`


class Skip(StrEnum):
    """Why a reading (or one rule's use of it) was not evaluated; counted in `EngineStats.skipped`."""

    UNKNOWN_SENSOR = "unknown_sensor"  # not in the registry the engine was given
    LATE = "late"  # older than the last reading processed for its sensor and metric
    DUPLICATE = "duplicate"  # same timestamp as one already processed for its sensor and metric
    BAD_METADATA = "bad_metadata"  # the sensor lacks metadata the rule needs (index thresholds, scope)
    NO_INTERVAL = "no_interval"  # a vehicle_count before any interval_s from that counter
    EXPIRED = "expired"  # a rejection already outside an out_of_range rule's window when it came in


@dataclass(frozen=True, slots=True, kw_only=True)
class Signal:
    """One alert transition for the alert store: raise (with severity) or clear, and why."""

    rule_id: str
    scope: str  # the sensor id for per-sensor rules; "river:{city}/{river}" or "district:{city}/{district}"
    sensor_id: str | None  # None for a composite's scope
    city: str
    district: str  # "" for a river scope
    kind: SignalKind
    why: Why
    event_ts: float  # epoch seconds: the reading (or tick) behind the transition
    value: float | None
    severity: Severity | None  # set for RAISE, None for CLEAR
    reason: str

    def __post_init__(self) -> None:
        if (self.kind is SignalKind.RAISE) != (self.severity is not None):
            raise ValueError(f"{self.rule_id}/{self.scope}: a raise needs a severity and a clear has none")

    @property
    def event_time(self) -> datetime:
        """`event_ts` as an aware UTC datetime (what the alert store takes)."""
        return datetime.fromtimestamp(self.event_ts, UTC)


@dataclass(slots=True)
class Series:
    """One sensor's in-order readings of one metric in this batch; `idx` indexes the batch arrays;
    `gaps` says which reading follows a data gap in the series (see rules.state); it is kept only
    for the metrics a threshold, rate of change, stuck check or composite reads (else empty)."""

    ts: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    idx: list[int] = field(default_factory=list)
    gaps: list[bool] = field(default_factory=list)


class Batch:
    """The whole batch as columns, for evaluators that vectorise across sensors in `prepare`."""

    __slots__ = ("_metric_col", "_positions", "metrics", "sids", "ts", "values")

    def __init__(
        self, ts: Sequence[float], values: NDArray[np.float64], sids: Sequence[str], metrics: Sequence[str]
    ) -> None:
        self.ts = ts
        self.values = values
        self.sids = sids
        self.metrics = frozenset(metrics)
        self._metric_col: Sequence[str] | NDArray[np.object_] = metrics  # an array once a metric is looked up
        self._positions: dict[str, NDArray[np.intp]] = {}

    def positions(self, metric: str) -> NDArray[np.intp]:
        """The batch positions of `metric`'s readings (cached per batch)."""
        pos = self._positions.get(metric)
        if pos is None:
            if self.metrics == {metric}:
                pos = np.arange(len(self.values))
            elif metric not in self.metrics:
                pos = np.empty(0, dtype=np.intp)
            else:
                if not isinstance(self._metric_col, np.ndarray):
                    self._metric_col = np.asarray(self._metric_col, dtype=object)
                pos = np.flatnonzero(self._metric_col == metric)
            self._positions[metric] = pos
        return pos


@dataclass(slots=True)
class EngineStats:
    """Counters since the engine started (not part of the exported state)."""

    readings: int = 0
    evaluated: int = 0  # in-order readings of known sensors
    skipped: Counter[Skip] = field(default_factory=Counter)
    rejections: int = 0  # rejections given to `evaluate`
    # Rejections not counted: unknown_sensor (once), expired (once per out_of_range rule).
    rejections_skipped: Counter[Skip] = field(default_factory=Counter)


class Context:
    """What evaluators share with the engine: settings, last-seen times and arrivals, problems."""

    def __init__(self, *, min_gap_s: float) -> None:
        self.min_gap_s = min_gap_s
        self.watermarks: dict[str, dict[str, float]] = {}  # sensor → metric → last ts processed
        # sensor → metric → typical interval between readings: the series' cadence (with the
        # watermark as its last reading), shared by every rule that reads the series
        self.intervals: dict[str, dict[str, float]] = {}
        self.gap_metrics: frozenset[str] = frozenset()  # the metrics those cadences are kept for
        self.origin: float | None = None  # first event time the engine saw (absence of never-seen sensors)
        # sensor → metric → `arrived` of the last batch that carried an in-order reading of it
        self.arrivals: dict[str, dict[str, float]] = {}
        self.first_arrival: float | None = None  # the earliest `arrived` (absence of never-seen sensors)
        self.arrived: float | None = None  # the batch being evaluated: its `arrived`, if given
        self.stats = EngineStats()
        self.metadata_errors: dict[tuple[str, str], str] = {}  # (rule id, sensor id) → problem
        # The aggregated thresholds' windows, one per metric and history resolution (rules.windows)
        self.histories: dict[str, History] = {}

    def history(self, metric: str, width_s: float) -> History:
        """The shared history a window `width_s` wide over `metric` reads (made, or widened, here)."""
        resolution = history_resolution(width_s)
        h = History(metric, resolution)
        h = self.histories.setdefault(h.key, h)
        h.width_s = max(h.width_s, width_s)
        return h


_S = TypeVar("_S")


def _state_of(states: dict[str, _S], key: str, make: Callable[[], _S]) -> _S:
    """The series state under `key`, made on first use."""
    st = states.get(key)
    if st is None:
        st = states[key] = make()
    return st


class Evaluator(Protocol):
    """One rule's evaluation over its sensors' series; every supported kind implements this."""

    rule: Rule
    tag: str  # kind (and index) the exported state belongs to
    # The sensors `feed` needs to see in this batch (set by `prepare`), None for every sensor
    # routed to it: a rule whose readings can change nothing for most sensors (a plain threshold
    # not met and neither pending nor active) is not called for them at all.
    wanted: Container[str] | None

    def prepare(self, batch: Batch) -> None:
        """Vectorised work over the whole batch before any sensor is fed."""

    def feed(self, sensor: Sensor, series: Mapping[str, Series], out: list[Signal]) -> None:
        """Advance this sensor's state over its in-order readings; append transitions.

        Called for every sensor of the batch that the rule selects and `wanted` admits."""

    def finish(self, out: list[Signal]) -> None:
        """Every sensor of the batch has been fed: cross-sensor work (composite scopes)."""

    def tick(self, now: float, out: list[Signal]) -> None:
        """Time has reached `now` without readings (absence, out_of_range, composite lapses)."""

    def registry_changed(self, sensors: Mapping[str, Sensor]) -> None:
        """The sensor registry is now `sensors`: forget what was derived from the old one (state
        kept per sensor id stays)."""

    def export(self) -> dict[str, Any]:
        """Per-sensor state as JSON."""

    def load(self, data: Mapping[str, Any]) -> None:
        """Per-sensor state from `export`."""


_PY_OPS: dict[Op, Callable[[float, float], bool]] = {
    Op.GT: operator.gt,
    Op.GE: operator.ge,
    Op.LT: operator.lt,
    Op.LE: operator.le,
    Op.EQ: operator.eq,
    Op.NE: operator.ne,
}


def _holds(condition: Condition, x: float) -> bool:
    # Plain float comparison: the same answers as Condition.holds (NaN too), without numpy's
    # per-call overhead on the per-reading path.
    return _PY_OPS[condition.op](x, condition.value)


def _transition(
    rule: Rule,
    sensor: Sensor,
    kind: SignalKind,
    why: Why,
    ts: float,
    value: float | None,
    severity: Severity | None,
    reason: str,
) -> Signal:
    return Signal(
        rule_id=rule.id,
        scope=sensor.id,
        sensor_id=sensor.id,
        city=sensor.city,
        district=sensor.district,
        kind=kind,
        why=why,
        event_ts=ts,
        value=value,
        severity=severity,
        reason=reason,
    )


def _dur(seconds: float) -> str:
    # As rule files write durations ("1h30m"); "12.5s" when not whole.
    if seconds == int(seconds) and seconds >= 0:
        return format_duration(timedelta(seconds=int(seconds)))
    return f"{seconds:g}s"


# -- threshold -------------------------------------------------------------------------------------


class ThresholdEvaluator:
    """`metric OP value` (optionally over a trailing aggregate) held for `for`; clear with hysteresis.

    Only series that are pending or active keep a `HoldState` (an idle one is the same as none).
    A plain threshold (no aggregate) is only fed the sensors whose readings meet the trigger
    somewhere in the batch (one numpy comparison in `prepare`) or that are pending or active: for
    every other sensor its readings can change nothing.

    An aggregated threshold reads its window from the metric's shared `History` (pushed once per
    reading by the engine, after the rules have seen the batch) plus the batch's own readings. A
    mean, min or max compared with <, ≤, > or ≥ can only meet the trigger when some reading in
    the window does (a mean lies between the window's min and max): such a rule keeps, per sensor,
    the event time of the last reading that met the trigger (`recent`, found by the same numpy
    comparison) and is fed only the sensors with one inside the window, or pending or active. A
    sum, or == / !=, has no such bound: it is fed every reading.
    """

    def __init__(self, rule: ThresholdRule, ctx: Context) -> None:
        self.rule: Rule = rule
        self._r = rule
        self.tag = rule.kind.value
        self._ctx = ctx
        self._for_s = rule.for_.total_seconds()
        self._clear_for_s = rule.clear_for.total_seconds()
        self._window_s = rule.window.total_seconds() if rule.window is not None else 0.0
        self._trigger_op, self._trigger_at = _PY_OPS[rule.trigger.op], rule.trigger.value
        self._clear_op, self._clear_at = _PY_OPS[rule.clear.op], rule.clear.value
        self.holds: dict[str, HoldState] = {}  # pending or active series only
        aggregate = rule.aggregate
        self.history = None if aggregate is None else ctx.history(rule.metric, self._window_s)
        self._extremes = aggregate in (Aggregate.MIN, Aggregate.MAX)
        # Whether a reading meeting the trigger must lie in the window for the aggregate to meet it.
        self._bounded = aggregate is None or (aggregate is not Aggregate.SUM and rule.trigger.op in _ORDERING)
        # Aggregated and bounded: sensor → event time of its last reading that met the trigger,
        # kept while inside the window or while the series is pending or active (holds ⊆ recent).
        self.recent: dict[str, float] = {}
        self.wanted: Container[str] | None = set() if self._bounded else None

    def prepare(self, batch: Batch) -> None:
        if not self._bounded:
            return
        pos = batch.positions(self._r.metric)
        if not len(pos):
            self.wanted = ()
            return
        values = batch.values if len(pos) == len(batch.values) else batch.values[pos]
        hits = pos[self._r.trigger.holds_array(values)].tolist()
        sids = batch.sids
        if self.history is None:
            wanted = {sids[i] for i in hits}
            if self.holds:
                wanted.update(self.holds)
            self.wanted = wanted
            return
        recent, ts = self.recent, batch.ts
        for i in hits:
            sid, t = sids[i], ts[i]
            if t > recent.get(sid, -math.inf):
                recent[sid] = t
        self.wanted = recent

    def feed(self, sensor: Sensor, series: Mapping[str, Series], out: list[Signal]) -> None:
        s = series.get(self._r.metric)
        if s is None:
            return
        sid = sensor.id
        hold = self.holds.get(sid)
        trigger_op, trigger_at, clear_op, clear_at = self._trigger_op, self._trigger_at, self._clear_op, self._clear_at
        history, width = self.history, self._window_s
        if history is not None:
            window = history.windows.get(sid)  # the readings before this batch
            own = Window() if len(s.ts) > 1 else None  # this batch's, as the rule's own window holds them
            last_hit = self.recent.get(sid, -math.inf) if self._bounded else math.inf
        for ts, x, gap in zip(s.ts, s.values, s.gaps, strict=True):
            if history is not None:
                if own is not None:
                    own.push(ts, x, width)
                if hold is None and last_hit <= ts - width:
                    continue  # idle, and no reading in the window meets the trigger: nor can the aggregate
                x = self._aggregate_at(window, own, ts, x)
            if hold is None:
                if not trigger_op(x, trigger_at):
                    continue  # idle and stays idle: what `HoldState.step` would do, without the state
                hold = HoldState()
            flipped = hold.step(
                ts,
                gap=gap,
                trigger=trigger_op(x, trigger_at),
                clear=clear_op(x, clear_at),
                for_s=self._for_s,
                clear_for_s=self._clear_for_s,
            )
            if flipped:
                out.append(self._flip(sensor, hold.active, ts, x))
            if hold.idle:
                hold = None
        if hold is None:
            self.holds.pop(sid, None)
            last = self.recent.get(sid)
            if last is not None and last <= s.ts[-1] - width:
                del self.recent[sid]  # its last trigger-meeting reading has left the window
        else:
            self.holds[sid] = hold

    def _aggregate_at(self, window: Window | None, own: Window | None, ts: float, value: float) -> float:
        """The aggregate as of the reading (ts, value): the history's entries inside the window (all
        older than this batch) together with the batch's readings so far (`own`, or just this one)."""
        aggregate, extremes = self._r.aggregate, self._extremes
        assert aggregate is not None
        old = window.summary(ts - self._window_s, extremes=extremes) if window is not None else _EMPTY
        if own is None:
            return _combine(aggregate, old.readings + 1, old.total + value, min(old.low, value), max(old.high, value))
        low, high = (min(old.low, own.low), max(old.high, own.high)) if extremes else (math.inf, -math.inf)
        return _combine(aggregate, old.readings + len(own), old.total + own.total, low, high)

    def _flip(self, sensor: Sensor, raised: bool, ts: float, x: float) -> Signal:
        r = self._r
        what = r.metric if r.aggregate is None else f"{r.aggregate.value} {r.metric} over {_dur(self._window_s)}"
        if raised:
            why = Why.THRESHOLD_HELD_FOR if self._for_s > 0 else Why.THRESHOLD_CROSSED
            held = f" for {_dur(self._for_s)}" if self._for_s > 0 else ""
            return _transition(r, sensor, SignalKind.RAISE, why, ts, x, r.severity, f"{what} {x:g} {r.trigger}{held}")
        why = Why.CLEAR_HELD_FOR if self._clear_for_s > 0 else Why.CLEAR_CROSSED
        held = f" for {_dur(self._clear_for_s)}" if self._clear_for_s > 0 else ""
        return _transition(r, sensor, SignalKind.CLEAR, why, ts, x, None, f"{what} {x:g} {r.clear}{held}")

    def finish(self, out: list[Signal]) -> None:
        pass

    def tick(self, now: float, out: list[Signal]) -> None:
        pass

    def registry_changed(self, sensors: Mapping[str, Sensor]) -> None:
        pass

    def export(self) -> dict[str, Any]:
        """Per sensor [active, since] (pending or active only); an aggregated rule adds `recent`
        (its window is in the engine's histories)."""
        holds = {sid: st.export() for sid, st in self.holds.items()}
        if self.history is None:
            return holds
        return {"holds": holds, "recent": dict(self.recent)}

    def load(self, data: Mapping[str, Any]) -> None:
        self.holds, self.recent = {}, {}
        if self.history is not None:
            self.recent = {sid: float(t) for sid, t in data["recent"].items()}
            data = data["holds"]
        for sid, d in data.items():
            hold = HoldState.load(d)
            if not hold.idle:
                self.holds[sid] = hold
                self.recent.setdefault(sid, -math.inf)  # fed while pending or active


_ORDERING = frozenset({Op.GT, Op.GE, Op.LT, Op.LE})
_EMPTY = Summary(0, 0.0, math.inf, -math.inf)


def _combine(aggregate: Aggregate, count: int, total: float, low: float, high: float) -> float:
    if aggregate is Aggregate.MEAN:
        return total / count
    if aggregate is Aggregate.SUM:
        return total
    if aggregate is Aggregate.MIN:
        return low
    return high


def _aggregate(window: Window, aggregate: Aggregate) -> float:
    if aggregate is Aggregate.MEAN:
        return window.mean
    if aggregate is Aggregate.SUM:
        return window.total
    if aggregate is Aggregate.MIN:
        return window.low
    return window.high


# -- rate of change --------------------------------------------------------------------------------


class RateEvaluator:
    """A rise (fall) of at least `delta` within `window`: the reading minus the window's lowest
    (the window's highest minus the reading), over the closed window [ts - window, ts]."""

    def __init__(self, rule: RateOfChangeRule, ctx: Context) -> None:
        self.rule: Rule = rule
        self._r = rule
        self.tag = rule.kind.value
        self._ctx = ctx
        self._window_s = rule.window.total_seconds()
        self._clear_for_s = rule.clear_for.total_seconds()
        self.states: dict[str, WindowedState] = {}
        self.wanted: Container[str] | None = None

    def prepare(self, batch: Batch) -> None:
        pass

    def feed(self, sensor: Sensor, series: Mapping[str, Series], out: list[Signal]) -> None:
        s = series.get(self._r.metric)
        if s is None:
            return
        r = self._r
        st = _state_of(self.states, sensor.id, WindowedState)
        rise = r.direction is Direction.RISE
        for ts, v, gap in zip(s.ts, s.values, s.gaps, strict=True):
            st.window.push(ts, v, self._window_s, closed=True)
            change = v - st.window.low if rise else st.window.high - v
            if st.hold.step(
                ts,
                gap=gap,
                trigger=change >= r.delta,
                clear=change < r.clear_delta,
                for_s=0.0,
                clear_for_s=self._clear_for_s,
            ):
                sign = "+" if rise else "-"
                window = _dur(self._window_s)
                if st.hold.active:
                    reason = f"{r.metric} {sign}{change:g} within {window} (≥ {r.delta:g})"
                    out.append(
                        _transition(r, sensor, SignalKind.RAISE, Why.RATE_EXCEEDED, ts, change, r.severity, reason)
                    )
                else:
                    held = f" for {_dur(self._clear_for_s)}" if self._clear_for_s > 0 else ""
                    reason = f"{r.metric} {sign}{change:g} within {window}: below {r.clear_delta:g}{held}"
                    clear = _transition(r, sensor, SignalKind.CLEAR, Why.RATE_SUBSIDED, ts, change, None, reason)
                    out.append(clear)

    def finish(self, out: list[Signal]) -> None:
        pass

    def tick(self, now: float, out: list[Signal]) -> None:
        pass

    def registry_changed(self, sensors: Mapping[str, Sensor]) -> None:
        pass

    def export(self) -> dict[str, Any]:
        return {sid: st.export() for sid, st in self.states.items()}

    def load(self, data: Mapping[str, Any]) -> None:
        self.states = {sid: WindowedState.load(d, self._window_s) for sid, d in data.items()}


# -- index band ------------------------------------------------------------------------------------


# An index evaluated at one event time: (level, describe). `describe()` gives its value and reason
# text, asked for only when the alert moves (an ISPU station's index and critical pollutant cost far
# more than its category, which is all a reading that moves nothing needs). A plain tuple because
# one is made per reading, and a NamedTuple's constructor costs several times a tuple's.
_Level = tuple[IndexLevel, Callable[[], tuple[float, str]]]


class IndexEvaluator:
    """An index level (ISPU, Siaga, LOS, rain class) mapped to a severity; one alert per sensor that
    escalates and de-escalates. A worse level must hold for `for`, a milder one for `clear.for`."""

    def __init__(self, rule: IndexBandRule, ctx: Context) -> None:
        self.rule: Rule = rule
        self._r = rule
        self.tag = f"{rule.kind.value}/{rule.index.value}"
        self._ctx = ctx
        self._for_s = rule.for_.total_seconds()
        self._clear_for_s = rule.clear_for.total_seconds()
        self._order = level_order(rule.index)
        # Effective rank per level: its place in the order if it raises a severity, else -1 (none).
        self._eff = {lv: (i if rule.severity_of(lv) is not None else -1) for i, lv in enumerate(self._order)}
        self.states: dict[str, IndexState] = {}
        self.wanted: Container[str] | None = None
        self._siaga: dict[str, SiagaThresholds] = {}
        self._capacity: dict[str, float] = {}
        params = rule.params
        self._widths: dict[str, float] = {}  # the windows' widths by name
        self._categories: IspuCategories | None = None
        if isinstance(params, IspuParams):
            self._metrics: tuple[str, ...] = params.pollutants
            self._widths = {p: w.total_seconds() for p, w in params.table.windows.items()}
            self._categories = IspuCategories(params.table)
            self._levels = self._ispu
        elif isinstance(params, SiagaParams):
            self._metrics = ("water_level_cm",)
            self._levels = self._siaga_levels
        elif isinstance(params, LosParams):
            self._metrics = ("interval_s", "vehicle_count")
            self._levels = self._los
        else:
            self._metrics = ("rain_mm",)
            self._levels = self._rain
            self._widths = {"rain_mm": 3600.0 if params.period.value == "hourly" else 86400.0}
        self._metric_set = frozenset(self._metrics)

    def prepare(self, batch: Batch) -> None:
        pass

    def feed(self, sensor: Sensor, series: Mapping[str, Series], out: list[Signal]) -> None:
        mine = [(m, s) for m, s in series.items() if m in self._metric_set]
        if not mine:
            return
        st = _state_of(self.states, sensor.id, IndexState)
        # The metrics this index reads, as event-time steps {metric: value} in time order. One
        # metric (the usual batch of an air station) is already in order: no list of steps to build.
        if len(mine) == 1:
            m, s = mine[0]
            for ts, v in zip(s.ts, s.values, strict=True):
                if not self._step(sensor, st, ts, {m: v}, out):
                    return
            return
        merged: dict[float, dict[str, float]] = {}
        for m, s in mine:
            for ts, v in zip(s.ts, s.values, strict=True):
                merged.setdefault(ts, {})[m] = v
        for ts, values in sorted(merged.items()):
            if not self._step(sensor, st, ts, values, out):
                return

    def _step(self, sensor: Sensor, st: IndexState, ts: float, values: dict[str, float], out: list[Signal]) -> bool:
        """Score one event time; False when the sensor's metadata stops this rule for it."""
        gap = st.cadence.step(ts, self._ctx.min_gap_s)
        try:
            got = self._levels(sensor, st, ts, values)
        except SensorMetadataError as exc:
            self._ctx.metadata_errors[(self._r.id, sensor.id)] = str(exc)
            self._ctx.stats.skipped[Skip.BAD_METADATA] += 1
            return False
        if got is not None:
            previous = st.rank
            if _index_step(st, ts, gap, self._eff[got[0]], self._for_s, self._clear_for_s):
                out.append(self._moved(sensor, previous, st.rank, ts, got))
        return True

    def _moved(self, sensor: Sensor, previous: int, rank: int, ts: float, got: _Level) -> Signal:
        r = self._r
        now, describe = got
        value, text = describe()
        if rank < 0:
            return _transition(
                r, sensor, SignalKind.CLEAR, Why.INDEX_LEVEL_CLEARED, ts, value, None, f"{text}: no alert"
            )
        level = self._order[rank]
        severity = r.severity_of(level)
        assert severity is not None
        why = Why.INDEX_LEVEL_REACHED if previous < 0 else Why.INDEX_LEVEL_CHANGED
        label = _level_label(level)
        reason = text if level == now else f"{label} held ({text} now)"
        return _transition(r, sensor, SignalKind.RAISE, why, ts, value, severity, reason)

    # Level functions: the index at one event time, or None when this step has nothing to score.

    def _siaga_levels(self, sensor: Sensor, st: IndexState, ts: float, values: dict[str, float]) -> _Level | None:
        v = values["water_level_cm"]
        th = self._siaga.get(sensor.id)
        if th is None:
            th = self._siaga[sensor.id] = siaga_thresholds(sensor)
        params = self._r.params
        assert isinstance(params, SiagaParams)
        level = siaga_level(v, th, at_threshold=params.at_threshold)
        return level, lambda: (v, f"water level {v:g} cm: {level.label}")

    def _los(self, sensor: Sensor, st: IndexState, ts: float, values: dict[str, float]) -> _Level | None:
        interval = values.get("interval_s")
        if interval is not None:
            st.interval_s = interval
        count = values.get("vehicle_count")
        if count is None:
            return None
        if st.interval_s is None:
            self._ctx.stats.skipped[Skip.NO_INTERVAL] += 1
            return None
        capacity = self._capacity.get(sensor.id)
        if capacity is None:
            capacity = self._capacity[sensor.id] = capacity_pcu_h(sensor)
        params = self._r.params
        assert isinstance(params, LosParams)
        ds = degree_of_saturation(flow_pcu_h(count, st.interval_s, pcu_factor=params.pcu_factor), capacity)
        los = level_of_service(ds)
        return los, lambda: (ds, f"LOS {los.value}: degree of saturation {ds:.2f}")

    def _ispu(self, sensor: Sensor, st: IndexState, ts: float, values: dict[str, float]) -> _Level | None:
        # The station's category from each pollutant's window mean (rules.indices.IspuCategories);
        # the index and critical pollutant only if the alert moves (`_ispu_detail`).
        widths, categories = self._widths, self._categories
        assert categories is not None
        for p, v in values.items():
            w = st.windows.get(p)
            if w is None:
                w = st.windows[p] = Window()
            w.push(ts, v, widths[p])
        rank = -1
        for p, w in st.windows.items():
            w.trim(ts, widths[p])
            if len(w):
                mean = w.mean
                if mean == mean:  # a NaN mean (a NaN reading in the window) is skipped, as ispu_station does
                    r = categories.rank(p, mean)
                    if r > rank:
                        rank = r
        if rank < 0:
            return None
        return categories.order[rank], partial(self._ispu_detail, st)

    def _ispu_detail(self, st: IndexState) -> tuple[float, str]:
        params = self._r.params
        assert isinstance(params, IspuParams)
        # A running mean of readings ≥ 0 may dip a hair below zero after evictions.
        concentrations: dict[str, float | None] = {p: max(w.mean, 0.0) for p, w in st.windows.items() if len(w)}
        station = ispu_station(concentrations, table=params.table)
        assert station is not None
        return float(station.index), (
            f"ISPU {station.index} ({station.category.label}), critical pollutant {station.critical}"
        )

    def _rain(self, sensor: Sensor, st: IndexState, ts: float, values: dict[str, float]) -> _Level | None:
        params = self._r.params
        assert isinstance(params, RainParams)
        width = self._widths["rain_mm"]
        w = st.windows.get("rain_mm")
        if w is None:
            w = st.windows["rain_mm"] = Window()
        w.push(ts, values["rain_mm"], width)
        total = max(w.total, 0.0)  # a running sum may dip a hair below zero after evictions
        cls = rain_class(total, params.period, at_threshold=params.at_threshold)
        return cls, lambda: (total, f"rain {total:g} mm {params.period.value}: {cls.value}")

    def finish(self, out: list[Signal]) -> None:
        pass

    def tick(self, now: float, out: list[Signal]) -> None:
        pass

    def registry_changed(self, sensors: Mapping[str, Sensor]) -> None:
        self._siaga.clear()  # thresholds and capacities are read again from the new metadata
        self._capacity.clear()

    def export(self) -> dict[str, Any]:
        return {sid: st.export() for sid, st in self.states.items()}

    def load(self, data: Mapping[str, Any]) -> None:
        self.states = {sid: IndexState.load(d, self._widths) for sid, d in data.items()}


def _level_label(level: IndexLevel) -> str:
    if isinstance(level, SiagaLevel):
        return level.label
    label = getattr(level, "label", None)
    return label if isinstance(label, str) else str(level.value)


def _index_step(st: IndexState, ts: float, gap: bool, eff: int, for_s: float, clear_for_s: float) -> bool:
    """Advance an index alert by one scored step; True when its level moved (to st.rank)."""
    if gap:
        st.since = st.bound = None
    if eff == st.rank:
        st.since = st.bound = None
        return False
    up = eff > st.rank
    if st.since is not None and st.bound is not None and (st.bound > st.rank) == up:
        # Same direction as the pending move: the level held throughout is the milder of the two
        # when worsening, the worse of the two when improving.
        st.bound = min(st.bound, eff) if up else max(st.bound, eff)
    else:
        st.since, st.bound = ts, eff
    if ts - st.since >= (for_s if up else clear_for_s):
        st.rank = st.bound
        # The reading that completed the move may already be beyond it: it starts the next one.
        st.since, st.bound = (None, None) if eff == st.rank else (ts, eff)
        return True
    return False


# -- absence ---------------------------------------------------------------------------------------


class AbsenceEvaluator:
    """No reading from a sensor (or of one metric) for `for` → RAISE on tick; the next reading clears.

    Silence is measured from the last *arrival* of an in-order reading when the engine was told
    arrivals (`evaluate(..., arrived=)`, wall clock: then call `tick` with the wall clock), else
    from the last reading's event time, else `Sensor.last_seen`, else the first arrival (or event
    time) the engine saw. So a backfill of day-old readings that arrived a minute ago is not silence.
    """

    def __init__(self, rule: AbsenceRule, ctx: Context, sensors: Sequence[Sensor]) -> None:
        self.rule: Rule = rule
        self._r = rule
        self.tag = rule.kind.value
        self._ctx = ctx
        self._for_s = rule.for_.total_seconds()
        self._sensors = [s for s in sensors if rule.select.matches(s)]
        self.states: dict[str, AbsenceState] = {}  # absent sensors only
        self.wanted: Container[str] | None = self.states  # a reading only matters to an absent sensor

    def prepare(self, batch: Batch) -> None:
        pass

    def feed(self, sensor: Sensor, series: Mapping[str, Series], out: list[Signal]) -> None:
        st = self.states.get(sensor.id)
        if st is None or not st.active:
            return
        metric = self._r.metric
        if metric is not None:
            s = series.get(metric)
            if s is None:
                return
            ts, value = s.ts[0], s.values[0]
        else:
            ts, metric = min((s.ts[0], m) for m, s in series.items())
            value = series[metric].values[0]
        del self.states[sensor.id]
        out.append(
            _transition(
                self._r, sensor, SignalKind.CLEAR, Why.READING_RETURNED, ts, value, None, f"{metric} reported again"
            )
        )

    def finish(self, out: list[Signal]) -> None:
        pass

    def _last_seen(self, sensor: Sensor) -> tuple[float | None, str]:
        """Since when the sensor (metric) has been silent, and what that time is."""
        ctx, metric = self._ctx, self._r.metric
        arrivals = ctx.arrivals.get(sensor.id)
        if arrivals:
            if metric is None:
                return max(arrivals.values()), "last arrived"
            if metric in arrivals:
                return arrivals[metric], "last arrived"
        marks = ctx.watermarks.get(sensor.id)
        if marks:
            if metric is None:
                return max(marks.values()), "last at"
            if metric in marks:
                return marks[metric], "last at"
        if sensor.last_seen is not None:
            return sensor.last_seen.timestamp(), "last seen"
        if ctx.first_arrival is not None:
            return ctx.first_arrival, "not seen since"
        return ctx.origin, "not seen since"

    def tick(self, now: float, out: list[Signal]) -> None:
        r = self._r
        what = f"no {r.metric} reading" if r.metric else "no reading"
        for sensor in self._sensors:
            st = self.states.get(sensor.id)
            if st is not None and st.active:
                continue
            last, since = self._last_seen(sensor)
            if last is None or now - last < self._for_s:
                continue
            if st is None:
                st = self.states[sensor.id] = AbsenceState()
            st.active = True
            silent = now - last
            when = datetime.fromtimestamp(last, UTC).isoformat()
            out.append(
                _transition(
                    r,
                    sensor,
                    SignalKind.RAISE,
                    Why.ABSENT,
                    last + self._for_s,
                    silent,
                    r.severity,
                    f"{what} for {_dur(silent)} ({since} {when})",
                )
            )

    def registry_changed(self, sensors: Mapping[str, Sensor]) -> None:
        self._sensors = [s for s in sensors.values() if self._r.select.matches(s)]

    def export(self) -> dict[str, Any]:
        return {sid: st.export() for sid, st in self.states.items() if st.active}

    def load(self, data: Mapping[str, Any]) -> None:
        self.states.clear()  # the same dict as `wanted`
        self.states.update((sid, st) for sid, d in data.items() if (st := AbsenceState.load(d)).active)


# -- data quality: stuck ---------------------------------------------------------------------------


class StuckEvaluator:
    """data_quality/stuck: a sensor repeating one value (within `tolerance`) for `window` of event time.

    A *run* is a stretch of consecutive in-order readings whose values span at most the tolerance
    (max - min ≤ tolerance). A run that has lasted at least `window` (first to last reading) and
    holds at least `min_readings` readings raises (`stuck`). A reading that takes the span above
    the tolerance ends the run (a change: clears with `value_changed`) and starts the next one. A
    data gap (as for every kind: see rules.state) restarts the run at the reading after it: nothing
    is known about the value in between; an active alert stays raised unless that reading changed.
    """

    def __init__(self, rule: StuckRule, ctx: Context) -> None:
        self.rule: Rule = rule
        self._r = rule
        self.tag = f"{rule.kind.value}/{rule.check}"
        self._ctx = ctx
        self._window_s = rule.window.total_seconds()
        self.states: dict[str, StuckState] = {}
        self.wanted: Container[str] | None = None

    def prepare(self, batch: Batch) -> None:
        pass

    def feed(self, sensor: Sensor, series: Mapping[str, Series], out: list[Signal]) -> None:
        s = series.get(self._r.metric)
        if s is None:
            return
        r = self._r
        st = _state_of(self.states, sensor.id, StuckState)
        tolerance, window_s, min_readings = r.tolerance, self._window_s, r.min_readings
        for ts, v, gap in zip(s.ts, s.values, s.gaps, strict=True):
            if st.count:
                low, high = min(st.low, v), max(st.high, v)
                changed = high - low > tolerance
                if not gap and not changed:
                    st.low, st.high = low, high
                    st.count += 1
                    assert st.start is not None
                    if not st.active and st.count >= min_readings and ts - st.start >= window_s:
                        st.active = True
                        out.append(self._stuck(sensor, st, ts, v))
                    continue
                if changed and st.active:
                    st.active = False
                    out.append(self._changed(sensor, st, ts, v))
            st.start, st.low, st.high, st.count = ts, v, v, 1

    def _stuck(self, sensor: Sensor, st: StuckState, ts: float, v: float) -> Signal:
        r = self._r
        assert st.start is not None
        spread = f" (spanning {st.high - st.low:g} ≤ {r.tolerance:g})" if r.tolerance > 0 else ""
        reason = f"{r.metric} unchanged at {v:g} for {_dur(ts - st.start)}, {st.count} readings{spread}"
        return _transition(r, sensor, SignalKind.RAISE, Why.STUCK, ts, v, r.severity, reason)

    def _changed(self, sensor: Sensor, st: StuckState, ts: float, v: float) -> Signal:
        r = self._r
        assert st.start is not None
        was = f"{st.low:g}" if st.low == st.high else f"{st.low:g}..{st.high:g}"
        reason = f"{r.metric} changed to {v:g} (was {was} for {_dur(ts - st.start)})"
        return _transition(r, sensor, SignalKind.CLEAR, Why.VALUE_CHANGED, ts, v, None, reason)

    def finish(self, out: list[Signal]) -> None:
        pass

    def tick(self, now: float, out: list[Signal]) -> None:
        pass

    def registry_changed(self, sensors: Mapping[str, Sensor]) -> None:
        pass

    def export(self) -> dict[str, Any]:
        return {sid: st.export() for sid, st in self.states.items()}

    def load(self, data: Mapping[str, Any]) -> None:
        self.states = {sid: StuckState.load(d) for sid, d in data.items()}


# -- data quality: out of range --------------------------------------------------------------------


class OutOfRangeEvaluator:
    """data_quality/out_of_range: at least `count` of a sensor's ingest rejections (of `reasons`)
    within `window`, in the rejections' receive time.

    The count at time t is the number of rejections received in (t - window, t]; it is taken at
    each counted rejection (RAISE `rejections_reached` at the one that brings it to `count`). It
    falls below `count` at a computable instant (the `count`-th newest rejection + window): the
    alert clears (`rejections_subsided`, event time that instant) once the rule's clock has passed
    it. The clock is the latest of the rejections' receive times, the batches' `arrived` and
    `tick(now)`: receive times are ingest's wall clock, so in production `tick` runs on it too. A
    rejection received at or before clock - window is outside the window already (`expired`).
    """

    def __init__(self, rule: OutOfRangeRule, ctx: Context, sensors: Mapping[str, Sensor]) -> None:
        self.rule: Rule = rule
        self._r = rule
        self.tag = f"{rule.kind.value}/{rule.check}"
        self._ctx = ctx
        self._sensors = sensors
        self._window_s = rule.window.total_seconds()
        self.clock: float | None = None
        self.states: dict[str, RejectionState] = {}
        self.wanted: Container[str] | None = ()  # reads rejections, not readings

    def prepare(self, batch: Batch) -> None:
        pass

    def feed(self, sensor: Sensor, series: Mapping[str, Series], out: list[Signal]) -> None:
        pass  # not routed readings: rejections come through `reject`

    def finish(self, out: list[Signal]) -> None:
        pass

    def counts(self, reason: str, metric: str | None) -> bool:
        """Whether a rejection of this reason (about this metric, if a value's) counts for the rule."""
        return reason in self._r.reasons and (self._r.metric is None or metric == self._r.metric)

    def reject(self, sensor: Sensor, received: Sequence[float], out: list[Signal]) -> None:
        """Count this sensor's rejections of the batch (receive times, ascending)."""
        r, w = self._r, self._window_s
        st = self.states.get(sensor.id)
        for t in received:
            if self.clock is not None and t <= self.clock - w:
                self._ctx.stats.rejections_skipped[Skip.EXPIRED] += 1
                continue
            if st is None:
                st = self.states[sensor.id] = RejectionState()
            times = st.times
            if not times or t >= times[-1]:
                self._lapse(sensor, st, t, out, strict=True)
                times.append(t)
            else:  # out of order, still inside the window: counts from the newest
                bisect.insort(times, t)
            newest = times[-1]
            cut = bisect.bisect_right(times, newest - w)
            if cut:
                del times[:cut]
            if self.clock is None or newest > self.clock:
                self.clock = newest
            if not st.active and len(times) >= r.count:
                st.active = True
                reasons = ", ".join(sorted(x.value for x in r.reasons))
                reason = f"{len(times)} rejections ({reasons}) within {_dur(w)}: limit {r.count}"
                out.append(
                    _transition(
                        r,
                        sensor,
                        SignalKind.RAISE,
                        Why.REJECTIONS_REACHED,
                        newest,
                        float(len(times)),
                        r.severity,
                        reason,
                    )
                )

    def _lapse(self, sensor: Sensor, st: RejectionState, now: float, out: list[Signal], *, strict: bool) -> None:
        """Clear when the count had fallen below the limit by `now` (strictly before `now` when a new
        rejection at `now` is about to be counted: it would keep the count up at that instant)."""
        r, w = self._r, self._window_s
        if not st.active:
            return
        times = st.times
        ends = times[-r.count] + w if len(times) >= r.count else now
        if now > ends or (not strict and now >= ends):
            st.active = False
            left = len(times) - bisect.bisect_right(times, ends - w)
            reason = f"{left} rejections within {_dur(w)}: below {r.count}"
            out.append(
                _transition(r, sensor, SignalKind.CLEAR, Why.REJECTIONS_SUBSIDED, ends, float(left), None, reason)
            )

    def tick(self, now: float, out: list[Signal]) -> None:
        """The clock has reached `now` (a batch's arrival or a tick): clear lapsed counts, forget old ones."""
        if self.clock is None or now > self.clock:
            self.clock = now
        now = self.clock
        horizon = now - self._window_s
        for sid in list(self.states):
            st = self.states[sid]
            sensor = self._sensors.get(sid)
            if sensor is not None:  # a sensor gone from the registry keeps its state until it returns
                self._lapse(sensor, st, now, out, strict=False)
            cut = bisect.bisect_right(st.times, horizon)
            if cut:
                del st.times[:cut]
            if not st.times and not st.active:
                del self.states[sid]

    def registry_changed(self, sensors: Mapping[str, Sensor]) -> None:
        self._sensors = sensors

    def export(self) -> dict[str, Any]:
        return {"clock": self.clock, "sensors": {sid: st.export() for sid, st in self.states.items()}}

    def load(self, data: Mapping[str, Any]) -> None:
        self.clock = data["clock"]
        self.states = {sid: RejectionState.load(d) for sid, d in data["sensors"].items()}


# -- composite -------------------------------------------------------------------------------------


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


class CompositeEvaluator:
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
        self.rule: Rule = rule
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
        self.wanted: Container[str] | None = None

    def prepare(self, batch: Batch) -> None:
        pass

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
            st = _state_of(self.conditions[c.name], sensor.id, ConditionState)
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
                    if not _holds(trigger, x):
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
        w = _dur(self._window_s)
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
            earlier = f", {_dur(t - s.ts)} earlier" if s.ts < t else ""
            parts.append(f"{c.name} ({s.sensor_id}: {_describe(c, s)}{earlier})")
        reason = f"{r.match.value} of {', '.join(parts)} within {_dur(self._window_s)}"
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
        return f"{c.metric} {sign}{s.value:g} within {_dur(c.window.total_seconds())} (at {s.reading:g})"
    what = (
        c.metric
        if c.aggregate is None or c.window is None
        else f"{c.aggregate.value} {c.metric} over {_dur(c.window.total_seconds())}"
    )
    return f"{what} {s.value:g} {c.trigger}"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


# -- the engine ------------------------------------------------------------------------------------


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
