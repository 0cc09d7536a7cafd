"""A city at a glance, for the wall screen's header: sensors ok / offline / stuck / rejected, open
alerts by severity, the worst ISPU station, the highest Siaga gauge, the worst LOS corridor and the
ingest lag (now − the city's newest committed reading). ETag and 304 when nothing shown changed
(the lag is in whole seconds, so a screen polling faster than that gets 304s). The answer for now is
at most `FRESH_S` old: the screens of a command centre polling one city share one computation."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from api.air import ispu_now
from api.common import Recent, answer, city_or_404, iso, statement_budget
from api.flood import gauge_states, river_gauges
from api.keys import STORE
from api.openapi import API, Param
from api.traffic import counter_states
from pantau.alerts import Severity
from pantau.domain import City
from pantau.store import views

FRESH_S = 1.0
RECENT = web.AppKey("overview_recent", Recent)
CITY = Param("city", {"type": "string"}, "city slug, e.g. kotamobagu", required=True)
AT = Param("at", {"type": "string", "format": "date-time"}, "the moment asked (default now), RFC 3339")


@API.get(
    "/api/v1/overview",
    summary="A city at a glance: sensor status, open alerts by severity, worst ISPU, Siaga and LOS, ingest lag",
    tag="readings",
    params=[CITY, AT],
    responses={200: "OK", 304: "Not modified (If-None-Match held the ETag)"},
)
async def get_overview(request: web.Request) -> web.Response:
    city = await city_or_404(request, CITY.read(request))
    at = AT.read(request)
    if at is not None:
        return answer(request, await _overview(request, city, at), etag=True)
    now = datetime.now(UTC).replace(microsecond=0)
    body = await request.app[RECENT].get(city.id, lambda: _overview(request, city, now))
    return answer(request, body, etag=True)


async def _overview(request: web.Request, city: City, now: datetime) -> dict[str, Any]:
    store = request.app[STORE]
    sensors = await store.sensors(city=city.id)
    async with store.connection() as conn, statement_budget(conn):
        status = await views.statuses(conn, {s.id: s.last_seen for s in sensors}, now)
        cur = await conn.execute(
            "SELECT severity, count(*) FROM alerts WHERE city = %s AND state <> 'resolved' GROUP BY severity",
            (city.id,),
        )
        alerts = {str(sev): int(n) for sev, n in await cur.fetchall()}
        cur = await conn.execute(
            "SELECT max(l.ts) FROM latest_readings l JOIN sensors s ON s.id = l.sensor_id WHERE s.city = %s",
            (city.id,),
        )
        row = await cur.fetchone()
    newest = row[0] if row else None
    counts = {name: 0 for name in views.STATUSES}
    for value in status.values():
        counts[value] += 1
    stations = [s for s in await ispu_now(request, city.id, now) if s["ispu"] is not None]
    gauges = [g for g in await gauge_states(request, await river_gauges(request, city.id, None, now), now)
              if g["siaga"] is not None]  # fmt: skip
    roads = [s for s in sensors if s.kind == "traffic"]
    counters = [c for c in await counter_states(request, roads, now) if c["degree_of_saturation"] is not None]
    worst_air = max(stations, key=lambda s: s["ispu"], default=None)
    worst_gauge = min(gauges, key=lambda g: (g["siaga"]["siaga"], -g["level_cm"]), default=None)
    worst_road = max(counters, key=lambda c: c["degree_of_saturation"], default=None)
    body: dict[str, Any] = {
        "city": city.id,
        "name": city.name,
        "timezone": city.timezone,
        "zone": city.zone_name,
        "sensors": counts | {"total": len(sensors)},
        "open_alerts": {sev.value: alerts.get(sev.value, 0) for sev in Severity} | {"total": sum(alerts.values())},
        "worst_ispu": None if worst_air is None else {
            k: worst_air[k] for k in ("sensor", "name", "ispu", "category", "critical")},
        "highest_siaga": None if worst_gauge is None else {
            k: worst_gauge[k] for k in ("sensor", "name", "level_cm", "siaga")}
        | {"river": next((s.metadata.get("river") for s in sensors if s.id == worst_gauge["sensor"]), None)},
        "worst_los": None if worst_road is None else {
            k: worst_road[k] for k in ("sensor", "name", "corridor", "degree_of_saturation", "los")},
        "newest_reading": iso(newest, city.zone),
        "ingest_lag_s": None if newest is None else max(0, round((now - newest).total_seconds())),
    }  # fmt: skip
    return body
