"""Air quality: each station's ISPU now, and the daily ISPU report a regency's DLH files.

ISPU is `pantau.indices` (Permen LHK P.14/2020, continuous bands, the highest sub-index and its
critical pollutant), over each pollutant's averaging window (`ISPU_P14_2020.windows`: PM10, PM2.5,
SO2 24 h; CO 8 h; HC 3 h; O3, NO2 1 h).

- now: each window's mean of the readings in (at − window, at], `at` the request's time (default
  now); a pollutant with no reading in its window has no sub-index.
- daily: per pollutant the highest mean over windows of its period lying inside the city's local
  day, hour-aligned (for 24 h, the day's mean): the day's report rests on that day's readings only,
  split at local midnight.
"""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web

from api.common import TZ, Recent, answer_large, body_of, city_or_404, iso, statement_budget
from api.keys import STORE
from api.openapi import API, Param
from pantau.domain import City, Sensor
from pantau.indices import ISPU_P14_2020, IspuCategory, IspuSubIndex, StationIspu, day_window_max, ispu_station
from pantau.store import views

TABLE = ISPU_P14_2020
RECENT = web.AppKey("ispu_recent", Recent)
CITY = Param("city", {"type": "string"}, "city slug, e.g. kotamobagu")
CITY_REQUIRED = Param("city", {"type": "string"}, "city slug, e.g. kotamobagu", required=True)
AT = Param("at", {"type": "string", "format": "date-time"}, "the moment asked (default now), RFC 3339")
DATE = Param("date", {"type": "string", "format": "date"}, "the city's local date (default yesterday)")
FORMAT = Param("format", {"type": "string", "enum": ["json", "csv"], "default": "json"}, "JSON, or CSV as DLH files it")


def category_json(category: IspuCategory) -> dict[str, str]:
    return {"id": category.value, "label": category.label, "colour": category.colour}


def _hours(window: timedelta) -> str:
    return f"{int(window.total_seconds() // 3600)}h"


def _station_json(sensor: Sensor, station: StationIspu | None, subs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "sensor": sensor.id,
        "name": sensor.name,
        "district": sensor.district,
        "ispu": station.index if station else None,
        "category": category_json(station.category) if station else None,
        "critical": station.critical if station else None,
        "beyond": station.beyond if station else False,
        "sub_indices": subs,
    }


def _sub_json(sub: IspuSubIndex) -> dict[str, Any]:
    return {"ispu": sub.index, "category": category_json(sub.category), "concentration": sub.concentration,
            "unit": "µg/m³", "beyond": sub.beyond}  # fmt: skip


async def ispu_now(request: web.Request, city: str | None, at: datetime) -> list[dict[str, Any]]:
    """Each air station's ISPU at `at` (the overview's worst station comes from here)."""
    store = request.app[STORE]
    stations = await store.sensors(city=city, kind="air")
    async with store.connection() as conn, statement_budget(conn):
        means = await views.window_means(conn, [s.id for s in stations], TABLE.windows, at)
    zones = {c.id: c.zone for c in await store.cities()} if TZ.read(request) == "local" else {}
    # The indices of thousands of stations in a worker thread: the event loop serves meanwhile.
    return await asyncio.to_thread(_stations_ispu, stations, means, zones, at)


def _stations_ispu(stations: list[Sensor], means: dict[tuple[str, str], views.WindowMean],
                   zones: dict[str, ZoneInfo], at: datetime) -> list[dict[str, Any]]:  # fmt: skip
    out = []
    for sensor in stations:
        found = {p: means[(sensor.id, p)] for p in TABLE.pollutants if (sensor.id, p) in means}
        station = ispu_station({p: m.mean for p, m in found.items()}, table=TABLE) if found else None
        zone = zones.get(sensor.city)
        subs = {}
        if station is not None:
            for p, sub in station.sub_indices.items():
                window = TABLE.windows[p]
                subs[p] = _sub_json(sub) | {"window": _hours(window), "from": iso(at - window, zone),
                                            "to": iso(at, zone), "readings": found[p].n,
                                            "newest": iso(found[p].newest, zone)}  # fmt: skip
        out.append(_station_json(sensor, station, subs))
    return out


@API.get(
    "/api/v1/air/ispu",
    summary="Each air station's ISPU now: index, category and colour, critical pollutant, every sub-index",
    tag="air",
    params=[CITY, AT, TZ],
)
async def get_ispu(request: web.Request) -> web.Response:
    city, asked = CITY.read(request), AT.read(request)
    if city is not None:
        await city_or_404(request, city)
    if asked is not None:
        return await answer_large(request, {"at": iso(asked), "stations": await ispu_now(request, city, asked)})

    async def now() -> bytes:
        at = datetime.now(UTC)
        return await asyncio.to_thread(body_of, {"at": iso(at), "stations": await ispu_now(request, city, at)})

    # Now: one computation a second per city, whatever the number of screens asking.
    body = await request.app[RECENT].get((city, TZ.read(request)), now)
    return web.Response(body=body, content_type="application/json")


def _local_date(request: web.Request, city: City) -> date:
    asked: date | None = DATE.read(request)
    return asked or (datetime.now(city.zone) - timedelta(days=1)).date()


@API.get(
    "/api/v1/air/ispu/daily",
    summary="The daily ISPU report of a city for a local date (JSON, or CSV as DLH files it)",
    tag="air",
    params=[CITY_REQUIRED, DATE, FORMAT],
    media=("application/json", "text/csv"),
)
async def get_ispu_daily(request: web.Request) -> web.StreamResponse:
    city = await city_or_404(request, CITY_REQUIRED.read(request))
    day = _local_date(request, city)
    start = datetime(day.year, day.month, day.day, tzinfo=city.zone)
    end = start + timedelta(days=1)  # Indonesia keeps no daylight saving: 24 whole hours
    store = request.app[STORE]
    stations = await store.sensors(city=city.id, kind="air")
    async with store.connection() as conn, statement_budget(conn):
        hourly = await views.hourly(conn, await store.backend(), [s.id for s in stations], TABLE.pollutants,
                                    start, end)  # fmt: skip
    # The windows of thousands of stations in a worker thread: the event loop serves meanwhile.
    report = await asyncio.to_thread(_daily, stations, hourly, start, city)
    if FORMAT.read(request) == "csv":
        return _csv(city, day, report)
    return await answer_large(request, {"city": city.id, "date": day.isoformat(), "timezone": city.timezone,
                                        "zone": city.zone_name, "from": iso(start, city.zone),
                                        "to": iso(end, city.zone), "stations": report})  # fmt: skip


def _daily(stations: list[Sensor], hourly: views.Hourly, start: datetime,
           city: City) -> list[dict[str, Any]]:  # fmt: skip
    hour_starts = [(start + timedelta(hours=h)).astimezone(UTC) for h in range(24)]
    report = []
    for sensor in stations:
        windows = {}
        for p in TABLE.pollutants:
            hours = hourly.get((sensor.id, p), {})
            best = day_window_max([hours.get(h) for h in hour_starts], int(TABLE.windows[p].total_seconds() // 3600))
            if best is not None:
                windows[p] = best
        station = ispu_station({p: w.mean for p, w in windows.items()}, table=TABLE) if windows else None
        subs = {}
        if station is not None:
            for p, sub in station.sub_indices.items():
                w = windows[p]
                subs[p] = _sub_json(sub) | {
                    "window": _hours(TABLE.windows[p]),
                    "from": iso(start + timedelta(hours=w.start), city.zone),
                    "to": iso(start + timedelta(hours=w.start + w.width), city.zone),
                    "readings": w.n,
                    "hours_with_data": w.hours,
                }
        report.append(_station_json(sensor, station, subs))
    return report


def _csv(city: City, day: date, report: list[dict[str, Any]]) -> web.Response:
    """One row per station: the ISPU, its category and critical pollutant, then each pollutant's
    window concentration (µg/m³) and sub-index."""
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\r\n")
    pollutants = TABLE.pollutants
    out.writerow(["tanggal", "zona", "kota", "stasiun", "nama", "kecamatan", "ispu", "kategori", "parameter_kritis",
                  *[f"{p}_ug_m3" for p in pollutants], *[f"ispu_{p}" for p in pollutants]])  # fmt: skip
    for row in report:
        subs = row["sub_indices"]
        out.writerow([
            day.isoformat(), city.zone_name, city.id, row["sensor"], row["name"], row["district"],
            "" if row["ispu"] is None else row["ispu"], row["category"]["label"] if row["category"] else "",
            row["critical"] or "",
            *[f"{subs[p]['concentration']:.1f}" if p in subs else "" for p in pollutants],
            *[subs[p]["ispu"] if p in subs else "" for p in pollutants],
        ])  # fmt: skip
    name = f"ispu-{city.id}-{day.isoformat()}.csv"
    return web.Response(
        body=buf.getvalue().encode(), content_type="text/csv", charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )  # fmt: skip
