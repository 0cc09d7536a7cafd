"""Series: one or several sensors' metric over [from, to), raw or aggregated per minute, hour or
local day (`step=auto` picks the finest level that stays within `max_points` per series). Gaps are
explicit nulls; no interval cap beyond `max_points`; a query over its budget is a 422 with a hint,
not a hang."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from aiohttp import web

from api.access import principal, visible_sensor
from api.common import TZ, answer, iso
from api.keys import SETTINGS, STORE
from api.openapi import API, Param
from api.problems import Problem, bad_param
from pantau.metrics import METRICS
from pantau.store import series as store_series

MAX_SENSORS = 20

SENSOR = Param("sensor", {"type": "string"}, "sensor id (repeat for several, at most 20)", required=True)
METRIC = Param("metric", {"type": "string", "enum": sorted(METRICS)}, "metric", required=True)
FROM = Param("from", {"type": "string", "format": "date-time"}, "start, RFC 3339 with an offset", required=True)
TO = Param("to", {"type": "string", "format": "date-time"}, "end (excluded), RFC 3339 with an offset", required=True)
STEP = Param(
    "step", {"type": "string", "enum": ["auto", "raw", "1m", "1h", "1d"], "default": "auto"},
    "raw readings, 1-minute, 1-hour or local-day buckets; auto: the finest within max_points",
)  # fmt: skip
AGG = Param("agg", {"type": "string", "default": "avg"}, "comma-separated: avg, min, max, count, sum, last")
MAX_POINTS = Param(
    "max_points", {"type": "integer", "minimum": 1, "maximum": 20000, "default": 2000}, "points per series at most"
)

_SPAN = {"1m": 60.0, "1h": 3600.0, "1d": 86400.0}


@API.get(
    "/api/v1/series",
    summary="Sensors' metric over [from, to): raw, or aggregated per minute, hour or local day",
    tag="readings",
    params=[SENSOR, METRIC, FROM, TO, STEP, AGG, MAX_POINTS, TZ],
    responses={200: "OK", 422: "Over the point or time budget: narrow the range or coarsen the step"},
)
async def get_series(request: web.Request) -> web.Response:
    sensors = SENSOR.read_all(request)
    if len(sensors) > MAX_SENSORS:
        raise bad_param("sensor", f"at most {MAX_SENSORS} sensors in one request")
    if principal(request).cities is not None:  # a sensor of a city the caller does not see: as unknown
        for sensor_id in sensors:
            await visible_sensor(request, sensor_id)
    metric, start, end = METRIC.read(request), FROM.read(request), TO.read(request)
    if end <= start:
        raise bad_param("to", "after from")
    step, max_points, local = STEP.read(request), int(MAX_POINTS.read(request)), TZ.read(request) == "local"
    aggs = tuple(a.strip() for a in str(AGG.read(request)).split(",") if a.strip())
    unknown = [a for a in aggs if a not in store_series.AGGREGATES]
    if unknown or not aggs:
        raise bad_param("agg", f"some of {', '.join(store_series.AGGREGATES)}, got {','.join(unknown) or 'none'}")
    store = request.app[STORE]
    backend = await store.backend()
    out: list[dict[str, Any]] = []
    try:
        async with store.connection() as conn, conn.transaction():
            zones = await _zones(conn, sensors)
            for sensor_id in sensors:
                zone = zones[sensor_id]
                level = step
                if level == "auto":
                    level = await _auto(conn, sensor_id, metric, start, end, max_points, zone)
                if level == "raw":
                    count = await store_series.raw_count(conn, sensor_id, metric, start, end, max_points + 1)
                    if count > max_points:
                        raise _over_budget(f"more than {max_points} raw readings for {sensor_id}", max_points)
                    points = await store_series.raw(conn, sensor_id, metric, start, end, max_points)
                else:
                    n = len(store_series.buckets(start, end, level, zone))
                    if n > max_points:
                        raise _over_budget(f"{n} buckets of {level} per series", max_points)
                    points = await store_series.aggregated(
                        conn, backend, sensor_id, metric, start, end, level, aggs, zone
                    )
                shown = zone if local else None
                out.append({"sensor": sensor_id, "step": level,
                            "points": [{"ts": iso(p.ts, shown)} | p.values for p in points]})  # fmt: skip
    except psycopg.errors.QueryCanceled:
        budget = request.app[SETTINGS].api_statement_timeout_ms
        raise _over_budget(f"the query took over {budget / 1000:g} s", max_points) from None
    return answer(request, {"metric": metric, "unit": METRICS[metric].unit, "from": iso(start), "to": iso(end),
                            "agg": list(aggs), "series": out})  # fmt: skip


async def _zones(conn: psycopg.AsyncConnection, sensors: list[str]) -> dict[str, ZoneInfo]:
    cur = await conn.execute(
        "SELECT s.id, coalesce(c.timezone, 'Asia/Jakarta') FROM sensors s LEFT JOIN cities c ON c.id = s.city"
        " WHERE s.id = ANY(%s)",
        (sensors,),
    )
    found = {sensor_id: ZoneInfo(zone) for sensor_id, zone in await cur.fetchall()}
    missing = [s for s in sensors if s not in found]
    if missing:
        raise Problem(404, "Not found", f"sensor {missing[0]!r} does not exist", param="sensor")
    return found


async def _auto(conn: psycopg.AsyncConnection, sensor_id: str, metric: str, start: Any, end: Any, max_points: int,
                zone: ZoneInfo) -> store_series.Level:  # fmt: skip
    """Raw when the range holds at most max_points readings, else the finest bucket that fits."""
    if await store_series.raw_count(conn, sensor_id, metric, start, end, max_points + 1) <= max_points:
        return "raw"
    span = (end - start).total_seconds()
    for level in ("1m", "1h", "1d"):
        if span / _SPAN[level] <= max_points:
            return level
    return "1d"


def _over_budget(what: str, max_points: int) -> Problem:
    return Problem(
        422,
        "Over the query budget",
        f"{what}: narrow the range, or coarsen the step (1m, 1h, 1d), or raise max_points (now {max_points})",
    )
