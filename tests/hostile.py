"""Payloads a hostile or clumsy sender publishes, as hypothesis strategies, for the decoder's and a
running ingest's property tests: arbitrary bytes, arbitrary JSON written by hand (so that objects
can name a key twice), deep nesting, numbers beyond a double, odd Unicode, and plausible readings
among them so that some are stored.

Each strategy draws `Hostile(payload, duplicate)`: `duplicate` is True when the payload's JSON names
a key twice in one object (a payload that must store nothing).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from hypothesis import strategies as st

from pantau.metrics import METRICS, SensorKind


@dataclass(frozen=True)
class Hostile:
    payload: bytes
    duplicate: bool = False


# Keys a sender's object may hold: metrics of every kind, pantau's own, SenML's, and odd ones.
KEYS = [
    *sorted(METRICS)[:6],
    "pm25",
    "ts",
    "id",
    "sensor_id",
    "n",
    "v",
    "bn",
    "bt",
    "t",
    "u",
    "x_",
    "",
    "pm\\u0032\\u0035",
]
# Inside a JSON string: escapes (lone and paired surrogates, NUL, a quote), and characters from
# outside ASCII (zero-width space, byte-order mark, right-to-left mark, a non-BMP emoji).
STRING_PARTS = [
    "pm25",
    "SPT-AQ-01:",
    "\\ud800",
    "\\udfff",
    "\\ud83d\\ude00",
    "\\ud83d",
    "\\u0000",
    '\\"',
    "\\\\",
    "\\n",
    "\u200b",
    "\ufeff",
    "\u200f",
    "😀",
    "é",
    "\\u00e9",
    ":",
]
# Numbers as written: beyond a double, denormal, negative zero, exponents, and some that are no JSON.
NUMBER_TEXTS = [
    "1e400",
    "-1e400",
    "1" + "0" * 400,
    "-" + "9" * 320,
    "4.9e-324",
    "1e-400",
    "-0",
    "0.0",
    "1E5",
    "12.5",
    "55.4",
    "1764000000",
    "NaN",
    "Infinity",
    "-Infinity",
    "00",
    "1.",
    ".5",
    "+1",
]

numbers = st.one_of(
    st.sampled_from(NUMBER_TEXTS),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)
strings = st.lists(st.one_of(st.sampled_from(STRING_PARTS), st.text(max_size=4)), max_size=4).map(
    lambda parts: (
        json.dumps("".join(p for p in parts if "\\" not in p), ensure_ascii=False)[:-1]
        + "".join(p for p in parts if "\\" in p)
        + '"'
    )
)
keys = st.one_of(st.sampled_from(KEYS).map(lambda k: f'"{k}"'), strings)


def _value(children: st.SearchStrategy[tuple[str, bool]]) -> st.SearchStrategy[tuple[str, bool]]:
    lists = st.lists(children, max_size=4).map(
        lambda xs: ("[" + ",".join(x for x, _ in xs) + "]", any(d for _, d in xs))
    )
    objects = st.lists(st.tuples(keys, children), max_size=5).map(
        lambda kvs: (
            "{" + ",".join(f"{k}:{v}" for k, (v, _) in kvs) + "}",
            len({k for k, _ in kvs}) < len(kvs) or any(d for _, (_, d) in kvs),
        )
    )
    return st.one_of(lists, objects)


scalars = st.one_of(numbers, strings, st.sampled_from(["true", "false", "null"])).map(lambda s: (s, False))
json_texts = st.recursive(scalars, _value, max_leaves=16)


@st.composite
def deep(draw: st.DrawFn) -> Hostile:
    """Nesting from a few levels to deeper than any parser follows (tens of kilobytes at most)."""
    depth = draw(st.integers(min_value=1, max_value=6000))
    opening, inner, closing = draw(
        st.sampled_from(
            [("[", "", "]"), ('{"a":', "1", "}"), ('[{"n":"pm25","v":', "1", "}]"), ('{"pm25":[', "", "]}")]
        )
    )
    return Hostile((opening * depth + inner + closing * depth).encode())


@st.composite
def plausible(draw: st.DrawFn) -> Hostile:
    """Air readings a station would send (the receive time, or SenML times relative to now), now
    and then with a key written twice."""
    metrics = [m for m in METRICS.values() if SensorKind.AIR in m.kinds]
    chosen = draw(st.lists(st.sampled_from(metrics), min_size=1, max_size=4))
    pairs = [(m.name, draw(st.floats(min_value=m.low, max_value=m.high))) for m in chosen]
    if draw(st.booleans()):
        text = "{" + ",".join(f'"{n}":{v!r}' for n, v in pairs) + "}"
        duplicate = len({n for n, _ in pairs}) < len(pairs)
    else:  # two records of a metric at one time are no duplicate key, but may conflict
        bt = draw(st.integers(min_value=-3 * 86400, max_value=-3600))
        records = [f'{{"n":"{n}","v":{v!r},"t":{draw(st.integers(-60, 0))}}}' for n, v in pairs]
        records[0] = f'{{"bt":{bt},' + records[0][1:]
        duplicate = draw(st.integers(0, 4)) == 0
        if duplicate:  # a record with its value written twice
            records.append(f'{{"n":"pm25","v":12.0,"v":{draw(st.floats(0, 500))!r}}}')
        text = "[" + ",".join(records) + "]"
    return Hostile(text.encode(), duplicate)


@st.composite
def mangled(draw: st.DrawFn) -> Hostile:
    """A JSON text with bytes that are not UTF-8 (or a byte-order mark) put in somewhere."""
    text, _dup = draw(json_texts)
    raw = text.encode("utf-8", "surrogatepass")
    at = draw(st.integers(min_value=0, max_value=len(raw)))
    junk = draw(st.sampled_from([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xef\xbb\xbf", b"\x80", b"\x00"]))
    return Hostile(raw[:at] + junk + raw[at:])


payloads = st.one_of(
    st.binary(max_size=200).map(Hostile),
    json_texts.map(lambda td: Hostile(td[0].encode("utf-8", "surrogatepass"), td[1])),
    deep(),
    plausible(),
    mangled(),
)
