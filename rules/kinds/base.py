"""The contract between the engine (rules.engine) and the rule kinds (a module each in rules.kinds).

    Evaluator      the Protocol the engine drives: prepare → feed (per sensor) → finish, tick,
                   registry_changed, export/load
    BaseEvaluator  the no-op stages every kind inherits
    Series, Batch  what a batch looks like to an evaluator: one sensor's in-order readings of a
                   metric, and the whole batch as columns
    Context        what evaluators share with the engine: settings, watermarks, cadences,
                   arrivals, counters, metadata problems, the shared histories

and the helpers every kind uses (`state_of`, `transition`, `PY_OPS`/`holds`).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np
from numpy.typing import NDArray

from pantau.alerts import Severity
from pantau.domain import Sensor
from pantau.rulepack.model import Condition, Op, Rule
from rules.signals import EngineStats, Signal, SignalKind, Why
from rules.windows import History, history_resolution

__all__ = [
    "PY_OPS",
    "BaseEvaluator",
    "Batch",
    "Context",
    "Evaluator",
    "Series",
    "holds",
    "state_of",
    "transition",
]


class Evaluator(Protocol):
    """One rule's evaluation over its sensors' series: every rule kind (a module each in rules.kinds)
    implements it, inheriting from `BaseEvaluator` the stages it does without."""

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


class BaseEvaluator:
    """The `Evaluator` stages most rule kinds do without, as no-ops; every kind inherits from it.

    A kind sets `rule`, `tag` and `wanted`, implements `feed` (unless it reads no readings, as
    out_of_range, which counts rejections), `export` and `load`, and overrides the others it needs.
    """

    rule: Rule
    tag: str
    wanted: Container[str] | None

    def prepare(self, batch: Batch) -> None:
        """Nothing to work out over the whole batch."""

    def feed(self, sensor: Sensor, series: Mapping[str, Series], out: list[Signal]) -> None:
        """Reads no readings."""

    def finish(self, out: list[Signal]) -> None:
        """No cross-sensor work."""

    def tick(self, now: float, out: list[Signal]) -> None:
        """Nothing happens while time passes without readings."""

    def registry_changed(self, sensors: Mapping[str, Sensor]) -> None:
        """Nothing derived from the registry."""


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


def state_of(states: dict[str, _S], key: str, make: Callable[[], _S]) -> _S:
    """The series state under `key`, made on first use."""
    st = states.get(key)
    if st is None:
        st = states[key] = make()
    return st


# The ops as plain float comparisons, for the per-reading path (Op.holds goes through numpy).
PY_OPS: dict[Op, Callable[[float, float], bool]] = {
    Op.GT: operator.gt,
    Op.GE: operator.ge,
    Op.LT: operator.lt,
    Op.LE: operator.le,
    Op.EQ: operator.eq,
    Op.NE: operator.ne,
}


def holds(condition: Condition, x: float) -> bool:
    """Whether `x` meets `condition`."""
    # Plain float comparison: the same answers as Condition.holds (NaN too), without numpy's
    # per-call overhead on the per-reading path.
    return PY_OPS[condition.op](x, condition.value)


def transition(
    rule: Rule,
    sensor: Sensor,
    kind: SignalKind,
    why: Why,
    ts: float,
    value: float | None,
    severity: Severity | None,
    reason: str,
) -> Signal:
    """A per-sensor rule's transition: its scope is the sensor."""
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
