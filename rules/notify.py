"""Alert notifiers: every committed alert event out to MQTT (and a webhook), none lost, none doubled.

    alert_events ──NOTIFY pantau_alerts──▶ dispatcher ──▶ lane "mqtt"    ──▶ MqttSink     pantau/v1/{city}/alerts
         │            (one LISTEN connection,     │          (queue, task, cursor)     + retained …/alerts/open
         └── catch-up / gap check (pool) ─────────┘   └▶ lane "webhook" ──▶ WebhookSink  POST, retries, Idempotency-Key

*Dispatcher.* One dedicated connection holds the notifier lock (one notifier per database; a second
stands by) and LISTENs on `pantau_alerts`; each NOTIFY payload (`pantau.alerts.notify_payload`) is
parsed once and offered to every lane. No polling on the live path. After (re)connecting it reads
`alert_events` joined to `alerts` with an id above what it has seen, so nothing committed while it
was away is missed; an id it has already seen is dropped, so nothing is offered twice.

*Lanes.* Each sink has its own queue, task and cursor: a webhook that is down never delays MQTT, and
nothing here waits for the evaluator. A lane sends events whose `notification` is `notify`, in the
order they were committed, and hands the others to the sink as held back (MQTT still refreshes its
snapshot for them). A lane whose queue passes `_QUEUE_MAX` drops it and reads the rest from the
table from its cursor, then goes live again.

*Cursors.* `notify_cursors(sink, last_event)`: every event with an id up to `last_event` has been
delivered by that sink (for MQTT: acknowledged by the broker) or never committed. Written at most
every `_CURSOR_SAVE_S` and on shutdown, and read on start. A sink with no row (a fresh database)
starts after the current last event: history is not replayed.

*Out-of-order commits.* Event ids come from a sequence when the row is inserted, but transactions
commit in their own order: event 11 may be notified before event 10, or 10 may be rolled back. The
dispatcher remembers the ids below the highest it has seen that it has not seen (gaps). A gap is
closed when event 10 arrives, or when every transaction that could still insert it has ended: the
gap is stamped with a fresh transaction id N (every transaction that inserted an alert event holds
an older one: it wrote `alerts` first), and once `pg_snapshot_xmin` passes N the rows in the gap are
read back (delivering any whose NOTIFY is still on its way) and the rest are given up as rolled
back. Cursors never pass an open gap, so a restart re-reads from below it: an event sent after the
gap is then sent again (at-least-once, with the same idempotency key), and nothing is lost.

*Sinks* (the `Sink` protocol, `Delivery`, `MqttSink`, `WebhookSink`, the idempotency key) are in
rules.sinks. This module is about 700 lines because the dispatcher, its lanes, the ids seen and
the cursors are one mechanism, told once above and kept in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, fields

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import dict_row

from pantau.alerts import ALERTS_CHANNEL, Alert, AlertEvent, Notification
from pantau.errors import StoreError
from pantau.settings import Settings
from pantau.store import Store, connect
from rules.sinks import Delivered, Delivery, Sink, SinkStats, finish_tasks, make_sinks

__all__ = ["AlertNotifier", "NotifierStats"]

log = logging.getLogger(__name__)

# Cursors are written this often (and on shutdown): a crash re-sends at most about this much.
_CURSOR_SAVE_S = 1.0
# The LISTEN connection is checked with a query this often, and given this long to answer: a dead
# peer that never sent a FIN is noticed within seconds, not at the next TCP keepalive.
_HEARTBEAT_S = 5.0
_HEARTBEAT_TIMEOUT_S = 5.0
# Reconnect backoff after the database went away (the rule worker uses the same).
_BACKOFF_START_S = 0.5
_BACKOFF_MAX_S = 5.0
# A notifier waiting for another's lock tries again this often, and says so this often.
_LOCK_RETRY_S = 0.5
_LOCK_WAIT_LOG_S = 30.0
# Rows per catch-up read: a few hundred KB of JSON.
_PAGE = 500
# Events waiting in one lane (~1.5 KB each): past this the lane drops them and re-reads from the
# table later, so a sink that is down for a day costs ~15 MB, not the whole backlog.
_QUEUE_MAX = 10_000
# A gap held open this long is reported (a long transaction elsewhere holds the cursor back).
_GAP_WARN_S = 60.0
# A summary line is logged this often when something changed.
_REPORT_EVERY_S = 60.0
# A sink that raised an unexpected error is retried with this backoff (the event is not skipped).
_SINK_ERROR_BACKOFF_MAX_S = 30.0

_LOCK_KEY = ("pantau", "notify")  # pg_try_advisory_lock(hashtext(a), hashtext(b)): one notifier per database


# -- counters ---------------------------------------------------------------------------------


@dataclass(slots=True)
class NotifierStats:
    """Counters since start; `stats["mqtt"]` is the mqtt sink's."""

    notifications: int = 0  # NOTIFYs received
    read: int = 0  # events read from the table (catch-up, gap checks, lane re-reads)
    duplicates: int = 0  # events seen again (a catch-up overlapping the live stream) and dropped
    reconnects: int = 0
    gaps_given_up: int = 0  # ids never committed (rolled back), given up after the gap check
    upkeeps: int = 0  # rounds of gap checks and cursor saves done (every _CURSOR_SAVE_S)
    lock_refusals: int = 0  # times another notifier held the lock when this one asked for it
    sinks: dict[str, SinkStats] = field(default_factory=dict)

    def __getitem__(self, sink: str) -> SinkStats:
        return self.sinks[sink]


# -- which ids have been seen ------------------------------------------------------------------


@dataclass(slots=True)
class _Gap:
    lo: int
    hi: int
    noticed: float
    # A transaction id above that of every transaction that could still insert an id in the gap
    # (None until the next gap check takes one).
    horizon: int | None = None
    warned: bool = False


class _Seen:
    """The alert_events ids this process has seen: all up to `high` except those in `gaps`."""

    def __init__(self, start: int) -> None:
        self.high = start
        self.gaps: list[_Gap] = []  # ascending, disjoint
        self._advanced = asyncio.Event()

    @property
    def floor(self) -> int:
        """Every id up to here has been seen or given up."""
        return self.gaps[0].lo - 1 if self.gaps else self.high

    def accept(self, event_id: int) -> bool:
        """Record an id; False if it was seen before."""
        if event_id > self.high:
            if event_id > self.high + 1:
                self.gaps.append(_Gap(self.high + 1, event_id - 1, time.monotonic()))
            self.high = event_id
            self._changed()
            return True
        for i, gap in enumerate(self.gaps):
            if gap.lo <= event_id <= gap.hi:
                self.gaps[i : i + 1] = _split(gap, event_id, event_id)
                self._changed()
                return True
            if gap.lo > event_id:
                break
        return False

    def forget(self, lo: int, hi: int) -> int:
        """Give up the gap ids in [lo, hi] (never committed); returns how many."""
        kept: list[_Gap] = []
        dropped = 0
        for gap in self.gaps:
            if gap.hi < lo or gap.lo > hi:
                kept.append(gap)
                continue
            dropped += min(gap.hi, hi) - max(gap.lo, lo) + 1
            kept += _split(gap, lo, hi)
        self.gaps = kept
        if dropped:
            self._changed()
        return dropped

    async def advanced(self, timeout_s: float) -> None:
        """Wait until `high` or `floor` moves (or the timeout passes)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._advanced.wait(), timeout_s)

    def _changed(self) -> None:
        self._advanced.set()
        self._advanced = asyncio.Event()


def _split(gap: _Gap, lo: int, hi: int) -> list[_Gap]:
    """The parts of `gap` outside [lo, hi]."""
    parts = [
        _Gap(gap.lo, min(gap.hi, lo - 1), gap.noticed, gap.horizon, gap.warned),
        _Gap(max(gap.lo, hi + 1), gap.hi, gap.noticed, gap.horizon, gap.warned),
    ]
    return [p for p in parts if p.lo <= p.hi]


# -- reading events back -----------------------------------------------------------------------

_EVENT_FIELDS = [f.name for f in fields(AlertEvent)]
_ALERT_FIELDS = [f.name for f in fields(Alert)]
_READ_EVENTS = f"""
SELECT {", ".join(f"e.{n}" for n in _EVENT_FIELDS)}, {", ".join(f"a.{n} AS a_{n}" for n in _ALERT_FIELDS)}
FROM alert_events e JOIN alerts a ON a.id = e.alert_id
WHERE e.id > %(after)s AND (%(upto)s::bigint IS NULL OR e.id <= %(upto)s)
ORDER BY e.id LIMIT %(limit)s
"""  # noqa: S608 - fixed column lists

Reader = Callable[[int, int | None, int], Awaitable[list[Delivery]]]


async def read_events(store: Store, after: int, upto: int | None, limit: int) -> list[Delivery]:
    """Events with after < id <= upto (no bound if None), in id order, with their alert as it is now."""
    async with store.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_READ_EVENTS, {"after": after, "upto": upto, "limit": limit})
        rows = await cur.fetchall()
    out = []
    for row in rows:
        alert = Alert.from_row({n: row[f"a_{n}"] for n in _ALERT_FIELDS})
        out.append(Delivery.of(alert, AlertEvent.from_row({n: row[n] for n in _EVENT_FIELDS})))
    return out


# -- lanes -------------------------------------------------------------------------------------


class _Lane:
    """One sink's queue, task and cursor."""

    def __init__(self, sink: Sink, start_after: int, seen: _Seen, reader: Reader) -> None:
        self.sink = sink
        self.start_after = start_after  # ids up to here are this sink's past (delivered or skipped)
        self.queue: deque[Delivery] = deque()
        self.current: Delivery | None = None  # being delivered (cleared only once done)
        self.behind_from: int | None = None  # set while re-reading from the table after an overflow
        self._seen = seen
        self._reader = reader
        self._wake = asyncio.Event()
        self._last_cursor = start_after

    def offer(self, delivery: Delivery) -> None:
        if delivery.event_id <= self.start_after or self.behind_from is not None:
            return  # the past, or the re-read will reach it
        if len(self.queue) >= _QUEUE_MAX:
            head = min(self._seen.floor, min(d.event_id for d in self.queue) - 1)
            self.behind_from = max(head, self.start_after)
            self.queue.clear()
            self.sink.stats.overflows += 1
            log.warning(
                "notify: %s is %d events behind; dropped its queue, re-reading from event %d",
                self.sink.name,
                _QUEUE_MAX,
                self.behind_from,
            )
            self._wake.set()
            return
        self.queue.append(delivery)
        self._wake.set()

    def cursor(self) -> int:
        """The highest id such that this sink is done with every event up to it."""
        if self.behind_from is not None:
            c = self.behind_from
        else:
            c = self._seen.floor
            if self.queue:
                c = min(c, min(d.event_id for d in self.queue) - 1)
        if self.current is not None:
            c = min(c, self.current.event_id - 1)
        pending = self.sink.unconfirmed()
        if pending is not None:
            c = min(c, pending - 1)
        # Never backwards: what was once complete stays complete.
        self._last_cursor = max(self._last_cursor, c, self.start_after)
        return self._last_cursor

    async def run(self) -> None:
        while True:
            try:
                await self._step()
            except Exception:  # a bug must not silently stop this sink: log it and go on
                log.exception("notify: %s lane failed; continuing", self.sink.name)
                await asyncio.sleep(1.0)

    async def _step(self) -> None:
        if self.behind_from is not None:
            await self._reread()
        elif self.current is not None:  # an earlier step failed half-way: deliver it again
            await self._deliver(self.current)
            self.current = None
        elif self.queue:
            delivery = self.queue.popleft()
            self.current = delivery
            await self._deliver(delivery)
            self.current = None
        else:
            self._wake.clear()
            await self._wake.wait()

    async def _reread(self) -> None:
        assert self.behind_from is not None
        after, floor = self.behind_from, self._seen.floor
        if after >= self._seen.high:
            self.behind_from = None  # nothing between here and the live stream: live again
            log.info("notify: %s caught up after event %d; live again", self.sink.name, after)
            return
        if after >= floor:
            await self._seen.advanced(1.0)  # an open gap: wait for it to fill or be given up
            return
        try:
            batch = await self._reader(after, floor, _PAGE)
        except (StoreError, psycopg.Error) as exc:
            log.warning("notify: %s cannot re-read events after %d (%s); retrying", self.sink.name, after, exc)
            await asyncio.sleep(1.0)
            return
        for delivery in batch:
            self.current = delivery
            await self._deliver(delivery)
            self.current = None
            self.behind_from = delivery.event_id
        if len(batch) < _PAGE:
            self.behind_from = max(self.behind_from, floor)  # no other committed id up to the floor

    async def _deliver(self, delivery: Delivery) -> None:
        stats = self.sink.stats
        if delivery.notification is not Notification.NOTIFY:
            self.sink.held_back(delivery)
            stats.held_back += 1
            log.debug("notify: %s held back %s: %s", self.sink.name, delivery.describe(), delivery.notification)
            return
        delay = 1.0
        while True:
            try:
                outcome = await self.sink.send(delivery)
                break
            except Exception:  # a sink's bug must not end the notifier: the event is retried, not skipped
                log.exception("notify: %s failed on %s; retrying in %.0f s", self.sink.name, delivery.describe(), delay)
                stats.retried += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, _SINK_ERROR_BACKOFF_MAX_S)
        if outcome is Delivered.SENT:
            stats.sent += 1
        elif outcome is Delivered.FAILED:
            stats.failed += 1
        else:
            stats.held_back += 1


# -- the notifier ------------------------------------------------------------------------------


class AlertNotifier:
    """Delivers alert events to the configured sinks. `await run()` until cancelled.

    `ready` is set once the notifier holds its lock, listens and has caught up with the table;
    `stats` counts per sink. `sinks` replaces the sinks built from `settings` (`make_sinks`).
    """

    def __init__(self, store: Store, settings: Settings, *, sinks: Sequence[Sink] | None = None) -> None:
        self.store = store
        self.settings = settings
        self.sinks: list[Sink] = list(make_sinks(store, settings) if sinks is None else sinks)
        names = [s.name for s in self.sinks]
        if len(set(names)) != len(names):
            raise ValueError(f"sink names must be unique: {names}")
        self.ready = asyncio.Event()
        self.stats = NotifierStats(sinks={s.name: s.stats for s in self.sinks})
        self._url = settings.service_database_url("rules")
        self._conn: AsyncConnection | None = None  # the LISTEN connection, which holds the lock
        self._seen: _Seen | None = None  # None: no session (not started, or another notifier took over)
        self._lanes: list[_Lane] = []
        self._lane_tasks: list[asyncio.Task[None]] = []
        self._saved: dict[str, int] = {}  # the cursors as last written
        self._sink_stack: AsyncExitStack | None = None  # the open sinks
        self._session_lock = asyncio.Lock()

    async def run(self) -> None:
        """Serve until cancelled; ride out database and broker outages."""
        if not self.sinks:
            log.info("notify: no sinks configured ([rules] mqtt_notify with an MQTT URL, or webhook_url); idle")
            self.ready.set()
            await asyncio.Event().wait()  # until cancelled
            return
        keeper = asyncio.create_task(self._keep(), name="notify-cursors")
        try:
            await self._serve()
        finally:
            self.ready.clear()
            keeper.cancel()
            await finish_tasks([keeper])
            try:
                if self._seen is not None:
                    await self._stop_lanes()
                    await self._close_sinks()  # MQTT waits for its PUBACKs: the cursors can include them
                    await asyncio.wait_for(self._save_cursors(), 5.0)
                    log.info("notify: stopped; cursors %s", _fmt(self._saved))
            except (StoreError, psycopg.Error, TimeoutError) as exc:
                log.warning(
                    "notify: could not save cursors on stop (%s); a restart re-sends after %s", exc, self._saved
                )
            finally:
                await self._close_sinks()
                await self._drop_connection()  # releases the lock for the next notifier

    # -- dispatcher --------------------------------------------------------------------------

    async def _serve(self) -> None:
        delay = _BACKOFF_START_S
        while True:
            try:
                conn = await self._connect()
                await conn.execute(f"LISTEN {ALERTS_CHANNEL}")
                await self._resume()
                caught = await self._catch_up()
                self.ready.set()
                delay = _BACKOFF_START_S
                log.info(
                    "notify: live on %s (%d events caught up); cursors %s",
                    ALERTS_CHANNEL,
                    caught,
                    _fmt({lane.sink.name: lane.cursor() for lane in self._lanes}),
                )
                await self._listen(conn)
            except (StoreError, psycopg.Error, TimeoutError) as exc:
                self.ready.clear()
                self.stats.reconnects += 1
                await self._drop_connection()
                log.warning("notify: database connection lost (%s); reconnecting in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX_S)

    async def _connect(self) -> AsyncConnection:
        """The LISTEN connection, holding the notifier lock (waits while another notifier holds it)."""
        conn = self._conn = await connect(self._url)
        if await _try_lock(conn):
            return conn
        if self._seen is not None:
            log.warning("notify: another notifier took over while we were disconnected; standing by")
            await self._end_session()
        log.warning("notify: another notifier is running on this database; standing by")
        self.stats.lock_refusals += 1
        waited = 0.0
        while not await _try_lock(conn):
            self.stats.lock_refusals += 1
            await asyncio.sleep(_LOCK_RETRY_S)
            waited += _LOCK_RETRY_S
            if waited >= _LOCK_WAIT_LOG_S:
                log.info("notify: still standing by (another notifier holds the lock)")
                waited = 0.0
        log.info("notify: took over the notifier lock")
        return conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                await conn.close()

    async def _listen(self, conn: AsyncConnection) -> None:
        """Offer every notification until the connection fails; check it with a query now and then."""
        while True:
            async for note in conn.notifies(timeout=_HEARTBEAT_S):
                self.stats.notifications += 1
                try:
                    delivery = Delivery.from_payload(note.payload)
                except (ValueError, KeyError, TypeError) as exc:
                    log.error("notify: unreadable %s payload (%s): %.200s", ALERTS_CHANNEL, exc, note.payload)
                    continue
                self._offer(delivery)
            await asyncio.wait_for(conn.execute("SELECT 1"), _HEARTBEAT_TIMEOUT_S)

    def _offer(self, delivery: Delivery) -> None:
        assert self._seen is not None
        if not self._seen.accept(delivery.event_id):
            self.stats.duplicates += 1
            return
        for lane in self._lanes:
            lane.offer(delivery)

    async def _catch_up(self) -> int:
        """Offer every committed event above the floor of what was seen (already seen ones are dropped)."""
        assert self._seen is not None
        after, n = self._seen.floor, 0
        while True:
            batch = await read_events(self.store, after, None, _PAGE)
            self.stats.read += len(batch)
            for delivery in batch:
                self._offer(delivery)
            n += len(batch)
            if len(batch) < _PAGE:
                return n
            after = batch[-1].event_id

    # -- sessions: the lanes and what was seen, from the cursors ------------------------------

    async def _resume(self) -> None:
        """After (re)connecting: keep the session if nobody else moved the cursors, else start one."""
        if self._seen is not None:
            async with self._session_lock:  # not while the keeper is writing them
                saved = await self._read_cursors()
                moved = {name: c for name, c in saved.items() if c != self._saved.get(name)}
            if moved:
                log.warning("notify: cursors moved while we were away (%s); starting from them", _fmt(moved))
                await self._end_session()
        if self._seen is None:
            await self._start_session()

    async def _start_session(self) -> None:
        """Read the cursors, open the sinks and start a lane for each."""
        async with self._session_lock:
            async with self.store.connection() as conn:
                cur = await conn.execute("SELECT coalesce(max(id), 0) FROM alert_events")
                head = int((await cur.fetchone() or (0,))[0])
            saved = await self._read_cursors()
            starts: dict[str, int] = {}
            for sink in self.sinks:
                at = saved.get(sink.name)
                if at is None:
                    log.info(
                        "notify: %s has no cursor (fresh): starting after event %d, not replaying history",
                        sink.name,
                        head,
                    )
                    at = head
                elif at > head:
                    log.warning(
                        "notify: %s cursor %d is past the last event %d (database restored?); starting after %d",
                        sink.name,
                        at,
                        head,
                        head,
                    )
                    at = head
                starts[sink.name] = at
            await self._write_cursors({n: c for n, c in starts.items() if saved.get(n) != c})
            self._saved = dict(starts)
            # Sinks are opened only while this notifier holds the lock: a standby one must not connect
            # to the broker with the same client id and take the active one's connection away.
            stack = AsyncExitStack()
            try:
                for sink in self.sinks:
                    await stack.enter_async_context(sink)
            except BaseException:
                await stack.aclose()
                raise
            self._sink_stack = stack
            seen = self._seen = _Seen(min(starts.values()))
            self._lanes = [_Lane(sink, starts[sink.name], seen, self._reread) for sink in self.sinks]
            self._lane_tasks = [
                asyncio.create_task(lane.run(), name=f"notify-{lane.sink.name}") for lane in self._lanes
            ]

    async def _end_session(self) -> None:
        """Another notifier has the cursors now: stop the lanes and close the sinks, saving nothing."""
        async with self._session_lock:
            await self._stop_lanes()
            await self._close_sinks()
            self._lanes = []
            self._seen = None
            self._saved = {}

    async def _stop_lanes(self) -> None:
        tasks, self._lane_tasks = self._lane_tasks, []
        for task in tasks:
            task.cancel()
        await finish_tasks(tasks)

    async def _close_sinks(self) -> None:
        stack, self._sink_stack = self._sink_stack, None
        if stack is not None:
            try:
                await stack.aclose()
            except Exception:  # closing must not hide why we stop
                log.exception("notify: closing the sinks failed")

    async def _reread(self, after: int, upto: int | None, limit: int) -> list[Delivery]:
        batch = await read_events(self.store, after, upto, limit)
        self.stats.read += len(batch)
        return batch

    # -- cursors and gaps --------------------------------------------------------------------

    async def _keep(self) -> None:
        """Every `_CURSOR_SAVE_S`: close the gaps that can be closed, then save the cursors."""
        failing = False
        next_report = time.monotonic() + _REPORT_EVERY_S
        last_report: str | None = None
        while True:
            await asyncio.sleep(_CURSOR_SAVE_S)
            try:
                async with self._session_lock:
                    if self._seen is None:
                        continue
                    await self._check_gaps(self._seen)
                    await self._save_cursors()
                    self.stats.upkeeps += 1
                if failing:
                    log.info("notify: cursors saved again")
                failing = False
            except (StoreError, psycopg.Error) as exc:
                if not failing:
                    log.warning("notify: cannot save cursors (%s); will retry", exc)
                failing = True
            if time.monotonic() >= next_report:
                next_report = time.monotonic() + _REPORT_EVERY_S
                report = self._report()
                if report != last_report:
                    log.info("notify: %s", report)
                    last_report = report

    async def _check_gaps(self, seen: _Seen) -> None:
        """Deliver or give up the gaps that no running transaction can fill any more."""
        if not seen.gaps:
            return
        async with self.store.connection() as conn:
            unstamped = [g for g in seen.gaps if g.horizon is None]
            if unstamped:
                # Every transaction that inserted an event in these gaps has an older transaction id.
                cur = await conn.execute("SELECT pg_current_xact_id()::text::bigint")
                horizon = int((await cur.fetchone() or (0,))[0])
                for gap in unstamped:
                    gap.horizon = horizon
            cur = await conn.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
            xmin = int((await cur.fetchone() or (0,))[0])
        ripe = [(g.lo, g.hi) for g in seen.gaps if g.horizon is not None and g.horizon <= xmin]
        now = time.monotonic()
        for gap in seen.gaps:
            if not gap.warned and now - gap.noticed > _GAP_WARN_S and (gap.lo, gap.hi) not in ripe:
                gap.warned = True
                log.warning(
                    "notify: events %d-%d not seen for %.0f s and a transaction older than them is still open:"
                    " cursors wait below them",
                    gap.lo,
                    gap.hi,
                    now - gap.noticed,
                )
        for lo, hi in ripe:
            after = lo - 1
            while True:  # committed after all: their NOTIFY is still on its way, or was missed
                batch = await self._reread(after, hi, _PAGE)
                for delivery in batch:
                    if not seen.accept(delivery.event_id):
                        self.stats.duplicates += 1
                        continue
                    log.info("notify: %s found by the gap check", delivery.describe())
                    for lane in self._lanes:
                        lane.offer(delivery)
                if len(batch) < _PAGE:
                    break
                after = batch[-1].event_id
            given_up = seen.forget(lo, hi)
            self.stats.gaps_given_up += given_up
            if given_up:
                log.debug("notify: %d event ids in %d-%d never committed (rolled back)", given_up, lo, hi)

    async def _save_cursors(self) -> None:
        cursors = {lane.sink.name: lane.cursor() for lane in self._lanes}
        changed = {name: c for name, c in cursors.items() if self._saved.get(name) != c}
        if changed:
            await self._write_cursors(changed)
            self._saved.update(changed)

    async def _read_cursors(self) -> dict[str, int]:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "SELECT sink, last_event FROM notify_cursors WHERE sink = ANY(%s)", ([s.name for s in self.sinks],)
            )
            return {str(r[0]): int(r[1]) for r in await cur.fetchall()}

    async def _write_cursors(self, cursors: dict[str, int]) -> None:
        if not cursors:
            return
        async with self.store.connection() as conn, conn.transaction():
            for name, last in cursors.items():
                await conn.execute(
                    "INSERT INTO notify_cursors (sink, last_event, updated_at) VALUES (%s, %s, now())"
                    " ON CONFLICT (sink) DO UPDATE SET last_event = excluded.last_event, updated_at = now()",
                    (name, last),
                )

    def _report(self) -> str:
        parts = [
            f"{name}: sent {s.sent}, held back {s.held_back}, failed {s.failed}, retried {s.retried}"
            + (f", snapshots {s.snapshots}" if s.snapshots else "")
            + (f", overflows {s.overflows}" if s.overflows else "")
            for name, s in self.stats.sinks.items()
        ]
        st = self.stats
        return (
            f"{st.notifications} notifications, {st.read} read back, {st.duplicates} duplicates dropped, "
            f"{st.reconnects} reconnects; " + "; ".join(parts) + f"; cursors {_fmt(self._saved)}"
        )


async def _try_lock(conn: AsyncConnection) -> bool:
    cur = await conn.execute("SELECT pg_try_advisory_lock(hashtext(%s), hashtext(%s))", _LOCK_KEY)
    row = await cur.fetchone()
    return bool(row and row[0])


async def _finish(tasks: Sequence[asyncio.Task[None]]) -> None:
    """Await cancelled tasks; log any that had failed."""
    for result in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(result, Exception):
            log.error("notify: task failed: %r", result)


def _fmt(cursors: dict[str, int]) -> str:
    return ", ".join(f"{name} at {c}" for name, c in cursors.items()) or "none"
