"""Property tests of `ingest.decode.Decoder`: it never raises, never stores an implausible row and
never drops a message without a trace, whatever the payload."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import msgspec
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ingest.decode import SENML_RELATIVE_LIMIT, SENML_VERSION, Decoder, SenMLRecord
from pantau.domain import Reason
from pantau.metrics import METRICS, SensorKind
from pantau.readings import Problem, Reading
from tests.hostile import Hostile, payloads

NOW = 1_700_000_000.0
MAX_FUTURE_S = 300.0
RETENTION_S = 30 * 86400.0
SENSOR_ID = "KTG-AQ-01"
DECODER = Decoder(max_payload_bytes=8192, max_future_s=MAX_FUTURE_S, retention_s=RETENTION_S)

# Each property runs this many examples; together they stay well under 20 s.
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

UNITS = sorted({u for m in METRICS.values() for u in m.senml_units} | {m.unit for m in METRICS.values()})
NAMES = [*METRICS, "pm1", "", "ts", "id", "sensor_id", "bn", "x_", "pm 25"]
PREFIXES = ["", f"{SENSOR_ID}:", f"{SENSOR_ID}/", f"urn:dev:pantau:{SENSOR_ID}:", "OTHER-01:", "bad name:"]
SENML_KEYS = ["bn", "bt", "bu", "bv", "bs", "bver", "n", "u", "v", "vs", "vb", "vd", "s", "t", "ut"]

# Numbers a sensor might plausibly send or get badly wrong: near the metric ranges, near now in
# seconds and in milliseconds, relative offsets, and the edges of the double range.
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-2000, max_value=12000),
    st.floats(min_value=NOW - RETENTION_S - 1000, max_value=NOW + MAX_FUTURE_S + 1000),
    st.floats(min_value=-RETENTION_S - 1000, max_value=2**28 + 10),
    st.sampled_from([0, -0.0, 1e308, -1e308, 5e-324, 2**28, 2**28 - 1, NOW * 1000, 10**400]),
)
timestamps = st.one_of(
    numbers,
    st.datetimes(timezones=st.one_of(st.none(), st.timezones())).map(lambda d: d.isoformat()),
    st.text(max_size=30),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=20))
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)

objects = st.dictionaries(
    st.one_of(st.sampled_from(NAMES), st.text(max_size=10)),
    st.one_of(numbers, timestamps, json_values, st.sampled_from([SENSOR_ID, "OTHER-01"])),
    max_size=8,
)


@st.composite
def senml_records(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    record: dict[str, Any] = {}
    for key in draw(st.lists(st.sampled_from(SENML_KEYS), unique=True, max_size=7)):
        if key == "bn":
            record[key] = draw(st.one_of(st.sampled_from(PREFIXES), st.text(max_size=12)))
        elif key == "n":
            record[key] = draw(st.one_of(st.sampled_from(NAMES), st.text(max_size=12)))
        elif key in ("bu", "u"):
            record[key] = draw(st.one_of(st.sampled_from(UNITS), st.text(max_size=6)))
        elif key == "bver":
            record[key] = draw(st.one_of(st.integers(-5, 15), scalars))
        elif key == "vb":
            record[key] = draw(st.one_of(st.booleans(), scalars))
        elif key in ("vs", "vd"):
            record[key] = draw(st.one_of(st.text(max_size=8), scalars))
        else:
            record[key] = draw(numbers)
    extra = draw(st.dictionaries(st.text(max_size=6), json_values, max_size=2))
    return {**extra, **record}


@st.composite
def plausible_records(draw: st.DrawFn) -> dict[str, Any]:
    """A record close to what a real sensor sends, so that many of them are stored."""
    metric = METRICS[draw(st.sampled_from(sorted(METRICS)))]
    record: dict[str, Any] = {"n": metric.name, "v": draw(st.floats(min_value=metric.low - 10, max_value=metric.high))}
    if draw(st.booleans()):
        record["bn"] = draw(st.sampled_from(PREFIXES[:4]))
    if draw(st.booleans()):
        record["u"] = draw(st.sampled_from([metric.unit, *metric.senml_units]))
    if draw(st.booleans()):
        record["t"] = draw(st.floats(min_value=-RETENTION_S - 100, max_value=MAX_FUTURE_S + 100))
    if draw(st.booleans()):
        record["bt"] = draw(st.sampled_from([0.0, NOW, NOW - 3600, -60.0]))
    return record


senml_packs = st.lists(st.one_of(plausible_records(), senml_records()), max_size=12)
plausible_objects = st.fixed_dictionaries(
    {},
    optional={
        **{
            name: st.one_of(
                st.floats(min_value=m.low - 10, max_value=m.high + 10),
                # Integer literals of any size are valid JSON, even beyond a double's range.
                st.integers(min_value=-(10**400), max_value=10**400),
            )
            for name, m in METRICS.items()
        },
        "ts": st.one_of(
            st.floats(min_value=NOW - RETENTION_S - 100, max_value=NOW + MAX_FUTURE_S + 100),
            st.integers(min_value=-(10**400), max_value=10**400),
            st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
        ),
        "id": st.sampled_from([SENSOR_ID, "OTHER-01"]),
    },
)


def encode(value: Any, ensure_ascii: bool) -> bytes:
    # allow_nan writes NaN/Infinity literals, which senders do produce; 10**400 stays an integer.
    return json.dumps(value, allow_nan=True, ensure_ascii=ensure_ascii).encode()


def check(payload: bytes, kind: SensorKind, decoder: Decoder = DECODER) -> list[Reading]:
    """Decode `payload`: it never raises, and leaves valid rows or rejections with a detail (its rows)."""
    rows: list[Reading] = []
    rejections: list[Problem] = []
    decoder.decode(payload, SENSOR_ID, kind, NOW, rows, rejections)
    assert rows or rejections, f"payload {payload!r} produced neither a row nor a rejection"
    for ts, sensor_id, metric_name, value in rows:
        assert sensor_id == SENSOR_ID
        metric = METRICS[metric_name]
        assert kind in metric.kinds
        assert type(value) is float
        assert math.isfinite(value)
        assert metric.low <= value <= metric.high
        assert type(ts) is float
        assert math.isfinite(ts)
        assert NOW - RETENTION_S <= ts <= NOW + MAX_FUTURE_S
    for reason, detail, metric in rejections:
        assert isinstance(reason, Reason)
        assert isinstance(detail, str)
        assert detail
        assert metric is None or (reason in (Reason.OUT_OF_RANGE, Reason.NON_FINITE) and metric in METRICS)
    return rows


kinds = st.sampled_from(list(SensorKind))
# Room for nesting thousands deep (the default ingest limit).
ROOMY = Decoder(max_payload_bytes=65536, max_future_s=MAX_FUTURE_S, retention_s=RETENTION_S)


@FUZZ
@given(hostile=payloads, kind=kinds)
def test_hostile_payloads_are_stored_or_rejected_and_a_duplicate_key_stores_nothing(
    hostile: Hostile, kind: SensorKind
) -> None:
    """Arbitrary bytes, JSON written by hand (keys twice), nesting up to 6,000 deep, numbers past a
    double and odd Unicode: the decoder never raises (RecursionError did past ~1,000 levels), and
    a payload naming a key twice in an object stores none of its readings."""
    rows = check(hostile.payload, kind, ROOMY)
    if hostile.duplicate:
        assert rows == [], f"{hostile.payload!r} names a key twice, yet stored {rows}"


def test_nesting_beyond_the_parser_is_rejected_as_too_deep() -> None:
    for payload in (b"[" * 1000 + b"]" * 1000, b'{"a":' * 3000 + b"1" + b"}" * 3000, b'[{"n":"x","v":' + b"[" * 5000):
        rows: list[Reading] = []
        rejections: list[Problem] = []
        ROOMY.decode(payload, SENSOR_ID, SensorKind.AIR, NOW, rows, rejections)
        assert rows == []
        assert [r for r, _d, _m in rejections] == [Reason.TOO_DEEP], payload[:20]


@FUZZ
@given(payload=st.binary(max_size=300), kind=kinds)
def test_arbitrary_bytes(payload: bytes, kind: SensorKind) -> None:
    check(payload, kind)


@FUZZ
@given(prefix=st.sampled_from([b"", b"[", b"{", b"[{", b' {"', b'[{"n": "pm25", "v": ']), tail=st.binary(max_size=200))
def test_bytes_that_look_like_json(prefix: bytes, tail: bytes) -> None:
    check(prefix + tail, SensorKind.AIR)


@FUZZ
@given(value=json_values, kind=kinds, ensure_ascii=st.booleans())
def test_arbitrary_json(value: Any, kind: SensorKind, ensure_ascii: bool) -> None:
    check(encode(value, ensure_ascii), kind)


@FUZZ
@given(obj=st.one_of(objects, plausible_objects), kind=kinds, ensure_ascii=st.booleans())
def test_json_objects(obj: dict[str, Any], kind: SensorKind, ensure_ascii: bool) -> None:
    check(encode(obj, ensure_ascii), kind)


@FUZZ
@given(pack=senml_packs, kind=kinds, ensure_ascii=st.booleans())
def test_senml_packs(pack: list[Any], kind: SensorKind, ensure_ascii: bool) -> None:
    check(encode(pack, ensure_ascii), kind)


@FUZZ
@given(
    value=st.one_of(plausible_objects, senml_packs),
    ensure_ascii=st.booleans(),
    at=st.integers(min_value=0),
    cut=st.integers(min_value=0, max_value=3),
    junk=st.binary(max_size=4),
)
def test_corrupted_payloads(value: Any, ensure_ascii: bool, at: int, cut: int, junk: bytes) -> None:
    """Valid payloads with bytes replaced at a random spot: truncation, stray bytes, broken UTF-8."""
    payload = encode(value, ensure_ascii)
    at %= len(payload) + 1
    check(payload[:at] + junk + payload[at + cut :], SensorKind.AIR)


@FUZZ
@given(
    metric=st.sampled_from(sorted(METRICS)),
    value=numbers,
    unit=st.one_of(st.none(), st.sampled_from(UNITS)),
    t=st.one_of(st.none(), numbers),
    kind=kinds,
)
def test_single_senml_record_is_stored_or_rejected_once(
    metric: str, value: Any, unit: str | None, t: Any, kind: SensorKind
) -> None:
    record: dict[str, Any] = {"bn": f"{SENSOR_ID}:", "n": metric, "v": value}
    if unit is not None:
        record["u"] = unit
    if t is not None:
        record["t"] = t
    payload = encode([record], ensure_ascii=True)
    check(payload, kind)
    rows: list[Reading] = []
    rejections: list[Problem] = []
    DECODER.decode(payload, SENSOR_ID, kind, NOW, rows, rejections)
    # One record yields exactly one outcome: a row or a rejection, never both, never neither.
    assert len(rows) + len(rejections) == 1


def reference_resolve(
    records: list[Any], sensor_id: str, kind: SensorKind, received_at: float, decoder: Decoder
) -> tuple[list[Reading], list[Problem]]:
    """The SenML record checks written plainly, one after another per record (as the decoder had
    them before it remembered names and deferred its words): the decoder must agree exactly."""
    rows: list[Reading] = []
    rejections: list[Problem] = []
    bn, bt, bu, bv = "", 0.0, None, 0.0
    for i, rec in enumerate(records):
        if rec.bver is not None and rec.bver > SENML_VERSION:
            rejections.append((Reason.INVALID_SENML, f"record {i}: SenML version {rec.bver} is not supported", None))
            break
        bn = rec.bn if rec.bn is not None else bn
        bt = rec.bt if rec.bt is not None else bt
        bu = rec.bu if rec.bu is not None else bu
        bv = rec.bv if rec.bv is not None else bv
        where = f"record {i}: "
        name = bn + (rec.n or "")
        if not name or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9\-:./_]*", name):
            rejections.append((Reason.INVALID_SENML, f"{where}invalid name {name!r}", None))
            continue
        n_values = (rec.v is not None) + (rec.vs is not None) + (rec.vb is not None) + (rec.vd is not None)
        if n_values != 1 and not (n_values == 0 and rec.s is not None):
            rejections.append((Reason.INVALID_SENML, f"{where}needs exactly one value field, has {n_values}", None))
            continue
        if rec.v is None:
            rejections.append((Reason.WRONG_TYPE, f"{where}only numeric values (v) are stored", None))
            continue
        cut = max(name.rfind(":"), name.rfind("/"))
        if cut >= 0:
            device = name[:cut]
            if device != sensor_id and not device.endswith((":" + sensor_id, "/" + sensor_id)):
                rejections.append(
                    (Reason.TOPIC_MISMATCH, f"{where}name {name!r} is not for sensor {sensor_id!r}", None)
                )
                continue
        metric = METRICS.get(name[cut + 1 :])
        if metric is None:
            rejections.append((Reason.UNKNOWN_METRIC, f"{where}unknown metric {name[cut + 1 :]!r}", None))
            continue
        if kind not in metric.kinds:
            detail = f"{where}{metric.name} is not a metric of {kind.value} sensors"
            rejections.append((Reason.METRIC_NOT_FOR_KIND, detail, None))
            continue
        value = bv + rec.v
        unit = rec.u if rec.u is not None else bu
        if unit is not None and unit != metric.unit:
            conversion = metric.senml_units.get(unit)
            if conversion is None:
                rejections.append((Reason.BAD_UNIT, f"{where}unit {unit!r} is not accepted for {metric.name}", None))
                continue
            value = value * conversion[0] + conversion[1]
        if not math.isfinite(value):
            rejections.append((Reason.NON_FINITE, f"{where}{metric.name} is not finite", metric.name))
            continue
        if not metric.low <= value <= metric.high:
            detail = f"{where}{metric.name}={value:g} {metric.unit} outside {metric.low:g}..{metric.high:g}"
            rejections.append((Reason.OUT_OF_RANGE, detail, metric.name))
            continue
        ts = bt + (rec.t or 0.0)
        if not math.isfinite(ts):
            rejections.append((Reason.BAD_TIMESTAMP, f"{where}time is not finite", None))
            continue
        if ts < SENML_RELATIVE_LIMIT:
            ts += received_at
        if ts > received_at + decoder.max_future_s:
            hint = " (milliseconds? ts is in seconds)" if ts > received_at * 100 else ""
            detail = f"{where}ts is {ts - received_at:.0f} s ahead of the receive time{hint}"
            rejections.append((Reason.FUTURE_TIMESTAMP, detail, None))
            continue
        if ts < received_at - decoder.retention_s:
            detail = f"{where}ts is older than the retention of {decoder.retention_s / 86400:.0f} days"
            rejections.append((Reason.TOO_OLD, detail, None))
            continue
        rows.append((ts, sensor_id, metric.name, value))
    return rows, rejections


@FUZZ
@given(pack=st.lists(st.one_of(plausible_records(), senml_records()), min_size=1, max_size=12), kind=kinds)
def test_senml_record_checks_match_the_plain_checks_cold_and_warm(pack: list[Any], kind: SensorKind) -> None:
    # The decoder remembers what each name means per sensor and kind: the first pack (cold) and the
    # same pack again for the topic's sensor and for another one (warm, with names another sensor
    # left behind) give exactly the rows and rejections of the checks written plainly.
    try:
        records = msgspec.json.decode(encode(pack, ensure_ascii=True), type=list[SenMLRecord])
    except (msgspec.ValidationError, msgspec.DecodeError):
        assume(False)
    decoder = Decoder(max_payload_bytes=8192, max_future_s=MAX_FUTURE_S, retention_s=RETENTION_S)
    for sensor_id in (SENSOR_ID, "OTHER-01", SENSOR_ID):
        rows: list[Reading] = []
        rejections: list[Problem] = []
        decoder._resolve(records, sensor_id, kind, NOW, rows, rejections)
        assert (rows, rejections) == reference_resolve(records, sensor_id, kind, NOW, decoder)
