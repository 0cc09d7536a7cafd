"""What every handler shares: JSON out (times in UTC with Z, or a city's offset), and the body of a POST."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web
from psycopg import AsyncConnection

from api.keys import STORE
from api.openapi import Param
from api.problems import bad_param, not_found
from pantau.domain import City

# Every route that answers times takes this: UTC with Z, or the city's own offset.
TZ = Param("tz", {"type": "string", "enum": ["utc", "local"], "default": "utc"}, "times in UTC (Z) or the city's zone")


def iso(when: datetime | None, zone: ZoneInfo | None = None) -> str | None:
    """RFC 3339: UTC with Z, or in `zone` with its offset."""
    if when is None:
        return None
    if zone is None:
        return when.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return when.astimezone(zone).isoformat()


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def body_of(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, default=_default).encode()


def answer(request: web.Request, data: Any, *, etag: bool = False, status: int = 200) -> web.Response:
    """`data` as JSON; with `etag`, a strong ETag and 304 when the client has it already."""
    return _respond(request, body_of(data), etag=etag, status=status)


async def answer_large(request: web.Request, data: Any) -> web.Response:
    """`data` as JSON, encoded in a worker thread: an answer of thousands of rows (a 10,000-station
    city) does not hold the event loop, and with it the live stream's alert events, meanwhile."""
    return _respond(request, await asyncio.to_thread(body_of, data), etag=False, status=200)


def answer_text(request: web.Request, text: str, *, etag: bool = False) -> web.Response:
    """A JSON document already written (by PostgreSQL), answered as `answer` answers."""
    return _respond(request, text.encode(), etag=etag, status=200)


def _respond(request: web.Request, body: bytes, *, etag: bool, status: int) -> web.Response:
    headers = {}
    if etag:
        tag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
        headers["ETag"] = tag
        if tag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


async def json_body(request: web.Request, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """The request's JSON object body; with `schema`, a field it does not name is refused when it
    says `additionalProperties: false` (a misspelt field must not be ignored)."""
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise bad_param("body", "a JSON object") from None
    if not isinstance(data, dict):
        raise bad_param("body", "a JSON object")
    for key, value in data.items():  # PostgreSQL text cannot hold NUL
        if "\x00" in key or (isinstance(value, str) and "\x00" in value):
            raise bad_param(key.replace("\x00", "\\x00"), "text without NUL characters")
    if schema is not None and schema.get("additionalProperties") is False:
        unknown = [key for key in data if key not in schema.get("properties", {})]
        if unknown:
            raise bad_param(unknown[0], f"a field of this body ({', '.join(schema.get('properties', {}))})")
    return data


# Every statement a request makes runs under `Settings.api_statement_timeout_ms`, set on the API's
# pool: past it, a 422 with a hint (the `problems` middleware turns a cancelled statement into one),
# never a worker held for minutes. `statement_budget` is a transaction for a handler's several reads.


@asynccontextmanager
async def statement_budget(conn: AsyncConnection) -> AsyncIterator[None]:
    """One transaction for a handler's reads (under the pool's statement budget)."""
    async with conn.transaction():
        yield


async def city_or_404(request: web.Request, city_id: str) -> City:
    """The registry's city `city_id`, or a 404 naming it."""
    for city in await request.app[STORE].cities():
        if city.id == city_id:
            return city
    raise not_found(f"city {city_id!r}")


class Recent:
    """Answers computed at most once per `ttl_s` for each key, the requests meanwhile sharing that
    computation (a wall of screens polling one city's overview costs one computation a second)."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[Hashable, tuple[float, asyncio.Future[Any]]] = {}

    async def get(self, key: Hashable, compute: Callable[[], Awaitable[Any]]) -> Any:
        now = time.monotonic()
        entry = self._entries.get(key)
        if entry is None or entry[0] <= now:
            if len(self._entries) > 1000:  # keys are cities: never many; a bound all the same
                self._entries = {k: e for k, e in self._entries.items() if e[0] > now}
            entry = (now + self.ttl_s, asyncio.ensure_future(compute()))
            self._entries[key] = entry
        try:
            return await asyncio.shield(entry[1])
        except Exception:
            if self._entries.get(key) is entry:  # the next request computes afresh
                del self._entries[key]
            raise
