"""The ingest service: MQTT (QoS 1, persistent session) → decode → batch → COPY → ack.

Per message, inside the MQTT client's read callback (pantau.mqtt): split the topic, look the
sensor up in the in-memory registry, decode the payload into the open batch. No task, no queue
hop. One flush task seals the batch when it holds `batch_max_rows` readings or is
`batch_max_delay_s` old, commits it, and only then acknowledges its messages to the broker (one
write of their PUBACKs). While the database is down the flush task retries the same batch with
backoff, and once `max_inflight` messages are unacknowledged ingest stops reading its socket (and
an MQTT 5 broker stops at our Receive Maximum), so memory stays bounded and nothing is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from ingest.decode import Decoder
from ingest.writer import ReadingWriter, WriteResult
from pantau.domain import Reason
from pantau.errors import StoreError, StoreUnavailable
from pantau.metrics import SensorKind
from pantau.mqtt import AsyncMqttClient, BrokerAddress
from pantau.readings import Problem, Reading, Rejection
from pantau.service import task_group
from pantau.settings import Settings
from pantau.store.migrations import Backend
from pantau.telemetry import IngestMetrics
from pantau.topics import RETIRED_SUBSCRIPTIONS, parse_sensor_topic, sensor_subscriptions, sensor_topic

log = logging.getLogger(__name__)

# Database retry backoff: quick first retry (a restart takes ~1 s), capped so a long outage
# costs one attempt every 5 s.
_DB_BACKOFF_START_S = 0.1
_DB_BACKOFF_MAX_S = 5.0
# `last_seen` goes out in statements of at most this many sensors, spread over half the interval:
# one UPDATE of 10,000 rows every 5 s, WAL and all, made every commit beside it wait (publish→alert
# spiked every 5 s); a thousand rows take a few milliseconds.
_LAST_SEEN_CHUNK = 1000
# A graceful stop waits this long for the last batch to commit before disconnecting anyway
# (whatever is not committed is redelivered by the broker on the next start).
_DRAIN_TIMEOUT_S = 10.0

CommitHook = Callable[[list[Reading], float], None]
T = TypeVar("T")


@dataclass(slots=True)
class Batch:
    """Messages received on one MQTT connection since the last flush."""

    generation: int
    started: float = 0.0
    mids: list[int] = field(default_factory=list)
    rows: list[Reading] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    seen: dict[str, float] = field(default_factory=dict)
    # Messages from sensors not in the registry cache: resolved against the database at flush.
    parked: list[tuple[str, SensorKind, str, str, bytes, float]] = field(default_factory=list)
    messages: int = 0
    qos0: int = 0  # messages the broker will not redeliver
    oldest_received: float = 0.0


class IngestService:
    """One ingest worker. `await run()` until cancelled or `stop()`ped."""

    def __init__(
        self,
        settings: Settings,
        *,
        backend: Backend,
        metrics: IngestMetrics | None = None,
        on_commit: CommitHook | None = None,
    ) -> None:
        if settings.mqtt_url is None:
            raise ValueError("ingest needs mqtt_url")
        url = settings.service_database_url("ingest")  # as the pantau_ingest role, when configured
        self.settings = settings
        self.cfg = settings.ingest
        self.backend = backend
        self.metrics = metrics or IngestMetrics.create()
        self.on_commit = on_commit
        self.decoder = Decoder(
            max_payload_bytes=self.cfg.max_payload_bytes,
            max_future_s=self.cfg.max_future_s,
            retention_s=settings.store.retention_days * 86400.0,
        )
        self.writer = ReadingWriter(url, backend, outbox=self.cfg.outbox, topic_of=self._topic_of)
        # `last_seen` and the registry cache's refresh go over a connection of their own: statements
        # over thousands of sensors must not hold up the next batch's commit (at 10,000 sensors they
        # made publish→commit latency spike every `last_seen_interval_s` and `registry_refresh_s`).
        self._side = ReadingWriter(url, backend, outbox=False)
        self.mqtt = AsyncMqttClient(
            BrokerAddress.parse(settings.mqtt_url),
            client_id=self.cfg.client_id,
            on_message=self._on_message,
            subscriptions=tuple((f, 1) for f in sensor_subscriptions()),
            retired=RETIRED_SUBSCRIPTIONS,
            persistent=True,
            session_expiry_s=self.cfg.session_expiry_s,
            receive_maximum=self.cfg.max_inflight,
            manual_ack=True,
            keepalive_s=self.cfg.keepalive_s,
            protocol=self.cfg.mqtt_protocol,
        )
        self.mqtt.on_connected = self._on_connected
        self._registry: dict[str, tuple[str, str]] = {}
        self._batch = Batch(generation=0)
        self._sealed: deque[Batch] = deque()
        self._has_data = asyncio.Event()
        self._full = asyncio.Event()
        self._stopping = asyncio.Event()
        self._inflight = 0
        self._paused = False
        self._seen: dict[str, float] = {}
        self.ready = asyncio.Event()
        self.metrics.inflight.set_function(lambda: self._inflight)

    # -- receive path (runs inside the MQTT client's read callback) ---------------------------

    def _on_message(self, topic: str, payload: bytes, qos: int, mid: int) -> None:
        received = time.time()
        batch = self._batch
        if not batch.messages:
            batch.started = time.monotonic()
            batch.oldest_received = received
            self._has_data.set()
        batch.messages += 1
        if qos:
            batch.mids.append(mid)
            self._inflight += 1
            if self._inflight >= self.cfg.max_inflight and not self._paused:
                # An MQTT 5 broker stops at our Receive Maximum; under MQTT 3.1.1 the broker's
                # own limit may be higher. Either way: stop reading (TCP backpressure).
                self._pause()
        else:
            batch.qos0 += 1
        parsed = parse_sensor_topic(topic)
        if parsed is None:  # `+` matches an empty level too: pantau/v1//air/
            problem = (Reason.BAD_TOPIC, "expected pantau/v1/{city}/{kind}/{sensor_id}", None)
            self._reject(batch, received, topic, None, payload, [problem])
            return
        city, kind, sensor_id = parsed
        entry = self._registry.get(sensor_id)
        if entry is None:
            batch.parked.append((sensor_id, kind, city, topic, payload, received))
            return
        self._accept(batch, entry, sensor_id, kind, city, topic, payload, received)
        if len(batch.rows) >= self.cfg.batch_max_rows:
            self._full.set()
            if len(batch.rows) >= self.cfg.max_pending_rows and not self._paused:
                # A message may carry many readings: bound memory by rows as well.
                self._pause()

    def _pause(self) -> None:
        self._paused = True
        self.mqtt.pause_reading()

    def _maybe_resume(self) -> None:
        if (
            self._paused
            and self._inflight < self.cfg.max_inflight // 2
            and len(self._batch.rows) < self.cfg.max_pending_rows
        ):
            self._paused = False
            self.mqtt.resume_reading()

    def _accept(
        self,
        batch: Batch,
        entry: tuple[str, str],
        sensor_id: str,
        kind: SensorKind,
        city: str,
        topic: str,
        payload: bytes,
        received: float,
    ) -> None:
        if entry[0] != kind:
            self._reject(
                batch,
                received,
                topic,
                sensor_id,
                payload,
                [(Reason.KIND_MISMATCH, f"sensor {sensor_id} is registered as {entry[0]}, topic says {kind}", None)],
            )
            return
        if entry[1] != city:
            self._reject(
                batch,
                received,
                topic,
                sensor_id,
                payload,
                [(Reason.CITY_MISMATCH, f"sensor {sensor_id} is registered in {entry[1]}, topic says {city}", None)],
            )
            return
        problems: list[Problem] = []
        first_row = len(batch.rows)
        try:
            self.decoder.decode(payload, sensor_id, kind, received, batch.rows, problems)
        except Exception as exc:  # a message acknowledged must leave a trace, even after a bug
            log.exception("decoding a message on %s failed; it is recorded as internal_error", topic)
            del batch.rows[first_row:]
            problems = [(Reason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}", None)]
        batch.seen[sensor_id] = received
        if problems:
            self._reject(batch, received, topic, sensor_id, payload, problems)

    def _topic_of(self, sensor_id: str) -> str:
        kind, city = self._registry.get(sensor_id, ("", ""))
        return sensor_topic(city, kind, sensor_id) if kind else sensor_id

    def _reject(
        self,
        batch: Batch,
        received: float,
        topic: str,
        sensor_id: str | None,
        payload: bytes,
        problems: list[Problem],
    ) -> None:
        # The payload is stored once, with the message's first rejection.
        for i, (reason, detail, metric) in enumerate(problems):
            stored = payload[: self.cfg.max_payload_bytes] if i == 0 else None
            batch.rejections.append(Rejection(received, sensor_id, reason.value, metric, topic, detail, stored))

    def _on_connected(self, session_present: bool) -> None:
        # Packet ids of the old connection mean nothing on the new one. If the broker kept our
        # session it redelivers every unacknowledged QoS 1 message, so batches of the old
        # connection that hold only those are dropped (holding them too would let memory grow
        # with each reconnect of a long database outage). Otherwise, or with QoS 0 messages in
        # them, they are written, unacknowledged: they may be the only copy.
        old = [*self._sealed, self._batch] if self._batch.messages else list(self._sealed)
        self._sealed.clear()
        for batch in old:
            if session_present and not batch.qos0:
                continue
            batch.mids.clear()
            self._sealed.append(batch)
        self._inflight = 0  # counts messages of the current connection only
        self._batch = Batch(generation=self.mqtt.generation)
        self._has_data.clear()
        self._full.clear()
        if self._sealed:
            self._has_data.set()
        if self._paused:
            self._paused = False
            self.mqtt.resume_reading()
        self.metrics.connected.labels("broker").set(1)

    # -- flush path ---------------------------------------------------------------------------

    def _take(self) -> Batch:
        if self._sealed:
            return self._sealed.popleft()
        batch = self._batch
        self._batch = Batch(generation=self.mqtt.generation)
        self._has_data.clear()
        self._full.clear()
        return batch

    async def _flush_loop(self) -> None:
        while True:
            if not self._sealed:
                waiter = asyncio.ensure_future(self._has_data.wait())
                stopper = asyncio.ensure_future(self._stopping.wait())
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stopper.cancel()
                if self._stopping.is_set() and not self._batch.messages:
                    return
                remaining = self._batch.started + self.cfg.batch_max_delay_s - time.monotonic()
                if remaining > 0 and len(self._batch.rows) < self.cfg.batch_max_rows and not self._stopping.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._full.wait(), remaining)
            batch = self._take()
            self._maybe_resume()
            if batch.messages:
                await self._commit(batch)

    async def _side_loop(self) -> None:
        """Upkeep on the side connection, away from the commits: `sensors.last_seen` raised to the
        committed receive times every `last_seen_interval_s` (also once traffic has stopped), and
        the registry cache read again every `registry_refresh_s` (reading 10,000 sensors in the
        flush loop held up a commit every 30 s)."""
        last_seen_due = time.monotonic() + self.cfg.last_seen_interval_s
        registry_due = time.monotonic() + self.cfg.registry_refresh_s
        while True:
            await asyncio.sleep(max(0.0, min(last_seen_due, registry_due) - time.monotonic()))
            if time.monotonic() >= registry_due:
                self._registry = await self._retrying(self._side.registry)
                registry_due = time.monotonic() + self.cfg.registry_refresh_s
            if time.monotonic() >= last_seen_due:
                await self._write_last_seen(spread_s=self.cfg.last_seen_interval_s / 2)
                last_seen_due = time.monotonic() + self.cfg.last_seen_interval_s

    async def _write_last_seen(self, *, spread_s: float = 0.0) -> None:
        """Write the pending times, `_LAST_SEEN_CHUNK` sensors a statement, the statements spread
        over `spread_s`."""
        if not self._seen:
            return
        seen, self._seen = list(self._seen.items()), {}
        pause_s = spread_s / (len(seen) // _LAST_SEEN_CHUNK + 1)
        written = 0
        try:
            while written < len(seen):
                if written and pause_s:
                    await asyncio.sleep(pause_s)
                chunk = dict(seen[written : written + _LAST_SEEN_CHUNK])
                await self._retrying(functools.partial(self._side.touch_last_seen, chunk))
                written += len(chunk)
        except BaseException:
            self._seen = dict(seen[written:]) | self._seen  # not written: kept for the next write (later times win)
            raise

    async def _retrying(self, action: Callable[[], Awaitable[T]]) -> T:
        """Run a database action until it succeeds, backing off while the database is away."""
        delay = _DB_BACKOFF_START_S
        while True:
            try:
                result = await action()
                self.metrics.connected.labels("database").set(1)
                return result
            except StoreUnavailable as exc:
                self.metrics.connected.labels("database").set(0)
                self.metrics.write_failures.labels("unavailable").inc()
                log.warning("database unavailable (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _DB_BACKOFF_MAX_S)

    async def _resolve_parked(self, batch: Batch) -> None:
        ids = sorted({p[0] for p in batch.parked} - self._registry.keys())
        if ids:
            found = await self._retrying(lambda: self.writer.registry(ids))
            self._registry.update(found)
        for sensor_id, kind, city, topic, payload, received in batch.parked:
            entry = self._registry.get(sensor_id)
            if entry is None:
                problem = (Reason.UNKNOWN_SENSOR, f"sensor {sensor_id} is not registered", None)
                self._reject(batch, received, topic, sensor_id, payload, [problem])
            else:
                self._accept(batch, entry, sensor_id, kind, city, topic, payload, received)
        batch.parked.clear()

    async def _commit(self, batch: Batch) -> None:
        if batch.parked:
            await self._resolve_parked(batch)
        started = time.monotonic()
        try:
            result = await self._retrying(lambda: self.writer.write(batch.rows, batch.rejections))
        except StoreError as exc:
            log.error("batch of %d messages failed (%s); writing message by message", batch.messages, exc)
            self.metrics.write_failures.labels("error").inc()
            result = await self._write_one_by_one(batch)
        committed = time.time()
        self.metrics.commit_seconds.observe(time.monotonic() - started)
        self.metrics.lag_seconds.observe(committed - batch.oldest_received)
        self.metrics.batch_rows.observe(len(batch.rows))
        self.metrics.messages.inc(batch.messages)
        self.metrics.accepted.inc(result.inserted)
        self.metrics.duplicates.inc(result.duplicates)
        for rejection in batch.rejections:
            self.metrics.rejected.labels(rejection.reason).inc()
        if result.conflicts:
            self.metrics.rejected.labels(Reason.CONFLICTING_VALUE.value).inc(result.conflicts)
        if batch.generation == self.mqtt.generation:
            self.mqtt.ack_many(batch.mids, batch.generation)
            self._inflight -= len(batch.mids)
        self._maybe_resume()
        self._seen.update(batch.seen)
        if self.on_commit is not None and batch.rows:
            self.on_commit(batch.rows, committed)

    async def _write_one_by_one(self, batch: Batch) -> WriteResult:
        """Isolate a batch the database refuses: good rows land, the rest is dead-lettered.

        The failed transaction took the batch's rejections with it, so they are written again
        here, one by one; one the database refuses too is logged in full rather than retried
        for ever (a poison message must not stall ingest).
        """
        inserted = duplicates = conflicts = 0
        dead: list[Rejection] = []
        for row in batch.rows:
            try:
                result = await self._retrying(functools.partial(self.writer.write, [row], []))
                inserted += result.inserted
                duplicates += result.duplicates
                conflicts += result.conflicts
            except StoreError as exc:
                ts, sensor_id, metric, value = row
                detail = f"{metric}={value!r} at {ts}: {exc}"
                topic = self._topic_of(sensor_id)
                dead.append(Rejection(time.time(), sensor_id, Reason.STORE_ERROR.value, metric, topic, detail))
        batch.rejections = [*batch.rejections, *dead]
        for rejection in batch.rejections:
            try:
                await self._retrying(functools.partial(self.writer.write, [], [rejection]))
            except StoreError as exc:
                log.error("could not record rejection %r: %s", rejection, exc)
        return WriteResult(inserted, duplicates, len(batch.rejections) + conflicts, conflicts)

    # -- lifecycle ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Finish the batch in hand, acknowledge it and disconnect (the session stays)."""
        self._stopping.set()

    async def run(self) -> None:
        """Serve until cancelled or stopped."""
        async with self.writer, self._side:
            self._registry = await self._retrying(self.writer.registry)
            log.info("registry: %d sensors", len(self._registry))
            async with self.mqtt:
                self.ready.set()
                async with task_group() as tasks:  # a crash of either loop ends the wait at once, with its error
                    flush = tasks.create_task(self._flush_loop())
                    side = tasks.create_task(self._side_loop())
                    await self._stopping.wait()
                    self.mqtt.pause_reading()
                    try:
                        await asyncio.wait_for(flush, _DRAIN_TIMEOUT_S)  # the batch in hand, committed and acked
                    except TimeoutError:
                        log.warning("stopping with a batch uncommitted (database away): the broker redelivers it")
                    side.cancel()
                try:
                    await asyncio.wait_for(self._write_last_seen(), _DRAIN_TIMEOUT_S)  # the last batches' too
                except TimeoutError:
                    log.warning("stopping without writing the last sensors' last_seen (database unavailable)")
