"""Health: `/healthz` (the process answers), `/readyz` (the database and the broker reachable,
ingest and the rules keeping up: each check with its figure and its limit), `/metrics` (api.telemetry).

- ingest: the newest committed reading's age, at most `INGEST_MAX_AGE_S` (the default pack's
  offline time: a whole city silent that long means ingest, or the broker's side, is down). No
  reading yet (a new installation) is not a failure.
- rules: the oldest committed batch no rule worker has claimed, at most `RULES_MAX_LAG_S` behind.
"""

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
INGEST_MAX_AGE_S = 900.0
RULES_MAX_LAG_S = 60.0


@API.get("/healthz", summary="The API process answers", tag="health", roles=None)
async def healthz(request: web.Request) -> web.Response:
    return answer(request, {"status": "ok"})


async def _database(request: web.Request) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The database's check, and ingest's and the rules' figures read from it."""
    started = time.monotonic()
    async with request.app[STORE].connection() as conn:
        cur = await conn.execute(
            "SELECT (SELECT max(ts) FROM latest_readings),"
            " (SELECT created_at FROM ingest_batches WHERE claim IS NULL ORDER BY id LIMIT 1), now()"
        )
        row = await cur.fetchone()
    newest, waiting, now = row if row else (None, None, datetime.now(UTC))
    database = {"ok": True, "ms": round((time.monotonic() - started) * 1000, 1)}
    age = None if newest is None else round(max(0.0, (now - newest).total_seconds()), 1)
    ingest = {"ok": age is None or age <= INGEST_MAX_AGE_S, "newest_reading_age_s": age, "limit_s": INGEST_MAX_AGE_S}
    lag = 0.0 if waiting is None else round(max(0.0, (now - waiting).total_seconds()), 1)
    rules = {"ok": lag <= RULES_MAX_LAG_S, "oldest_unevaluated_batch_s": lag, "limit_s": RULES_MAX_LAG_S}
    return database, ingest, rules


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
    summary="Ready: database and broker reachable, ingest and rules keeping up (503 naming what is not)",
    tag="health",
    roles=None,
    responses={200: "Ready", 503: "Not ready"},
    plain_errors=True,
)
async def readyz(request: web.Request) -> web.Response:
    try:
        database, ingest, rules = await asyncio.wait_for(_database(request), _CHECK_TIMEOUT_S)
    except (StoreUnavailable, TimeoutError) as exc:
        database = {"ok": False, "detail": str(exc) or "timed out"}
        ingest = rules = {"ok": False, "detail": "the database is not reachable"}
    broker = await _broker(request.app[SETTINGS].mqtt_url)
    checks = {"database": database, "broker": broker, "ingest": ingest, "rules": rules}
    ready = all(c["ok"] for c in checks.values())
    return answer(request, {"ready": ready} | checks, status=200 if ready else 503)
