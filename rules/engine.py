"""The rule engine's pure core: batches of readings in, alert transitions out. No I/O, no asyncio.

Everything runs in event time (the readings' timestamps), never the wall clock. A batch goes
through a pipeline of small stages (after alertmanager's route → group → inhibit → dedup):

    group     readings → per sensor, per metric, in event-time order
    order     drop readings at or before the series' watermark (late or duplicate): `Skip`
    route     the evaluators whose rule selects the sensor (cached per sensor)
    evaluate  each `Evaluator` (one per rule; the Protocol below) advances its per-sensor state
              and appends `Signal`s, each with a named `Why`

`tick(now)` drives the absence rules. `state()` exports everything a restart needs (pending `for`s,
active alerts and levels, windows, watermarks) as JSON; `Engine.restore(state)` loads it into a new
engine, so a restart neither loses a pending `for` nor fires a duplicate.

Kinds evaluated: threshold (with aggregate + window), rate_of_change, index_band (ispu, siaga, los,
rain) and absence. data_quality and composite rules are accepted but not evaluated: they are listed
in `Engine.unsupported_rules` with the reason. Semantics (gaps, late readings, levels) are in
docs/rules.md, "Evaluation".
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol, TypeVar

import numpy as np
from numpy.typing import NDArray

from pantau.domain import Sensor
from rules.config import (
    AbsenceRule,
    Aggregate,
    CompositeRule,
    Condition,
    Direction,
    IndexBandRule,
    IndexLevel,
    IspuParams,
    LosParams,
    Op,
    OutOfRangeRule,
    RainParams,
    RateOfChangeRule,
    Rule,
    RuleSet,
    Severity,
    SiagaParams,
    StuckRule,
    ThresholdRule,
    level_order,
)
from rules.durations import format_duration
from rules.errors import SensorMetadataError
from rules.indices import (
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
from rules.state import AbsenceState, IndexState, WindowedState
from rules.windows import Window

__all__ = [
    "STATE_VERSION",
    "Engine",
    "EngineStats",
    "Evaluator",
    "Reading",
    "Series",
    "Signal",
    "SignalKind",
    "Skip",
    "Why",
]

Reading = tuple[float, str, str, float]  # (ts epoch s, sensor id, metric, value): ingest.decode.Row
STATE_VERSION = 1
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


class Skip(StrEnum):
    """Why a reading (or one rule's use of it) was not evaluated; counted in `EngineStats.skipped`."""

    UNKNOWN_SENSOR = "unknown_sensor"  # not in the registry the engine was given
    LATE = "late"  # older than the last reading processed for its sensor and metric
    DUPLICATE = "duplicate"  # same timestamp as one already processed for its sensor and metric
    BAD_METADATA = "bad_metadata"  # the sensor lacks metadata the rule's index needs
    NO_INTERVAL = "no_interval"  # a vehicle_count before any interval_s from that counter


@dataclass(frozen=True, slots=True, kw_only=True)
class Signal:
    """One alert transition for the alert store: raise (with severity) or clear, and why."""

    rule_id: str
    scope: str  # the sensor id for per-sensor rules
    sensor_id: str
    city: str
    district: str
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
    """One sensor's in-order readings of one metric in this batch; `idx` indexes the batch arrays."""

    ts: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    idx: list[int] = field(default_factory=list)


@dataclass(slots=True)
class Batch:
    """The whole batch as arrays, for evaluators that vectorise across sensors."""

    values: NDArray[np.float64]
    metrics: frozenset[str]


@dataclass(slots=True)
class EngineStats:
    """Counters since the engine started (not part of the exported state)."""

    readings: int = 0
    evaluated: int = 0  # in-order readings of known sensors
    skipped: Counter[Skip] = field(default_factory=Counter)


class Context:
    """What evaluators share with the engine: settings, last-seen times, problems."""

    def __init__(self, *, min_gap_s: float) -> None:
        self.min_gap_s = min_gap_s
        self.watermarks: dict[str, dict[str, float]] = {}  # sensor → metric → last ts processed
        self.origin: float | None = None  # first event time the engine saw (absence of never-seen sensors)
        self.stats = EngineStats()
        self.metadata_errors: dict[tuple[str, str], str] = {}  # (rule id, sensor id) → problem


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

    def prepare(self, batch: Batch) -> None:
        """Vectorised work over the whole batch before any sensor is fed."""

    def feed(self, sensor: Sensor, series: Mapping[str, Series], out: list[Signal]) -> None:
        """Advance this sensor's state over its in-order readings; append transitions."""

    def tick(self, now: float, out: list[Signal]) -> None:
        """Event time has reached `now` (absence)."""

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
    """`metric OP value` (optionally over a trailing aggregate) held for `for`; clear with hysteresis."""

    def __init__(self, rule: ThresholdRule, ctx: Context) -> None:
        self.rule: Rule = rule
        self._r = rule
        self.tag = rule.kind.value
        self._ctx = ctx
        self._for_s = rule.for_.total_seconds()
        self._clear_for_s = rule.clear_for.total_seconds()
        self._window_s = rule.window.total_seconds() if rule.window is not None else 0.0
        self.states: dict[str, WindowedState] = {}
        self._trigger: list[bool] = []
        self._clear: list[bool] = []

    def prepare(self, batch: Batch) -> None:
        # Plain thresholds compare each reading: one numpy comparison over the whole batch.
        if self._r.aggregate is None and self._r.metric in batch.metrics:
            self._trigger = self._r.trigger.holds_array(batch.values).tolist()
            self._clear = self._r.clear.holds_array(batch.values).tolist()

    def feed(self, sensor: Sensor, series: Mapping[str, Series], out: list[Signal]) -> None:
        s = series.get(self._r.metric)
        if s is None:
            return
        r = self._r
        st = _state_of(self.states, sensor.id, WindowedState)
        hold = st.hold
        aggregate = r.aggregate
        for ts, v, i in zip(s.ts, s.values, s.idx, strict=True):
            gap = hold.cadence.step(ts, self._ctx.min_gap_s)
            if aggregate is None:
                x, trigger, clear = v, self._trigger[i], self._clear[i]
            else:
                st.window.push(ts, v, self._window_s)
                x = _aggregate(st.window, aggregate)
                trigger, clear = _holds(r.trigger, x), _holds(r.clear, x)
            if hold.step(ts, gap=gap, trigger=trigger, clear=clear, for_s=self._for_s, clear_for_s=self._clear_for_s):
                out.append(self._flip(sensor, hold.active, ts, x))

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

    def tick(self, now: float, out: list[Signal]) -> None:
        pass

    def export(self) -> dict[str, Any]:
        return {sid: st.export() for sid, st in self.states.items()}

    def load(self, data: Mapping[str, Any]) -> None:
        self.states = {sid: WindowedState.load(d) for sid, d in data.items()}


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

    def prepare(self, batch: Batch) -> None:
        pass

    def feed(self, sensor: Sensor, series: Mapping[str, Series], out: list[Signal]) -> None:
        s = series.get(self._r.metric)
        if s is None:
            return
        r = self._r
        st = _state_of(self.states, sensor.id, WindowedState)
        rise = r.direction is Direction.RISE
        for ts, v in zip(s.ts, s.values, strict=True):
            gap = st.hold.cadence.step(ts, self._ctx.min_gap_s)
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

    def tick(self, now: float, out: list[Signal]) -> None:
        pass

    def export(self) -> dict[str, Any]:
        return {sid: st.export() for sid, st in self.states.items()}

    def load(self, data: Mapping[str, Any]) -> None:
        self.states = {sid: WindowedState.load(d) for sid, d in data.items()}


# -- index band ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Level:
    """An index evaluated at one event time."""

    level: IndexLevel
    value: float
    text: str


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
        self._siaga: dict[str, SiagaThresholds] = {}
        self._capacity: dict[str, float] = {}
        params = rule.params
        if isinstance(params, IspuParams):
            self._metrics: tuple[str, ...] = params.pollutants
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

    def prepare(self, batch: Batch) -> None:
        pass

    def feed(self, sensor: Sensor, series: Mapping[str, Series], out: list[Signal]) -> None:
        mine = {m: series[m] for m in self._metrics if m in series}
        if not mine:
            return
        st = _state_of(self.states, sensor.id, IndexState)
        # Merge the metrics this index reads into event-time steps: {ts: {metric: value}}.
        steps: dict[float, dict[str, float]] = {}
        for m, s in mine.items():
            for ts, v in zip(s.ts, s.values, strict=True):
                steps.setdefault(ts, {})[m] = v
        for ts in sorted(steps) if len(steps) > 1 else steps:
            gap = st.cadence.step(ts, self._ctx.min_gap_s)
            try:
                got = self._levels(sensor, st, ts, steps[ts])
            except SensorMetadataError as exc:
                self._ctx.metadata_errors[(self._r.id, sensor.id)] = str(exc)
                self._ctx.stats.skipped[Skip.BAD_METADATA] += 1
                return
            if got is None:
                continue
            previous = st.rank
            if _index_step(st, ts, gap, self._eff[got.level], self._for_s, self._clear_for_s):
                out.append(self._moved(sensor, previous, st.rank, ts, got))

    def _moved(self, sensor: Sensor, previous: int, rank: int, ts: float, got: _Level) -> Signal:
        r = self._r
        if rank < 0:
            return _transition(
                r, sensor, SignalKind.CLEAR, Why.INDEX_LEVEL_CLEARED, ts, got.value, None, f"{got.text}: no alert"
            )
        level = self._order[rank]
        severity = r.severity_of(level)
        assert severity is not None
        why = Why.INDEX_LEVEL_REACHED if previous < 0 else Why.INDEX_LEVEL_CHANGED
        label = _level_label(level)
        reason = got.text if level == got.level else f"{label} held ({got.text} now)"
        return _transition(r, sensor, SignalKind.RAISE, why, ts, got.value, severity, reason)

    # Level functions: the index at one event time, or None when this step has nothing to score.

    def _siaga_levels(self, sensor: Sensor, st: IndexState, ts: float, values: dict[str, float]) -> _Level | None:
        v = values["water_level_cm"]
        th = self._siaga.get(sensor.id)
        if th is None:
            th = self._siaga[sensor.id] = siaga_thresholds(sensor)
        params = self._r.params
        assert isinstance(params, SiagaParams)
        level = siaga_level(v, th, at_threshold=params.at_threshold)
        return _Level(level, v, f"water level {v:g} cm: {level.label}")

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
        return _Level(los, ds, f"LOS {los.value}: degree of saturation {ds:.2f}")

    def _ispu(self, sensor: Sensor, st: IndexState, ts: float, values: dict[str, float]) -> _Level | None:
        params = self._r.params
        assert isinstance(params, IspuParams)
        table = params.table
        for p, v in values.items():
            w = st.windows.get(p)
            if w is None:
                w = st.windows[p] = Window()
            w.push(ts, v, table.windows[p].total_seconds())
        concentrations: dict[str, float | None] = {}
        for p, w in st.windows.items():
            w.trim(ts, table.windows[p].total_seconds())
            if len(w):
                concentrations[p] = w.mean
        station = ispu_station(concentrations, table=table)
        if station is None:
            return None
        return _Level(
            station.category,
            float(station.index),
            f"ISPU {station.index} ({station.category.label}), critical pollutant {station.critical}",
        )

    def _rain(self, sensor: Sensor, st: IndexState, ts: float, values: dict[str, float]) -> _Level | None:
        params = self._r.params
        assert isinstance(params, RainParams)
        width = 3600.0 if params.period.value == "hourly" else 86400.0
        w = st.windows.get("rain_mm")
        if w is None:
            w = st.windows["rain_mm"] = Window()
        w.push(ts, values["rain_mm"], width)
        total = max(w.total, 0.0)  # a running sum may dip a hair below zero after evictions
        cls = rain_class(total, params.period, at_threshold=params.at_threshold)
        return _Level(cls, total, f"rain {total:g} mm {params.period.value}: {cls.value}")

    def tick(self, now: float, out: list[Signal]) -> None:
        pass

    def export(self) -> dict[str, Any]:
        return {sid: st.export() for sid, st in self.states.items()}

    def load(self, data: Mapping[str, Any]) -> None:
        self.states = {sid: IndexState.load(d) for sid, d in data.items()}


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
    """No reading from a sensor (or of one metric) for `for` → RAISE on tick; the next reading clears."""

    def __init__(self, rule: AbsenceRule, ctx: Context, sensors: Sequence[Sensor]) -> None:
        self.rule: Rule = rule
        self._r = rule
        self.tag = rule.kind.value
        self._ctx = ctx
        self._for_s = rule.for_.total_seconds()
        self._sensors = [s for s in sensors if rule.select.matches(s)]
        self.states: dict[str, AbsenceState] = {}

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
        st.active = False
        out.append(
            _transition(
                self._r, sensor, SignalKind.CLEAR, Why.READING_RETURNED, ts, value, None, f"{metric} reported again"
            )
        )

    def _last_seen(self, sensor: Sensor) -> float | None:
        marks = self._ctx.watermarks.get(sensor.id)
        if marks:
            if self._r.metric is None:
                return max(marks.values())
            if self._r.metric in marks:
                return marks[self._r.metric]
        if sensor.last_seen is not None:
            return sensor.last_seen.timestamp()
        return self._ctx.origin

    def tick(self, now: float, out: list[Signal]) -> None:
        r = self._r
        what = f"no {r.metric} reading" if r.metric else "no reading"
        for sensor in self._sensors:
            st = self.states.get(sensor.id)
            if st is not None and st.active:
                continue
            last = self._last_seen(sensor)
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
                    f"{what} for {_dur(silent)} (last at {when})",
                )
            )

    def export(self) -> dict[str, Any]:
        return {sid: st.export() for sid, st in self.states.items() if st.active}

    def load(self, data: Mapping[str, Any]) -> None:
        self.states = {sid: AbsenceState.load(d) for sid, d in data.items()}


# -- the engine ------------------------------------------------------------------------------------


def _unsupported_reason(rule: Rule) -> str | None:
    if isinstance(rule, StuckRule):
        return "data_quality/stuck is not evaluated by this engine yet"
    if isinstance(rule, OutOfRangeRule):
        return "data_quality/out_of_range is not evaluated yet: the engine is not fed ingest rejections"
    if isinstance(rule, CompositeRule):
        return "composite rules (cross-sensor, per district or river) are not evaluated yet"
    return None


class Engine:
    """Evaluates a RuleSet over batches of readings from a sensor registry, in event time."""

    def __init__(self, rules: RuleSet, sensors: Mapping[str, Sensor], *, min_gap_s: float = DEFAULT_MIN_GAP_S) -> None:
        if min_gap_s <= 0:
            raise ValueError(f"min_gap_s: {min_gap_s!r} must be positive")
        self.rules = rules
        self.sensors = dict(sensors)
        self._ctx = Context(min_gap_s=min_gap_s)
        unsupported: dict[str, str] = {}
        disabled: list[str] = []
        evaluators: list[Evaluator] = []
        for rule in rules:
            if not rule.enabled:
                disabled.append(rule.id)
                continue
            reason = _unsupported_reason(rule)
            if reason is not None:
                unsupported[rule.id] = reason
            elif isinstance(rule, ThresholdRule):
                evaluators.append(ThresholdEvaluator(rule, self._ctx))
            elif isinstance(rule, RateOfChangeRule):
                evaluators.append(RateEvaluator(rule, self._ctx))
            elif isinstance(rule, IndexBandRule):
                evaluators.append(IndexEvaluator(rule, self._ctx))
            elif isinstance(rule, AbsenceRule):
                evaluators.append(AbsenceEvaluator(rule, self._ctx, list(self.sensors.values())))
        self.unsupported_rules: Mapping[str, str] = unsupported
        self.disabled_rules: tuple[str, ...] = tuple(disabled)
        self.evaluators: tuple[Evaluator, ...] = tuple(evaluators)
        self._routes: dict[str, tuple[Evaluator, ...]] = {}

    @property
    def stats(self) -> EngineStats:
        """Counters since start: readings, evaluated, skipped by `Skip`."""
        return self._ctx.stats

    @property
    def metadata_errors(self) -> Mapping[tuple[str, str], str]:
        """(rule id, sensor id) → why that sensor's metadata cannot be used by that rule."""
        return self._ctx.metadata_errors

    # -- stages --------------------------------------------------------------------------------

    def evaluate(self, readings: Sequence[Reading]) -> list[Signal]:
        """Evaluate one batch of readings (any order); the transitions in event-time order."""
        out: list[Signal] = []
        n = len(readings)
        if not n:
            return out
        stats = self._ctx.stats
        stats.readings += n
        ts_col, sid_col, metric_col, value_col = zip(*readings, strict=True)
        grouped = self._group(sid_col, metric_col)
        batch = Batch(np.asarray(value_col, dtype=np.float64), frozenset(metric_col))
        for ev in self.evaluators:
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
                ev.feed(sensor, series, out)
        out.sort(key=_event_ts)
        return out

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
        """Each metric's readings in event-time order, without those at or before its watermark."""
        ctx = self._ctx
        marks = ctx.watermarks.get(sid)
        if marks is None:
            marks = ctx.watermarks[sid] = {}
        out: dict[str, Series] = {}
        for metric, idx in by_metric.items():
            if len(idx) > 1:
                idx.sort(key=ts_col.__getitem__)
            last = marks.get(metric)
            s = Series()
            for i in idx:
                ts = ts_col[i]
                if last is not None and ts <= last:
                    ctx.stats.skipped[Skip.LATE if ts < last else Skip.DUPLICATE] += 1
                    continue
                s.ts.append(ts)
                s.values.append(value_col[i])
                s.idx.append(i)
                last = ts
            if s.ts:
                marks[metric] = s.ts[-1]
                out[metric] = s
                ctx.stats.evaluated += len(s.ts)
                ctx.origin = s.ts[0] if ctx.origin is None else min(ctx.origin, s.ts[0])
        return out

    def route(self, sensor: Sensor) -> tuple[Evaluator, ...]:
        """The evaluators whose rule selects this sensor (cached)."""
        route = self._routes.get(sensor.id)
        if route is None:
            route = self._routes[sensor.id] = tuple(ev for ev in self.evaluators if _selects(ev.rule, sensor))
        return route

    def tick(self, now: float) -> list[Signal]:
        """Event time has reached `now`: raise the absence rules whose `for` has passed."""
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
        return {
            "version": STATE_VERSION,
            "origin": self._ctx.origin,
            "watermarks": {sid: dict(m) for sid, m in self._ctx.watermarks.items() if m},
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
        by_id = {ev.rule.id: ev for ev in self.evaluators}
        dropped: list[str] = []
        for rule_id, saved in state["rules"].items():
            ev = by_id.get(rule_id)
            if ev is None or ev.tag != saved["tag"]:
                dropped.append(rule_id)
                continue
            ev.load(saved["series"])
        return dropped


def _selects(rule: Rule, sensor: Sensor) -> bool:
    select = getattr(rule, "select", None)
    return select is not None and bool(select.matches(sensor))


def _event_ts(t: Signal) -> float:
    return t.event_ts
