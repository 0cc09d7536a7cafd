"""The live stream (`/api/v1/stream`): Server-Sent Events of a city's alert events, latest values and
sensor status changes, for the operator screen.

One `Hub` per API process holds one database connection that LISTENs to committed alert events
(`pantau_alerts`) and ingest batches (`pantau_batches`), and fans them out to every connected
client: no polling per client.

- **Alert events** go out in commit order, each with its `alert_events` id as the SSE id (the ids
  are in commit order, `pantau.alerts.EVENTS_LOCK`). A client that reconnects with `Last-Event-ID`
  gets every event after that id from the table before the live ones, none twice; when more
  events than can be replayed have passed (or the id is not one of this database), it gets a
  `reset` event telling it to reload, never a silent gap.
- **Latest values** are coalesced per sensor and metric and go out at most once a second.
- **Status** changes (offline, back, stuck, rejected) are checked every few seconds.
- A `heartbeat` every 15 s, so a screen can tell a quiet city from a dead connection.

Each client has a bounded queue of alert events and coalesced values: a slow client never holds up
the hub or the others. When its alert events would overflow, it is sent `reset` and disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from aiohttp import web

from api.access import principal
from api.common import iso
from api.keys import SETTINGS, STORE
from api.openapi import API, Param
from api.problems import bad_param
from pantau.alerts import ALERTS_CHANNEL
from pantau.outbox import BATCHES_CHANNEL
from pantau.store import Store, views

log = logging.getLogger(__name__)

KINDS = ("air", "traffic", "flood", "rain")
HEARTBEAT_S = 15.0
VALUES_EVERY_S = 1.0
STATUS_EVERY_S = 5.0
# The socket send buffer of a stream (the kernel doubles it): a few seconds of a busy city's events.
SEND_BUFFER = 64 * 1024
_RECONNECT_MAX_S = 5.0
LARGE_FRAME = 500  # values in one event past which it is encoded in a worker thread


def frame(event: str, data: Any, event_id: int | None = None) -> bytes:
    """One SSE frame (`data` as one line of JSON)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


@dataclass(eq=False)
class Client:
    """One connected screen: its filter, its queue of alert events and what is pending for it."""

    city: str
    kinds: frozenset[str]
    queue: int  # alert events it may have waiting: past that it is behind beyond catching up live
    alerts: asyncio.Queue[tuple[int, bytes]] = field(init=False)
    values: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # coalesced
    statuses: list[dict[str, Any]] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    reset: str | None = None  # why it must reload: sent, then the stream ends

    def __post_init__(self) -> None:
        self.alerts = asyncio.Queue(self.queue)

    def wants(self, city: str | None, kind: str | None) -> bool:
        return city == self.city and (kind is None or kind in self.kinds)

    def offer_alert(self, event_id: int, data: bytes) -> None:
        if self.reset is not None:
            return  # leaving: it reloads everything anyway
        try:
            self.alerts.put_nowait((event_id, data))
        except asyncio.QueueFull:  # reset and disconnect rather than drop an alert event
            self.reset = "this screen fell behind the alert events: reload"
        self.wake.set()


class Hub:
    """The API process's one listener, and its clients."""

    def __init__(self, store: Store, url: str, *, replay_max: int, client_queue: int, write_timeout_s: float) -> None:
        self.store, self.url, self.replay_max = store, url, replay_max
        self.client_queue, self.write_timeout_s = client_queue, write_timeout_s
        self.clients: set[Client] = set()
        self._sensors: dict[str, tuple[str, str]] = {}  # id -> (city, kind)
        self._sensors_at = 0.0
        self._latest: dict[tuple[str, str], datetime] = {}
        self._status: dict[str, str] = {}
        self._batches = asyncio.Event()
        self.listening = asyncio.Event()

    # -- the listener -----------------------------------------------------------------------------

    async def run(self) -> None:
        """LISTEN, fan out, and the value and status tickers; reconnects after a database loss."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._listen())
            tasks.create_task(self._values())
            tasks.create_task(self._statuses())

    async def _listen(self) -> None:
        backoff = 0.2
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {ALERTS_CHANNEL}")
                    await conn.execute(f"LISTEN {BATCHES_CHANNEL}")
                    if self.listening.is_set():  # reconnected: notifications meanwhile are lost to us
                        for client in list(self.clients):  # the clients resume from the table instead
                            client.reset = client.reset or "the server lost its database for a moment: reconnect"
                            client.wake.set()
                    self.listening.set()
                    backoff = 0.2
                    async for note in conn.notifies():
                        if note.channel == ALERTS_CHANNEL:
                            await self._alert(note.payload)
                        else:
                            self._batches.set()
            except psycopg.OperationalError as exc:
                log.warning("stream: database connection lost (%s); reconnecting", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _RECONNECT_MAX_S)

    async def _alert(self, payload: str) -> None:
        try:
            doc = json.loads(payload)
            event_id = int(doc["event"]["id"])
        except (ValueError, KeyError, TypeError):
            log.error("stream: an alert notification pantau cannot read: %.200s", payload)
            return
        alert = doc["alert"]
        kind = (await self.sensor(alert.get("sensor_id")))[1] if alert.get("sensor_id") else None
        data = frame("alert", {"alert": alert, "event": doc["event"]}, event_id)
        for client in self.clients:
            if client.wants(alert.get("city"), kind):
                client.offer_alert(event_id, data)

    async def sensor(self, sensor_id: str) -> tuple[str | None, str | None]:
        """A sensor's (city, kind), from a registry cache refreshed on a miss (at most every 5 s)."""
        found = self._sensors.get(sensor_id)
        if found is None and time.monotonic() - self._sensors_at > 5.0:
            await self._load_sensors()
            found = self._sensors.get(sensor_id)
        return found if found is not None else (None, None)

    async def _load_sensors(self) -> None:
        async with self.store.connection() as conn:
            cur = await conn.execute("SELECT id, city, kind FROM sensors")
            self._sensors = {row[0]: (row[1], row[2]) for row in await cur.fetchall()}
        self._sensors_at = time.monotonic()

    def _cities(self) -> list[str]:
        return sorted({c.city for c in self.clients})

    # -- values and statuses ----------------------------------------------------------------------

    async def _values(self) -> None:
        """Each second that ingest committed something: the latest values that changed, coalesced
        per sensor and metric into each watching client's pending set."""
        while True:
            await self._batches.wait()
            self._batches.clear()
            cities = self._cities()
            if cities:
                with contextlib.suppress(psycopg.Error):
                    await self._changed_values(cities)
            await asyncio.sleep(VALUES_EVERY_S)

    async def _changed_values(self, cities: list[str]) -> None:
        watching: dict[str, list[Client]] = {}  # a city's clients: a value is offered to those only
        for client in self.clients:
            watching.setdefault(client.city, []).append(client)
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "SELECT l.sensor_id, s.city, s.kind, l.metric, l.ts, l.value FROM latest_readings l"
                " JOIN sensors s ON s.id = l.sensor_id WHERE s.city = ANY(%s)",
                (cities,),
            )
            # A 10,000-sensor city's second in slices of rows: alert events go out between them.
            while rows := await cur.fetchmany(1000):
                for sensor_id, city, kind, metric, ts, value in rows:
                    key = (sensor_id, metric)
                    if self._latest.get(key) == ts:
                        continue
                    self._latest[key] = ts
                    update = {"sensor": sensor_id, "metric": metric, "ts": iso(ts), "value": value}
                    for client in watching.get(city, ()):
                        if kind in client.kinds:
                            client.values[key] = update
                            client.wake.set()
                await asyncio.sleep(0)

    async def _statuses(self) -> None:
        while True:
            await asyncio.sleep(STATUS_EVERY_S)
            cities = self._cities()
            if cities:
                with contextlib.suppress(psycopg.Error):
                    await self._changed_statuses(cities)

    async def _changed_statuses(self, cities: list[str]) -> None:
        async with self.store.connection() as conn:
            cur = await conn.execute("SELECT id, city, kind, last_seen FROM sensors WHERE city = ANY(%s)", (cities,))
            rows = await cur.fetchall()
            now = datetime.now(UTC)
            status = await views.statuses(conn, {r[0]: r[3] for r in rows}, now)
        for sensor_id, city, kind, _seen in rows:
            new = status.get(sensor_id, "ok")
            was = self._status.get(sensor_id)
            self._status[sensor_id] = new
            if was is None or was == new:
                continue  # the first look is the baseline a screen loaded; only changes go out
            change = {"sensor": sensor_id, "status": new, "was": was, "at": iso(now)}
            for client in self.clients:
                if client.wants(city, kind):
                    client.statuses.append(change)
                    client.wake.set()

    # -- replay -----------------------------------------------------------------------------------

    async def newest_event(self) -> int:
        async with self.store.connection() as conn:
            cur = await conn.execute("SELECT coalesce(max(id), 0) FROM alert_events")
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def replay(self, client: Client, after: int) -> list[tuple[int, bytes]] | str:
        """The client's alert events after `after`, from the table; or why it must reload instead."""
        newest = await self.newest_event()
        if after > newest:
            return f"event {after} is not one of this server's (its newest is {newest})"
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "SELECT e.id, to_jsonb(a) AS alert, to_jsonb(e) - 'alert_id' AS event, s.kind"
                " FROM alert_events e JOIN alerts a ON a.id = e.alert_id LEFT JOIN sensors s ON s.id = a.sensor_id"
                " WHERE e.id > %s ORDER BY e.id LIMIT %s",
                (after, self.replay_max + 1),
            )
            rows = await cur.fetchall()
        if len(rows) > self.replay_max:
            return f"more than {self.replay_max} alert events since event {after}: reload"
        out = []
        for event_id, alert, event, kind in rows:
            if client.wants(alert.get("city"), kind):
                doc = {"alert": alert, "event": event, "replayed": True}
                out.append((int(event_id), frame("alert", doc, event_id)))
        return out


CITY = Param("city", {"type": "string"}, "city slug", required=True)
KINDS_PARAM = Param("kinds", {"type": "string"}, "sensor kinds, comma-separated (default: all)")
LAST_ID = Param("last_event_id", {"type": "integer", "minimum": 0},
                "resume after this alert event (as the Last-Event-ID header does)")  # fmt: skip


def _kinds(raw: str | None) -> frozenset[str]:
    if raw is None:
        return frozenset(KINDS)
    chosen = frozenset(k.strip() for k in raw.split(",") if k.strip())
    unknown = sorted(chosen - set(KINDS))
    if unknown or not chosen:
        raise bad_param("kinds", f"some of {', '.join(KINDS)}, comma-separated; got {raw!r}")
    return chosen


def _last_id(request: web.Request) -> int | str | None:
    header = request.headers.get("Last-Event-ID")
    if header is None:
        found: int | None = LAST_ID.read(request)
        return found
    try:
        value = int(header)
    except ValueError:
        return f"Last-Event-ID {header[:40]!r} is not an event of this server"
    return value if value >= 0 else f"Last-Event-ID {value} is not an event of this server"


@API.get(
    "/api/v1/stream",
    summary="Live: a city's alert events (resumable by Last-Event-ID), latest values, status changes (SSE)",
    tag="live",
    params=[CITY, KINDS_PARAM, LAST_ID],
    media=("text/event-stream",),
)
async def stream(request: web.Request) -> web.StreamResponse:
    principal(request)
    city, kinds, last = CITY.read(request), _kinds(KINDS_PARAM.read(request)), _last_id(request)
    hub = request.app[HUB]
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    sock = request.transport.get_extra_info("socket") if request.transport is not None else None
    if sock is not None:  # what the kernel holds for a screen that stopped reading is bounded too
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
    await response.prepare(request)
    client = Client(city, kinds, hub.client_queue)
    hub.clients.add(client)  # live events queue from now on; the replay below fills what came before

    async def write(data: bytes) -> None:
        """A write the client must take within the timeout: a screen that stopped reading is cut off
        (its queue bounded meanwhile), never waited for."""
        try:
            await asyncio.wait_for(response.write(data), hub.write_timeout_s)
        except TimeoutError:
            if request.transport is not None:
                request.transport.abort()
            raise ConnectionResetError("the client stopped reading") from None

    try:
        sent = await _start(write, hub, client, last)
        if sent is not None:
            await _pump(write, client, sent)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        hub.clients.discard(client)
    return response


Write = Callable[[bytes], Awaitable[None]]


async def _start(write: Write, hub: Hub, client: Client, last: int | str | None) -> int | None:
    """The hello (or the replay from `last`); the newest alert event id the client has, or None when
    it was told to reset."""
    if isinstance(last, str):
        await write(frame("reset", {"reason": last}))
        return None
    if last is None:
        newest = await hub.newest_event()
        await write(frame("hello", {"newest_event": newest, "at": iso(datetime.now(UTC))}, newest))
        return newest
    replayed = await hub.replay(client, last)
    if isinstance(replayed, str):
        await write(frame("reset", {"reason": replayed}))
        return None
    sent = last
    for event_id, data in replayed:
        await write(data)
        sent = event_id
    hello = {"newest_event": sent, "replayed": len(replayed), "at": iso(datetime.now(UTC))}
    await write(frame("hello", hello))
    return sent


async def _pump(write: Write, client: Client, sent: int) -> None:
    """Write what is pending for the client as it comes: alert events (those after `sent`), then
    coalesced values and status changes; a heartbeat when quiet."""
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(client.wake.wait(), HEARTBEAT_S)
        client.wake.clear()
        if client.reset is not None:
            await write(frame("reset", {"reason": client.reset}))
            return
        chunks: list[bytes] = []
        while not client.alerts.empty():
            event_id, data = client.alerts.get_nowait()
            if event_id > sent:  # those replayed already are not sent twice
                chunks.append(data)
                sent = event_id
        if client.values:
            values, client.values = list(client.values.values()), {}
            if len(values) > LARGE_FRAME:  # a big city's second of values: encoded off the event loop
                chunks.append(await asyncio.to_thread(frame, "values", {"values": values}))
            else:
                chunks.append(frame("values", {"values": values}))
        if client.statuses:
            statuses, client.statuses = client.statuses, []
            chunks.append(frame("status", {"changes": statuses}))
        if not chunks:
            chunks.append(frame("heartbeat", {"at": iso(datetime.now(UTC))}))
        await write(b"".join(chunks))


HUB = web.AppKey("hub", Hub)


async def hub_ctx(app: web.Application) -> AsyncIterator[None]:
    """The hub for the application's life (after the store's context)."""
    settings = app[SETTINGS]
    hub = Hub(
        app[STORE], app[STORE].url, replay_max=settings.api_stream_replay_max,
        client_queue=settings.api_stream_client_queue, write_timeout_s=settings.api_stream_write_timeout_s,
    )  # fmt: skip
    app[HUB] = hub
    task = asyncio.create_task(hub.run(), name="stream-hub")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

