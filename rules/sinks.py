"""Where the alert notifier (rules.notify) delivers alert events: the `Sink` protocol, the unit it
delivers (`Delivery`) and what became of it (`Delivered`), and the two sinks.

    MqttSink     each event on `pantau/v1/{city}/alerts` (QoS 1), and per city a retained snapshot
                 of its open alerts on `pantau/v1/{city}/alerts/open`; the cursor waits for PUBACKs
    WebhookSink  each event POSTed as JSON with `Idempotency-Key: pantau-alert-event-<id>`,
                 retried with backoff (and `Retry-After`) while the receiver may still take it

`make_sinks(store, settings)` builds the ones the settings ask for. A sink is opened with
`async with` and given events in commit order; the notifier gives each its own queue, task and
cursor, so a sink that is down holds up no other.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import random
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from enum import StrEnum
from types import TracebackType
from typing import Any, Protocol, Self

import aiohttp
import paho.mqtt.client as paho
import psycopg
from paho.mqtt.reasoncodes import ReasonCode
from psycopg.rows import dict_row

from pantau.alerts import NOTIFY_PAYLOAD_VERSION, Alert, AlertEvent, Notification, notify_payload
from pantau.domain import valid_city
from pantau.errors import StoreError
from pantau.mqtt import AsyncMqttClient, BrokerAddress
from pantau.settings import Settings
from pantau.store import Store
from pantau.topics import alerts_topic, open_alerts_topic

__all__ = [
    "Delivered",
    "Delivery",
    "MqttSink",
    "Sink",
    "SinkStats",
    "WebhookSink",
    "finish_tasks",
    "idempotency_key",
    "make_sinks",
]

# The notifier's log (docs/alerts.md names it): a sink's lines are the notifier's, under one name.
log = logging.getLogger("rules.notify")

# MQTT: at most one retained snapshot per city this often; the last one of a burst always follows.
_SNAPSHOT_INTERVAL_S = 0.15
# MQTT: QoS 1 publishes awaiting PUBACK. paho's default window is 20 messages, which over a WAN
# link caps a burst at 20 per round trip; beyond our own bound the lane waits (and, if the broker
# stays away, its queue overflows into a re-read) instead of growing paho's queue without end.
_MQTT_INFLIGHT = 1000
_MQTT_PENDING_MAX = 5000
_MQTT_WAIT_S = 0.05
# MQTT: on shutdown, wait this long for outstanding PUBACKs so that the cursor can include them.
_MQTT_DRAIN_S = 1.0
# MQTT: snapshots are published at start for the cities of sensors, of open alerts and of alerts
# changed in the last day (a resolve whose snapshot was cut short by a crash is corrected on start).

# Webhook: the first retry waits this long, doubling up to [rules] webhook_backoff_max_s.
_WEBHOOK_BACKOFF_START_S = 1.0
# Webhook: a Retry-After longer than this is taken as this (events behind it wait in order).
_RETRY_AFTER_MAX_S = 900.0
_WEBHOOK_RETRY_STATUS = frozenset({408, 429})
# Webhook: this much of a refusing response's body goes into the log line.
_WEBHOOK_BODY_LOG_CHARS = 200

_USER_AGENT = "pantau-notifier/1"


def idempotency_key(event_id: int) -> str:
    """The webhook's `Idempotency-Key` for an event: stable across retries and restarts."""
    return f"pantau-alert-event-{event_id}"


# -- what is delivered -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivery:
    """One alert event to deliver: the NOTIFY payload JSON and what routing needs from it."""

    event_id: int
    alert_id: int
    city: str
    kind: str
    notification: Notification
    payload: str

    @classmethod
    def from_payload(cls, payload: str) -> Delivery:
        """Parse a `NOTIFY pantau_alerts` payload (raises ValueError, KeyError or TypeError if malformed)."""
        data = json.loads(payload)
        if data["v"] != NOTIFY_PAYLOAD_VERSION:
            raise ValueError(f"payload version {data['v']!r}, expected {NOTIFY_PAYLOAD_VERSION}")
        alert, event = data["alert"], data["event"]
        return cls(
            int(event["id"]),
            int(alert["id"]),
            str(alert["city"]),
            str(event["kind"]),
            Notification(event["notification"]),
            payload,
        )

    @classmethod
    def of(cls, alert: Alert, event: AlertEvent) -> Delivery:
        """The delivery of an event read from the table (payload built as the NOTIFY's is)."""
        return cls(event.id, alert.id, alert.city, event.kind.value, event.notification, notify_payload(alert, event))

    def describe(self) -> str:
        return f"event {self.event_id} (alert {self.alert_id} {self.kind}, {self.city})"


class Delivered(StrEnum):
    """What became of one event at one sink."""

    SENT = "sent"
    HELD_BACK = "held_back"  # silenced or flapping: recorded, not sent
    FAILED = "failed"  # refused for good (e.g. a webhook's 400): logged, and the sink moved on


@dataclass(slots=True)
class SinkStats:
    """Counters of one sink since start."""

    sent: int = 0
    held_back: int = 0
    failed: int = 0
    retried: int = 0  # attempts after the first (webhook), sends retried after an unexpected error
    overflows: int = 0  # the queue was dropped and re-read from the table
    snapshots: int = 0  # MQTT: retained open-alert snapshots published


class Sink(Protocol):
    """Where alert events go. Each sink gets its own queue, task and cursor from the notifier.

    Open with `async with` (resources are opened there, not in the constructor). `name` keys its
    cursor in `notify_cursors`: renaming a sink starts it afresh.
    """

    name: str
    stats: SinkStats

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def send(self, delivery: Delivery) -> Delivered:
        """Send one event whose notification is `notify`; return once it is done with it (SENT or
        FAILED), retrying as long as the peer may still take it. Events come in commit order."""
        ...

    def held_back(self, delivery: Delivery) -> None:
        """An event recorded but not to be sent (silenced, flapping), in order with the others."""
        ...

    def unconfirmed(self) -> int | None:
        """The lowest event id sent but not yet confirmed by the peer (the cursor stays below it)."""
        ...


def make_sinks(store: Store, settings: Settings) -> list[Sink]:
    """The sinks `settings` ask for: MQTT ([rules] mqtt_notify and an MQTT URL), webhook ([rules] webhook_url)."""
    sinks: list[Sink] = []
    if settings.rules.mqtt_notify and settings.mqtt_url:
        sinks.append(MqttSink(store, settings))
    if settings.rules.webhook_url:
        sinks.append(WebhookSink(settings))
    return sinks


async def finish_tasks(tasks: Sequence[asyncio.Task[None]]) -> None:
    """Await cancelled tasks; log any that had failed (a sink's own tasks, the notifier's lanes)."""
    for result in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(result, Exception):
            log.error("notify: task failed: %r", result)


# -- MQTT ------------------------------------------------------------------------------------


class _PublishingClient(AsyncMqttClient):
    """AsyncMqttClient that reports PUBACKs, so that the cursor can wait for the broker's."""

    def __init__(self, address: BrokerAddress, *, client_id: str) -> None:
        super().__init__(address, client_id=client_id, persistent=False)
        self.unacked: set[int] = set()  # message ids of tracked publishes awaiting PUBACK
        self._client.max_inflight_messages_set(_MQTT_INFLIGHT)
        self._client.on_publish = self._on_publish

    def publish_tracked(self, topic: str, payload: str, *, retain: bool = False, track: bool = True) -> int:
        """Publish at QoS 1 (queued by paho while disconnected); returns the message id."""
        mid = self._client.publish(topic, payload, qos=1, retain=retain).mid
        if track:
            self.unacked.add(mid)
        return mid

    def _on_publish(self, _c: paho.Client, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
        self.unacked.discard(mid)
        if reason.is_failure:
            log.error("notify: the broker refused publish %d: %s", mid, reason)


class MqttSink:
    """Each event on `pantau/v1/{city}/alerts` (QoS 1, not retained); per city a retained snapshot of
    its open alerts on `pantau/v1/{city}/alerts/open`, at most every `_SNAPSHOT_INTERVAL_S`, the last
    one always reflecting the latest committed state."""

    name = "mqtt"

    def __init__(self, store: Store, settings: Settings) -> None:
        if not settings.mqtt_url:
            raise ValueError("the MQTT sink needs mqtt_url")
        self.stats = SinkStats()
        self._store = store
        self._address = BrokerAddress.parse(settings.mqtt_url)
        self._client_id = settings.rules.mqtt_client_id
        self._client: _PublishingClient | None = None
        self._pending: deque[tuple[int, int]] = deque()  # (event id, message id) that may await PUBACK
        self._dirty: set[str] = set()  # cities whose snapshot is due
        self._last_snapshot: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._client = _PublishingClient(self._address, client_id=self._client_id)
        await self._client.__aenter__()
        self._task = asyncio.create_task(self._snapshots(), name="notify-mqtt-snapshots")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            await finish_tasks([self._task])
        if self._dirty:  # the last snapshot of a burst must not be lost to the shutdown
            with contextlib.suppress(StoreError, psycopg.Error, TimeoutError):
                await asyncio.wait_for(self._publish_snapshots(set(self._dirty)), _MQTT_DRAIN_S)
        deadline = time.monotonic() + _MQTT_DRAIN_S
        while self.unconfirmed() is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._client is not None:
            await self._client.close()

    async def send(self, delivery: Delivery) -> Delivered:
        assert self._client is not None
        if not valid_city(delivery.city):
            log.error(
                "notify: mqtt cannot publish %s: %r is not a topic-safe city slug", delivery.describe(), delivery.city
            )
            return Delivered.FAILED
        while len(self._pending) >= _MQTT_PENDING_MAX and self.unconfirmed() is not None:
            await asyncio.sleep(_MQTT_WAIT_S)  # the broker is away or slow: wait, do not pile up
        mid = self._client.publish_tracked(alerts_topic(delivery.city), delivery.payload)
        self._pending.append((delivery.event_id, mid))
        self._touch(delivery.city)
        log.debug("notify: mqtt %s", delivery.describe())
        return Delivered.SENT

    def held_back(self, delivery: Delivery) -> None:
        if valid_city(delivery.city):
            self._touch(delivery.city)

    def unconfirmed(self) -> int | None:
        pending = self._pending
        unacked = self._client.unacked if self._client is not None else set()
        while pending and pending[0][1] not in unacked:
            pending.popleft()
        return pending[0][0] if pending else None

    def _touch(self, city: str) -> None:
        self._dirty.add(city)
        self._wake.set()

    async def _snapshots(self) -> None:
        """Publish due snapshots: the cities that had events, coalesced per city."""
        while True:
            try:
                await self._start_cities()
                break
            except (StoreError, psycopg.Error) as exc:
                log.warning("notify: mqtt cannot list cities for the start snapshots (%s); retrying", exc)
                await asyncio.sleep(1.0)
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._dirty:
                now = time.monotonic()
                due = {c for c in self._dirty if now - self._last_snapshot.get(c, -1e9) >= _SNAPSHOT_INTERVAL_S}
                if not due:
                    wait = min(self._last_snapshot[c] + _SNAPSHOT_INTERVAL_S for c in self._dirty) - now
                    await asyncio.sleep(max(wait, 0.001))
                    continue
                self._dirty -= due  # an event during the query marks its city again: another snapshot follows
                try:
                    await self._publish_snapshots(due)
                except (StoreError, psycopg.Error) as exc:
                    self._dirty |= due
                    log.warning("notify: mqtt cannot read open alerts for snapshots (%s); retrying", exc)
                    await asyncio.sleep(1.0)

    async def _start_cities(self) -> None:
        async with self._store.connection() as conn:
            cur = await conn.execute(
                "SELECT city FROM sensors UNION SELECT city FROM alerts"
                " WHERE state <> 'resolved' OR updated_at > now() - interval '1 day'"
            )
            cities = {str(r[0]) for r in await cur.fetchall()}
        for city in cities:
            if valid_city(city):
                self._touch(city)

    async def _publish_snapshots(self, cities: set[str]) -> None:
        assert self._client is not None
        by_city = await open_alerts(self._store, sorted(cities))
        at = datetime.now(UTC).isoformat()
        for city in cities:
            alerts = by_city.get(city, [])
            payload = snapshot_payload(city, at, alerts)
            self._client.publish_tracked(open_alerts_topic(city), payload, retain=True, track=False)
            self._last_snapshot[city] = time.monotonic()
            self.stats.snapshots += 1
            log.debug("notify: mqtt snapshot of %s: %d open alerts", city, len(alerts))


# A snapshot is one MQTT packet, and pantau's broker drops a client that sends a packet over 256 KiB
# (pantau.embedded.MAX_PACKET_BYTES): past this size the snapshot keeps the most severe alerts
# (oldest first within a severity) and says how many it left out. ~250 alerts fit; a city-wide
# outage (every sensor offline) can open more.
SNAPSHOT_MAX_BYTES = 240 * 1024
_SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}


def snapshot_payload(city: str, at: str, alerts: list[dict[str, Any]], max_bytes: int = SNAPSHOT_MAX_BYTES) -> str:
    """The retained snapshot's JSON: every open alert, or as many of the most severe as fit in
    `max_bytes`, with `omitted` counting the rest (0 when all are listed)."""

    def encode(listed: list[dict[str, Any]], omitted: int) -> str:
        body = {"v": NOTIFY_PAYLOAD_VERSION, "city": city, "at": at, "alerts": listed, "omitted": omitted}
        return json.dumps(body, separators=(",", ":"))

    payload = encode(alerts, 0)
    if len(payload.encode()) <= max_bytes:
        return payload
    ranked = sorted(alerts, key=lambda a: _SEVERITY_ORDER.get(str(a.get("severity")), 3))  # stable: oldest first
    lo, hi = 0, len(ranked)  # the most alerts that fit: lo fits, hi + 1 does not
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(encode(ranked[:mid], len(ranked) - mid).encode()) <= max_bytes:
            lo = mid
        else:
            hi = mid - 1
    kept = {id(a) for a in ranked[:lo]}
    log.warning("notify: mqtt snapshot of %s lists %d of %d open alerts (size limit)", city, lo, len(alerts))
    return encode([a for a in alerts if id(a) in kept], len(alerts) - lo)


_ALERT_FIELDS = [f.name for f in fields(Alert)]
# Reasons are cut as in the events' payload (the tables keep the full text).
_SNAPSHOT_REASON_CHARS = 500
# The silence covering each alert now: the same matching as pantau.alerts (the rule if any, then the
# sensor, or the city and district if any).
_OPEN_ALERTS = f"""
SELECT {", ".join(f"a.{n}" for n in _ALERT_FIELDS)}, s.id AS silence_id
FROM alerts a
LEFT JOIN LATERAL (
    SELECT id FROM silences s
    WHERE (s.rule_id IS NULL OR s.rule_id = a.rule_id)
      AND ((s.sensor_id IS NOT NULL AND s.sensor_id = a.sensor_id)
           OR (s.sensor_id IS NULL AND s.city = a.city AND (s.district IS NULL OR s.district = a.district)))
      AND s.starts_at <= now() AND s.ends_at > now()
    ORDER BY s.ends_at DESC, s.id DESC LIMIT 1
) s ON true
WHERE a.city = ANY(%s) AND a.state <> 'resolved'
ORDER BY a.city, a.opened_at, a.id
"""  # noqa: S608 - fixed column list


async def open_alerts(store: Store, cities: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """The open (not resolved) alerts of these cities as snapshot JSON, oldest first, with `silenced`."""
    async with store.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_OPEN_ALERTS, (list(cities),))
        rows = await cur.fetchall()
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        silence_id = row.pop("silence_id")
        alert = Alert.from_row(row)
        item = alert.to_json()
        item["reason"] = alert.reason[:_SNAPSHOT_REASON_CHARS]
        item["silenced"] = silence_id is not None
        item["silence_id"] = silence_id
        out.setdefault(alert.city, []).append(item)
    return out


# -- webhook ---------------------------------------------------------------------------------


class WebhookSink:
    """Each event POSTed as JSON to `[rules] webhook_url` with `Idempotency-Key:
    pantau-alert-event-<id>`; retried with backoff on connection errors, timeouts, 5xx, 408 and 429."""

    name = "webhook"

    def __init__(self, settings: Settings) -> None:
        cfg = settings.rules
        if not cfg.webhook_url:
            raise ValueError("the webhook sink needs [rules] webhook_url")
        self.stats = SinkStats()
        self.url = cfg.webhook_url
        self._timeout = aiohttp.ClientTimeout(total=cfg.webhook_timeout_s)
        self._backoff_max_s = cfg.webhook_backoff_max_s
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(timeout=self._timeout, headers={"User-Agent": _USER_AGENT})
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()

    async def send(self, delivery: Delivery) -> Delivered:
        assert self._session is not None
        headers = {"Content-Type": "application/json", "Idempotency-Key": idempotency_key(delivery.event_id)}
        body = delivery.payload.encode()
        backoff = min(_WEBHOOK_BACKOFF_START_S, self._backoff_max_s)
        attempt = 1
        while True:
            retry_after: float | None = None
            try:
                async with self._session.post(self.url, data=body, headers=headers, allow_redirects=False) as resp:
                    status = resp.status
                    if 200 <= status < 300:
                        log.debug("notify: webhook %s: HTTP %d", delivery.describe(), status)
                        return Delivered.SENT
                    text = (await resp.text(errors="replace"))[:_WEBHOOK_BODY_LOG_CHARS]
                    retry_after = _retry_after(resp.headers.get("Retry-After"))
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                if status < 500 and status not in _WEBHOOK_RETRY_STATUS:
                    log.error(
                        "notify: webhook refused %s with HTTP %d (not retried): %s", delivery.describe(), status, text
                    )
                    return Delivered.FAILED
                problem = f"HTTP {status}"
            wait = retry_after if retry_after is not None else random.uniform(backoff / 2, backoff)
            log.warning(
                "notify: webhook %s attempt %d failed (%s); retrying in %.2f s%s",
                delivery.describe(),
                attempt,
                problem,
                wait,
                " (Retry-After)" if retry_after is not None else "",
            )
            self.stats.retried += 1
            await asyncio.sleep(wait)
            backoff = min(backoff * 2, self._backoff_max_s)
            attempt += 1

    def held_back(self, delivery: Delivery) -> None:
        pass

    def unconfirmed(self) -> int | None:
        return None  # send returns only once the receiver answered


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), capped; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), _RETRY_AFTER_MAX_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max(0.0, (when - datetime.now(UTC)).total_seconds()), _RETRY_AFTER_MAX_S)
