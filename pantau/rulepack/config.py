"""Rule files: YAML (kept in version control) → the frozen rule values of pantau.rulepack.model. No eval of user text.

A rule file is a mapping `{version: 1, rules: [...]}`; each rule has an `id`, a `kind` and the
fields of that kind (docs/rules.md has the format, deploy/rules.yaml the default pack). Loading
checks everything it can without a database: unknown fields (a typo must not silently disable a
rule), duplicate ids, durations, metric names against the registry and the selector's kind,
thresholds inside the metric's plausible range, hysteresis that does not overlap its trigger,
severities that do not fall as an index level worsens. Every error names the file, the rule and
the field: `deploy/rules.yaml: rule 'pm25-high' (rules[3]): field 'for': '5x' is not a duration`.

The whole file format is read here, one `_parse_<kind>` per rule kind in the order docs/rules.md
gives them, on one set of field helpers (`_Fields`): about 700 lines, kept together so that a rule
file's every check is found in one place.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from itertools import pairwise
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from pantau.alerts import Severity
from pantau.domain import Reason, valid_city, valid_sensor_id
from pantau.errors import RuleFileError
from pantau.indices import ISPU_P14_2020, AtThreshold, RainClass, RainPeriod, SiagaLevel
from pantau.metrics import METRICS, SensorKind, metrics_for
from pantau.rulepack.durations import parse_duration
from pantau.rulepack.model import (
    AbsenceRule,
    Aggregate,
    CompositeCondition,
    CompositeRule,
    Condition,
    Direction,
    IndexBandRule,
    IndexLevel,
    IndexName,
    IspuParams,
    LosParams,
    Match,
    Op,
    OutOfRangeRule,
    RainParams,
    RateCondition,
    RateOfChangeRule,
    Rule,
    RuleKind,
    RuleSet,
    Scope,
    Selector,
    SiagaParams,
    StuckRule,
    ThresholdCondition,
    ThresholdRule,
    default_levels,
    level_order,
)
from pantau.yamlfile import SMALL_FILE_LOADER, YamlFileError, load_yaml, read_text

__all__ = ["RULE_FILE_VERSION", "load_rules", "parse_rules"]

RULE_FILE_VERSION = 1
# Rule ids end up in alert rows, MQTT payloads and URLs: a safe, lower-case alphabet.
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
# Rule files may write the symbols (quoted: a bare `>` starts a YAML block) or these words.
_OP_WORDS = {"gt": Op.GT, "ge": Op.GE, "lt": Op.LT, "le": Op.LE, "eq": Op.EQ}
_USER_OPS = {op.value: op for op in (Op.GT, Op.GE, Op.LT, Op.LE, Op.EQ)} | _OP_WORDS
# The sensors each index applies to: an index_band rule's selector gets this kind, or must have it.
_INDEX_KIND = {
    IndexName.ISPU: SensorKind.AIR,
    IndexName.SIAGA: SensorKind.FLOOD,
    IndexName.LOS: SensorKind.TRAFFIC,
    IndexName.RAIN: SensorKind.RAIN,
}


def load_rules(path: Path | str) -> RuleSet:
    """Load and validate a YAML rule file; RuleFileError names the file, rule and field."""
    source = str(path)
    try:
        text = read_text(path)
    except YamlFileError as exc:
        raise RuleFileError(f"{source}: {exc}", path=source) from None
    return rules_from_text(text, source=source)


def rules_from_text(text: str, *, source: str = "<rules>") -> RuleSet:
    """Validate a rule pack's YAML text (a candidate sent to the API, or a file's); the RuleSet
    keeps the text. RuleFileError names the source, rule and field."""
    try:
        doc = load_yaml(text, loader=SMALL_FILE_LOADER)
    except YamlFileError as exc:
        raise RuleFileError(f"{source}: {exc}", path=source) from None
    return dataclasses.replace(parse_rules(doc, source=source), text=text)


def parse_rules(doc: Any, *, source: str = "<rules>") -> RuleSet:
    """Validate an already parsed document (`{version: 1, rules: [...]}`); `source` names it in errors."""
    top = _Where(source)
    if not isinstance(doc, dict):
        raise top.error(None, "expected a mapping with a 'rules' list")
    fields = _Fields(doc, top)
    version = fields.take("version", default=RULE_FILE_VERSION)
    if version != RULE_FILE_VERSION:
        raise top.error("version", f"{version!r} is not a supported version (this pantau reads {RULE_FILE_VERSION})")
    items = fields.take("rules", required=True)
    fields.done()
    if not isinstance(items, list):
        raise top.error("rules", "expected a list of rules")
    rules: list[Rule] = []
    first_index: dict[str, int] = {}
    for i, item in enumerate(items):
        raw_id = item.get("id") if isinstance(item, dict) else None
        where = _Where(source, i, raw_id if isinstance(raw_id, str) and raw_id else None)
        if not isinstance(item, dict):
            raise where.error(None, "expected a mapping")
        rule = _parse_rule(item, where)
        if rule.id in first_index:
            raise where.error("id", f"duplicate of rules[{first_index[rule.id]}]: rule ids must be unique")
        first_index[rule.id] = i
        rules.append(rule)
    return RuleSet(source, tuple(rules))


@dataclass(frozen=True, slots=True)
class _Where:
    """Where in the file we are, for error messages."""

    source: str
    index: int | None = None
    rule_id: str | None = None

    def error(self, field_name: str | None, problem: str) -> RuleFileError:
        parts = [self.source]
        if self.index is not None:
            parts.append(f"rule {self.rule_id!r} (rules[{self.index}])" if self.rule_id else f"rules[{self.index}]")
        if field_name:
            parts.append(f"field {field_name!r}")
        parts.append(problem)
        return RuleFileError(": ".join(parts), path=self.source, rule=self.rule_id, field=field_name)


_MISSING: Any = object()


class _Fields:
    """Takes fields from one mapping of the file; `done()` rejects whatever was not taken."""

    def __init__(self, data: Mapping[Any, Any], where: _Where, prefix: str = "", context: str = "") -> None:
        self.data = data
        self.where = where
        self.prefix = prefix
        self.context = context
        self.taken: set[str] = set()

    def name(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def error(self, key: str, problem: str) -> RuleFileError:
        return self.where.error(self.name(key), problem)

    def has(self, key: str) -> bool:
        return key in self.data

    def take(self, key: str, *, required: bool = False, default: Any = None) -> Any:
        self.taken.add(key)
        if key not in self.data or self.data[key] is None:
            if required:
                raise self.error(key, "is required" + (f" {self.context}" if self.context else ""))
            return default
        return self.data[key]

    def sub(self, key: str, *, context: str = "") -> _Fields | None:
        value = self.take(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.error(key, f"expected a mapping, got {value!r}")
        return _Fields(value, self.where, f"{self.name(key)}.", context)

    def done(self) -> None:
        for key in self.data:
            if key not in self.taken:
                known = sorted(self.taken)
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f" (known here: {', '.join(known)})"
                where = f" {self.context}" if self.context else ""
                raise self.error(str(key), f"unknown field{where}{hint}")

    # Typed takes.

    def text(self, key: str, *, required: bool = False, default: str = "") -> str:
        value = self.take(key, required=required, default=default)
        if not isinstance(value, str):
            raise self.error(key, f"expected text, got {value!r}")
        return value

    def flag(self, key: str, *, default: bool) -> bool:
        value = self.take(key, default=default)
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {value!r}")
        return value

    def number(self, key: str, *, required: bool = False, default: float | None = None) -> float:
        value = self.take(key, required=required, default=default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self.error(key, f"{value!r} is not a finite number")
        return float(value)

    def positive(self, key: str, *, required: bool = False, default: float | None = None) -> float:
        value = self.number(key, required=required, default=default)
        if value <= 0:
            raise self.error(key, f"{value:g} must be positive")
        return value

    def integer(self, key: str, *, minimum: int, default: int | None = None, required: bool = False) -> int:
        value = self.take(key, required=required, default=default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"{value!r} is not a whole number")
        if value < minimum:
            raise self.error(key, f"{value} must be at least {minimum}")
        return value

    def duration(
        self, key: str, *, required: bool = False, default: timedelta | None = None, positive: bool = False
    ) -> timedelta:
        value = self.take(key, required=required, default=_MISSING)
        if value is _MISSING:
            assert default is not None
            return default
        try:
            result = parse_duration(value)
        except ValueError:
            raise self.error(key, f"{value!r} is not a duration (write e.g. '90s', '30m', '1h', '2d')") from None
        if positive and result <= timedelta(0):
            raise self.error(key, f"{value!r} must be longer than zero")
        return result

    def choice(self, key: str, enum: type[_E], *, required: bool = False, default: _E | None = None) -> _E:
        value = self.take(key, required=required, default=default)
        if isinstance(value, enum):
            return value
        try:
            return enum(value)
        except ValueError:
            options = ", ".join(e.value for e in enum)
            raise self.error(key, f"{value!r} is not one of {options}") from None

    def names(self, key: str, check: Callable[[str], bool] | None = None, what: str = "") -> frozenset[str]:
        value = self.take(key, default=[])
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) and v for v in items):
            raise self.error(key, f"expected a name or a list of names, got {value!r}")
        for item in items:
            if check is not None and not check(item):
                raise self.error(key, f"{item!r} is not a valid {what}")
        return frozenset(items)


_E = TypeVar("_E", bound=StrEnum)


def _parse_selector(fields: _Fields, key: str = "select", *, required: bool = False) -> Selector:
    sub = fields.sub(key)
    if sub is None:
        if required:
            raise fields.error(key, "is required")
        return Selector()
    kind = sub.choice("kind", SensorKind) if sub.has("kind") else None
    cities = sub.names("city", valid_city, "city slug (lower case, e.g. 'kotamobagu')")
    districts = sub.names("district")
    sensors = sub.names("sensor", valid_sensor_id, "sensor id")
    rivers = sub.names("river")
    order_min = order_max = None
    order = sub.take("order")
    if order is not None:
        if isinstance(order, int) and not isinstance(order, bool):
            order_min = order_max = sub.integer("order", minimum=1)
        elif isinstance(order, dict):
            bounds = sub.sub("order")
            assert bounds is not None
            order_min = bounds.integer("min", minimum=1) if bounds.has("min") else None
            order_max = bounds.integer("max", minimum=1) if bounds.has("max") else None
            bounds.done()
            if order_min is None and order_max is None:
                raise sub.error("order", "give 'min', 'max' or both")
            if order_min is not None and order_max is not None and order_min > order_max:
                raise sub.error("order", f"min {order_min} is above max {order_max}")
        else:
            raise sub.error("order", f"expected a river order (1 = most upstream) or {{min, max}}, got {order!r}")
    sub.done()
    return Selector(
        kind=kind,
        cities=cities,
        districts=districts,
        sensors=sensors,
        rivers=rivers,
        order_min=order_min,
        order_max=order_max,
    )


def _parse_metric(fields: _Fields, select: Selector, *, required: bool = True) -> str | None:
    value = fields.take("metric", required=required)
    if value is None:
        return None
    if not isinstance(value, str) or value not in METRICS:
        close = difflib.get_close_matches(str(value), list(METRICS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(METRICS)})"
        raise fields.error("metric", f"{value!r} is not a known metric{hint}")
    if select.kind is not None and select.kind not in METRICS[value].kinds:
        names = ", ".join(m.name for m in metrics_for(select.kind))
        raise fields.error("metric", f"{value!r} is not a metric of {select.kind.value} sensors (they report {names})")
    return value


def _parse_op(fields: _Fields, key: str = "op", *, required: bool = True, default: Op | None = None) -> Op:
    value = fields.take(key, required=required, default=default)
    if isinstance(value, Op):
        return value
    if not isinstance(value, str) or value not in _USER_OPS:
        raise fields.error(key, f"{value!r} is not one of > >= < <= == (or gt ge lt le eq; quote the symbols)")
    return _USER_OPS[value]


def _check_plausible(fields: _Fields, key: str, metric: str, value: float) -> None:
    m = METRICS[metric]
    if not m.low <= value <= m.high:
        raise fields.error(
            key,
            f"{value:g} is outside {metric}'s plausible range {m.low:g}..{m.high:g} {m.unit}:"
            " ingest rejects such readings, so the rule could never fire",
        )


def _parse_aggregate(fields: _Fields) -> tuple[Aggregate | None, timedelta | None]:
    aggregate = fields.choice("aggregate", Aggregate) if fields.has("aggregate") else None
    window = fields.duration("window", positive=True) if fields.has("window") else None
    if aggregate is not None and window is None:
        raise fields.error("window", f"is required with 'aggregate: {aggregate.value}'")
    if window is not None and aggregate is None:
        raise fields.error("aggregate", "is required with 'window' (mean, sum, min or max over the window)")
    return aggregate, window


def _parse_trigger(fields: _Fields, metric: str, aggregate: Aggregate | None) -> Condition:
    trigger = Condition(_parse_op(fields), fields.number("value", required=True))
    # A sum over a window may exceed one reading's range (hours of rain); other values may not.
    if aggregate is not Aggregate.SUM:
        _check_plausible(fields, "value", metric, trigger.value)
    return trigger


def _common(fields: _Fields) -> dict[str, Any]:
    # `kind` was read by the dispatcher; mark it taken.
    fields.take("kind")
    return {
        "id": fields.text("id", required=True),
        "description": fields.text("description"),
        "enabled": fields.flag("enabled", default=True),
    }


def _parse_threshold(fields: _Fields) -> ThresholdRule:
    common = _common(fields)
    select = _parse_selector(fields)
    severity = fields.choice("severity", Severity, required=True)
    metric = _parse_metric(fields, select)
    assert metric is not None
    aggregate, window = _parse_aggregate(fields)
    trigger = _parse_trigger(fields, metric, aggregate)
    for_ = fields.duration("for", default=timedelta(0))
    clear, clear_for = trigger.negated(), timedelta(0)
    sub = fields.sub("clear", context="(clear takes op, value and for)")
    if sub is not None:
        if sub.has("op") and not sub.has("value"):
            raise sub.error("value", "is required with 'op'")
        value = sub.number("value", default=trigger.value)
        op = _parse_op(sub, required=False, default=trigger.op.negation)
        clear = Condition(op, value)
        clear_for = sub.duration("for", default=timedelta(0))
        sub.done()
        if aggregate is not Aggregate.SUM:
            _check_plausible(sub, "value", metric, clear.value)
        if _overlap(trigger, clear):
            raise sub.error(
                "value" if sub.has("value") else "op",
                f"clear condition '{clear}' overlaps the trigger '{trigger}': a reading could both"
                " raise and clear the alert (hysteresis needs a gap, e.g. trigger '> 100', clear '< 90')",
            )
    fields.done()
    return ThresholdRule(
        **common,
        select=select,
        severity=severity,
        metric=metric,
        trigger=trigger,
        for_=for_,
        clear=clear,
        clear_for=clear_for,
        aggregate=aggregate,
        window=window,
    )


def _parse_rate(fields: _Fields) -> RateOfChangeRule:
    common = _common(fields)
    select = _parse_selector(fields)
    severity = fields.choice("severity", Severity, required=True)
    metric = _parse_metric(fields, select)
    assert metric is not None
    direction = fields.choice("direction", Direction, required=True)
    delta = fields.positive("delta", required=True)
    window = fields.duration("window", required=True, positive=True)
    clear_delta, clear_for = delta, timedelta(0)
    sub = fields.sub("clear", context="(clear takes delta and for)")
    if sub is not None:
        clear_delta = sub.positive("delta", default=delta)
        clear_for = sub.duration("for", default=timedelta(0))
        sub.done()
        if clear_delta > delta:
            raise sub.error("delta", f"{clear_delta:g} is above the trigger delta {delta:g}: the alert would flap")
    fields.done()
    return RateOfChangeRule(
        **common,
        select=select,
        severity=severity,
        metric=metric,
        direction=direction,
        delta=delta,
        window=window,
        clear_delta=clear_delta,
        clear_for=clear_for,
    )


def _parse_level(index: IndexName, slug: Any) -> IndexLevel | None:
    for level in level_order(index):
        if _level_slug(level) == str(slug):
            return level
    return None


def _parse_levels(fields: _Fields, index: IndexName, allowed: Sequence[IndexLevel]) -> Mapping[IndexLevel, Severity]:
    raw = fields.take("levels")
    if raw is None:
        return MappingProxyType({k: v for k, v in default_levels(index).items() if k in allowed})
    if not isinstance(raw, dict) or not raw:
        raise fields.error("levels", f"expected a mapping of level to severity, got {raw!r}")
    slugs = ", ".join(_level_slug(level) for level in allowed)
    levels: dict[IndexLevel, Severity] = {}
    for slug, severity in raw.items():
        level = _parse_level(index, slug)
        if level is None or level not in allowed:
            raise fields.where.error(fields.name(f"levels.{slug}"), f"not a level of {index.value} ({slugs})")
        try:
            levels[level] = Severity(severity)
        except ValueError:
            raise fields.where.error(
                fields.name(f"levels.{slug}"), f"{severity!r} is not one of info, warning, critical"
            ) from None
    # Escalation assumes a worse level never maps to a milder severity.
    ordered = [(level, levels[level]) for level in allowed if level in levels]
    for (lo, lo_sev), (hi, hi_sev) in pairwise(ordered):
        if hi_sev.rank < lo_sev.rank:
            raise fields.where.error(
                fields.name(f"levels.{_level_slug(hi)}"),
                f"{hi_sev.value} is milder than {_level_slug(lo)}: {lo_sev.value}; severity must not fall"
                " as the level worsens",
            )
    return MappingProxyType(levels)


def _parse_index_band(fields: _Fields) -> IndexBandRule:
    common = _common(fields)
    index = fields.choice("index", IndexName, required=True)
    context = f"for index '{index.value}'"
    fields.context = context
    select = _parse_selector(fields)
    expected = _INDEX_KIND[index]
    if select.kind is None:
        select = Selector(**{**_selector_dict(select), "kind": expected})
    elif select.kind is not expected:
        raise fields.where.error(
            fields.name("select.kind"),
            f"index '{index.value}' applies to {expected.value} sensors, not {select.kind.value}",
        )
    allowed: Sequence[IndexLevel] = level_order(index)
    params: IspuParams | SiagaParams | LosParams | RainParams
    if index is IndexName.ISPU:
        pollutants = _parse_pollutants(fields)
        table = ISPU_P14_2020
        windows = fields.sub("windows", context="(averaging window per pollutant)")
        if windows is not None:
            overrides: dict[str, timedelta] = {}
            for pollutant in list(windows.data):
                if pollutant not in table.pollutants:
                    raise windows.error(str(pollutant), f"not an ISPU pollutant ({', '.join(table.pollutants)})")
                overrides[pollutant] = windows.duration(pollutant, required=True, positive=True)
            windows.done()
            table = table.with_windows(overrides)
        params = IspuParams(pollutants=pollutants, table=table)
    elif index is IndexName.SIAGA:
        params = SiagaParams(at_threshold=fields.choice("at_threshold", AtThreshold, default=AtThreshold.HIGHER))
    elif index is IndexName.LOS:
        params = LosParams(pcu_factor=fields.positive("pcu_factor", default=1.0))
    else:
        period = fields.choice("period", RainPeriod, default=RainPeriod.HOURLY)
        params = RainParams(
            period=period, at_threshold=fields.choice("at_threshold", AtThreshold, default=AtThreshold.HIGHER)
        )
        if period is RainPeriod.HOURLY:  # BMKG's hourly table stops at sangat lebat
            allowed = [c for c in allowed if c is not RainClass.EKSTREM]
    levels = _parse_levels(fields, index, allowed)
    for_ = fields.duration("for", default=timedelta(0))
    clear_for = timedelta(0)
    sub = fields.sub("clear", context="(clear takes for)")
    if sub is not None:
        clear_for = sub.duration("for", default=timedelta(0))
        sub.done()
    fields.done()
    return IndexBandRule(
        **common, select=select, index=index, levels=levels, params=params, for_=for_, clear_for=clear_for
    )


def _selector_dict(select: Selector) -> dict[str, Any]:
    return {name: getattr(select, name) for name in Selector.__dataclass_fields__}


def _parse_pollutants(fields: _Fields) -> tuple[str, ...]:
    table = ISPU_P14_2020
    raw = fields.take("pollutants", default=list(table.pollutants))
    if not isinstance(raw, list) or not raw:
        raise fields.error("pollutants", f"expected a list of pollutants, got {raw!r}")
    for p in raw:
        if p not in table.pollutants:
            raise fields.error("pollutants", f"{p!r} is not an ISPU pollutant ({', '.join(table.pollutants)})")
    if len(set(raw)) != len(raw):
        raise fields.error("pollutants", "lists a pollutant twice")
    # Table order, so the critical pollutant's tie-break does not depend on how the file lists them.
    return tuple(p for p in table.pollutants if p in raw)


def _parse_absence(fields: _Fields) -> AbsenceRule:
    common = _common(fields)
    select = _parse_selector(fields)
    rule = AbsenceRule(
        **common,
        select=select,
        severity=fields.choice("severity", Severity, required=True),
        metric=_parse_metric(fields, select, required=False),
        for_=fields.duration("for", required=True, positive=True),
    )
    fields.done()
    return rule


def _parse_data_quality(fields: _Fields) -> StuckRule | OutOfRangeRule:
    common = _common(fields)
    check = fields.take("check", required=True)
    if check not in ("stuck", "out_of_range"):
        raise fields.error("check", f"{check!r} is not one of stuck, out_of_range")
    fields.context = f"for check '{check}'"
    select = _parse_selector(fields)
    severity = fields.choice("severity", Severity, required=True)
    rule: StuckRule | OutOfRangeRule
    if check == "stuck":
        metric = _parse_metric(fields, select)
        assert metric is not None
        rule = StuckRule(
            **common,
            select=select,
            severity=severity,
            metric=metric,
            window=fields.duration("window", required=True, positive=True),
            tolerance=fields.number("tolerance", default=0.0),
            # Two equal readings prove little; three in a row over the window is the least evidence.
            min_readings=fields.integer("min_readings", minimum=2, default=3),
        )
        if rule.tolerance < 0:
            raise fields.error("tolerance", f"{rule.tolerance:g} must not be negative")
    else:
        reasons_raw = fields.take("reasons", default=[Reason.OUT_OF_RANGE.value])
        valid = {r.value for r in Reason}
        if not isinstance(reasons_raw, list) or not reasons_raw or not all(r in valid for r in reasons_raw):
            raise fields.error("reasons", f"expected a list of rejection reasons ({', '.join(sorted(valid))})")
        rule = OutOfRangeRule(
            **common,
            select=select,
            severity=severity,
            metric=_parse_metric(fields, select, required=False),
            count=fields.integer("count", minimum=1, required=True),
            window=fields.duration("window", required=True, positive=True),
            reasons=frozenset(Reason(r) for r in reasons_raw),
        )
    fields.done()
    return rule


def _parse_condition(fields: _Fields) -> CompositeCondition:
    name = fields.text("name", required=True)
    if not _ID_RE.match(name):
        raise fields.error("name", f"{name!r} is not a valid name (a-z 0-9 _ . -, starting with a letter or digit)")
    kind = fields.take("kind", required=True)
    select = _parse_selector(fields, required=True)
    metric = _parse_metric(fields, select)
    assert metric is not None
    condition: CompositeCondition
    if kind == RuleKind.THRESHOLD.value:
        fields.context = "for a threshold condition"
        aggregate, window = _parse_aggregate(fields)
        condition = ThresholdCondition(
            name=name,
            select=select,
            metric=metric,
            trigger=_parse_trigger(fields, metric, aggregate),
            for_=fields.duration("for", default=timedelta(0)),
            aggregate=aggregate,
            window=window,
        )
    elif kind == RuleKind.RATE_OF_CHANGE.value:
        fields.context = "for a rate_of_change condition"
        condition = RateCondition(
            name=name,
            select=select,
            metric=metric,
            direction=fields.choice("direction", Direction, required=True),
            delta=fields.positive("delta", required=True),
            window=fields.duration("window", required=True, positive=True),
        )
    else:
        raise fields.error("kind", f"{kind!r} is not one of threshold, rate_of_change")
    fields.done()
    return condition


def _parse_composite(fields: _Fields) -> CompositeRule:
    common = _common(fields)
    severity = fields.choice("severity", Severity, required=True)
    scope = fields.choice("scope", Scope, required=True)
    match = fields.choice("match", Match, required=True)
    window = fields.duration("window", required=True, positive=True)
    raw = fields.take("conditions", required=True)
    if not isinstance(raw, list) or len(raw) < 2:
        raise fields.error("conditions", "expected a list of at least two conditions (one is a plain rule)")
    conditions: list[CompositeCondition] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        key = f"conditions[{i}]"
        if not isinstance(item, dict):
            raise fields.error(key, "expected a mapping")
        condition = _parse_condition(_Fields(item, fields.where, f"{fields.name(key)}."))
        if condition.name in seen:
            raise fields.error(f"{key}.name", f"{condition.name!r} is used twice in this rule")
        seen.add(condition.name)
        conditions.append(condition)
    fields.done()
    return CompositeRule(
        **common, severity=severity, scope=scope, match=match, window=window, conditions=tuple(conditions)
    )


_PARSERS: dict[RuleKind, Callable[[_Fields], Rule]] = {
    RuleKind.THRESHOLD: _parse_threshold,
    RuleKind.RATE_OF_CHANGE: _parse_rate,
    RuleKind.INDEX_BAND: _parse_index_band,
    RuleKind.ABSENCE: _parse_absence,
    RuleKind.DATA_QUALITY: _parse_data_quality,
    RuleKind.COMPOSITE: _parse_composite,
}


def _parse_rule(data: dict[Any, Any], where: _Where) -> Rule:
    fields = _Fields(data, where)
    rule_id = fields.take("id", required=True)
    if not isinstance(rule_id, str) or not _ID_RE.match(rule_id):
        raise fields.error("id", f"{rule_id!r} is not a valid id (a-z 0-9 _ . -, starting with a letter or digit)")
    kind = fields.choice("kind", RuleKind, required=True)
    fields.context = f"for kind '{kind.value}'"
    return _PARSERS[kind](fields)


def _overlap(a: Condition, b: Condition) -> bool:
    """Whether some number satisfies both conditions."""
    # The candidates: each bound, and points just beside each bound.
    points = [
        v for c in (a, b) for v in (c.value, math.nextafter(c.value, -math.inf), math.nextafter(c.value, math.inf))
    ]
    points += [-math.inf, math.inf]
    return any(a.holds(x) and b.holds(x) for x in points)


def _level_slug(level: IndexLevel) -> str:
    return level.slug if isinstance(level, SiagaLevel) else level.value
