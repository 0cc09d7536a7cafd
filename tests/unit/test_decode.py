"""Unit tests of `ingest.decode.Decoder`: both payload forms, SenML resolution and every rejection."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ingest.decode import SENML_RELATIVE_LIMIT, Decoder
from pantau.domain import Reason
from pantau.metrics import METRICS, SensorKind
from pantau.readings import Problem, Reading

# 2023-11-14T22:13:20Z: a round receive time that makes expected timestamps easy to read.
NOW = 1_700_000_000.0
MAX_FUTURE_S = 300.0
RETENTION_S = 365 * 86400.0
MAX_BYTES = 4096
AIR_ID = "KTG-AQ-01"
RIVER_ID = "SPT-RV-01"
TRAFFIC_ID = "MJK-TR-01"

DECODER = Decoder(max_payload_bytes=MAX_BYTES, max_future_s=MAX_FUTURE_S, retention_s=RETENTION_S)


def problems(
    payload: bytes | str | list[Any] | dict[str, Any],
    *,
    sensor_id: str = AIR_ID,
    kind: SensorKind = SensorKind.AIR,
    received_at: float = NOW,
) -> tuple[list[Reading], list[Problem]]:
    """Decode one payload (bytes as is, str encoded, anything else as JSON) into fresh lists."""
    if isinstance(payload, str):
        raw = payload.encode()
    elif isinstance(payload, bytes):
        raw = payload
    else:
        raw = json.dumps(payload).encode()
    rows: list[Reading] = []
    found: list[Problem] = []
    DECODER.decode(raw, sensor_id, kind, received_at, rows, found)
    return rows, found


def decode(payload: bytes | str | list[Any] | dict[str, Any], **kwargs: Any) -> tuple[list[Reading], list[Any]]:
    """`problems`, each problem as (reason, detail): the metric a problem names has a test of its own."""
    rows, found = problems(payload, **kwargs)
    return rows, [(reason, detail) for reason, detail, _metric in found]


def rejected(payload: Any, **kwargs: Any) -> list[tuple[Reason, str]]:
    """The (reason, detail) of each problem of a payload that must produce no rows at all."""
    rows, rejections = decode(payload, **kwargs)
    assert rows == []
    return rejections


def only_reason(payload: Any, **kwargs: Any) -> tuple[Reason, str]:
    """The single rejection of a payload that produces no rows and exactly one rejection."""
    rejections = rejected(payload, **kwargs)
    assert len(rejections) == 1, rejections
    return rejections[0]


# -- payload envelope ---------------------------------------------------------------------------


def test_oversize_payload_is_rejected_before_parsing() -> None:
    payload = b"{" + b" " * MAX_BYTES + b"}"
    assert only_reason(payload) == (
        Reason.OVERSIZE,
        f"payload of {MAX_BYTES + 2} bytes exceeds the limit of {MAX_BYTES}",
    )


def test_payload_exactly_at_the_size_limit_is_decoded() -> None:
    body = b'{"pm25": 12}'
    payload = body[:-1] + b" " * (MAX_BYTES - len(body)) + b"}"
    assert len(payload) == MAX_BYTES
    assert decode(payload) == ([(NOW, AIR_ID, "pm25", 12.0)], [])


@pytest.mark.parametrize("payload", [b"", b"   ", b"\n\t \r\n"])
def test_empty_payload(payload: bytes) -> None:
    assert only_reason(payload) == (Reason.EMPTY, "empty payload")


@pytest.mark.parametrize("payload", [b"hello", b"42", b'"pm25"', b"true", b"null", b"\xff\xfe{}", b"<xml/>"])
def test_payload_that_is_neither_object_nor_array_is_malformed(payload: bytes) -> None:
    assert only_reason(payload) == (Reason.MALFORMED_JSON, "payload is neither a JSON object nor a SenML array")


@pytest.mark.parametrize(
    "payload",
    [b"{", b'{"pm25": 1,}', b'{"pm25" 1}', b"{pm25: 1}", b'{"pm25": 1} trailing', b"[", b'[{"v": 1}', b"[1,]"],
)
def test_broken_json_is_malformed(payload: bytes) -> None:
    reason, detail = only_reason(payload)
    assert reason is Reason.MALFORMED_JSON
    assert "malformed" in detail.lower() or "truncated" in detail.lower()


@pytest.mark.parametrize(
    "payload",
    [
        b'{"pm25": 1, "note": "\x80"}',
        b'{"\xff": 1}',
        b'[{"n": "pm25\xc3", "v": 1}]',
        b'[{"n": "pm25", "vs": "\xc3\x28"}]',
        # Through the record-by-record path, taken for a key ending in "_".
        b'[{"n": "pm25", "v": 1, "x_": "\xe2\x82"}]',
    ],
)
def test_invalid_utf8_is_malformed(payload: bytes) -> None:
    reason, detail = only_reason(payload)
    assert reason is Reason.MALFORMED_JSON
    assert "utf-8" in detail


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        (b'{"pm25": "\\ud800"}', "unpaired UTF-16 surrogate \\ud800 at byte 10: JSON text must be valid Unicode"),
        (
            b'[{"n": "pm25", "vs": "a\\uDC01b"}]',
            "unpaired UTF-16 surrogate \\uDC01 at byte 23: JSON text must be valid Unicode",
        ),
        (b'{"\\ud83d": 1}', "unpaired UTF-16 surrogate \\ud83d at byte 2: JSON text must be valid Unicode"),
    ],
)
def test_a_lone_surrogate_is_named_where_it_is(payload: bytes, detail: str) -> None:
    # msgspec's own words were "Input data was truncated".
    assert only_reason(payload) == (Reason.MALFORMED_JSON, detail)


def test_a_surrogate_pair_and_an_escaped_backslash_are_no_lone_surrogate() -> None:
    rows, problems = decode(b'{"pm25": 12, "note": "\\ud83d\\ude00 \\\\ud800"}')
    assert rows == [(NOW, AIR_ID, "pm25", 12.0)] and [p[0] for p in problems] == [Reason.UNKNOWN_METRIC]


def test_nan_inside_a_string_of_broken_json_is_still_malformed() -> None:
    # The non-finite hint looks only at bare NaN/Infinity tokens, not at text inside strings.
    reason, _ = only_reason(b'{"note": "NaN", "pm25": ')
    assert reason is Reason.MALFORMED_JSON


def test_leading_whitespace_is_allowed_before_either_form() -> None:
    assert decode(b'\n  {"pm25": 5}') == ([(NOW, AIR_ID, "pm25", 5.0)], [])
    assert decode(b' \t[{"n": "pm25", "v": 5}]') == ([(NOW, AIR_ID, "pm25", 5.0)], [])


# -- JSON object form ---------------------------------------------------------------------------


def test_object_with_epoch_ts_and_several_metrics() -> None:
    payload = {"ts": NOW - 60, "pm25": 35.5, "pm10": 80, "temperature_c": 29.25, "humidity_pct": 84}
    assert decode(payload) == (
        [
            (NOW - 60, AIR_ID, "pm25", 35.5),
            (NOW - 60, AIR_ID, "pm10", 80.0),
            (NOW - 60, AIR_ID, "temperature_c", 29.25),
            (NOW - 60, AIR_ID, "humidity_pct", 84.0),
        ],
        [],
    )


def test_object_values_are_floats() -> None:
    rows, _ = decode({"ts": int(NOW), "pm25": 35})
    assert rows == [(NOW, AIR_ID, "pm25", 35.0)]
    assert all(type(x) is float for x in (rows[0][0], rows[0][3]))


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("2023-11-14T22:13:20Z", NOW),
        ("2023-11-14T22:13:20+00:00", NOW),
        # Kotamobagu is on WITA, UTC+8.
        ("2023-11-15T06:13:20+08:00", NOW),
        ("2023-11-14T22:12:20.250Z", NOW - 59.75),
        ("2023-11-14T15:13:20-07:00", NOW),
    ],
)
def test_object_with_rfc3339_ts(ts: str, expected: float) -> None:
    assert decode({"ts": ts, "pm25": 10}) == ([(expected, AIR_ID, "pm25", 10.0)], [])


@pytest.mark.parametrize("payload", [{"pm25": 10}, {"ts": None, "pm25": 10}])
def test_object_without_ts_takes_the_receive_time(payload: dict[str, Any]) -> None:
    assert decode(payload) == ([(NOW, AIR_ID, "pm25", 10.0)], [])


@pytest.mark.parametrize("key", ["sensor_id", "id", "bn"])
def test_object_naming_its_own_sensor_is_accepted(key: str) -> None:
    assert decode({key: AIR_ID, "ts": NOW, "pm25": 10}) == ([(NOW, AIR_ID, "pm25", 10.0)], [])


@pytest.mark.parametrize("key", ["sensor_id", "id", "bn"])
def test_object_naming_another_sensor_is_a_topic_mismatch(key: str) -> None:
    assert only_reason({key: "KTG-AQ-02", "pm25": 10}) == (
        Reason.TOPIC_MISMATCH,
        f"payload names sensor 'KTG-AQ-02' but the topic is {AIR_ID!r}",
    )


def test_object_with_numeric_id_is_a_topic_mismatch() -> None:
    reason, detail = only_reason({"id": 1, "pm25": 10})
    assert reason is Reason.TOPIC_MISMATCH
    assert "names sensor 1 " in detail


@pytest.mark.parametrize(
    ("ts", "detail"),
    [
        ("2023-11-14T22:13:20", "ts '2023-11-14T22:13:20' has no UTC offset (RFC 3339 requires one)"),
        ("2023-11-14", "ts '2023-11-14' has no UTC offset (RFC 3339 requires one)"),
        ("yesterday", "ts 'yesterday' is not an RFC 3339 timestamp"),
        ("", "ts '' is not an RFC 3339 timestamp"),
        ("2023-13-01T00:00:00Z", "ts '2023-13-01T00:00:00Z' is not an RFC 3339 timestamp"),
        (True, "ts must be a number or an RFC 3339 string, got True"),
        (False, "ts must be a number or an RFC 3339 string, got False"),
        ([1], "ts must be a number or an RFC 3339 string, got list"),
        ({"s": 1}, "ts must be a number or an RFC 3339 string, got dict"),
    ],
)
def test_object_with_bad_ts(ts: Any, detail: str) -> None:
    assert only_reason({"ts": ts, "pm25": 10}) == (Reason.BAD_TIMESTAMP, detail)


def test_object_ts_integer_too_large_for_a_double_is_a_bad_timestamp() -> None:
    payload = b'{"ts": ' + b"9" * 400 + b', "pm25": 10}'
    assert only_reason(payload) == (Reason.BAD_TIMESTAMP, "ts is not finite")


def test_object_ts_exactly_at_the_future_limit_is_accepted() -> None:
    assert decode({"ts": NOW + MAX_FUTURE_S, "pm25": 10}) == ([(NOW + MAX_FUTURE_S, AIR_ID, "pm25", 10.0)], [])


def test_object_ts_beyond_the_future_limit_is_rejected() -> None:
    assert only_reason({"ts": NOW + MAX_FUTURE_S + 1, "pm25": 10}) == (
        Reason.FUTURE_TIMESTAMP,
        "ts is 301 s ahead of the receive time",
    )


def test_object_ts_in_milliseconds_gets_a_hint() -> None:
    ts_ms = int(NOW * 1000)
    reason, detail = only_reason({"ts": ts_ms, "pm25": 10})
    assert reason is Reason.FUTURE_TIMESTAMP
    assert detail.endswith(" s ahead of the receive time (milliseconds? ts is in seconds)")


def test_no_milliseconds_hint_for_a_modest_clock_skew() -> None:
    _, detail = only_reason({"ts": NOW + 3600, "pm25": 10})
    assert detail == "ts is 3600 s ahead of the receive time"


def test_object_ts_exactly_at_the_retention_limit_is_accepted() -> None:
    ts = NOW - RETENTION_S
    assert decode({"ts": ts, "pm25": 10}) == ([(ts, AIR_ID, "pm25", 10.0)], [])


def test_object_ts_older_than_retention_is_rejected() -> None:
    assert only_reason({"ts": NOW - RETENTION_S - 1, "pm25": 10}) == (
        Reason.TOO_OLD,
        "ts is older than the retention of 365 days",
    )


def test_object_ts_as_rfc3339_can_be_too_old() -> None:
    assert only_reason({"ts": "2001-01-01T00:00:00+07:00", "pm25": 10})[0] is Reason.TOO_OLD


@pytest.mark.parametrize("payload", [{}, {"ts": NOW}, {"id": AIR_ID, "ts": NOW}])
def test_object_without_readings_is_empty(payload: dict[str, Any]) -> None:
    assert only_reason(payload) == (Reason.EMPTY, "no readings in the payload")


def test_object_unknown_metric() -> None:
    assert only_reason({"pm1": 3}) == (Reason.UNKNOWN_METRIC, "unknown metric 'pm1'")


def test_object_metric_of_another_kind() -> None:
    assert only_reason({"water_level_cm": 120}) == (
        Reason.METRIC_NOT_FOR_KIND,
        "water_level_cm is not a metric of air sensors",
    )


@pytest.mark.parametrize(
    ("value", "type_name"),
    [("35.5", "str"), ("NaN", "str"), (True, "bool"), (False, "bool"), (None, "NoneType"), ([1], "list"), ({}, "dict")],
)
def test_object_value_of_wrong_type(value: Any, type_name: str) -> None:
    assert only_reason({"pm25": value}) == (Reason.WRONG_TYPE, f"pm25 must be a number, got {type_name}")


@pytest.mark.parametrize(
    "payload",
    [
        b'{"pm25": NaN}',
        b'{"pm25": Infinity}',
        b'{"pm25": -Infinity}',
        b'{"ts": NaN, "pm25": 1}',
        b'{"pm25": 1, "pm10": NaN}',
    ],
)
def test_object_nan_and_infinity_literals_are_non_finite(payload: bytes) -> None:
    assert only_reason(payload) == (Reason.NON_FINITE, "NaN and Infinity are not numbers in JSON")


@pytest.mark.parametrize("literal", [b"1e400", b"-1e400", b"2e308"])
def test_object_number_beyond_double_range_is_non_finite(literal: bytes) -> None:
    assert only_reason(b'{"pm25": ' + literal + b"}")[0] is Reason.NON_FINITE


def test_object_integer_too_large_for_a_double_is_non_finite() -> None:
    payload = b'{"pm10": 12, "pm25": ' + b"9" * 400 + b"}"
    assert decode(payload) == (
        [(NOW, AIR_ID, "pm10", 12.0)],
        [(Reason.NON_FINITE, "pm25 is too large for a double")],
    )


@pytest.mark.parametrize(
    ("metric", "value"),
    [
        ("pm25", 0),
        ("pm25", 2000),
        ("pm10", 5000),
        ("co", 100000),
        ("temperature_c", -20),
        ("temperature_c", 60),
        ("humidity_pct", 0),
        ("humidity_pct", 100),
    ],
)
def test_object_value_exactly_at_a_bound_is_accepted(metric: str, value: float) -> None:
    assert decode({metric: value}) == ([(NOW, AIR_ID, metric, float(value))], [])


@pytest.mark.parametrize(
    ("metric", "value", "detail"),
    [
        ("pm25", -0.5, "pm25=-0.5 µg/m³ outside 0..2000"),
        ("pm25", 2000.5, "pm25=2000.5 µg/m³ outside 0..2000"),
        ("temperature_c", -20.01, "temperature_c=-20.01 °C outside -20..60"),
        ("temperature_c", 60.01, "temperature_c=60.01 °C outside -20..60"),
        ("humidity_pct", 101, "humidity_pct=101 % outside 0..100"),
    ],
)
def test_object_value_out_of_range(metric: str, value: float, detail: str) -> None:
    assert problems({metric: value})[1] == [(Reason.OUT_OF_RANGE, detail, metric)]


def test_value_rejections_name_their_metric_for_the_rule_engine() -> None:
    # Every metric, out of range and non-finite, in a JSON object and in a SenML pack: the problem
    # carries its metric as a field; other problems carry none.
    for name, metric in METRICS.items():
        kind, sid = next(iter(metric.kinds)), AIR_ID
        for value in (metric.high + 1, metric.low - 1):
            [(reason, _detail, about)] = problems({name: value}, sensor_id=sid, kind=kind)[1]
            assert (reason, about) == (Reason.OUT_OF_RANGE, name)
        pack = [{"bn": f"{sid}:", "bt": 1.7e9}, {"n": "x", "v": 1}, {"n": name, "v": metric.high + 1}]
        found = problems(pack, sensor_id=sid, kind=kind)[1]
        assert [(p[0], p[2]) for p in found] == [
            (Reason.INVALID_SENML, None),
            (Reason.UNKNOWN_METRIC, None),
            (Reason.OUT_OF_RANGE, name),
        ], found
    too_large = problems(b'{"pm10": 1' + b"0" * 400 + b"}")[1]
    assert too_large == [(Reason.NON_FINITE, "pm10 is too large for a double", "pm10")]
    assert problems([{"n": "pm25", "v": 1e308, "bv": 1e308}])[1][0][::2] == (Reason.NON_FINITE, "pm25")
    assert problems(b'{"pm26": 3}')[1] == [(Reason.UNKNOWN_METRIC, "unknown metric 'pm26'", None)]
    assert problems(b'{"pm25": NaN}')[1] == [(Reason.NON_FINITE, "NaN and Infinity are not numbers in JSON", None)]


def test_object_traffic_and_flood_kinds() -> None:
    rows, rejections = decode(
        {"vehicle_count": 143, "interval_s": 60, "avg_speed_kmh": 31.5, "occupancy": 0.2},
        sensor_id=TRAFFIC_ID,
        kind=SensorKind.TRAFFIC,
    )
    assert rejections == []
    assert rows == [
        (NOW, TRAFFIC_ID, "vehicle_count", 143.0),
        (NOW, TRAFFIC_ID, "interval_s", 60.0),
        (NOW, TRAFFIC_ID, "avg_speed_kmh", 31.5),
        (NOW, TRAFFIC_ID, "occupancy", 0.2),
    ]
    rows, rejections = decode({"water_level_cm": -15, "rain_mm": 12.5}, sensor_id=RIVER_ID, kind=SensorKind.FLOOD)
    assert rejections == []
    assert rows == [(NOW, RIVER_ID, "water_level_cm", -15.0), (NOW, RIVER_ID, "rain_mm", 12.5)]


def test_object_partly_valid_keeps_the_good_readings() -> None:
    rows, rejections = decode(
        {"ts": NOW - 10, "pm25": 35, "pm1": 3, "pm10": "high", "o3": 9999, "rain_mm": 2, "so2": 40},
    )
    assert rows == [(NOW - 10, AIR_ID, "pm25", 35.0), (NOW - 10, AIR_ID, "so2", 40.0)]
    assert rejections == [
        (Reason.UNKNOWN_METRIC, "unknown metric 'pm1'"),
        (Reason.WRONG_TYPE, "pm10 must be a number, got str"),
        (Reason.OUT_OF_RANGE, "o3=9999 µg/m³ outside 0..2000"),
        (Reason.METRIC_NOT_FOR_KIND, "rain_mm is not a metric of air sensors"),
    ]


def test_object_bad_ts_rejects_the_whole_message() -> None:
    # The time applies to every reading, so none of them can be stored.
    assert only_reason({"ts": "soon", "pm25": 1, "pm10": 2})[0] is Reason.BAD_TIMESTAMP


def test_decoder_appends_to_the_callers_lists() -> None:
    rows: list[Reading] = [(1.0, "X", "pm25", 1.0)]
    rejections: list[Problem] = [(Reason.EMPTY, "earlier", None)]
    DECODER.decode(b'{"pm25": 2, "pm1": 1}', AIR_ID, SensorKind.AIR, NOW, rows, rejections)
    assert rows == [(1.0, "X", "pm25", 1.0), (NOW, AIR_ID, "pm25", 2.0)]
    assert rejections == [(Reason.EMPTY, "earlier", None), (Reason.UNKNOWN_METRIC, "unknown metric 'pm1'", None)]


# -- SenML: resolution ---------------------------------------------------------------------------


def test_senml_pack_with_base_name_time_and_unit() -> None:
    pack = [
        {"bn": f"{AIR_ID}:", "bt": NOW - 60, "bu": "ug/m3", "n": "pm25", "v": 35.2},
        {"n": "pm10", "v": 51},
        {"n": "temperature_c", "u": "Cel", "v": 29.5, "t": 30},
    ]
    assert decode(pack) == (
        [
            (NOW - 60, AIR_ID, "pm25", 35.2),
            (NOW - 60, AIR_ID, "pm10", 51.0),
            (NOW - 30, AIR_ID, "temperature_c", 29.5),
        ],
        [],
    )


def test_senml_plain_names_without_base_name() -> None:
    assert decode([{"n": "pm25", "v": 12}, {"n": "o3", "v": 40.5}]) == (
        [(NOW, AIR_ID, "pm25", 12.0), (NOW, AIR_ID, "o3", 40.5)],
        [],
    )


@pytest.mark.parametrize(
    "bn",
    [
        f"{AIR_ID}:",
        f"{AIR_ID}/",
        f"urn:dev:pantau:{AIR_ID}:",
        f"kotamobagu/air/{AIR_ID}/",
    ],
)
def test_senml_base_name_naming_the_topic_sensor_is_accepted(bn: str) -> None:
    assert decode([{"bn": bn, "n": "pm25", "v": 12}]) == ([(NOW, AIR_ID, "pm25", 12.0)], [])


def test_senml_full_name_in_n_is_accepted() -> None:
    assert decode([{"n": f"{AIR_ID}:pm25", "v": 12}]) == ([(NOW, AIR_ID, "pm25", 12.0)], [])


@pytest.mark.parametrize(
    "bn",
    ["KTG-AQ-02:", "urn:dev:pantau:KTG-AQ-02:", f"urn:dev:pantau:X{AIR_ID}:", "KTG-AQ-0:", f"{AIR_ID}-b/"],
)
def test_senml_base_name_naming_another_sensor_is_a_topic_mismatch(bn: str) -> None:
    assert only_reason([{"bn": bn, "n": "pm25", "v": 12}]) == (
        Reason.TOPIC_MISMATCH,
        f"record 0: name {bn + 'pm25'!r} is not for sensor {AIR_ID!r}",
    )


def test_senml_absolute_time_is_bt_plus_t() -> None:
    pack = [
        {"bt": NOW - 3600, "n": "pm25", "v": 1, "t": -60},
        {"n": "pm25", "v": 2},
        {"n": "pm25", "v": 3, "t": 1800.5},
    ]
    rows, rejections = decode(pack)
    assert rejections == []
    assert [r[0] for r in rows] == [NOW - 3660, NOW - 3600, NOW - 1799.5]


@pytest.mark.parametrize(
    ("record", "expected_ts"),
    [
        ({"t": -30}, NOW - 30),
        ({"t": 0}, NOW),
        ({}, NOW),
        ({"bt": -120, "t": 60}, NOW - 60),
        ({"bt": -600}, NOW - 600),
        ({"t": 120.5}, NOW + 120.5),
    ],
)
def test_senml_relative_time_is_added_to_the_receive_time(record: dict[str, Any], expected_ts: float) -> None:
    assert decode([{"n": "pm25", "v": 7, **record}]) == ([(expected_ts, AIR_ID, "pm25", 7.0)], [])


def test_senml_time_just_below_two_to_the_28_is_relative() -> None:
    # Relative and far ahead of now: a future timestamp, not 1978.
    reason, detail = only_reason([{"n": "pm25", "v": 7, "t": SENML_RELATIVE_LIMIT - 1}])
    assert reason is Reason.FUTURE_TIMESTAMP
    assert detail == f"record 0: ts is {SENML_RELATIVE_LIMIT - 1} s ahead of the receive time"


def test_senml_time_at_two_to_the_28_is_absolute() -> None:
    # 2**28 s after the epoch is in 1978: absolute, and far beyond retention.
    assert only_reason([{"n": "pm25", "v": 7, "t": SENML_RELATIVE_LIMIT}]) == (
        Reason.TOO_OLD,
        "record 0: ts is older than the retention of 365 days",
    )


def test_senml_base_value_is_added_to_v() -> None:
    pack = [
        {"bn": f"{RIVER_ID}:", "bv": 100, "n": "water_level_cm", "v": -2.5},
        {"n": "water_level_cm", "v": 4},
        {"bv": 0, "n": "water_level_cm", "v": 4},
    ]
    rows, rejections = decode(pack, sensor_id=RIVER_ID, kind=SensorKind.FLOOD)
    assert rejections == []
    assert [r[3] for r in rows] == [97.5, 104.0, 4.0]


def test_senml_base_unit_is_the_default_and_u_overrides_one_record() -> None:
    pack = [
        {"bn": f"{RIVER_ID}:", "bu": "m", "n": "water_level_cm", "v": 1.25, "t": -120},
        {"n": "water_level_cm", "u": "cm", "v": 130, "t": -60},
        {"n": "water_level_cm", "v": 1.5},
        {"n": "rain_mm", "u": "mm", "v": 4.5},
    ]
    rows, rejections = decode(pack, sensor_id=RIVER_ID, kind=SensorKind.FLOOD)
    assert rejections == []
    assert rows == [
        (NOW - 120, RIVER_ID, "water_level_cm", 125.0),
        (NOW - 60, RIVER_ID, "water_level_cm", 130.0),
        (NOW, RIVER_ID, "water_level_cm", 150.0),
        (NOW, RIVER_ID, "rain_mm", 4.5),
    ]


def test_senml_base_fields_carry_over_until_changed() -> None:
    pack = [
        {"bn": f"{AIR_ID}:", "bt": NOW - 300, "bu": "kg/m3", "bv": 0.0, "n": "pm25", "v": 2e-8},
        {"n": "pm10", "v": 5e-8},
        {"bt": NOW - 200, "n": "pm25", "v": 3e-8},
        {"bu": "ug/m3", "n": "pm10", "v": 60},
        {"bn": f"urn:dev:pantau:{AIR_ID}:", "n": "o3", "v": 41},
        {"n": "temperature_c", "u": "Cel", "v": 30, "t": 50},
    ]
    rows, rejections = decode(pack)
    assert rejections == []
    assert [(ts, metric) for ts, _, metric, _ in rows] == [
        (NOW - 300, "pm25"),
        (NOW - 300, "pm10"),
        (NOW - 200, "pm25"),
        (NOW - 200, "pm10"),
        (NOW - 200, "o3"),
        (NOW - 150, "temperature_c"),
    ]
    assert [v for *_, v in rows] == pytest.approx([20.0, 50.0, 30.0, 60.0, 41.0, 30.0], rel=1e-12)


@pytest.mark.parametrize(
    ("kind", "metric", "unit", "v", "expected"),
    [
        (SensorKind.FLOOD, "water_level_cm", "m", 1.25, 125.0),
        (SensorKind.FLOOD, "water_level_cm", "mm", 1234.0, 123.4),
        (SensorKind.FLOOD, "water_level_cm", "cm", 87.0, 87.0),
        (SensorKind.FLOOD, "rain_mm", "m", 0.0125, 12.5),
        (SensorKind.AIR, "pm25", "kg/m3", 3.5e-8, 35.0),
        (SensorKind.AIR, "pm25", "ug/m3", 35.0, 35.0),
        (SensorKind.AIR, "pm25", "µg/m3", 35.0, 35.0),
        (SensorKind.AIR, "pm25", "ug/m^3", 35.0, 35.0),
        (SensorKind.AIR, "pm25", "µg/m³", 35.0, 35.0),
        (SensorKind.AIR, "temperature_c", "K", 300.15, 27.0),
        (SensorKind.AIR, "temperature_c", "Cel", 27.0, 27.0),
        (SensorKind.AIR, "humidity_pct", "%RH", 80.0, 80.0),
        (SensorKind.TRAFFIC, "avg_speed_kmh", "m/s", 10.0, 36.0),
        (SensorKind.TRAFFIC, "occupancy", "%", 42.0, 0.42),
        (SensorKind.TRAFFIC, "occupancy", "/", 0.42, 0.42),
        (SensorKind.TRAFFIC, "interval_s", "min", 5.0, 300.0),
        (SensorKind.TRAFFIC, "vehicle_count", "count", 17.0, 17.0),
    ],
)
def test_senml_unit_conversion(kind: SensorKind, metric: str, unit: str, v: float, expected: float) -> None:
    rows, rejections = decode([{"n": metric, "u": unit, "v": v}], sensor_id="S-1", kind=kind)
    assert rejections == []
    assert len(rows) == 1
    ts, sensor_id, name, value = rows[0]
    assert (ts, sensor_id, name) == (NOW, "S-1", metric)
    assert value == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_senml_base_unit_applies_conversion() -> None:
    rows, rejections = decode(
        [{"bu": "m/s", "n": "avg_speed_kmh", "v": 12.5}, {"n": "avg_speed_kmh", "v": 5}],
        sensor_id=TRAFFIC_ID,
        kind=SensorKind.TRAFFIC,
    )
    assert rejections == []
    assert [r[3] for r in rows] == [45.0, 18.0]


def test_senml_range_is_checked_after_conversion() -> None:
    # 150 m is 15,000 cm: beyond the gauge range although 150 alone would be plausible in cm.
    assert only_reason([{"n": "water_level_cm", "u": "m", "v": 150}], sensor_id=RIVER_ID, kind=SensorKind.FLOOD) == (
        Reason.OUT_OF_RANGE,
        "record 0: water_level_cm=15000 cm outside -1000..10000",
    )
    # 99 % occupancy is 0.99: in range although 99 would not be.
    rows, _ = decode([{"n": "occupancy", "u": "%", "v": 99}], sensor_id=TRAFFIC_ID, kind=SensorKind.TRAFFIC)
    assert rows == [(NOW, TRAFFIC_ID, "occupancy", 0.99)]


@pytest.mark.parametrize(
    ("metric", "unit"),
    [("pm25", "ppm"), ("pm25", "m"), ("temperature_c", "degF"), ("humidity_pct", "/"), ("pm10", "")],
)
def test_senml_unit_not_accepted_for_the_metric(metric: str, unit: str) -> None:
    assert only_reason([{"n": metric, "u": unit, "v": 1}]) == (
        Reason.BAD_UNIT,
        f"record 0: unit {unit!r} is not accepted for {metric}",
    )


def test_senml_buffered_backlog_of_fifty_records() -> None:
    start = NOW - 50 * 60
    pack: list[dict[str, Any]] = [{"bn": f"{RIVER_ID}:", "bt": start, "bu": "m", "n": "water_level_cm", "v": 1.0}]
    pack += [{"n": "water_level_cm", "t": i * 60, "v": 1.0 + i / 100} for i in range(1, 50)]
    assert len(json.dumps(pack).encode()) < MAX_BYTES
    rows, rejections = decode(pack, sensor_id=RIVER_ID, kind=SensorKind.FLOOD)
    assert rejections == []
    assert len(rows) == 50
    assert [r[0] for r in rows] == [start + i * 60 for i in range(50)]
    assert [r[3] for r in rows] == pytest.approx([100.0 + i for i in range(50)], rel=1e-12)
    assert {(r[1], r[2]) for r in rows} == {(RIVER_ID, "water_level_cm")}


def test_senml_unknown_fields_are_ignored() -> None:
    pack = [{"n": "pm25", "v": 9, "model": "SDS011", "loc": {"lat": 0.73}, "ut": 60, "bs": 1}]
    assert decode(pack) == ([(NOW, AIR_ID, "pm25", 9.0)], [])


def test_senml_supported_version_is_accepted() -> None:
    assert decode([{"bver": 10, "n": "pm25", "v": 9}]) == ([(NOW, AIR_ID, "pm25", 9.0)], [])


# -- SenML: rejections ---------------------------------------------------------------------------


def test_senml_empty_pack() -> None:
    assert only_reason(b"[]") == (Reason.EMPTY, "empty SenML pack")


@pytest.mark.parametrize(
    "payload",
    [
        b'[{"n": "pm25", "v": NaN}]',
        b'[{"n": "pm25", "v": Infinity}]',
        b'[{"n": "pm25", "v": -Infinity}]',
        b'[{"n": "pm25", "v": 1}, {"n": "pm10", "bt": NaN, "v": 1}]',
    ],
)
def test_senml_nan_and_infinity_literals_are_non_finite(payload: bytes) -> None:
    assert only_reason(payload) == (Reason.NON_FINITE, "NaN and Infinity are not numbers in JSON")


@pytest.mark.parametrize(
    "payload",
    [b'[{"n": "pm25", "v": 1e400}]', b'[{"n": "pm25", "v": -1e400}]', b'[{"n": "pm25", "t": 1e400, "v": 1}]'],
)
def test_senml_number_beyond_double_range_is_non_finite(payload: bytes) -> None:
    assert only_reason(payload)[0] is Reason.NON_FINITE


def test_senml_base_value_plus_value_overflowing_is_non_finite() -> None:
    assert only_reason([{"bv": 1e308, "n": "pm25", "v": 1e308}]) == (
        Reason.NON_FINITE,
        "record 0: pm25 is not finite",
    )


def test_senml_time_overflowing_is_a_bad_timestamp() -> None:
    assert only_reason([{"bt": 1e308, "n": "pm25", "v": 1, "t": 1e308}]) == (
        Reason.BAD_TIMESTAMP,
        "record 0: time is not finite",
    )


@pytest.mark.parametrize("value", ["12.5", True, [1], {"x": 1}])
def test_senml_v_of_wrong_type(value: Any) -> None:
    reason, detail = only_reason([{"n": "pm25", "v": value}])
    assert reason is Reason.WRONG_TYPE
    assert detail.startswith("record 0: ")
    assert "`$.v`" in detail


@pytest.mark.parametrize("field", [{"vs": "high"}, {"vb": True}, {"vd": "aGVsbG8="}])
def test_senml_non_numeric_value_fields_are_wrong_type(field: dict[str, Any]) -> None:
    assert only_reason([{"n": "pm25", **field}]) == (
        Reason.WRONG_TYPE,
        "record 0: only numeric values (v) are stored",
    )


def test_senml_sum_only_record_is_not_stored() -> None:
    assert only_reason([{"n": "rain_mm", "s": 12.5}], sensor_id="SPT-RG-01", kind=SensorKind.RAIN) == (
        Reason.WRONG_TYPE,
        "record 0: only numeric values (v) are stored",
    )


@pytest.mark.parametrize(
    ("record", "name"),
    [
        ({"n": "pm 25", "v": 1}, "pm 25"),
        ({"n": "pm25!", "v": 1}, "pm25!"),
        ({"n": "pm25\n", "v": 1}, "pm25\n"),
        ({"n": "-pm25", "v": 1}, "-pm25"),
        ({"n": "_pm25", "v": 1}, "_pm25"),
        ({"n": "pm2€5", "v": 1}, "pm2€5"),
        ({"v": 1}, ""),
        ({"n": "", "v": 1}, ""),
        ({"bn": "KTG AQ 01:", "n": "pm25", "v": 1}, "KTG AQ 01:pm25"),
    ],
)
def test_senml_invalid_name(record: dict[str, Any], name: str) -> None:
    assert only_reason([record]) == (Reason.INVALID_SENML, f"record 0: invalid name {name!r}")


@pytest.mark.parametrize(
    "payload",
    [
        b'[{"n": "pm25", "v": 1, "foo_": 1}]',
        b'[{"n": "pm25", "v": 1, "_": "x"}]',
        # The same key with its underscore escaped must not slip past the check.
        b'[{"n": "pm25", "v": 1, "foo\\u005f": 1}]',
        b'[{"n": "pm25", "v": 1, "foo\\u005F": 1}]',
    ],
)
def test_senml_field_ending_in_underscore_must_be_understood(payload: bytes) -> None:
    reason, detail = only_reason(payload)
    assert reason is Reason.INVALID_SENML
    assert detail.startswith("record 0: field ")
    assert detail.endswith(" ends in '_' (must-understand)")


def test_senml_underscore_in_a_value_is_fine() -> None:
    pack = [{"bn": f"{AIR_ID}:", "n": "pm25", "v": 1, "model": "sds_"}]
    assert decode(pack) == ([(NOW, AIR_ID, "pm25", 1.0)], [])


def test_senml_newer_version_is_not_processed_from_that_record_on() -> None:
    pack = [
        {"n": "pm25", "v": 1},
        {"bver": 11, "n": "pm25", "v": 2},
        {"n": "pm10", "v": 3},
    ]
    assert decode(pack) == (
        [(NOW, AIR_ID, "pm25", 1.0)],
        [(Reason.INVALID_SENML, "record 1: SenML version 11 is not supported")],
    )


@pytest.mark.parametrize(
    ("record", "count"),
    [
        ({"n": "pm25"}, 0),
        ({"n": "pm25", "t": 5, "u": "ug/m3"}, 0),
        ({"n": "pm25", "v": 1, "vs": "one"}, 2),
        ({"n": "pm25", "v": 1, "vb": False}, 2),
        ({"n": "pm25", "v": 1, "vs": "x", "vb": True, "vd": "AA=="}, 4),
    ],
)
def test_senml_record_needs_exactly_one_value_field(record: dict[str, Any], count: int) -> None:
    assert only_reason([record]) == (
        Reason.INVALID_SENML,
        f"record 0: needs exactly one value field, has {count}",
    )


@pytest.mark.parametrize("item", [1, "pm25", None, [], [{"n": "pm25", "v": 1}], True])
def test_senml_record_that_is_not_an_object(item: Any) -> None:
    assert only_reason([item]) == (Reason.INVALID_SENML, "record 0: not a JSON object")


def test_senml_unknown_metric_and_metric_of_another_kind() -> None:
    assert decode([{"n": "pm1", "v": 1}, {"n": "water_level_cm", "v": 1}]) == (
        [],
        [
            (Reason.UNKNOWN_METRIC, "record 0: unknown metric 'pm1'"),
            (Reason.METRIC_NOT_FOR_KIND, "record 1: water_level_cm is not a metric of air sensors"),
        ],
    )


def test_senml_value_bounds() -> None:
    pack = [
        {"n": "pm25", "v": 0},
        {"n": "pm25", "v": 2000},
        {"n": "pm25", "v": -0.001},
        {"n": "pm25", "v": 2000.001},
        {"bv": 1000, "n": "pm25", "v": 1000},
        {"n": "pm25", "v": 1000.5},
    ]
    assert decode(pack) == (
        [(NOW, AIR_ID, "pm25", 0.0), (NOW, AIR_ID, "pm25", 2000.0), (NOW, AIR_ID, "pm25", 2000.0)],
        [
            (Reason.OUT_OF_RANGE, "record 2: pm25=-0.001 µg/m³ outside 0..2000"),
            (Reason.OUT_OF_RANGE, "record 3: pm25=2000 µg/m³ outside 0..2000"),
            (Reason.OUT_OF_RANGE, "record 5: pm25=2000.5 µg/m³ outside 0..2000"),
        ],
    )


def test_senml_future_and_too_old_records() -> None:
    pack = [
        {"bt": NOW, "n": "pm25", "v": 1, "t": MAX_FUTURE_S},
        {"n": "pm25", "v": 2, "t": MAX_FUTURE_S + 1},
        {"n": "pm25", "v": 3, "t": -RETENTION_S},
        {"n": "pm25", "v": 4, "t": -RETENTION_S - 1},
    ]
    assert decode(pack) == (
        [(NOW + MAX_FUTURE_S, AIR_ID, "pm25", 1.0), (NOW - RETENTION_S, AIR_ID, "pm25", 3.0)],
        [
            (Reason.FUTURE_TIMESTAMP, "record 1: ts is 301 s ahead of the receive time"),
            (Reason.TOO_OLD, "record 3: ts is older than the retention of 365 days"),
        ],
    )


def test_senml_time_in_milliseconds_gets_a_hint() -> None:
    reason, detail = only_reason([{"bt": NOW * 1000, "n": "pm25", "v": 1}])
    assert reason is Reason.FUTURE_TIMESTAMP
    assert detail.startswith("record 0: ts is ")
    assert detail.endswith("(milliseconds? ts is in seconds)")


def test_senml_partly_valid_pack_keeps_the_good_records() -> None:
    pack: list[Any] = [
        {"bn": f"{AIR_ID}:", "bt": NOW - 120, "bu": "ug/m3", "n": "pm25", "v": 30},  # 0 ok
        {"n": "pm10", "v": "high"},  # 1 wrong type
        "pm25=31",  # 2 not an object
        {"n": "pm10", "v": 60, "t": 60},  # 3 ok
        {"n": "pm25", "v": 1, "x_": 2},  # 4 must-understand
        {"n": "pm25", "vs": "ok"},  # 5 non-numeric value
        {"n": "pm 10", "v": 1},  # 6 bad name
        {"n": "pm25", "u": "ppm", "v": 1},  # 7 bad unit
        {"n": "pm25", "v": 9000},  # 8 out of range
        {"n": "pm1", "v": 1},  # 9 unknown metric
        {"n": "water_level_cm", "v": 1},  # 10 not for kind
        {"n": "pm25", "v": 1, "t": 10_000},  # 11 future
        {"n": "KTG-AQ-02:pm25", "v": 1},  # 12 another sensor
        {"n": "pm25"},  # 13 no value
        {"n": "o3", "v": 12.5, "t": 90},  # 14 ok
    ]
    rows, rejections = decode(pack)
    assert rows == [
        (NOW - 120, AIR_ID, "pm25", 30.0),
        (NOW - 60, AIR_ID, "pm10", 60.0),
        (NOW - 30, AIR_ID, "o3", 12.5),
    ]
    assert [(reason, detail.split(":", 1)[0]) for reason, detail in rejections] == [
        (Reason.WRONG_TYPE, "record 1"),
        (Reason.INVALID_SENML, "record 2"),
        (Reason.INVALID_SENML, "record 4"),
        (Reason.WRONG_TYPE, "record 5"),
        (Reason.INVALID_SENML, "record 6"),
        (Reason.BAD_UNIT, "record 7"),
        (Reason.OUT_OF_RANGE, "record 8"),
        (Reason.UNKNOWN_METRIC, "record 9"),
        (Reason.METRIC_NOT_FOR_KIND, "record 10"),
        (Reason.FUTURE_TIMESTAMP, "record 11"),
        (Reason.TOPIC_MISMATCH, "record 12"),
        (Reason.INVALID_SENML, "record 13"),
    ]


def test_senml_bad_record_keeps_its_base_fields_out_of_the_pack() -> None:
    # A record that cannot be decoded cannot set base fields either: the next record keeps the old ones.
    pack: list[Any] = [
        {"bn": f"{AIR_ID}:", "bt": NOW - 60, "n": "pm25", "v": 1},
        {"bt": "later", "n": "pm25", "v": 2},
        {"n": "pm10", "v": 3},
    ]
    rows, rejections = decode(pack)
    assert rows == [(NOW - 60, AIR_ID, "pm25", 1.0), (NOW - 60, AIR_ID, "pm10", 3.0)]
    assert [(r, d.split(":", 1)[0]) for r, d in rejections] == [(Reason.WRONG_TYPE, "record 1")]


def test_senml_oversize_pack() -> None:
    pack = [{"n": "pm25", "v": 1.0}] * 400
    payload = json.dumps(pack).encode()
    assert len(payload) > MAX_BYTES
    assert only_reason(payload)[0] is Reason.OVERSIZE
