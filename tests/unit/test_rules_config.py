"""Unit tests of `pantau.rulepack.config`: the default pack, each rule kind, and errors naming file, rule and field."""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from pantau.alerts import Severity
from pantau.domain import Reason, Sensor
from pantau.errors import PantauError, RuleFileError
from pantau.indices import AtThreshold, IspuCategory, LevelOfService, RainClass, RainPeriod, SiagaLevel
from pantau.metrics import SensorKind
from pantau.rulepack.config import load_rules, parse_rules
from pantau.rulepack.durations import format_duration, parse_duration
from pantau.rulepack.model import (
    AbsenceRule,
    Aggregate,
    CompositeRule,
    Condition,
    Direction,
    IndexBandRule,
    IndexName,
    IspuParams,
    LosParams,
    Match,
    Op,
    OutOfRangeRule,
    RainParams,
    RateCondition,
    RateOfChangeRule,
    RuleKind,
    Scope,
    Selector,
    SiagaParams,
    StuckRule,
    ThresholdCondition,
    ThresholdRule,
    default_levels,
)

DEFAULT_PACK = Path(__file__).resolve().parents[2] / "deploy" / "rules.yaml"


def load_text(tmp_path: Path, text: str) -> list[object]:
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return list(load_rules(path))


def one(tmp_path: Path, rule: str) -> object:
    rules = load_text(tmp_path, "version: 1\nrules:\n" + textwrap.indent(textwrap.dedent(rule), "  "))
    assert len(rules) == 1
    return rules[0]


# -- durations -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("30m", 1800), ("1h", 3600), ("2d", 172800), ("1h30m", 5400), ("0s", 0)]
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)
    assert parse_duration(format_duration(timedelta(seconds=seconds))) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["5x", "10", "", "1.5h", "30m1h", "h", "-5m", 10])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)  # type: ignore[arg-type]


# -- the default pack ------------------------------------------------------------------------------


def test_default_pack_loads() -> None:
    rules = load_rules(DEFAULT_PACK)
    kinds = {r.kind for r in rules}
    assert kinds == set(RuleKind)
    ids = [r.id for r in rules]
    assert len(ids) == len(set(ids))
    ispu = rules.get("air-ispu")
    assert isinstance(ispu, IndexBandRule) and isinstance(ispu.params, IspuParams)
    assert ispu.params.pollutants == ("pm10", "pm25", "so2", "co", "o3", "no2", "hc")
    assert ispu.params.table.windows["co"] == timedelta(hours=8)
    assert ispu.severity_of(IspuCategory.BERBAHAYA) is Severity.CRITICAL
    assert ispu.severity_of(IspuCategory.SEDANG) is None
    siaga = rules.get("river-siaga")
    assert isinstance(siaga, IndexBandRule)
    assert dict(siaga.levels) == dict(default_levels(IndexName.SIAGA))
    rate = rules.get("river-rising-fast")
    assert isinstance(rate, RateOfChangeRule)
    assert (rate.metric, rate.delta, rate.window) == ("water_level_cm", 30.0, timedelta(minutes=30))
    # One offline rule per sensor family.
    offline = {r.select.kind for r in rules if isinstance(r, AbsenceRule)}
    assert offline == set(SensorKind)
    assert all(r.enabled for r in rules) and len(rules.enabled()) == len(rules)


def test_default_early_warning_selects_upstream_rain_and_downstream_gauges() -> None:
    rule = load_rules(DEFAULT_PACK).get("flood-early-warning")
    assert isinstance(rule, CompositeRule)
    rain, level = rule.conditions
    upstream = Sensor(id="R1", kind=SensorKind.RAIN, city="sampit", metadata={"river": "Mentaya", "order": 1})
    downstream = Sensor(id="R2", kind=SensorKind.FLOOD, city="sampit", metadata={"river": "Mentaya", "order": 2})
    assert rain.select.matches(upstream) and not rain.select.matches(downstream)
    assert level.select.matches(downstream) and not level.select.matches(upstream)


# -- each kind -------------------------------------------------------------------------------------


def test_threshold_with_hysteresis(tmp_path: Path) -> None:
    rule = one(
        tmp_path,
        """
        - id: level-high
          kind: threshold
          select: {kind: flood, city: kotamobagu, district: [Kotamobagu Barat], sensor: KTG-WL-01}
          metric: water_level_cm
          op: ">="
          value: 300
          for: 5m
          clear: {op: "<", value: 280, for: 10m}
          severity: critical
        """,
    )
    assert rule == ThresholdRule(
        id="level-high",
        select=Selector(
            kind=SensorKind.FLOOD,
            cities=frozenset({"kotamobagu"}),
            districts=frozenset({"Kotamobagu Barat"}),
            sensors=frozenset({"KTG-WL-01"}),
        ),
        severity=Severity.CRITICAL,
        metric="water_level_cm",
        trigger=Condition(Op.GE, 300),
        for_=timedelta(minutes=5),
        clear=Condition(Op.LT, 280),
        clear_for=timedelta(minutes=10),
    )
    assert rule.trigger.holds(300) and not rule.trigger.holds(299.9)
    assert rule.clear.holds_array([279, 280, 290]).tolist() == [True, False, False]


def test_threshold_default_clear_is_the_negation_and_words_work(tmp_path: Path) -> None:
    rule = one(
        tmp_path,
        """
        - id: rain-sum
          kind: threshold
          select: {kind: rain}
          metric: rain_mm
          aggregate: sum
          window: 1h
          op: ge
          value: 10
          severity: info
        """,
    )
    assert isinstance(rule, ThresholdRule)
    assert rule.clear == Condition(Op.LT, 10)
    assert (rule.aggregate, rule.window, rule.for_) == (Aggregate.SUM, timedelta(hours=1), timedelta(0))


def test_rate_of_change(tmp_path: Path) -> None:
    rule = one(
        tmp_path,
        """
        - id: falling
          kind: rate_of_change
          select: {kind: flood}
          metric: water_level_cm
          direction: fall
          delta: 50
          window: 1h
          severity: info
        """,
    )
    assert isinstance(rule, RateOfChangeRule)
    assert (rule.direction, rule.clear_delta, rule.clear_for) == (Direction.FALL, 50.0, timedelta(0))


def test_index_bands(tmp_path: Path) -> None:
    rules = load_text(
        tmp_path,
        """
        rules:
        - id: ispu-pm
          kind: index_band
          index: ispu
          pollutants: [pm25, pm10]
          windows: {pm25: 1h}
        - id: siaga
          kind: index_band
          index: siaga
          at_threshold: lower
          levels: {siaga: warning, awas: critical}
        - id: los
          kind: index_band
          index: los
          select: {kind: traffic}
          pcu_factor: 0.6
          for: 15m
          clear: {for: 5m}
        - id: rain-daily
          kind: index_band
          index: rain
          period: daily
          levels: {ekstrem: critical}
        """,
    )
    ispu, siaga, los, rain = rules
    assert isinstance(ispu, IndexBandRule) and isinstance(ispu.params, IspuParams)
    assert ispu.select.kind is SensorKind.AIR  # implied by the index
    assert ispu.params.pollutants == ("pm10", "pm25")  # table order
    assert ispu.params.table.windows["pm25"] == timedelta(hours=1)
    assert ispu.params.table.windows["pm10"] == timedelta(hours=24)
    assert dict(ispu.levels) == dict(default_levels(IndexName.ISPU))
    assert isinstance(siaga, IndexBandRule) and siaga.params == SiagaParams(at_threshold=AtThreshold.LOWER)
    assert dict(siaga.levels) == {SiagaLevel.SIAGA: Severity.WARNING, SiagaLevel.AWAS: Severity.CRITICAL}
    assert isinstance(los, IndexBandRule) and los.params == LosParams(pcu_factor=0.6)
    assert dict(los.levels) == {LevelOfService.E: Severity.WARNING, LevelOfService.F: Severity.CRITICAL}
    assert (los.for_, los.clear_for) == (timedelta(minutes=15), timedelta(minutes=5))
    assert isinstance(rain, IndexBandRule) and rain.params == RainParams(period=RainPeriod.DAILY)
    assert dict(rain.levels) == {RainClass.EKSTREM: Severity.CRITICAL}


def test_absence_and_data_quality(tmp_path: Path) -> None:
    rules = load_text(
        tmp_path,
        """
        rules:
        - id: offline
          kind: absence
          for: 20m
          severity: warning
        - id: pm25-missing
          kind: absence
          select: {kind: air}
          metric: pm25
          for: 1h
          severity: info
        - id: stuck
          kind: data_quality
          check: stuck
          select: {kind: traffic}
          metric: avg_speed_kmh
          window: 2h
          tolerance: 0.5
          severity: info
        - id: rejects
          kind: data_quality
          check: out_of_range
          select: {kind: air}
          metric: pm10
          count: 3
          window: 30m
          reasons: [out_of_range, bad_unit]
          enabled: false
          severity: warning
        """,
    )
    offline, missing, stuck, rejects = rules
    assert offline == AbsenceRule(
        id="offline", select=Selector(), severity=Severity.WARNING, for_=timedelta(minutes=20)
    )
    assert isinstance(missing, AbsenceRule) and missing.metric == "pm25"
    assert isinstance(stuck, StuckRule)
    assert (stuck.tolerance, stuck.min_readings, stuck.window) == (0.5, 3, timedelta(hours=2))
    assert isinstance(rejects, OutOfRangeRule)
    assert rejects.reasons == {Reason.OUT_OF_RANGE, Reason.BAD_UNIT}
    assert not rejects.enabled


def test_composite(tmp_path: Path) -> None:
    rule = one(
        tmp_path,
        """
        - id: jam-and-smog
          kind: composite
          scope: district
          match: any
          window: 30m
          severity: warning
          conditions:
          - name: slow
            kind: threshold
            select: {kind: traffic}
            metric: avg_speed_kmh
            op: "<"
            value: 10
            for: 10m
          - name: no2-rising
            kind: rate_of_change
            select: {kind: air}
            metric: no2
            direction: rise
            delta: 40
            window: 30m
        """,
    )
    assert isinstance(rule, CompositeRule)
    assert (rule.scope, rule.match, rule.window) == (Scope.DISTRICT, Match.ANY, timedelta(minutes=30))
    slow, no2 = rule.conditions
    assert isinstance(slow, ThresholdCondition) and slow.trigger == Condition(Op.LT, 10)
    assert isinstance(no2, RateCondition) and no2.delta == 40


def test_selector_matches() -> None:
    select = Selector(kind=SensorKind.FLOOD, rivers=frozenset({"Sungai Moyag"}), order_min=2, order_max=3)
    gauge = Sensor(
        id="KTG-WL-02", kind=SensorKind.FLOOD, city="kotamobagu", metadata={"river": "Sungai Moyag", "order": 2}
    )
    assert select.matches(gauge)
    assert not select.matches(Sensor(id="KTG-WL-09", kind=SensorKind.FLOOD, city="kotamobagu"))
    assert not Selector(cities=frozenset({"sampit"})).matches(gauge)
    assert Selector().matches(gauge)


# -- errors name file, rule and field --------------------------------------------------------------

BASE = """
- id: ok
  kind: absence
  for: 15m
  severity: warning
"""


def rule_error(tmp_path: Path, rule: str) -> RuleFileError:
    path = tmp_path / "rules.yaml"
    body = textwrap.dedent(BASE) + textwrap.dedent(rule)
    path.write_text("rules:\n" + textwrap.indent(body, "  "), encoding="utf-8")
    with pytest.raises(RuleFileError) as info:
        load_rules(path)
    assert isinstance(info.value, PantauError)
    return info.value


THRESHOLD = """
- id: pm25-high
  kind: threshold
  select: {kind: air}
  metric: pm25
  op: ">"
  value: 55.4
  severity: warning
"""

ERRORS = [
    # (replace in THRESHOLD or extra lines, field, message fragment)
    (THRESHOLD + "  for: 5x\n", "for", "'5x' is not a duration"),
    (THRESHOLD + "  fro: 5m\n", "fro", "unknown field for kind 'threshold' (did you mean 'for'?)"),
    (THRESHOLD.replace("pm25\n", "pm2.5\n"), "metric", "'pm2.5' is not a known metric (did you mean 'pm25'?)"),
    (THRESHOLD.replace("metric: pm25", "metric: water_level_cm"), "metric", "not a metric of air sensors"),
    (THRESHOLD.replace('">"', '"=>"'), "op", "'=>' is not one of > >= < <= =="),
    (THRESHOLD.replace("55.4", "fifty"), "value", "'fifty' is not a finite number"),
    (THRESHOLD.replace("55.4", "9000"), "value", "outside pm25's plausible range"),
    (THRESHOLD.replace("warning", "severe"), "severity", "'severe' is not one of info, warning, critical"),
    (THRESHOLD.replace("  severity: warning\n", ""), "severity", "is required"),
    (THRESHOLD + "  clear: {value: 60}\n", "clear.value", "overlaps the trigger"),
    (THRESHOLD + "  clear: {op: '>', value: 40}\n", "clear.value", "overlaps the trigger"),
    (THRESHOLD + "  clear: {for: 1h, when: 2}\n", "clear.when", "unknown field"),
    (THRESHOLD + "  aggregate: mean\n", "window", "is required with 'aggregate: mean'"),
    (THRESHOLD.replace("{kind: air}", "{kind: air, city: Kotamobagu}"), "select.city", "not a valid city slug"),
    (THRESHOLD.replace("{kind: air}", "{kind: sky}"), "select.kind", "'sky' is not one of air"),
    (THRESHOLD.replace("{kind: air}", "{kinds: air}"), "select.kinds", "unknown field"),
    (THRESHOLD.replace("{kind: air}", "{kind: air, order: {min: 3, max: 1}}"), "select.order", "min 3 is above max 1"),
    (THRESHOLD.replace("kind: threshold", "kind: treshold"), "kind", "'treshold' is not one of threshold"),
    (THRESHOLD.replace("id: pm25-high", "id: ok"), "id", "duplicate of rules[0]"),
    (
        "- id: rise\n  kind: rate_of_change\n  select: {kind: flood}\n  metric: water_level_cm\n"
        "  direction: up\n  delta: 30\n  window: 30m\n  severity: warning\n",
        "direction",
        "'up' is not one of rise, fall",
    ),
    (
        "- id: rise\n  kind: rate_of_change\n  select: {kind: flood}\n  metric: water_level_cm\n"
        "  direction: rise\n  delta: 30\n  window: 0s\n  severity: warning\n",
        "window",
        "must be longer than zero",
    ),
    (
        "- id: rise\n  kind: rate_of_change\n  select: {kind: flood}\n  metric: water_level_cm\n"
        "  direction: rise\n  delta: 30\n  window: 30m\n  clear: {delta: 40}\n  severity: warning\n",
        "clear.delta",
        "above the trigger delta",
    ),
    ("- id: ispu\n  kind: index_band\n  index: ispu\n  pollutants: [pm25, pm1]\n", "pollutants", "'pm1'"),
    ("- id: ispu\n  kind: index_band\n  index: ispu\n  windows: {pm25: 1x}\n", "windows.pm25", "not a duration"),
    ("- id: ispu\n  kind: index_band\n  index: ispu\n  severity: warning\n", "severity", "unknown field"),
    (
        "- id: ispu\n  kind: index_band\n  index: ispu\n  levels: {unhealthy: warning}\n",
        "levels.unhealthy",
        "not a level of ispu (baik, sedang, tidak_sehat",
    ),
    (
        "- id: ispu\n  kind: index_band\n  index: ispu\n  levels: {tidak_sehat: critical, berbahaya: info}\n",
        "levels.berbahaya",
        "severity must not fall",
    ),
    ("- id: s\n  kind: index_band\n  index: siaga\n  select: {kind: air}\n", "select.kind", "applies to flood"),
    ("- id: s\n  kind: index_band\n  index: siaga\n  at_threshold: both\n", "at_threshold", "'both'"),
    ("- id: l\n  kind: index_band\n  index: los\n  pcu_factor: 0\n", "pcu_factor", "must be positive"),
    ("- id: r\n  kind: index_band\n  index: rain\n  levels: {ekstrem: critical}\n", "levels.ekstrem", "not a level"),
    ("- id: a\n  kind: absence\n  severity: info\n", "for", "is required"),
    ("- id: d\n  kind: data_quality\n  check: flaky\n  severity: info\n", "check", "'flaky'"),
    (
        "- id: d\n  kind: data_quality\n  check: stuck\n  select: {kind: air}\n  metric: pm25\n"
        "  window: 1h\n  min_readings: 1\n  severity: info\n",
        "min_readings",
        "must be at least 2",
    ),
    (
        "- id: d\n  kind: data_quality\n  check: out_of_range\n  count: 5\n  window: 1h\n"
        "  reasons: [nonsense]\n  severity: info\n",
        "reasons",
        "rejection reasons",
    ),
    (
        "- id: c\n  kind: composite\n  scope: river\n  match: all\n  window: 1h\n  severity: info\n"
        "  conditions:\n  - {name: a, kind: threshold, select: {kind: rain}, metric: rain_mm, op: '>', value: 1}\n",
        "conditions",
        "at least two conditions",
    ),
    (
        "- id: c\n  kind: composite\n  scope: river\n  match: all\n  window: 1h\n  severity: info\n"
        "  conditions:\n  - {name: a, kind: threshold, select: {kind: rain}, metric: rain_mm, op: '>', value: 1}\n"
        "  - {name: b, kind: threshold, select: {kind: flood}, metric: pm25, op: '>', value: 1}\n",
        "conditions[1].metric",
        "not a metric of flood sensors",
    ),
    (
        "- id: c\n  kind: composite\n  scope: river\n  match: all\n  window: 1h\n  severity: info\n"
        "  conditions:\n  - {name: a, kind: threshold, select: {kind: rain}, metric: rain_mm, op: '>', value: 1}\n"
        "  - {name: a, kind: absence, select: {kind: flood}, metric: water_level_cm}\n",
        "conditions[1].kind",
        "not one of threshold, rate_of_change",
    ),
    (
        "- id: c\n  kind: composite\n  scope: town\n  match: all\n  window: 1h\n  severity: info\n",
        "scope",
        "'town' is not one of district, river",
    ),
]


@pytest.mark.parametrize(("rule", "field", "fragment"), ERRORS, ids=[e[1] + ":" + e[2][:20] for e in ERRORS])
def test_errors_name_file_rule_and_field(tmp_path: Path, rule: str, field: str, fragment: str) -> None:
    error = rule_error(tmp_path, rule)
    message = str(error)
    path = str(tmp_path / "rules.yaml")
    rule_id = rule.split("id: ", 1)[1].split("\n", 1)[0]
    assert message.startswith(f"{path}: rule {rule_id!r} (rules[1]): field {field!r}: "), message
    assert fragment in message, message
    assert (error.path, error.rule, error.field) == (path, rule_id, field)


def test_the_example_message(tmp_path: Path) -> None:
    rules = (
        "rules:\n"
        + "".join(f"- {{id: r{i}, kind: absence, for: 15m, severity: info}}\n" for i in range(3))
        + textwrap.dedent(THRESHOLD)
        + "  for: 5x\n"
    )
    path = tmp_path / "deploy-rules.yaml"
    path.write_text(rules, encoding="utf-8")
    with pytest.raises(RuleFileError) as info:
        load_rules(path)
    assert str(info.value) == f"{path}: rule 'pm25-high' (rules[3]): field 'for': '5x' is not a duration" + (
        " (write e.g. '90s', '30m', '1h', '2d')"
    )


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ("rules: {}\n", "<f>: field 'rules': expected a list of rules"),
        ("rulez: []\n", "<f>: field 'rules': is required"),
        ("version: 2\nrules: []\n", "<f>: field 'version': 2 is not a supported version"),
        ("rules: []\nextra: 1\n", "<f>: field 'extra': unknown field"),
        ("- a\n", "<f>: expected a mapping with a 'rules' list"),
        ("rules: [3]\n", "<f>: rules[0]: expected a mapping"),
        ("rules: [{kind: absence}]\n", "<f>: rules[0]: field 'id': is required"),
        (
            "rules: [{id: Bad Id, kind: absence}]\n",
            "<f>: rule 'Bad Id' (rules[0]): field 'id': 'Bad Id' is not a valid id",
        ),
        ("rules: [\n", "<f>: not valid YAML"),
    ],
)
def test_file_level_errors(tmp_path: Path, doc: str, expected: str) -> None:
    path = tmp_path / "f.yaml"
    path.write_text(doc, encoding="utf-8")
    with pytest.raises(RuleFileError) as info:
        load_rules(path)
    assert str(info.value).startswith(expected.replace("<f>", str(path))), str(info.value)


def test_missing_file_and_parse_rules_source() -> None:
    with pytest.raises(RuleFileError, match="file not found"):
        load_rules("/nonexistent/rules.yaml")
    with pytest.raises(RuleFileError, match=r"^inline: rule 'x' \(rules\[0\]\): field 'kind': is required"):
        parse_rules({"rules": [{"id": "x"}]}, source="inline")
    assert len(parse_rules({"rules": []})) == 0


# Files the YAML loader itself fails on, beyond its own YAMLErrors: each must still be one line
# naming the file (the CLI prints it as the whole error), never a Python exception.
UNLOADABLE = {
    "deep_flow": ("[" * 5000 + "]" * 5000, "not valid YAML: nested too deeply to load"),
    "deep_block": ("a:\n" + "".join(" " * i + "- \n" for i in range(1, 5000)), "not valid YAML: nested too deeply"),
    "bad_date": ("rules: 2024-13-01\n", "not valid YAML: ValueError: month must be in 1..12"),
    "bare_tag": ("rules: !!timestamp\n", "not valid YAML: AttributeError: "),
    "syntax": ("rules: [\n", "not valid YAML: line 2, column 1: expected the node content"),
    "nul": ("rules: \x00\n", "not valid YAML: unacceptable character #x0000"),
}


@pytest.mark.parametrize("case", list(UNLOADABLE))
def test_a_file_the_yaml_loader_fails_on_is_one_line_naming_the_file(tmp_path: Path, case: str) -> None:
    text, expected = UNLOADABLE[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RuleFileError) as info:
        load_rules(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {expected}"), message
    assert "\n" not in message and info.value.path == str(path)


def test_a_directory_is_a_rule_file_error(tmp_path: Path) -> None:
    with pytest.raises(RuleFileError) as info:
        load_rules(tmp_path)
    assert str(info.value) == f"{tmp_path}: cannot be read: Is a directory"
