"""Rivers and rain: each river's gauges upstream → downstream with level, Siaga level, rate of
change over the last hour and time since the last reading; each rain gauge's BMKG class of the last
hour and of the local day.

A gauge's position on its river is its metadata `order` (1 = most upstream), its thresholds the
metadata `siaga3_cm`, `siaga2_cm`, `siaga1_cm` (`pantau.indices.siaga_thresholds`). The rate of
change is (latest level − the last level at or before an hour earlier) per hour of the time between
them. A day of rain is the city's local day, midnight to midnight in its zone.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Any

from aiohttp import web

from api.common import TZ, answer, city_or_404, iso, statement_budget
from api.keys import STORE
from api.openapi import API, Param
from pantau.domain import City, Sensor
from pantau.errors import SensorMetadataError
from pantau.indices import RainPeriod, SiagaLevel, rain_class, siaga_level, siaga_thresholds
from pantau.store import views

CITY = Param("city", {"type": "string"}, "city slug, e.g. sampit")
RIVER = Param("river", {"type": "string"}, "one river, by name")
AT = Param("at", {"type": "string", "format": "date-time"}, "the moment asked about (default now)")
DATE = Param("date", {"type": "string", "format": "date"}, "a whole local date instead of today up to now")
LEVEL = "water_level_cm"
RAIN = "rain_mm"
HOUR = timedelta(hours=1)


def siaga_json(level: SiagaLevel) -> dict[str, Any]:
    return {"siaga": level.value, "id": level.slug, "label": level.label}


def gauge_state(sensor: Sensor, latest: tuple[datetime, float] | None, before: tuple[datetime, float] | None,
                at: datetime) -> dict[str, Any]:  # fmt: skip
    """One river gauge's level, Siaga level, rate of change and age (the overview reads it too)."""
    state: dict[str, Any] = {"sensor": sensor.id, "name": sensor.name, "district": sensor.district,
                             "order": sensor.metadata.get("order"), "level_cm": None, "ts": None, "siaga": None,
                             "thresholds_cm": None, "rate_cm_per_h": None, "since_s": None}  # fmt: skip
    try:
        thresholds = siaga_thresholds(sensor)
        state["thresholds_cm"] = dict(zip(("waspada", "siaga", "awas"), thresholds.as_tuple(), strict=True))
    except SensorMetadataError as exc:
        thresholds, state["problem"] = None, str(exc)
    if latest is None:
        return state
    ts, value = latest
    state |= {"level_cm": value, "ts": ts, "since_s": max(0.0, (at - ts).total_seconds())}
    if thresholds is not None:
        state["siaga"] = siaga_json(siaga_level(value, thresholds))
    if before is not None and before[0] < ts:
        state["rate_cm_per_h"] = (value - before[1]) / ((ts - before[0]) / HOUR)
    return state


async def river_gauges(request: web.Request, city: str | None, river: str | None, at: datetime) -> list[Sensor]:
    gauges = [s for s in await request.app[STORE].sensors(city=city, kind="flood")
              if river is None or s.metadata.get("river") == river]  # fmt: skip
    return sorted(gauges, key=lambda s: (s.city, str(s.metadata.get("river", "")), _order(s), s.id))


def _order(sensor: Sensor) -> int:
    order = sensor.metadata.get("order")
    return order if isinstance(order, int) else 1_000_000


async def gauge_states(request: web.Request, gauges: list[Sensor], at: datetime) -> list[dict[str, Any]]:
    async with request.app[STORE].connection() as conn, statement_budget(conn):
        latest = await views.latest(conn, [g.id for g in gauges])
        levels = {g.id: latest[g.id][LEVEL] for g in gauges if LEVEL in latest.get(g.id, {})}
        before = await views.values_before(conn, LEVEL, {sid: ts - HOUR for sid, (ts, _) in levels.items()})
    return [gauge_state(g, levels.get(g.id), before.get(g.id), at) for g in gauges]


def _zone_of(local: bool, cities: dict[str, City], city: str) -> Any:
    return cities[city].zone if local and city in cities else None


@API.get(
    "/api/v1/flood/rivers",
    summary="Each river's gauges upstream to downstream: level, Siaga level, rate over the last hour, age",
    tag="flood",
    params=[CITY, RIVER, TZ],
)
async def get_rivers(request: web.Request) -> web.Response:
    city, river, local, at = CITY.read(request), RIVER.read(request), TZ.read(request) == "local", datetime.now(UTC)
    if city is not None:
        await city_or_404(request, city)
    gauges = await river_gauges(request, city, river, at)
    states = await gauge_states(request, gauges, at)
    cities = {c.id: c for c in await request.app[STORE].cities()}
    rivers: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for gauge, state in zip(gauges, states, strict=True):
        zone = _zone_of(local, cities, gauge.city)
        rivers[(gauge.city, str(gauge.metadata.get("river") or ""))].append(state | {"ts": iso(state["ts"], zone)})
    return answer(request, {"at": iso(at), "rivers": [
        {"city": c, "river": name or None, "gauges": gs} for (c, name), gs in rivers.items()
    ]})  # fmt: skip


def _day(city: City, day: date | None, at: datetime) -> tuple[datetime, datetime]:
    """[start, end) of the local day asked for: a whole `date`, or today up to `at`."""
    if day is None:
        local = at.astimezone(city.zone)
        return local.replace(hour=0, minute=0, second=0, microsecond=0), at
    start = datetime(day.year, day.month, day.day, tzinfo=city.zone)
    return start, start + timedelta(days=1)


def rain_json(mm: float | None, period: RainPeriod) -> dict[str, Any]:
    return {"mm": mm, "class": None if mm is None else rain_class(mm, period).value}


@API.get(
    "/api/v1/rain",
    summary="Each rain gauge's rain and BMKG class over the last hour and the local day",
    tag="flood",
    params=[CITY, AT, DATE, TZ],
)
async def get_rain(request: web.Request) -> web.Response:
    city_id, at, local = CITY.read(request), AT.read(request) or datetime.now(UTC), TZ.read(request) == "local"
    cities = {c.id: c for c in await request.app[STORE].cities()}
    if city_id is not None:
        await city_or_404(request, city_id)
    gauges = await request.app[STORE].sensors(city=city_id, kind="rain")
    raw_date = DATE.read(request)
    by_city: dict[str, list[str]] = defaultdict(list)
    for gauge in gauges:
        by_city[gauge.city].append(gauge.id)
    out = []
    days: dict[str, tuple[datetime, datetime, tuple[int, float] | None]] = {}
    async with request.app[STORE].connection() as conn, statement_budget(conn):
        hour = await views.sums(conn, RAIN, [g.id for g in gauges], at - HOUR, at)
        for city_of, ids in by_city.items():  # a city's gauges share its local day
            start, end = _day(cities.get(city_of) or City(id=city_of), raw_date, at)
            day_sums = await views.sums(conn, RAIN, ids, start, end)
            days |= {sid: (start, end, day_sums.get(sid)) for sid in ids}
    for gauge in gauges:
        zone = _zone_of(local, cities, gauge.city)
        start, end, day = days[gauge.id]
        h = hour.get(gauge.id)
        out.append({
            "sensor": gauge.id, "name": gauge.name, "district": gauge.district,
            "river": gauge.metadata.get("river"),
            "last_hour": rain_json(h[1] if h else None, RainPeriod.HOURLY) | {"readings": h[0] if h else 0},
            "day": rain_json(day[1] if day else None, RainPeriod.DAILY)
            | {"from": iso(start, zone), "to": iso(end, zone), "readings": day[0] if day else 0},
        })  # fmt: skip
    return answer(request, {"at": iso(at), "gauges": out})
