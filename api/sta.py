"""OGC SensorThings API 1.1, a read-only subset at `/sta/v1.1`, so SensorThings clients and GIS
tools read pantau with no adapter.

Entities: a Thing and its Location per sensor (`@iot.id` the sensor id); a Datastream per sensor
and metric it has reported (`SENSOR:metric`), and its 1-minute and 1-hour rollups as derived
Datastreams (`SENSOR:metric:1m`, `:1h`: each Observation a bucket, `phenomenonTime` its interval,
`result` its mean, `parameters` n/min/max); an ObservedProperty per metric; a Sensor per kind of
station; Observations (`SENSOR:metric[:level]:MICROSECONDS`).

Query options: `$filter` (comparisons `eq ne gt ge lt le` joined by `and`, on `phenomenonTime`,
`resultTime` and `result` for Observations, on `name`, `properties/kind`, `properties/city` and
`properties/district` for Things), `$select`, `$orderby` (`phenomenonTime` for Observations, `id`
elsewhere), `$top` (default 100, at most 10,000), `$skip` up to 10,000 (past that, follow
`@iot.nextLink`: it resumes after the last entity sent, keyset underneath, never OFFSET), `$count`
and `$expand` two levels deep with its own options. Anything else is a problem document naming the
option. Every request runs under the API's statement budget.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import psycopg
from aiohttp import web

from api.common import answer, iso, statement_budget
from api.keys import STORE
from api.openapi import API, Param
from api.problems import Problem, bad_param, not_found
from pantau.metrics import METRICS, SensorKind

BASE = "/sta/v1.1"
DEFAULT_TOP = 100
MAX_TOP = 10_000
MAX_SKIP = 10_000
MAX_EXPAND_DEPTH = 2
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
OM_MEASUREMENT = "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement"
LEVELS = {"1m": timedelta(minutes=1), "1h": timedelta(hours=1)}
ENTITY_SETS = ("Things", "Locations", "Datastreams", "ObservedProperties", "Sensors", "Observations")
_SEGMENT = re.compile(r"^(?P<name>[A-Za-z]+)(?:\((?P<id>'(?:[^']|'')*'|-?\d+)\))?$")
_COMPARISON = re.compile(
    r"^(?P<prop>[A-Za-z/]+)\s+(?P<op>eq|ne|gt|ge|lt|le)\s+(?P<value>'(?:[^']|'')*'|[^\s']+)$", re.IGNORECASE
)
_SQL_OP = {"eq": "=", "ne": "<>", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}


# -- query options ---------------------------------------------------------------------------


@dataclass
class Options:
    """The query options of one level (the request's, or an `$expand` item's)."""

    top: int = DEFAULT_TOP
    skip: int = 0
    count: bool = False
    select: list[str] | None = None
    orderby: str = "asc"  # the direction of the set's one order
    filters: list[tuple[str, str, Any]] = field(default_factory=list)
    expand: dict[str, Options] = field(default_factory=dict)
    after: Any = None  # the keyset of `$skiptoken`: resume after this entity
    raw: dict[str, str] = field(default_factory=dict)  # as given, for the next page's link


def _split(text: str, sep: str) -> list[str]:
    """`text` split on `sep` outside parentheses and quotes."""
    out, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(text):
        if ch == "'":
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
        elif not quoted and depth == 0 and text.startswith(sep, i):
            out.append(text[start:i])
            start = i + len(sep)
    out.append(text[start:])
    return [p.strip() for p in out if p.strip()]


def _int(name: str, raw: str, low: int, high: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise bad_param(name, f"an integer, got {raw!r}") from None
    if not low <= value <= high:
        hint = " (follow @iot.nextLink to go further)" if name == "$skip" else ""
        raise bad_param(name, f"an integer from {low} to {high}{hint}, got {value}")
    return value


def _literal(raw: str) -> Any:
    if raw.startswith("'"):
        return raw[1:-1].replace("''", "'")
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise bad_param("$filter", f"a number, a 'string' or an ISO 8601 time with an offset, got {raw!r}") from None
    if when.tzinfo is None or not 1970 <= when.year <= 2200:
        raise bad_param("$filter", f"a time with an offset (Z or +07:00) between 1970 and 2200, got {raw!r}")
    return when


def parse_options(pairs: dict[str, str], depth: int = 0) -> Options:
    """The options of `pairs` ($name → value); a mistake is a 400 naming the option."""
    opts = Options()
    for name, raw in pairs.items():
        if "\x00" in raw:
            raise bad_param(name, "text without NUL characters")
        if name == "$top":
            opts.top = _int(name, raw, 0, MAX_TOP)
        elif name == "$skip":
            opts.skip = _int(name, raw, 0, MAX_SKIP)
        elif name == "$count":
            if raw not in ("true", "false"):
                raise bad_param(name, f"true or false, got {raw!r}")
            opts.count = raw == "true"
        elif name == "$select":
            opts.select = [s.strip() for s in raw.split(",") if s.strip()]
            if not opts.select or not all(re.fullmatch(r"@?[A-Za-z.@]+", s) for s in opts.select):
                raise bad_param(name, f"property names separated by commas, got {raw!r}")
        elif name == "$orderby":
            words = raw.split()
            if not words or len(words) > 2 or words[0] not in ("phenomenonTime", "id", "@iot.id") or (
                len(words) == 2 and words[1].lower() not in ("asc", "desc")
            ):  # fmt: skip
                raise bad_param(name, f"phenomenonTime or id, then asc or desc, got {raw!r}")
            opts.orderby = words[1].lower() if len(words) == 2 else "asc"
        elif name == "$filter":
            for part in _split(raw, " and "):
                match = _COMPARISON.match(part)
                if match is None:
                    raise bad_param(name, f"comparisons (eq ne gt ge lt le) joined by 'and', got {part!r}")
                opts.filters.append((match["prop"], match["op"].lower(), _literal(match["value"])))
        elif name == "$expand":
            if depth >= MAX_EXPAND_DEPTH:
                raise bad_param(name, f"at most {MAX_EXPAND_DEPTH} levels of $expand")
            for item in _split(raw, ","):
                m = re.fullmatch(r"(?P<nav>[A-Za-z]+)(?:\((?P<inner>.*)\))?", item, re.DOTALL)
                if m is None:
                    raise bad_param(name, f"navigation names, each with (options), got {item!r}")
                inner = {}
                for option in _split(m["inner"] or "", ";"):
                    key, _, value = option.partition("=")
                    inner[key.strip()] = value.strip()
                opts.expand[m["nav"]] = parse_options(inner, depth + 1)
                opts.expand[m["nav"]].raw = inner
        elif name == "$skiptoken":
            try:
                opts.after = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
            except (ValueError, TypeError):
                raise bad_param(name, "the $skiptoken of an @iot.nextLink") from None
        elif name in ("$resultFormat", "$format"):
            raise bad_param(name, "not offered: results are JSON")
        elif name.startswith("$"):
            raise bad_param(name, "one of $filter, $select, $orderby, $top, $skip, $count, $expand")
    return opts


def _token(key: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(key, default=str).encode()).decode().rstrip("=")


# -- entities --------------------------------------------------------------------------------


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _link(request: web.Request, path: str) -> str:
    return f"{request.scheme}://{request.host}{BASE}/{path}"


@dataclass(frozen=True)
class Stream:
    """A Datastream: a sensor's metric, raw or one of its rollups."""

    sensor: str
    metric: str
    level: str = "raw"

    @property
    def id(self) -> str:
        return f"{self.sensor}:{self.metric}" + ("" if self.level == "raw" else f":{self.level}")

    @classmethod
    def parse(cls, text: str) -> Stream | None:
        parts = text.rsplit(":", 2)
        if len(parts) == 3 and parts[2] in LEVELS and parts[1] in METRICS:
            return cls(parts[0], parts[1], parts[2])
        sensor, _, metric = text.rpartition(":")
        return cls(sensor, metric) if sensor and metric in METRICS else None


def thing_json(request: web.Request, row: dict[str, Any]) -> dict[str, Any]:
    key = _quote(row["id"])
    return {
        "@iot.id": row["id"],
        "@iot.selfLink": _link(request, f"Things({key})"),
        "name": row["name"] or row["id"],
        "description": f"{row['kind']} station {row['id']} in {row['city']}",
        "properties": {"kind": row["kind"], "city": row["city"], "district": row["district"]} | (row["metadata"] or {}),
        "Locations@iot.navigationLink": _link(request, f"Things({key})/Locations"),
        "Datastreams@iot.navigationLink": _link(request, f"Things({key})/Datastreams"),
    }


def location_json(request: web.Request, row: dict[str, Any]) -> dict[str, Any]:
    key = _quote(row["id"])
    placed = row["lat"] is not None and row["lon"] is not None
    point = {"type": "Point", "coordinates": [row["lon"], row["lat"]]} if placed else None
    return {
        "@iot.id": row["id"],
        "@iot.selfLink": _link(request, f"Locations({key})"),
        "name": row["name"] or row["id"],
        "description": f"where {row['id']} stands ({row['district'] or row['city']})",
        "encodingType": "application/geo+json",
        "location": point,
        "Things@iot.navigationLink": _link(request, f"Locations({key})/Things"),
    }


def datastream_json(request: web.Request, stream: Stream, name: str) -> dict[str, Any]:
    metric = METRICS[stream.metric]
    key = _quote(stream.id)
    what = "" if stream.level == "raw" else f", {stream.level} mean"
    return {
        "@iot.id": stream.id,
        "@iot.selfLink": _link(request, f"Datastreams({key})"),
        "name": f"{name} {stream.metric}{what}",
        "description": f"{metric.description} at {stream.sensor}{what}",
        "observationType": OM_MEASUREMENT,
        "unitOfMeasurement": {"name": metric.unit, "symbol": metric.unit, "definition": ""},
        "properties": {
            "sensor": stream.sensor,
            "metric": stream.metric,
            "level": stream.level,
            "aggregate": None if stream.level == "raw" else "avg",
        },
        "Thing@iot.navigationLink": _link(request, f"Datastreams({key})/Thing"),
        "Sensor@iot.navigationLink": _link(request, f"Datastreams({key})/Sensor"),
        "ObservedProperty@iot.navigationLink": _link(request, f"Datastreams({key})/ObservedProperty"),
        "Observations@iot.navigationLink": _link(request, f"Datastreams({key})/Observations"),
    }


def observed_property_json(request: web.Request, metric: str) -> dict[str, Any]:
    return {
        "@iot.id": metric,
        "@iot.selfLink": _link(request, f"ObservedProperties({_quote(metric)})"),
        "name": metric,
        "definition": "",
        "description": f"{METRICS[metric].description} ({METRICS[metric].unit})",
        "Datastreams@iot.navigationLink": _link(request, f"ObservedProperties({_quote(metric)})/Datastreams"),
    }


def sensor_json(request: web.Request, kind: str) -> dict[str, Any]:
    return {
        "@iot.id": kind,
        "@iot.selfLink": _link(request, f"Sensors({_quote(kind)})"),
        "name": f"{kind} station",
        "description": f"pantau's {kind} stations",
        "encodingType": "text/plain",
        "metadata": "",
        "Datastreams@iot.navigationLink": _link(request, f"Sensors({_quote(kind)})/Datastreams"),
    }


def observation_json(request: web.Request, stream: Stream, row: tuple[Any, ...]) -> dict[str, Any]:
    at = row[0]
    oid = f"{stream.id}:{(at - _EPOCH) // timedelta(microseconds=1)}"
    body: dict[str, Any] = {"@iot.id": oid, "@iot.selfLink": _link(request, f"Observations({_quote(oid)})")}
    if stream.level == "raw":
        body |= {"phenomenonTime": iso(at), "resultTime": iso(at), "result": row[1]}
    else:
        end = at + LEVELS[stream.level]
        body |= {"phenomenonTime": f"{iso(at)}/{iso(end)}", "resultTime": iso(end), "result": row[1],
                 "parameters": {"n": row[2], "min": row[3], "max": row[4]}}  # fmt: skip
    body["Datastream@iot.navigationLink"] = _link(request, f"Observations({_quote(oid)})/Datastream")
    return body


# -- reading the store -------------------------------------------------------------------------

_SENSOR_COLUMNS = "id, kind, city, district, name, lat, lon, metadata"
_OBS_COLUMNS = {"phenomenonTime": "time", "resultTime": "time", "result": "value"}


async def _sensors(conn: psycopg.AsyncConnection, only: str | None = None) -> list[dict[str, Any]]:
    cur = await conn.execute(
        f"SELECT {_SENSOR_COLUMNS} FROM sensors WHERE %(id)s::text IS NULL OR id = %(id)s ORDER BY id",  # noqa: S608
        {"id": only},
    )
    names = [c.name for c in cur.description or ()]
    return [dict(zip(names, r, strict=True)) for r in await cur.fetchall()]


async def _streams(conn: psycopg.AsyncConnection, sensor: str | None = None, metric: str | None = None,
                   kind: str | None = None) -> list[tuple[Stream, str]]:  # fmt: skip
    """Every Datastream (raw and rollups of each metric a sensor has reported), with its sensor's name."""
    cur = await conn.execute(
        "SELECT l.sensor_id, l.metric, coalesce(nullif(s.name, ''), s.id) FROM latest_readings l"
        " JOIN sensors s ON s.id = l.sensor_id"
        " WHERE (%(sensor)s::text IS NULL OR l.sensor_id = %(sensor)s)"
        " AND (%(metric)s::text IS NULL OR l.metric = %(metric)s) AND (%(kind)s::text IS NULL OR s.kind = %(kind)s)"
        " ORDER BY l.sensor_id, l.metric",
        {"sensor": sensor, "metric": metric, "kind": kind},
    )
    return [(Stream(sid, m, level), name) for sid, m, name in await cur.fetchall() for level in ("raw", *LEVELS)]


def _observation_query(stream: Stream, opts: Options) -> tuple[str, str, str, str, list[str], list[Any]]:
    """(table, time column, value column, extra columns, conditions, parameters) of a stream's Observations."""
    if stream.level == "raw":
        table, ts, value, extra = "readings", "ts", "value", ""
    else:
        table, ts, value, extra = f"readings_{stream.level}", "bucket", "avg_value", ", n, min_value, max_value"
    where, params = ["sensor_id = %s", "metric = %s"], [stream.sensor, stream.metric]
    for prop, op, literal in opts.filters:
        column = _OBS_COLUMNS.get(prop)
        if column is None:
            raise bad_param("$filter", f"on Observations: phenomenonTime, resultTime or result, got {prop!r}")
        if column == "time" and not isinstance(literal, datetime):
            raise bad_param("$filter", f"{prop} compared with an ISO 8601 time, got {literal!r}")
        if column == "value" and not isinstance(literal, float):
            raise bad_param("$filter", f"result compared with a number, got {literal!r}")
        where.append(f"{ts if column == 'time' else value} {_SQL_OP[op]} %s")
        params.append(literal)
    return table, ts, value, extra, where, params


async def _observations(conn: psycopg.AsyncConnection, stream: Stream, opts: Options) -> list[tuple[Any, ...]]:
    """One page of a stream's Observations and one more (to know there is a next page)."""
    table, ts, value, extra, where, params = _observation_query(stream, opts)
    desc = opts.orderby == "desc"
    if opts.after is not None:
        try:
            after = datetime.fromisoformat(str(opts.after))
        except ValueError:
            raise bad_param("$skiptoken", "the $skiptoken of an @iot.nextLink") from None
        where.append(f"{ts} {'<' if desc else '>'} %s")
        params.append(after)
    cur = await conn.execute(
        f"SELECT {ts}, {value}{extra} FROM {table} WHERE {' AND '.join(where)}"  # noqa: S608 - fixed names
        f" ORDER BY {ts} {'DESC' if desc else 'ASC'} LIMIT %s OFFSET %s",
        [*params, opts.top + 1, opts.skip],
    )
    return list(await cur.fetchall())


async def _count_observations(conn: psycopg.AsyncConnection, stream: Stream, opts: Options) -> int:
    table, _ts, _value, _extra, where, params = _observation_query(stream, opts)
    cur = await conn.execute(f"SELECT count(*) FROM {table} WHERE {' AND '.join(where)}", params)  # noqa: S608
    row = await cur.fetchone()
    return int(row[0]) if row else 0


# -- resolving a path ------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """What a path names: a set of entities (`key` None), or one entity."""

    kind: str  # an entity set's name: Things, Locations, Datastreams, ObservedProperties, Sensors, Observations
    key: Any = None  # the entity's id (a Stream for a Datastream, (Stream, time) for an Observation)
    scope: dict[str, Any] = field(default_factory=dict)  # a collection's parent: sensor, metric, kind, stream


def _entity_key(kind: str, raw: str) -> Any:
    text = raw[1:-1].replace("''", "'") if raw.startswith("'") else raw
    if kind == "Datastreams":
        stream = Stream.parse(text)
        if stream is None:
            raise not_found(f"Datastream {text!r}")
        return stream
    if kind == "Observations":
        head, _, micros = text.rpartition(":")
        stream = Stream.parse(head)
        if stream is None or not micros.lstrip("-").isdigit():
            raise not_found(f"Observation {text!r}")
        try:
            return (stream, _EPOCH + timedelta(microseconds=int(micros)))  # exact, unlike a float
        except OverflowError:
            raise not_found(f"Observation {text!r}") from None
    if kind == "ObservedProperties" and text not in METRICS:
        raise not_found(f"ObservedProperty {text!r}")
    if kind == "Sensors" and text not in {k.value for k in SensorKind}:
        raise not_found(f"Sensor {text!r}")
    return text


def _navigate(target: Target, nav: str) -> Target:
    """Where a navigation property of one entity leads."""
    kind, key = target.kind, target.key
    if kind == "Things" and nav in ("Datastreams", "Locations"):
        return Target(nav, scope={"sensor": key})
    if kind == "Locations" and nav == "Things":
        return Target("Things", scope={"sensor": key})
    if kind == "Datastreams":
        if nav == "Observations":
            return Target("Observations", scope={"stream": key})
        if nav == "Thing":
            return Target("Things", key.sensor)
        if nav == "ObservedProperty":
            return Target("ObservedProperties", key.metric)
        if nav == "Sensor":
            return Target("Sensors", scope={"of_sensor": key.sensor})
    if kind == "ObservedProperties" and nav == "Datastreams":
        return Target("Datastreams", scope={"metric": key})
    if kind == "Sensors" and nav == "Datastreams":
        return Target("Datastreams", scope={"kind": key})
    if kind == "Observations" and nav == "Datastream":
        return Target("Datastreams", key[0])
    raise not_found(f"{nav} of {kind}")


def resolve(path: str) -> Target:
    """The target of a path such as `Things('KTG-AQ-01')/Datastreams`."""
    segments = [s for s in path.split("/") if s]
    if not segments:
        raise not_found("an entity set: " + ", ".join(ENTITY_SETS))
    first = _SEGMENT.match(segments[0])
    if first is None or first["name"] not in ENTITY_SETS:
        raise not_found(f"entity set {segments[0]!r} (this server offers {', '.join(ENTITY_SETS)})")
    target = Target(first["name"], _entity_key(first["name"], first["id"]) if first["id"] else None)
    for segment in segments[1:]:
        m = _SEGMENT.match(segment)
        if target.key is None or m is None:
            raise not_found(f"{segment!r} after {target.kind} (name one entity first)")
        target = _navigate(target, m["name"])
        if m["id"]:
            if target.key is not None:
                raise not_found(f"{segment!r}")
            target = Target(target.kind, _entity_key(target.kind, m["id"]), target.scope)
    return target


# -- answering -------------------------------------------------------------------------------

Entity = dict[str, Any]


def _value(entity: Entity, prop: str) -> Any:
    value: Any = entity
    for part in prop.split("/"):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _passes(entity: Entity, filters: list[tuple[str, str, Any]]) -> bool:
    for prop, op, literal in filters:
        value = _value(entity, prop if prop != "id" else "@iot.id")
        if isinstance(literal, float) and isinstance(value, int | float) and not isinstance(value, bool):
            pair: tuple[Any, Any] = (float(value), literal)
        elif isinstance(literal, str) and isinstance(value, str):
            pair = (value, literal)
        else:
            return op == "ne"
        ok = {"eq": pair[0] == pair[1], "ne": pair[0] != pair[1], "gt": pair[0] > pair[1],
              "ge": pair[0] >= pair[1], "lt": pair[0] < pair[1], "le": pair[0] <= pair[1]}[op]  # fmt: skip
        if not ok:
            return False
    return True


async def _small_set(request: web.Request, conn: psycopg.AsyncConnection, target: Target) -> list[Entity]:
    """Every entity of a set that is not Observations, in id order, before options."""
    scope = target.scope
    if target.kind in ("Things", "Locations"):
        rows = await _sensors(conn, scope.get("sensor") or target.key)
        make: Callable[[web.Request, dict[str, Any]], Entity] = thing_json if target.kind == "Things" else location_json
        return [make(request, r) for r in rows]
    if target.kind == "Datastreams":
        key = target.key
        streams = await _streams(conn, sensor=key.sensor if key else scope.get("sensor"),
                                 metric=key.metric if key else scope.get("metric"), kind=scope.get("kind"))  # fmt: skip
        only = key or scope.get("only")
        return [datastream_json(request, s, name) for s, name in streams if only is None or s == only]
    if target.kind == "ObservedProperties":
        metrics = [target.key] if target.key else sorted(METRICS)
        return [observed_property_json(request, m) for m in metrics]
    if target.kind == "Sensors":
        if "of_sensor" in scope:
            rows = await _sensors(conn, scope["of_sensor"])
            return [sensor_json(request, rows[0]["kind"])] if rows else []
        kinds = [target.key] if target.key else sorted(k.value for k in SensorKind)
        return [sensor_json(request, k) for k in kinds]
    raise not_found(target.kind)


@dataclass
class Page:
    entities: list[Entity]
    next_after: Any = None
    count: int | None = None


async def _page(request: web.Request, conn: psycopg.AsyncConnection, target: Target, opts: Options) -> Page:
    """A collection's page under `opts`, with the key to resume after it when there is more."""
    if target.kind == "Observations":
        stream = target.scope.get("stream")
        if stream is None:
            raise bad_param("path", "a Datastream's Observations: Datastreams('SENSOR:metric')/Observations")
        rows = await _observations(conn, stream, opts)
        more = len(rows) > opts.top
        rows = rows[: opts.top]
        count = await _count_observations(conn, stream, opts) if opts.count else None
        after = rows[-1][0].isoformat() if more and rows else None
        return Page([observation_json(request, stream, r) for r in rows], after, count)
    matching = [e for e in await _small_set(request, conn, target) if _passes(e, opts.filters)]
    matching.sort(key=lambda e: str(e["@iot.id"]), reverse=opts.orderby == "desc")
    if opts.after is not None:
        after = str(opts.after)
        desc = opts.orderby == "desc"
        matching = [e for e in matching if (str(e["@iot.id"]) < after if desc else str(e["@iot.id"]) > after)]
    count = len(matching) if opts.count else None
    window = matching[opts.skip : opts.skip + opts.top + 1]
    more = len(window) > opts.top
    window = window[: opts.top]
    return Page(window, window[-1]["@iot.id"] if more and window else None, count)


async def _expand(request: web.Request, conn: psycopg.AsyncConnection, target: Target, entity: Entity,
                  opts: Options) -> Entity:  # fmt: skip
    """`entity` with its `$expand`ed navigation properties (and theirs), then its `$select`."""
    for nav, inner in opts.expand.items():
        related = _navigate(target, nav)
        if related.key is not None or (related.kind == "Sensors" and "of_sensor" in related.scope):
            try:
                one: Entity | None = await _one(request, conn, related)
            except Problem:  # a 404: the entity is gone
                one = None
            if one is not None:
                one = await _expand(request, conn, _target_of(related.kind, one), one, inner)
            entity[nav] = one
        else:
            page = await _page(request, conn, related, inner)
            entity[nav] = [await _expand(request, conn, _target_of(related.kind, e), e, inner) for e in page.entities]
            if page.next_after is not None:
                entity[f"{nav}@iot.nextLink"] = _next_link(entity[f"{nav}@iot.navigationLink"], inner, page.next_after)
            if page.count is not None:
                entity[f"{nav}@iot.count"] = page.count
    if opts.select:
        keep = set(opts.select) | set(opts.expand) | {f"{n}@iot.nextLink" for n in opts.expand}
        entity = {k: v for k, v in entity.items() if k in keep or (k == "@iot.id" and "id" in keep)}
    return entity


def _by_key(target: Target) -> dict[str, Any]:
    """A single entity as a one-entity collection's scope."""
    if target.kind in ("Things", "Locations"):
        return {"sensor": target.key}
    if target.kind == "Datastreams":
        return {"sensor": target.key.sensor, "metric": target.key.metric, "only": target.key}
    return {}


def _target_of(kind: str, entity: Entity) -> Target:
    raw = entity["@iot.id"]
    if kind == "Datastreams":
        return Target(kind, Stream.parse(raw))
    if kind == "Observations":
        return Target(kind, _entity_key(kind, _quote(raw)))
    return Target(kind, raw)


def _next_link(base: str, opts: Options, after: Any) -> str:
    pairs = {k: v for k, v in opts.raw.items() if k not in ("$skip", "$skiptoken")}
    return f"{base}?{urlencode(pairs | {'$skiptoken': _token(after)})}"


async def _one(request: web.Request, conn: psycopg.AsyncConnection, target: Target) -> Entity:
    if target.kind == "Observations":
        stream, at = target.key
        rows = await _observations(conn, stream, Options(
            top=1, filters=[("phenomenonTime", "eq", at)]))  # fmt: skip
        if not rows:
            raise not_found(f"Observation {stream.id}:{(at - _EPOCH) // timedelta(microseconds=1)}")
        return observation_json(request, stream, rows[0])
    scope = _by_key(target) if target.kind in ("Things", "Locations", "Datastreams") else target.scope
    found = [e for e in await _small_set(request, conn, Target(target.kind, target.key, scope))
             if (target.kind == "Sensors" and "of_sensor" in scope) or str(e["@iot.id"]) == str(
                 target.key.id if isinstance(target.key, Stream) else target.key)]  # fmt: skip
    if not found:
        raise not_found(f"{target.kind[:-1]} {target.key if not isinstance(target.key, Stream) else target.key.id!r}")
    return found[0]


PATH = Param("path", {"type": "string"}, "an entity set, one entity (Things('KTG-AQ-01')) or a navigation from it",
             where="path")  # fmt: skip


# SensorThings serves the whole registry (its clients know no cities): callers scoped to every
# city only; a city-scoped one reads its cities through /api/v1.
@API.get(f"{BASE}", summary="SensorThings API 1.1 (read-only subset): the entity sets", tag="sensorthings",
         scope="every-city")  # fmt: skip
async def sta_root(request: web.Request) -> web.Response:
    return answer(request, {
        "value": [{"name": name, "url": _link(request, name)} for name in ENTITY_SETS],
        "serverSettings": {"conformance": [
            "http://www.opengis.net/spec/iot_sensing/1.1/req/datamodel",
            "http://www.opengis.net/spec/iot_sensing/1.1/req/resource-path/resource-path-to-entities",
            "http://www.opengis.net/spec/iot_sensing/1.1/req/request-data",
        ]},
    })  # fmt: skip


@API.get(
    f"{BASE}/{{path}}",
    summary="SensorThings entities: Things, Locations, Datastreams (and 1m/1h rollups), ObservedProperties, "
    "Sensors, Observations, with $filter, $select, $orderby, $top, $skip, $count, $expand",
    tag="sensorthings",
    params=[PATH],
    route=f"{BASE}/{{path:.+}}",
    scope="every-city",
)
async def sta_path(request: web.Request) -> web.Response:
    pairs = {k: v for k, v in request.query.items() if k.startswith("$")}
    opts = parse_options(pairs)
    opts.raw = pairs
    target = resolve(request.match_info["path"])
    async with request.app[STORE].connection() as conn, statement_budget(conn):
        if target.key is not None:
            entity = await _one(request, conn, target)
            return answer(request, await _expand(request, conn, target, entity, opts))
        page = await _page(request, conn, target, opts)
        body: dict[str, Any] = {}
        if page.count is not None:
            body["@iot.count"] = page.count
        if page.next_after is not None:
            here = f"{request.scheme}://{request.host}{request.path}"
            body["@iot.nextLink"] = _next_link(here, opts, page.next_after)
        body["value"] = [await _expand(request, conn, _target_of(target.kind, e), e, opts) for e in page.entities]
    return answer(request, body)
