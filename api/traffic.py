"""Traffic: each counter's flow, speed, occupancy, degree of saturation and level of service.

From each counter's latest count and counting interval (`latest_readings`): flow in pcu/h =
count × pcu_factor × 3600 / interval (`pcu_factor` from the sensor's metadata, default 1.0: every
vehicle a car), degree of saturation = flow / the metadata's `capacity_pcu_h` (PKJI 2023), level of
service by PM 96/2015 (`pantau.indices`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from api.common import TZ, answer, city_or_404, iso, statement_budget
from api.keys import STORE
from api.openapi import API, Param
from pantau.domain import Sensor
from pantau.errors import SensorMetadataError
from pantau.indices import capacity_pcu_h, degree_of_saturation, flow_pcu_h, level_of_service
from pantau.store import views

CITY = Param("city", {"type": "string"}, "city slug, e.g. mojokerto")


def counter_state(sensor: Sensor, latest: dict[str, tuple[datetime, float]], at: datetime) -> dict[str, Any]:
    """One counter's traffic state (the overview reads it too)."""
    state: dict[str, Any] = {
        "sensor": sensor.id, "name": sensor.name, "district": sensor.district,
        "corridor": sensor.metadata.get("corridor"), "ts": None, "since_s": None, "flow_pcu_h": None,
        "speed_kmh": None, "occupancy": None, "capacity_pcu_h": None, "degree_of_saturation": None, "los": None,
    }  # fmt: skip
    if "avg_speed_kmh" in latest:
        state["speed_kmh"] = latest["avg_speed_kmh"][1]
    if "occupancy" in latest:
        state["occupancy"] = latest["occupancy"][1]
    if latest:
        newest = max(ts for ts, _ in latest.values())
        state |= {"ts": newest, "since_s": max(0.0, (at - newest).total_seconds())}
    try:
        capacity = state["capacity_pcu_h"] = capacity_pcu_h(sensor)
    except SensorMetadataError as exc:
        capacity, state["problem"] = None, str(exc)
    if "vehicle_count" in latest and "interval_s" in latest:
        factor = sensor.metadata.get("pcu_factor", 1.0)
        flow = flow_pcu_h(latest["vehicle_count"][1], latest["interval_s"][1],
                          pcu_factor=float(factor) if isinstance(factor, int | float) else 1.0)  # fmt: skip
        state["flow_pcu_h"] = flow
        if capacity is not None:
            ds = degree_of_saturation(flow, capacity)
            state |= {"degree_of_saturation": ds, "los": level_of_service(ds).value}
    return state


async def counter_states(request: web.Request, counters: list[Sensor], at: datetime) -> list[dict[str, Any]]:
    async with request.app[STORE].connection() as conn, statement_budget(conn):
        latest = await views.latest(conn, [c.id for c in counters])
    return [counter_state(c, latest.get(c.id, {}), at) for c in counters]


@API.get(
    "/api/v1/traffic/corridors",
    summary="Each traffic counter's flow, speed, occupancy, degree of saturation and level of service",
    tag="traffic",
    params=[CITY, TZ],
)
async def get_corridors(request: web.Request) -> web.Response:
    city, local, at = CITY.read(request), TZ.read(request) == "local", datetime.now(UTC)
    if city is not None:
        await city_or_404(request, city)
    zones = {c.id: c.zone for c in await request.app[STORE].cities()} if local else {}
    counters = await request.app[STORE].sensors(city=city, kind="traffic")
    states = await counter_states(request, counters, at)
    return answer(request, {"at": iso(at), "counters": [
        s | {"ts": iso(s["ts"], zones.get(c.city))} for c, s in zip(counters, states, strict=True)]})  # fmt: skip
