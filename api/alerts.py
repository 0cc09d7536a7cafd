"""Alerts: the list the operators work from, one alert's timeline, and their actions (acknowledge,
resolve, silence, end a silence), through the kernel's alert domain (`pantau.alerts`), the same
code the CLI uses. Every action records who made it and their note."""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from api.access import acting, principal, visible_city, visible_sensor
from api.common import answer, json_body
from api.keys import ALERTS, STORE
from api.openapi import API, OPERATE, Param
from api.problems import bad_param, not_found
from pantau.alerts import Alert, Transition

LIMIT = Param("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}, "alerts per page")
CURSOR = Param("cursor", {"type": "string"}, "the next_cursor of the page before")
ALERT_ID = Param("alert", {"type": "integer"}, "alert id", where="path")
NOTE = {"type": "object", "properties": {"note": {"type": "string"}}, "additionalProperties": False}


def _cursor(alert: Alert) -> str:
    raw = json.dumps([alert.opened_at.isoformat(), alert.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _after(cursor: str | None) -> tuple[datetime, int] | None:
    if cursor is None:
        return None
    try:
        at, alert_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(at), int(alert_id)
    except (ValueError, TypeError):
        raise bad_param("cursor", "the next_cursor of an earlier page") from None


@API.get(
    "/api/v1/alerts",
    summary="Alerts, newest first, filtered; paged by cursor",
    tag="alerts",
    params=[
        Param(
            "state",
            {"type": "string", "enum": ["active", "open", "acknowledged", "resolved", "all"], "default": "active"},
            "active is open or acknowledged",
        ),
        Param("city", {"type": "string"}, "city slug"),
        Param("severity", {"type": "string", "enum": ["info", "warning", "critical"]}, "severity"),
        Param("rule", {"type": "string"}, "rule id"),
        Param("sensor", {"type": "string"}, "sensor id"),
        LIMIT,
        CURSOR,
    ],
)
async def list_alerts(request: web.Request) -> web.Response:
    q = {p.name: p.read(request) for p in next(o for o in API.operations if o.handler is list_alerts).params}
    limit = int(q["limit"])
    alerts = await request.app[ALERTS].list_alerts(
        state=q["state"], city=q["city"], severity=q["severity"], rule_id=q["rule"], sensor_id=q["sensor"],
        before=_after(q["cursor"]), limit=limit + 1,
    )  # fmt: skip
    page = alerts[:limit]
    more = len(alerts) > limit
    return answer(request, {"alerts": [a.to_json() for a in page], "next_cursor": _cursor(page[-1]) if more else None})


async def _alert(request: web.Request) -> Alert:
    alert_id = ALERT_ID.read(request)
    alert = await request.app[ALERTS].get(alert_id)
    if alert is None or not principal(request).sees(alert.city):
        raise not_found(f"alert {alert_id}")
    return alert


@API.get("/api/v1/alerts/{alert}", summary="One alert with its whole event timeline", tag="alerts", params=[ALERT_ID])
async def get_alert(request: web.Request) -> web.Response:
    alert = await _alert(request)
    events = await request.app[ALERTS].events(alert.id)
    return answer(request, alert.to_json() | {"events": [e.to_json() for e in events]})


def _note(body: dict[str, Any]) -> str:
    note = body.get("note", "")
    if not isinstance(note, str):
        raise bad_param("note", "a string")
    return note


@API.post(
    "/api/v1/alerts/{alert}/ack",
    summary="Acknowledge an alert: someone is on it (the caller, recorded with the note)",
    tag="alerts",
    roles=OPERATE,
    params=[ALERT_ID],
    body=NOTE,
)
async def ack_alert(request: web.Request) -> web.Response:
    return await _act(request, request.app[ALERTS].acknowledge)


@API.post(
    "/api/v1/alerts/{alert}/resolve",
    summary="Resolve an alert by hand (the caller, recorded with the note)",
    tag="alerts",
    roles=OPERATE,
    params=[ALERT_ID],
    body=NOTE,
)
async def resolve_alert(request: web.Request) -> web.Response:
    return await _act(request, request.app[ALERTS].resolve_by_id)


async def _act(request: web.Request, action: Callable[..., Awaitable[Transition]]) -> web.Response:
    """An alert action of the kernel's alert store, by the request's actor, with its note; answers
    the outcome and the alert as it is now."""
    alert = await _alert(request)
    who, note = acting(request), _note(await json_body(request, NOTE))
    transition = await action(alert.id, who, reason=note)
    return answer(request, {"outcome": transition.outcome.value, "alert": (await _alert(request)).to_json()})


SILENCE_BODY = {
    "type": "object",
    "properties": {
        "sensor": {"type": "string"},
        "city": {"type": "string"},
        "district": {"type": "string"},
        "rule": {"type": "string"},
        "minutes": {"type": "integer", "minimum": 1, "maximum": 43200},
        "note": {"type": "string"},
    },
    "required": ["minutes", "note"],
    "additionalProperties": False,
}


@API.get("/api/v1/silences", summary="Silences in force now", tag="alerts")
async def list_silences(request: web.Request) -> web.Response:
    silences = await request.app[ALERTS].silences(active_at=datetime.now(UTC))
    who = principal(request)
    if who.cities is not None:  # a scoped caller sees the silences of their cities only
        cities = await _silence_cities(request, [s.id for s in silences])
        silences = [s for s in silences if who.sees(cities.get(s.id))]
    return answer(request, {"silences": [s.to_json() for s in silences]})


async def _silence_cities(request: web.Request, ids: list[int]) -> dict[int, str]:
    """The city of each silence: its own, or its sensor's."""
    async with request.app[STORE].connection() as conn:
        cur = await conn.execute(
            "SELECT s.id, coalesce(s.city, se.city) FROM silences s LEFT JOIN sensors se ON se.id = s.sensor_id"
            " WHERE s.id = ANY(%s)",
            (ids,),
        )
        return {row[0]: row[1] for row in await cur.fetchall()}


@API.post(
    "/api/v1/silences",
    summary="Hold back notifications for a sensor, or a city or district, for some minutes (still recorded)",
    tag="alerts",
    roles=OPERATE,
    scope="city",
    body=SILENCE_BODY,
    responses={201: "Created"},
)
async def add_silence(request: web.Request) -> web.Response:
    body = await json_body(request, SILENCE_BODY)
    who = acting(request)
    for field in ("sensor", "city", "district", "rule"):
        if field in body and not isinstance(body[field], str):
            raise bad_param(field, "a string")
    sensor, city = body.get("sensor"), body.get("city")
    if (sensor is None) == (city is None):
        raise bad_param("sensor", "a sensor, or else a city (with a district, if any)")
    minutes = body.get("minutes")
    if not isinstance(minutes, int) or isinstance(minutes, bool) or not 1 <= minutes <= 43200:
        raise bad_param("minutes", "an integer from 1 to 43200 (30 days)")
    note = _note(body)
    if not note.strip():
        raise bad_param("note", "why (maintenance, a known fault, ...)")
    await _exists(request, "sensors", "sensor", sensor)
    await _exists(request, "cities", "city", city)
    if sensor is not None:
        await visible_sensor(request, sensor)
    visible_city(request, city)
    now = datetime.now(UTC)
    silence = await request.app[ALERTS].add_silence(
        sensor_id=sensor, city=city, district=body.get("district"), rule_id=body.get("rule"),
        starts_at=now, ends_at=now + timedelta(minutes=minutes), created_by=who, comment=note,
    )  # fmt: skip
    return answer(request, silence.to_json(), status=201)


async def _exists(request: web.Request, table: str, field: str, value: Any) -> None:
    """A silence names a registered sensor or city, or it would silence nothing."""
    if value is None:
        return
    if not isinstance(value, str) or not value or "\x00" in value:
        raise bad_param(field, f"a {field} id")
    async with request.app[STORE].connection() as conn:
        cur = await conn.execute(f"SELECT 1 FROM {table} WHERE id = %s", (value,))  # noqa: S608 - one of two tables
        if await cur.fetchone() is None:
            raise not_found(f"{field} {value!r}")


@API.post(
    "/api/v1/silences/{silence}/end",
    summary="End a silence now (maintenance finished early; the caller is recorded)",
    tag="alerts",
    roles=OPERATE,
    params=[Param("silence", {"type": "integer"}, "silence id", where="path")],
    body={"type": "object"},
)
async def end_silence(request: web.Request) -> web.Response:
    silence_id = Param("silence", {"type": "integer"}, "", where="path").read(request)
    await json_body(request)  # an object (may be empty); anything else is a mistake to name
    if not principal(request).sees((await _silence_cities(request, [silence_id])).get(silence_id)):
        raise not_found(f"silence {silence_id} in force")
    ended = await request.app[ALERTS].end_silence(silence_id, acting(request))
    if ended is None:
        raise not_found(f"silence {silence_id} in force")
    return answer(request, ended.to_json())
