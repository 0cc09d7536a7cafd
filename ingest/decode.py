"""Payload decoding and validation: MQTT payload → readings (ts, sensor, metric, value) and problems.

Two payload forms, told apart by their first byte:
- a JSON object `{"ts": <RFC 3339 or epoch seconds>, "<metric>": <number>, ...}`;
- a SenML pack (RFC 8428, JSON array): base name/time/value/unit, relative times, many
  timestamps per pack.

The fast path decodes SenML straight into typed msgspec Structs (validation while parsing). When
that fails on types, or a field name ends in "_" (which RFC 8428 says must be rejected), the pack
is re-read record by record so that one bad record never costs the good ones.

The decoder knows nothing of the registry or the database: it checks the payload against the
topic's sensor id and kind and the metric registry, and appends readings and problems (each with
the metric it is about, when it is about a value) to caller-owned lists.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec
import numpy as np

from pantau.domain import Reason
from pantau.metrics import METRICS, Metric, SensorKind
from pantau.readings import Problem, Reading

# RFC 8428 section 4.5.3: a resolved time below 2**28 is relative to now.
SENML_RELATIVE_LIMIT = 2**28
SENML_VERSION = 10
# \Z, not $: $ also matches before a trailing newline, which is not a name character.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9\-:./_]*\Z")
_NON_FINITE_RE = re.compile(rb"(?<![A-Za-z\"])-?(NaN|Infinity)(?![A-Za-z\"])")
_IDENTITY_KEYS = ("sensor_id", "id", "bn")

# What a SenML record name resolves to for a sensor and kind (see `Decoder._name`): its metric,
# or the rejection and whether it comes before the record's value checks (an invalid name) or
# after them (another sensor's name, a metric that is unknown or not of this kind).
_NameCheck = Metric | tuple[bool, Problem]
# Names remembered at most: a fleet's sensors times their metrics fit many times over; past it
# the memory starts again (a stream of made-up names cannot grow it without bound).
_NAME_CACHE_MAX = 65536


class SenMLRecord(msgspec.Struct, omit_defaults=True):
    """One SenML record in its JSON form; unknown fields are ignored as RFC 8428 says."""

    bn: str | None = None
    bt: float | None = None
    bu: str | None = None
    bv: float | None = None
    bs: float | None = None
    bver: int | None = None
    n: str | None = None
    u: str | None = None
    v: float | None = None
    vs: str | None = None
    vb: bool | None = None
    vd: str | None = None
    s: float | None = None
    t: float | None = None
    ut: float | None = None


_SENML_DECODER = msgspec.json.Decoder(list[SenMLRecord])
_ANY_DECODER = msgspec.json.Decoder()
_as_dicts = msgspec.to_builtins  # a record as a dict of the fields it holds (omit_defaults)
_RECORD_FIELDS = frozenset(SenMLRecord.__struct_fields__)

# -- what a payload that failed or looked ambiguous gets told (paid for only by such payloads) ----

# A JSON string (its escapes included): what lies between two of them is structure.
_STRING_RE = re.compile(rb'"(?:[^"\\]|\\.)*"?', re.DOTALL)
# An escape in a JSON string: a UTF-16 surrogate pair, a lone surrogate (group 1), or any other.
_ESCAPE_RE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|(\\u[dD][89a-fA-F][0-9a-fA-F]{2})|\\."
)


# A key whose closing quote is not right before its colon (`"v" : 1`).
_SPACED_KEY_RE = re.compile(rb'"[ \t\r\n]+:')


def _key_count(payload: bytes) -> int:
    """How many keys a JSON text's objects hold, or -1 where that is not cheap to tell.

    With no backslash in it no string holds a quote mark, so every `":` closes a key and nothing
    else; `b"\\" in payload` and friends are one memchr each, where `count` walks the bytes in
    Python's own loop (a quarter of the cost of decoding a pack).
    """
    if 92 in payload:  # a backslash: some string may hold an escaped quote
        return -1
    if (32 in payload or 10 in payload or 9 in payload or 13 in payload) and _SPACED_KEY_RE.search(payload):
        return -1
    return payload.count(b'":')


def _too_deep(payload: bytes) -> Problem:
    """The rejection of a payload nested deeper than msgspec (and Python) follow; says how deep."""
    structure = np.frombuffer(_STRING_RE.sub(b"", payload), dtype=np.uint8)
    steps = np.isin(structure, (ord("["), ord("{"))).astype(np.int32) - np.isin(structure, (ord("]"), ord("}")))
    depth = int(np.cumsum(steps).max()) if len(steps) else 0
    return Reason.TOO_DEEP, f"JSON nested {depth} levels deep; readings need at most 2", None


def _lone_surrogate(payload: bytes) -> str | None:
    """Where a JSON string holds half of a UTF-16 surrogate pair (which no Unicode text can)."""
    for m in _ESCAPE_RE.finditer(payload):
        if m.group(1) is not None:
            escape = m.group(1).decode()
            return f"unpaired UTF-16 surrogate {escape} at byte {m.start()}: JSON text must be valid Unicode"
    return None


class _Ambiguous(dict[str, Any]):
    """A JSON object that named `key` more than once (see `_duplicate_key`)."""

    key: str


def _pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    ambiguous = _Ambiguous(obj)
    seen: set[str] = set()
    for key, _value in pairs:
        if key in seen:
            ambiguous.key = key
            break
        seen.add(key)
    return ambiguous


def _duplicate_key(payload: bytes) -> str | None:
    """Which key a JSON object of the payload names twice, and where ("record 3: 'v'"); None if none.

    msgspec, like most JSON parsers, keeps the last of two equal keys without a word; `{"pm25": 20,
    "pm25": 900}` would store 900. The decoders' counts send only payloads that may hold such a key
    here, where the standard library's parser shows every object's pairs.
    """
    try:
        doc = json.loads(payload, object_pairs_hook=_pairs_hook)
    except RecursionError:
        return None  # msgspec took it, which it did not: the caller's own check decides
    except ValueError:  # pragma: no cover - msgspec parsed the same bytes
        return None
    tops = list(enumerate(doc)) if isinstance(doc, list) else [(None, doc)]
    for index, top in tops:
        where = "" if index is None else f"record {index}: "
        stack = [top]
        while stack:
            item = stack.pop()
            if isinstance(item, _Ambiguous):
                nested = "" if item is top else " in a nested object"
                return f"{where}duplicate key {item.key!r}{nested}"
            if isinstance(item, dict):
                stack.extend(item.values())
            elif isinstance(item, list):
                stack.extend(item)
    return None


def _parse_time(raw: Any) -> float | str:
    """Epoch seconds from a number or an RFC 3339 string; a str result is the error detail."""
    if isinstance(raw, bool):
        return f"ts must be a number or an RFC 3339 string, got {raw!r}"
    if isinstance(raw, (int, float)):
        try:
            value = float(raw)
        except OverflowError:  # an integer too large for a double
            return "ts is not finite"
        if not math.isfinite(value):
            return "ts is not finite"
        return value
    if isinstance(raw, str):
        try:
            parsed = datetime.fromisoformat(raw)
        except ValueError:
            return f"ts {raw!r} is not an RFC 3339 timestamp"
        if parsed.tzinfo is None:
            return f"ts {raw!r} has no UTC offset (RFC 3339 requires one)"
        return parsed.timestamp()
    return f"ts must be a number or an RFC 3339 string, got {type(raw).__name__}"


def _parse_error(payload: bytes, exc: Exception) -> str:
    """What msgspec could not parse, in pantau's words where msgspec's would mislead: bad UTF-8
    (the byte and its position) and an unpaired surrogate escape (msgspec says "Input data was
    truncated").

    msgspec's own message for bad UTF-8 changed between releases (older ones raised UnicodeDecodeError,
    0.23 a DecodeError "Invalid UTF-8 encoded string"); only a payload that failed pays for this look.
    """
    try:
        payload.decode()
    except UnicodeDecodeError as bad:
        return f"payload is not valid UTF-8 ({bad})"
    return _lone_surrogate(payload) or str(exc)


class Decoder:
    """Decodes and validates payloads; one instance per ingest worker."""

    def __init__(self, *, max_payload_bytes: int, max_future_s: float, retention_s: float) -> None:
        self.max_payload_bytes = max_payload_bytes
        self.max_future_s = max_future_s
        self.retention_s = retention_s
        self._names: dict[tuple[str, str, SensorKind], _NameCheck] = {}

    # -- checks shared by both forms ------------------------------------------------------------

    def _check_time(self, ts: float, received_at: float) -> Problem | None:
        if ts > received_at + self.max_future_s:
            hint = " (milliseconds? ts is in seconds)" if ts > received_at * 100 else ""
            ahead = ts - received_at
            return Reason.FUTURE_TIMESTAMP, f"ts is {ahead:.0f} s ahead of the receive time{hint}", None
        if ts < received_at - self.retention_s:
            return Reason.TOO_OLD, f"ts is older than the retention of {self.retention_s / 86400:.0f} days", None
        return None

    @staticmethod
    def _check_metric(name: str, kind: SensorKind) -> Metric | Problem:
        metric = METRICS.get(name)
        if metric is None:
            return Reason.UNKNOWN_METRIC, f"unknown metric {name!r}", None
        if kind not in metric.kinds:
            return Reason.METRIC_NOT_FOR_KIND, f"{name} is not a metric of {kind.value} sensors", None
        return metric

    @classmethod
    def _name(cls, name: str, sensor_id: str, kind: SensorKind) -> _NameCheck:
        """What a SenML record's resolved name means for the topic's sensor and kind."""
        if not name or not _NAME_RE.match(name):
            return True, (Reason.INVALID_SENML, f"invalid name {name!r}", None)
        # The device part of the name must be the topic's sensor: the topic is the identity.
        cut = max(name.rfind(":"), name.rfind("/"))
        if cut >= 0:
            device = name[:cut]
            if device != sensor_id and not device.endswith((":" + sensor_id, "/" + sensor_id)):
                return False, (Reason.TOPIC_MISMATCH, f"name {name!r} is not for sensor {sensor_id!r}", None)
        metric = cls._check_metric(name[cut + 1 :], kind)
        return (False, metric) if isinstance(metric, tuple) else metric

    @staticmethod
    def _check_value(metric: Metric, value: float, where: str) -> Problem | None:
        if not math.isfinite(value):
            return Reason.NON_FINITE, f"{where}{metric.name} is not finite", metric.name
        if not metric.low <= value <= metric.high:
            return (
                Reason.OUT_OF_RANGE,
                f"{where}{metric.name}={value:g} {metric.unit} outside {metric.low:g}..{metric.high:g}",
                metric.name,
            )
        return None

    # -- entry point ----------------------------------------------------------------------------

    def decode(
        self,
        payload: bytes,
        sensor_id: str,
        kind: SensorKind,
        received_at: float,
        rows: list[Reading],
        problems: list[Problem],
    ) -> None:
        """Append the payload's valid readings to `rows` and each problem to `problems`."""
        if len(payload) > self.max_payload_bytes:
            problems.append(
                (
                    Reason.OVERSIZE,
                    f"payload of {len(payload)} bytes exceeds the limit of {self.max_payload_bytes}",
                    None,
                )
            )
            return
        start = payload.lstrip()[:1]
        if start == b"[":
            self._decode_senml(payload, sensor_id, kind, received_at, rows, problems)
        elif start == b"{":
            self._decode_object(payload, sensor_id, kind, received_at, rows, problems)
        elif not start:
            problems.append((Reason.EMPTY, "empty payload", None))
        else:
            self._malformed(payload, problems, "payload is neither a JSON object nor a SenML array")

    @staticmethod
    def _malformed(payload: bytes, problems: list[Problem], detail: str) -> None:
        if _NON_FINITE_RE.search(payload):
            problems.append((Reason.NON_FINITE, "NaN and Infinity are not numbers in JSON", None))
        else:
            problems.append((Reason.MALFORMED_JSON, detail, None))

    # -- JSON object form -----------------------------------------------------------------------

    def _decode_object(
        self,
        payload: bytes,
        sensor_id: str,
        kind: SensorKind,
        received_at: float,
        rows: list[Reading],
        problems: list[Problem],
    ) -> None:
        try:
            obj = _ANY_DECODER.decode(payload)
        except msgspec.ValidationError as exc:  # a number too large for a double
            problems.append((Reason.NON_FINITE, str(exc), None))
            return
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # older msgspec raises the latter for bad UTF-8
            self._malformed(payload, problems, _parse_error(payload, exc))
            return
        except RecursionError:
            problems.append(_too_deep(payload))
            return
        if not isinstance(obj, dict):  # pragma: no cover - guarded by the first byte
            problems.append((Reason.WRONG_TYPE, "expected a JSON object", None))
            return
        # Quote marks not accounted for by a key or the string values pantau reads (the sensor's
        # id, the time): none, unless a key came twice (msgspec keeps the last without a word), a
        # reading is a string or holds one (wrong_type anyway), or a string holds an escaped quote.
        # Only then is the payload read again, for the key that came twice.
        quotes = payload.count(b'"') - 2 * len(obj)
        for key in _IDENTITY_KEYS:
            claimed = obj.pop(key, None)
            if claimed is not None:
                if claimed != sensor_id:
                    problems.append(
                        (
                            Reason.TOPIC_MISMATCH,
                            f"payload names sensor {claimed!r} but the topic is {sensor_id!r}",
                            None,
                        )
                    )
                    return
                quotes -= 2
        raw_ts = obj.pop("ts", None)
        if raw_ts is None:
            ts = received_at
        else:
            parsed = _parse_time(raw_ts)
            if isinstance(parsed, str):
                problems.append((Reason.BAD_TIMESTAMP, parsed, None))
                return
            ts = parsed
            if raw_ts.__class__ is str:
                quotes -= 2
        problem = self._check_time(ts, received_at)
        if problem is not None:
            problems.append(problem)
            return
        if not obj:
            problems.append((Reason.EMPTY, "no readings in the payload", None))
            return
        if quotes:
            duplicate = _duplicate_key(payload)
            if duplicate is not None:
                problems.append((Reason.DUPLICATE_KEY, f"{duplicate}: which value was meant is unknown", None))
                return
        for name, value in obj.items():
            metric = self._check_metric(name, kind)
            if isinstance(metric, tuple):
                problems.append(metric)
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                problems.append((Reason.WRONG_TYPE, f"{name} must be a number, got {type(value).__name__}", None))
                continue
            try:
                value = float(value)
            except OverflowError:  # an integer literal too large for a double
                problems.append((Reason.NON_FINITE, f"{name} is too large for a double", name))
                continue
            bad = self._check_value(metric, value, "")
            if bad is not None:
                problems.append(bad)
                continue
            rows.append((ts, sensor_id, name, value))

    # -- SenML form -----------------------------------------------------------------------------

    def _decode_senml(
        self,
        payload: bytes,
        sensor_id: str,
        kind: SensorKind,
        received_at: float,
        rows: list[Reading],
        problems: list[Problem],
    ) -> None:
        records: list[SenMLRecord] | None = None
        # A key ending in "_" shows as `_"` (or an escaped `\u005f"`) in the raw bytes; only then
        # pay for the key check.
        if b'_"' not in payload and b"\\u005f" not in payload and b"\\u005F" not in payload:
            try:
                records = _SENML_DECODER.decode(payload)
            except msgspec.ValidationError:
                records = None  # a type problem in some record: go record by record
            except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                self._malformed(payload, problems, _parse_error(payload, exc))
                return
            except RecursionError:
                problems.append(_too_deep(payload))
                return
        if records is None:
            records = self._records_one_by_one(payload, problems)
            if records is None:
                return
            duplicate = _duplicate_key(payload)
        # Every key of the payload is a field the records hold (once, not null) exactly when it has
        # as many keys as the records have fields: more means a key twice (msgspec keeps the last
        # without a word), a null, or a field pantau ignores, and only then is it read again.
        elif _key_count(payload) != sum(map(len, _as_dicts(records))):
            duplicate = _duplicate_key(payload)
        else:
            duplicate = None
        if duplicate is not None:
            problems.append((Reason.DUPLICATE_KEY, f"{duplicate}: which value was meant is unknown", None))
            return
        if not records:
            problems.append((Reason.EMPTY, "empty SenML pack", None))
            return
        self._resolve(records, sensor_id, kind, received_at, rows, problems)

    @staticmethod
    def _records_one_by_one(payload: bytes, problems: list[Problem]) -> list[Any] | None:
        """Decode each record on its own; a bad record becomes None plus a rejection."""
        try:
            raw = _ANY_DECODER.decode(payload)
        except msgspec.ValidationError as exc:
            problems.append((Reason.NON_FINITE, str(exc), None))
            return None
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            Decoder._malformed(payload, problems, _parse_error(payload, exc))
            return None
        except RecursionError:
            problems.append(_too_deep(payload))
            return None
        if not isinstance(raw, list):  # pragma: no cover - guarded by the first byte
            problems.append((Reason.WRONG_TYPE, "expected a SenML array", None))
            return None
        out: list[Any] = []
        for i, item in enumerate(raw):
            if not isinstance(item, dict):
                problems.append((Reason.INVALID_SENML, f"record {i}: not a JSON object", None))
                out.append(None)
                continue
            bad_key = next((k for k in item if k.endswith("_")), None)
            if bad_key is not None:
                problems.append(
                    (Reason.INVALID_SENML, f"record {i}: field {bad_key!r} ends in '_' (must-understand)", None)
                )
                out.append(None)
                continue
            try:
                out.append(msgspec.convert({k: v for k, v in item.items() if k in _RECORD_FIELDS}, SenMLRecord))
            except msgspec.ValidationError as exc:
                problems.append((Reason.WRONG_TYPE, f"record {i}: {exc}", None))
                out.append(None)
        return out

    def _resolve(
        self,
        records: Sequence[SenMLRecord | None],
        sensor_id: str,
        kind: SensorKind,
        received_at: float,
        rows: list[Reading],
        problems: list[Problem],
    ) -> None:
        # Per record on the hot path: the name's checks come from `_name` (remembered), the value's
        # and time's are one comparison each; the checks' own words only for a record that fails.
        names = self._names
        earliest, latest = received_at - self.retention_s, received_at + self.max_future_s
        bn, bt, bu, bv = "", 0.0, None, 0.0
        for i, rec in enumerate(records):
            if rec is None:
                continue
            # Base fields carry over to the following records until changed (RFC 8428 4.1).
            if rec.bver is not None and rec.bver > SENML_VERSION:
                problems.append((Reason.INVALID_SENML, f"record {i}: SenML version {rec.bver} is not supported", None))
                return
            if rec.bn is not None:
                bn = rec.bn
            if rec.bt is not None:
                bt = rec.bt
            if rec.bu is not None:
                bu = rec.bu
            if rec.bv is not None:
                bv = rec.bv
            name = bn + (rec.n or "")
            key = (name, sensor_id, kind)
            check = names.get(key)
            if check is None:
                if len(names) >= _NAME_CACHE_MAX:
                    names.clear()
                check = names[key] = self._name(name, sensor_id, kind)
            if check.__class__ is tuple and check[0]:  # an invalid name
                reason, detail, _metric = check[1]
                problems.append((reason, f"record {i}: {detail}", None))
                continue
            if rec.v is None or rec.vs is not None or rec.vb is not None or rec.vd is not None:
                n_values = (rec.v is not None) + (rec.vs is not None) + (rec.vb is not None) + (rec.vd is not None)
                if n_values != 1 and not (n_values == 0 and rec.s is not None):
                    problem = f"record {i}: needs exactly one value field, has {n_values}"
                    problems.append((Reason.INVALID_SENML, problem, None))
                    continue
                problems.append((Reason.WRONG_TYPE, f"record {i}: only numeric values (v) are stored", None))
                continue
            if not isinstance(check, Metric):
                reason, detail, _metric = check[1]
                problems.append((reason, f"record {i}: {detail}", None))
                continue
            metric = check
            value = bv + rec.v
            unit = rec.u if rec.u is not None else bu
            if unit is not None and unit != metric.unit:
                conversion = metric.senml_units.get(unit)
                if conversion is None:
                    problems.append(
                        (Reason.BAD_UNIT, f"record {i}: unit {unit!r} is not accepted for {metric.name}", None)
                    )
                    continue
                value = value * conversion[0] + conversion[1]
            if not metric.low <= value <= metric.high:  # NaN too: _check_value names what is wrong
                bad = self._check_value(metric, value, f"record {i}: ")
                assert bad is not None
                problems.append(bad)
                continue
            ts = bt + (rec.t or 0.0)
            if not math.isfinite(ts):
                problems.append((Reason.BAD_TIMESTAMP, f"record {i}: time is not finite", None))
                continue
            if ts < SENML_RELATIVE_LIMIT:
                ts += received_at
            if not earliest <= ts <= latest:
                late = self._check_time(ts, received_at)
                assert late is not None
                problems.append((late[0], f"record {i}: {late[1]}", None))
                continue
            rows.append((ts, sensor_id, metric.name, value))
