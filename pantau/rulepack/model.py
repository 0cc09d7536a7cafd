"""The rule model: the frozen values a rule file becomes (pantau.rulepack.config parses and validates it) and
the evaluation engine consumes. Values only: no parsing, no I/O.

    RuleSet ── rules: tuple[Rule, ...]      Rule = ThresholdRule | RateOfChangeRule | IndexBandRule
                                                 | AbsenceRule | StuckRule | OutOfRangeRule | CompositeRule
    Selector.matches(sensor)                which sensors a rule (or a composite condition) watches
    Condition.holds(x) / holds_array(x)     a comparison such as `> 55.4`

Durations are `datetime.timedelta`s; `for_` is the YAML `for` (a Python keyword). Rules are
identified by `id`; the dataclasses hold read-only mappings, so key dicts by `rule.id`. Severities
are the alert domain's (`pantau.alerts.Severity`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from pantau.alerts import Severity
from pantau.domain import Reason, Sensor
from pantau.indices import (
    ISPU_P14_2020,
    AtThreshold,
    IspuCategory,
    IspuTable,
    LevelOfService,
    RainClass,
    RainPeriod,
    SiagaLevel,
)
from pantau.metrics import SensorKind

__all__ = [
    "AbsenceRule",
    "Aggregate",
    "CompositeCondition",
    "CompositeRule",
    "Condition",
    "Direction",
    "IndexBandRule",
    "IndexLevel",
    "IndexName",
    "IspuParams",
    "LosParams",
    "Match",
    "Op",
    "OutOfRangeRule",
    "RainParams",
    "RateCondition",
    "RateOfChangeRule",
    "Rule",
    "RuleKind",
    "RuleSet",
    "Scope",
    "Selector",
    "SiagaParams",
    "StuckRule",
    "ThresholdCondition",
    "ThresholdRule",
    "default_levels",
    "level_order",
]


class Op(StrEnum):
    """A comparison `reading OP value`. NE exists only as the default clear of an `==` rule."""

    GT = ">"
    GE = ">="
    LT = "<"
    LE = "<="
    EQ = "=="
    NE = "!="

    def holds(self, x: float, value: float) -> bool:
        """`x OP value`."""
        return bool(_OP_FUNCS[self](x, value))

    @property
    def negation(self) -> Op:
        """The op true exactly where this one is false (for numbers that are not NaN)."""
        return _NEGATION[self]


_OP_FUNCS: dict[Op, Callable[[Any, Any], Any]] = {
    Op.GT: np.greater,
    Op.GE: np.greater_equal,
    Op.LT: np.less,
    Op.LE: np.less_equal,
    Op.EQ: np.equal,
    Op.NE: np.not_equal,
}
_NEGATION = {Op.GT: Op.LE, Op.GE: Op.LT, Op.LT: Op.GE, Op.LE: Op.GT, Op.EQ: Op.NE, Op.NE: Op.EQ}


@dataclass(frozen=True, slots=True)
class Condition:
    """`reading OP value`, e.g. Condition(Op.GT, 55.4)."""

    op: Op
    value: float

    def holds(self, x: float) -> bool:
        """True when x satisfies the condition (never for NaN, except NE)."""
        return self.op.holds(x, self.value)

    def holds_array(self, x: ArrayLike) -> NDArray[np.bool_]:
        """`holds` over an array."""
        return np.asarray(_OP_FUNCS[self.op](np.asarray(x, dtype=np.float64), self.value), dtype=np.bool_)

    def negated(self) -> Condition:
        """The condition true exactly where this one is false."""
        return Condition(self.op.negation, self.value)

    def __str__(self) -> str:
        return f"{self.op.value} {self.value:g}"


class RuleKind(StrEnum):
    """The `kind` of a rule."""

    THRESHOLD = "threshold"
    RATE_OF_CHANGE = "rate_of_change"
    INDEX_BAND = "index_band"
    ABSENCE = "absence"
    DATA_QUALITY = "data_quality"
    COMPOSITE = "composite"


class Direction(StrEnum):
    """Which change a rate-of-change rule watches."""

    RISE = "rise"
    FALL = "fall"


class Aggregate(StrEnum):
    """How a threshold rule reduces the readings of a trailing window before comparing."""

    MEAN = "mean"
    SUM = "sum"  # e.g. rain_mm over 1h = mm/h
    MIN = "min"
    MAX = "max"


class IndexName(StrEnum):
    """The domain index an index_band rule evaluates (pantau.indices)."""

    ISPU = "ispu"
    SIAGA = "siaga"
    LOS = "los"
    RAIN = "rain"


class Scope(StrEnum):
    """What a composite groups sensors by: a district, or a river (sensor metadata `river`)."""

    DISTRICT = "district"
    RIVER = "river"


class Match(StrEnum):
    """A composite fires when all, or any, of its conditions hold."""

    ALL = "all"
    ANY = "any"


IndexLevel = IspuCategory | SiagaLevel | LevelOfService | RainClass


def level_order(index: IndexName) -> tuple[IndexLevel, ...]:
    """An index's levels from least to most severe (Siaga: normal, waspada, siaga, awas)."""
    return _LEVEL_ORDER[index]


_LEVEL_ORDER: dict[IndexName, tuple[IndexLevel, ...]] = {
    IndexName.ISPU: tuple(IspuCategory),
    IndexName.SIAGA: (SiagaLevel.NORMAL, SiagaLevel.WASPADA, SiagaLevel.SIAGA, SiagaLevel.AWAS),
    IndexName.LOS: tuple(LevelOfService),
    IndexName.RAIN: tuple(RainClass),
}


def default_levels(index: IndexName) -> Mapping[IndexLevel, Severity]:
    """The level → severity map an index_band rule uses when it gives no `levels`."""
    return _DEFAULT_LEVELS[index]


_DEFAULT_LEVELS: dict[IndexName, Mapping[IndexLevel, Severity]] = {
    IndexName.ISPU: MappingProxyType(
        {
            IspuCategory.TIDAK_SEHAT: Severity.WARNING,
            IspuCategory.SANGAT_TIDAK_SEHAT: Severity.CRITICAL,
            IspuCategory.BERBAHAYA: Severity.CRITICAL,
        }
    ),
    IndexName.SIAGA: MappingProxyType(
        {SiagaLevel.WASPADA: Severity.INFO, SiagaLevel.SIAGA: Severity.WARNING, SiagaLevel.AWAS: Severity.CRITICAL}
    ),
    IndexName.LOS: MappingProxyType({LevelOfService.E: Severity.WARNING, LevelOfService.F: Severity.CRITICAL}),
    IndexName.RAIN: MappingProxyType(
        {
            RainClass.LEBAT: Severity.INFO,
            RainClass.SANGAT_LEBAT: Severity.WARNING,
            RainClass.EKSTREM: Severity.CRITICAL,
        }
    ),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Selector:
    """Which sensors a rule watches; an empty field matches everything.

    `rivers` and `order_min`/`order_max` match the sensor metadata `river` and `order` (1 = most
    upstream); a sensor without that metadata does not match a selector that sets them.
    """

    kind: SensorKind | None = None
    cities: frozenset[str] = frozenset()
    districts: frozenset[str] = frozenset()
    sensors: frozenset[str] = frozenset()
    rivers: frozenset[str] = frozenset()
    order_min: int | None = None
    order_max: int | None = None

    def matches(self, sensor: Sensor) -> bool:
        """True when the sensor is one this selector picks."""
        if self.kind is not None and sensor.kind != self.kind:
            return False
        if self.cities and sensor.city not in self.cities:
            return False
        if self.districts and sensor.district not in self.districts:
            return False
        if self.sensors and sensor.id not in self.sensors:
            return False
        if self.rivers and sensor.metadata.get("river") not in self.rivers:
            return False
        if self.order_min is not None or self.order_max is not None:
            order = sensor.metadata.get("order")
            if isinstance(order, bool) or not isinstance(order, int):
                return False
            if self.order_min is not None and order < self.order_min:
                return False
            if self.order_max is not None and order > self.order_max:
                return False
        return True


@dataclass(frozen=True, slots=True, kw_only=True)
class ThresholdRule:
    """`metric OP value` held for `for_`; clears when `clear` has held for `clear_for` (hysteresis).

    With `aggregate`, the metric is first reduced over the trailing `window` (e.g. the sum of
    rain_mm over 1h). Without a `clear` in the file, `clear` is the trigger's negation.
    """

    kind: ClassVar[RuleKind] = RuleKind.THRESHOLD
    id: str
    description: str = ""
    enabled: bool = True
    select: Selector
    severity: Severity
    metric: str
    trigger: Condition
    for_: timedelta = timedelta(0)
    clear: Condition
    clear_for: timedelta = timedelta(0)
    aggregate: Aggregate | None = None
    window: timedelta | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RateOfChangeRule:
    """A rise (or fall) of at least `delta` (metric units) within `window`.

    Clears when the change within the window has stayed below `clear_delta` for `clear_for`.
    """

    kind: ClassVar[RuleKind] = RuleKind.RATE_OF_CHANGE
    id: str
    description: str = ""
    enabled: bool = True
    select: Selector
    severity: Severity
    metric: str
    direction: Direction
    delta: float
    window: timedelta
    clear_delta: float
    clear_for: timedelta = timedelta(0)


@dataclass(frozen=True, slots=True, kw_only=True)
class IspuParams:
    """ISPU: which pollutants count and the table (with its averaging windows) to use."""

    pollutants: tuple[str, ...]
    table: IspuTable = ISPU_P14_2020


@dataclass(frozen=True, slots=True, kw_only=True)
class SiagaParams:
    """Siaga: which level a water level exactly on a threshold takes."""

    at_threshold: AtThreshold = AtThreshold.HIGHER


@dataclass(frozen=True, slots=True, kw_only=True)
class LosParams:
    """Level of service: pcu per counted vehicle (see pantau.indices.flow_pcu_h)."""

    pcu_factor: float = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RainParams:
    """BMKG rain class: hourly (rain_mm summed over 1 h) or daily (over 24 h), and threshold side."""

    period: RainPeriod = RainPeriod.HOURLY
    at_threshold: AtThreshold = AtThreshold.HIGHER


@dataclass(frozen=True, slots=True, kw_only=True)
class IndexBandRule:
    """An alert while a sensor's index level maps to a severity in `levels`; escalates with it.

    A level must hold for `for_` before the alert opens (or changes severity); the alert clears when
    the level has mapped to no severity for `clear_for`.
    """

    kind: ClassVar[RuleKind] = RuleKind.INDEX_BAND
    id: str
    description: str = ""
    enabled: bool = True
    select: Selector
    index: IndexName
    levels: Mapping[IndexLevel, Severity]
    params: IspuParams | SiagaParams | LosParams | RainParams
    for_: timedelta = timedelta(0)
    clear_for: timedelta = timedelta(0)

    def severity_of(self, level: IndexLevel) -> Severity | None:
        """The severity a level raises, or None (no alert at that level)."""
        return self.levels.get(level)


@dataclass(frozen=True, slots=True, kw_only=True)
class AbsenceRule:
    """No reading from a sensor (or of one metric) for `for_`: sensor offline; the next reading clears it."""

    kind: ClassVar[RuleKind] = RuleKind.ABSENCE
    id: str
    description: str = ""
    enabled: bool = True
    select: Selector
    severity: Severity
    metric: str | None = None
    for_: timedelta


@dataclass(frozen=True, slots=True, kw_only=True)
class StuckRule:
    """data_quality/stuck: over `window`, at least `min_readings` readings spanning ≤ `tolerance`."""

    kind: ClassVar[RuleKind] = RuleKind.DATA_QUALITY
    check: ClassVar[str] = "stuck"
    id: str
    description: str = ""
    enabled: bool = True
    select: Selector
    severity: Severity
    metric: str
    window: timedelta
    tolerance: float = 0.0
    min_readings: int = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class OutOfRangeRule:
    """data_quality/out_of_range: at least `count` rejections (of `reasons`) from a sensor within `window`."""

    kind: ClassVar[RuleKind] = RuleKind.DATA_QUALITY
    check: ClassVar[str] = "out_of_range"
    id: str
    description: str = ""
    enabled: bool = True
    select: Selector
    severity: Severity
    metric: str | None = None
    count: int
    window: timedelta
    reasons: frozenset[Reason] = frozenset({Reason.OUT_OF_RANGE})


@dataclass(frozen=True, slots=True, kw_only=True)
class ThresholdCondition:
    """A composite's named threshold condition (see ThresholdRule; no clear, no severity)."""

    name: str
    select: Selector
    metric: str
    trigger: Condition
    for_: timedelta = timedelta(0)
    aggregate: Aggregate | None = None
    window: timedelta | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RateCondition:
    """A composite's named rate-of-change condition (see RateOfChangeRule)."""

    name: str
    select: Selector
    metric: str
    direction: Direction
    delta: float
    window: timedelta


CompositeCondition = ThresholdCondition | RateCondition


@dataclass(frozen=True, slots=True, kw_only=True)
class CompositeRule:
    """All (or any) of the named conditions held, each by some sensor of one scope, within `window`.

    One alert per scope value (a district, or a river within a city): e.g. heavy rain at an
    upstream rain gauge and a rising level at a downstream gauge of the same river within 3 h.
    """

    kind: ClassVar[RuleKind] = RuleKind.COMPOSITE
    id: str
    description: str = ""
    enabled: bool = True
    severity: Severity
    scope: Scope
    match: Match
    window: timedelta
    conditions: tuple[CompositeCondition, ...]


Rule = ThresholdRule | RateOfChangeRule | IndexBandRule | AbsenceRule | StuckRule | OutOfRangeRule | CompositeRule


@dataclass(frozen=True, slots=True)
class RuleSet:
    """The rules of one file, in file order."""

    source: str
    rules: tuple[Rule, ...]
    text: str = ""  # the YAML it was read from (recorded as the pack in force)

    def __iter__(self) -> Iterator[Rule]:
        return iter(self.rules)

    def __len__(self) -> int:
        return len(self.rules)

    def get(self, rule_id: str) -> Rule:
        """The rule with this id; KeyError if none."""
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        raise KeyError(rule_id)

    def enabled(self) -> tuple[Rule, ...]:
        """The rules with `enabled: true` (the default)."""
        return tuple(r for r in self.rules if r.enabled)
