"""Health: `/healthz` (the process answers), `/readyz` (the database and the broker are reachable,
and readings are arriving: each check with its figure)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from api.common import answer
from api.keys import SETTINGS, STORE
from api.openapi import API
from pantau.errors import StoreUnavailable
from pantau.mqtt import BrokerAddress

# How long each readiness check may take before it counts as failed.
_CHECK_TIMEOUT_S = 2.0


@API.get("/healthz", summary="The API process answers", tag="health")
async def healthz(request: web.Request) -> web.Response:
    return answer(request, {"status": "ok"})


async def _database(request: web.Request) -> dict[str, Any]:
    started = time.monotonic()
    async with request.app[STORE].connection() as conn:
        cur = await conn.execute("SELECT max(ts) FROM latest_readings")
        row = await cur.fetchone()
    newest: datetime | None = row[0] if row else None
    return {
        "ok": True,
        "ms": round((time.monotonic() - started) * 1000, 1),
        "newest_reading_age_s": None if newest is None else round((datetime.now(UTC) - newest).total_seconds(), 1),
    }


async def _broker(url: str | None) -> dict[str, Any]:
    if url is None:
        return {"ok": False, "detail": "PANTAU_MQTT_URL is not set"}
    address = BrokerAddress.parse(url)
    started = time.monotonic()
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(address.host, address.port), _CHECK_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        return {"ok": False, "detail": f"{address.host}:{address.port}: {exc or 'timed out'}"}
    writer.close()
    return {"ok": True, "ms": round((time.monotonic() - started) * 1000, 1)}


@API.get(
    "/readyz",
    summary="Ready to serve: the database and the broker reachable (503 naming what is not)",
    tag="health",
    responses={200: "Ready", 503: "Not ready"},
)
async def readyz(request: web.Request) -> web.Response:
    try:
        database = await asyncio.wait_for(_database(request), _CHECK_TIMEOUT_S)
    except (StoreUnavailable, TimeoutError) as exc:
        database = {"ok": False, "detail": str(exc) or "timed out"}
    broker = await _broker(request.app[SETTINGS].mqtt_url)
    ready = database["ok"] and broker["ok"]
    return answer(request, {"ready": ready, "database": database, "broker": broker}, status=200 if ready else 503)
