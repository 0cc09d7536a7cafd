"""Cities, sensors and their latest values: what the wall map and the agency's lists read.

Latest values come from `latest_readings`, which ingest keeps in each batch's transaction: one
indexed read for a whole city, never a scan of `readings`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from api.access import acting, principal, visible_city
from api.common import TZ, answer, answer_text, iso, json_body
from api.keys import ALERTS, STORE
from api.openapi import API, ENGINEER, Param
from api.problems import Problem, not_found
from pantau.domain import City, Sensor
from pantau.errors import ManifestError, SensorMetadataError
from pantau.indices import trend_lines
from pantau.sensors import sensor_from_mapping
from pantau.store import views

CITY = Param("city", {"type": "string"}, "city slug, e.g. sampit")
KIND = Param("kind", {"type": "string", "enum": ["air", "traffic", "flood", "rain"]}, "sensor kind")
DISTRICT = Param("district", {"type": "string"}, "district name")
RIVER = Param("river", {"type": "string"}, "river name (a flood gauge's metadata)")
STATUS = Param(
    "status", {"type": "string", "enum": list(views.STATUSES)},
    "ok; offline (silent 15 min); rejected (its newest message was); stuck (a metric unchanged over an hour)",
)  # fmt: skip


def city_json(city: City) -> dict[str, Any]:
    return {"id": city.id, "name": city.name, "province": city.province, "timezone": city.timezone,
            "zone": city.zone_name}  # fmt: skip


async def _cities(request: web.Request) -> dict[str, City]:
    return {c.id: c for c in await request.app[STORE].cities()}


@API.get("/api/v1/cities", summary="The cities of the registry with their time zones", tag="registry")
async def list_cities(request: web.Request) -> web.Response:
    who = principal(request)
    return answer(request, {"cities": [city_json(c) for c in (await _cities(request)).values() if who.sees(c.id)]})


@API.get(
    "/api/v1/cities/{city}",
    summary="One city",
    tag="registry",
    params=[Param("city", {"type": "string"}, "city slug", where="path")],
)
async def get_city(request: web.Request) -> web.Response:
    city = (await _cities(request)).get(request.match_info["city"])
    if city is None:
        raise not_found(f"city {request.match_info['city']!r}")
    return answer(request, city_json(city))


_SENSOR_COLUMNS = "id, kind, city, district, name, lat, lon, metadata, created_at, last_seen"


def _sensor_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "kind": row["kind"],
        "city": row["city"],
        "district": row["district"],
        "name": row["name"],
        "lat": row["lat"],
        "lon": row["lon"],
        "river": (row["metadata"] or {}).get("river"),
        "metadata": row["metadata"],
        "created_at": iso(row["created_at"]),
        "last_seen": iso(row["last_seen"]),
    }


@API.get(
    "/api/v1/sensors",
    summary="Sensors, filtered by city, kind, district and river",
    tag="registry",
    params=[
        CITY,
        KIND,
        DISTRICT,
        RIVER,
        STATUS,
    ],
)
async def list_sensors(request: web.Request) -> web.Response:
    city, kind, wanted = CITY.read(request), KIND.read(request), STATUS.read(request)
    district, river = DISTRICT.read(request), RIVER.read(request)
    async with request.app[STORE].connection() as conn:
        cur = await conn.execute(
            f"SELECT {_SENSOR_COLUMNS} FROM sensors"  # noqa: S608 - a fixed column list
            " WHERE (%(city)s::text IS NULL OR city = %(city)s) AND (%(kind)s::text IS NULL OR kind = %(kind)s)"
            " AND (%(district)s::text IS NULL OR district = %(district)s)"
            " AND (%(river)s::text IS NULL OR metadata->>'river' = %(river)s) ORDER BY city, id",
            {"city": city, "kind": kind, "district": district, "river": river},
        )
        names = [c.name for c in cur.description or ()]
        rows = [dict(zip(names, r, strict=True)) for r in await cur.fetchall()]
        status = await views.statuses(conn, {r["id"]: r["last_seen"] for r in rows}, datetime.now(UTC))
    return answer(request, {"sensors": [_sensor_json(r) | {"status": status[r["id"]]} for r in rows
                                        if wanted is None or status[r["id"]] == wanted]})  # fmt: skip


@API.get(
    "/api/v1/sensors/{sensor}",
    summary="One sensor: metadata, last seen, latest value per metric and open alerts",
    tag="registry",
    params=[Param("sensor", {"type": "string"}, "sensor id", where="path"), TZ],
)
async def get_sensor(request: web.Request) -> web.Response:
    sensor_id = request.match_info["sensor"]
    async with request.app[STORE].connection() as conn:
        cur = await conn.execute(f"SELECT {_SENSOR_COLUMNS} FROM sensors WHERE id = %s", (sensor_id,))  # noqa: S608
        row = await cur.fetchone()
        names = [c.name for c in cur.description or ()]
        sensor = dict(zip(names, row, strict=True)) if row is not None else None
        if sensor is None or not principal(request).sees(sensor["city"]):
            raise not_found(f"sensor {sensor_id!r}")
        cur = await conn.execute(
            "SELECT metric, ts, value FROM latest_readings WHERE sensor_id = %s ORDER BY metric", (sensor_id,)
        )
        latest = await cur.fetchall()
        status = await views.statuses(conn, {sensor_id: sensor["last_seen"]}, datetime.now(UTC))
    zone = (await _cities(request)).get(sensor["city"]) if TZ.read(request) == "local" else None
    tz = zone.zone if zone else None
    alerts = await request.app[ALERTS].list_alerts(state="active", sensor_id=sensor_id)
    return answer(
        request,
        _sensor_json(sensor)
        | {
            "last_seen": iso(sensor["last_seen"], tz),
            "status": status[sensor_id],
            "latest": {m: {"ts": iso(ts, tz), "value": v} for m, ts, v in latest},
            "open_alerts": [a.to_json() for a in alerts],
            "thresholds": _thresholds(sensor),
        },
    )


def _thresholds(row: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """What the sensor's trend is read against (the screen draws these lines on its chart)."""
    sensor = Sensor(id=row["id"], kind=row["kind"], city=row["city"], metadata=row.get("metadata") or {})
    return {metric: [{"value": line.value, "label": line.label, "colour": line.colour} for line in lines]
            for metric, lines in trend_lines(sensor).items()}  # fmt: skip


# The wall map's document, built by PostgreSQL in one statement: 10,000 sensors' values are one
# indexed read and one text, with nothing made per row in Python. Times as `iso` writes them (UTC,
# Z, microseconds only when there are some).
_RFC3339 = (
    "to_char(l.ts AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS')"
    " || CASE WHEN extract(microseconds FROM l.ts)::bigint %% 1000000 = 0 THEN ''"
    " ELSE to_char(l.ts AT TIME ZONE 'UTC', '.US') END || 'Z'"
)
_LATEST = f"""
SELECT json_build_object('sensors', coalesce(json_agg(x.doc ORDER BY x.id), '[]'))::text FROM (
    SELECT s.id, json_build_object('id', s.id, 'city', s.city, 'kind', s.kind,
           'values', json_object_agg(l.metric, json_build_object('ts', {_RFC3339}, 'value', l.value) ORDER BY l.metric)
    ) AS doc
    FROM latest_readings l JOIN sensors s ON s.id = l.sensor_id
    WHERE (%(city)s::text IS NULL OR s.city = %(city)s) AND (%(kind)s::text IS NULL OR s.kind = %(kind)s)
    GROUP BY s.id, s.city, s.kind
) x
"""  # noqa: S608 - _RFC3339 is a constant


@API.get(
    "/api/v1/latest",
    summary="Every sensor's latest value per metric, for the wall map (ETag; 304 when unchanged)",
    tag="readings",
    params=[CITY, KIND],
    responses={200: "OK", 304: "Not modified (If-None-Match held the ETag)"},
)
async def latest(request: web.Request) -> web.Response:
    city, kind = CITY.read(request), KIND.read(request)
    async with request.app[STORE].connection() as conn:
        cur = await conn.execute(_LATEST, {"city": city, "kind": kind})
        row = await cur.fetchone()
    return answer_text(request, row[0] if row else '{"sensors": []}', etag=True)


SENSOR_BODY = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "kind": {"type": "string", "enum": ["air", "traffic", "flood", "rain"]},
        "city": {"type": "string"},
        "district": {"type": "string"},
        "name": {"type": "string"},
        "lat": {"type": ["number", "null"]},
        "lon": {"type": ["number", "null"]},
        "metadata": {"type": "object"},
    },
    "required": ["id", "kind", "city"],
    "additionalProperties": False,
}


@API.post(
    "/api/v1/sensors",
    summary="Register a sensor, or change one (by id): its kind, city, place and metadata (audited)",
    tag="registry",
    roles=ENGINEER,
    scope="city",
    body=SENSOR_BODY,
    responses={200: "Changed", 201: "Registered"},
)
async def register_sensor(request: web.Request) -> web.Response:
    body = await json_body(request, SENSOR_BODY)
    try:
        sensor = sensor_from_mapping(body, "body")
    except (ManifestError, SensorMetadataError) as exc:
        fields = ("id", "kind", "city", "district", "name", "lat", "lon", "metadata")
        field = next((f for f in fields if f"'{f}'" in str(exc) or f"{f}:" in str(exc)), "body")
        raise Problem(400, "Bad request", str(exc).removeprefix("body: "), param=field) from None
    visible_city(request, sensor.city)
    store = request.app[STORE]
    async with store.connection() as conn:  # one of another city is not the caller's to change
        cur = await conn.execute("SELECT city FROM sensors WHERE id = %s", (sensor.id,))
        row = await cur.fetchone()
    if row is not None and not principal(request).sees(row[0]):
        raise not_found(f"sensor {sensor.id!r}")
    inserted, _updated = await store.upsert_sensors([sensor], by=acting(request))
    registered = {
        "id": sensor.id, "kind": sensor.kind.value, "city": sensor.city, "district": sensor.district,
        "name": sensor.name, "lat": sensor.lat, "lon": sensor.lon, "metadata": sensor.metadata, "topic": sensor.topic,
    }  # fmt: skip
    return answer(request, registered, status=201 if inserted else 200)
