"""The rule worker (`pantau rules`): committed ingest batches in, alert transitions out, exactly once.

Ingest commits each batch together with an `ingest_batches` row and a `NOTIFY pantau_batches`
(docs/decisions.md D10). The worker, woken by that NOTIFY (or its absence timer), runs *steps*:

    claim     the waiting batches, oldest first (`FOR UPDATE SKIP LOCKED`), under a new claim number
    evaluate  their readings and rejections with the in-memory `Engine`, then the absence timer
              when it is due
    apply     each Signal as an alert transition (`AlertStore.raise_in` / `resolve_in`)
    record    a `rule_claims` row (claim, wall-clock time, whether the timer ran)

all in one transaction, so a batch's alert transitions commit exactly when its claim does.

The engine's state (pending `for`s, windows, watermarks, active levels) lives in memory and is
checkpointed every `checkpoint_interval_s` together with the number of the last claim it reflects;
the checkpoint's transaction deletes the batches and claims it covers. On start (or after any
failed step, whose evaluation may have run ahead of what committed) the worker restores the
checkpoint and replays the claims made since, in claim order, through the engine without applying
their signals again: they were committed with their claims. The rebuilt state is exactly the state
of the last commit, so a restart neither loses a pending `for` nor raises an alert twice.

One worker per name runs at a time: it holds a PostgreSQL advisory lock on its own connection for
as long as it serves (that connection also LISTENs); a second `pantau rules` waits for the lock. If
that connection drops, the worker stops serving and starts again from the checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import msgspec
import psycopg
from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import DictRow, dict_row

from pantau import audit
from pantau.alerts import AlertStore, FlapPolicy, Outcome, Transition, lock_events
from pantau.audit import Actor
from pantau.domain import Sensor
from pantau.errors import StoreUnavailable
from pantau.outbox import BATCHES_CHANNEL, OutboxBatch, claim, decode_outbox
from pantau.readings import Reading, Rejection
from pantau.rulepack import pack_digest
from pantau.rulepack.model import RuleSet
from pantau.settings import Settings
from pantau.store import Store, connect
from rules.engine import Engine
from rules.signals import EngineStats, Signal, SignalKind

__all__ = ["RuleWorker", "WorkerStats"]

log = logging.getLogger(__name__)

# The default pack, shipped beside the code (`[rules] file` overrides it).
# Who the alert events name as the actor of automatic transitions.
ACTOR = "rules"
# Reconnect backoff after the database went away.
_BACKOFF_START_S = 0.5
_BACKOFF_MAX_S = 5.0
# A waiting second worker says so this often.
_LOCK_WAIT_LOG_S = 30.0
# The sensor registry is re-read this often so that new sensors get rules without a restart.
_REGISTRY_REFRESH_S = 30.0
# A summary line is logged this often.
_REPORT_EVERY_S = 60.0
# The engine's state is frozen out of the garbage collector's reach (see `_freeze_heap`) and given
# back for a full collection this often.
_FULL_COLLECTION_S = 3600.0

_encode_state = msgspec.msgpack.Encoder().encode

# Changes when a sensor is added, removed or edited (`last_seen` left out: ingest moves it).
_REGISTRY_DIGEST = """
SELECT md5(coalesce(string_agg(concat_ws('|', id, kind, city, district, name, lat, lon, metadata::text), '/'
                               ORDER BY id), ''))
FROM sensors
"""


class _Stopped(Exception):
    """Stopped while waiting for another worker's lock."""


@dataclass(slots=True)
class WorkerStats:
    """Counters since start."""

    steps: int = 0
    batches: int = 0
    readings: int = 0
    rejections: int = 0
    ticks: int = 0
    outcomes: Counter[Outcome] = field(default_factory=Counter)
    replayed_claims: int = 0
    recoveries: int = 0
    checkpoints: int = 0
    checkpoint_s: float = 0.0  # how long the last checkpoint took, serialising and saving
    # Seconds from a batch's commit by ingest to the commit of its claim, worst since the last report.
    max_lag_s: float = 0.0


class RuleWorker:
    """Evaluates rules over committed ingest batches. `await run()` until cancelled or `stop()`ped."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        rules: RuleSet,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings
        self.cfg = settings.rules
        self.name = self.cfg.worker
        self.rules = rules
        flap = FlapPolicy(transitions=self.cfg.flap_transitions, window=timedelta(seconds=self.cfg.flap_window_s))
        self.alerts = AlertStore(store, flap_policy=flap)
        self.stats = WorkerStats()
        self.ready = asyncio.Event()
        self._clock = clock
        self._url = settings.service_database_url("rules")
        self._sensors: dict[str, Sensor] = {}
        self._registry_digest = ""
        self._registry_checked = 0.0  # monotonic time of the last refresh forced by an unknown sensor
        self._engine: Engine | None = None  # None: must be rebuilt from the checkpoint
        self._last_claim = 0  # the last claim committed by this worker
        self._reset_rules: set[str] = set()  # rules whose saved state could not be restored
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()

    @property
    def engine_stats(self) -> EngineStats | None:
        """The current engine's counters (readings evaluated, skipped by reason), None while rebuilding."""
        return self._engine.stats if self._engine is not None else None

    def stop(self) -> None:
        """Finish the step in hand, checkpoint and return from `run`."""
        self._stopping.set()
        self._wake.set()

    # -- lifecycle --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until stopped; ride out database outages by starting again from the checkpoint."""
        delay = _BACKOFF_START_S
        while not self._stopping.is_set():
            try:
                await self._session()
                return
            except _Stopped:
                return
            except (StoreUnavailable, psycopg.OperationalError) as exc:
                self.ready.clear()
                self._engine = None
                log.warning("rules: database unavailable (%s); starting again in %.1f s", exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                delay = min(delay * 2, _BACKOFF_MAX_S)

    async def _session(self) -> None:
        async with self._lock_connection() as conn:
            await conn.execute(f"LISTEN {BATCHES_CHANNEL}")
            await self._record_pack(conn)
            await self._load_sensors()
            await self._recover()
            await self._reconcile_alerts()
            pump = asyncio.create_task(self._pump(conn))
            self.ready.set()
            try:
                await self._serve(pump)
                await self._checkpoint()
            finally:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError, psycopg.Error):
                    await pump

    async def _record_pack(self, conn: AsyncConnection) -> None:
        """Say which pack this worker runs (`rule_packs`): the API shows it as the pack in force. A
        pack other than the one it ran before is a rule deployment: the audit log records it (the
        digests before and after, and where it came from)."""
        digest = pack_digest(self.rules.text)
        async with conn.transaction():
            cur = await conn.execute("SELECT digest FROM rule_packs WHERE worker = %s FOR UPDATE", (self.name,))
            row = await cur.fetchone()
            before = row[0] if row else None
            await conn.execute(
                "INSERT INTO rule_packs (worker, digest, source, content) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (worker) DO UPDATE SET digest = excluded.digest, source = excluded.source,"
                " content = excluded.content, loaded_at = now()",
                (self.name, digest, self.rules.source, self.rules.text),
            )
            if before != digest:
                who = Actor(name=f"rules:{self.name}", role="service", via="service", address=socket.gethostname())
                await audit.record(conn, who, "rules.deploy", f"rule_pack:{self.name}", before={"digest": before},
                                   after={"digest": digest, "source": str(self.rules.source),
                                          "rules": len(self.rules)})  # fmt: skip

    @contextlib.asynccontextmanager
    async def _lock_connection(self) -> AsyncIterator[AsyncConnection]:
        """A connection holding this worker name's advisory lock (waits while another holds it)."""
        conn = await connect(self._url)
        try:
            key = f"pantau.rules.{self.name}"
            waited = 0.0
            while True:
                cur = await conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (key,))
                row = await cur.fetchone()
                if row and row[0]:
                    break
                if waited % _LOCK_WAIT_LOG_S == 0:
                    log.warning("rules: another worker named %r is running; waiting for it to stop", self.name)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 1.0)
                if self._stopping.is_set():
                    raise _Stopped
                waited += 1.0
            yield conn
        finally:
            await conn.close()

    async def _pump(self, conn: AsyncConnection) -> None:
        """Wake the serve loop on every `NOTIFY pantau_batches` (ends when the connection does)."""
        async for _ in conn.notifies():
            self._wake.set()

    async def _serve(self, pump: asyncio.Task[None]) -> None:
        cfg = self.cfg
        next_tick = self._clock()  # a tick at start: sensors silent while we were away show up
        next_checkpoint = time.monotonic() + cfg.checkpoint_interval_s
        next_registry = time.monotonic() + _REGISTRY_REFRESH_S
        next_report = time.monotonic() + _REPORT_EVERY_S
        next_collection = time.monotonic() + _FULL_COLLECTION_S
        checkpointing: asyncio.Task[None] | None = None  # runs beside the steps (see _checkpoint)
        try:
            while not self._stopping.is_set():
                if pump.done():
                    exc = pump.exception() if not pump.cancelled() else None
                    raise StoreUnavailable(f"lock connection lost: {exc or 'closed'}")
                if self._engine is None:
                    if checkpointing is not None:  # it deletes the claims a recovery replays
                        await asyncio.gather(checkpointing, return_exceptions=True)
                        checkpointing = None
                    await self._recover()
                self._wake.clear()
                now = self._clock()
                tick = now >= next_tick
                claimed = await self._step(tick)
                if tick:
                    next_tick = now + cfg.tick_interval_s
                mono = time.monotonic()
                if checkpointing is not None and checkpointing.done():
                    checkpointing.result()  # a failed checkpoint surfaces here
                    checkpointing = None
                if mono >= next_checkpoint and checkpointing is None:
                    checkpointing = asyncio.create_task(self._checkpoint())
                    next_checkpoint = mono + cfg.checkpoint_interval_s
                if mono >= next_registry:
                    await self._refresh_sensors()
                    next_registry = mono + _REGISTRY_REFRESH_S
                if mono >= next_report:
                    self._report()
                    next_report = mono + _REPORT_EVERY_S
                if mono >= next_collection and checkpointing is None:
                    _freeze_heap(full=True)
                    next_collection = mono + _FULL_COLLECTION_S
                if claimed >= cfg.claim_max_batches:
                    continue  # more are waiting
                timeout = min(next_tick - self._clock(), next_checkpoint - time.monotonic())
                if timeout > 0 and not self._wake.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), timeout)
        finally:
            if checkpointing is not None:
                await asyncio.gather(checkpointing, return_exceptions=True)

    # -- one step ---------------------------------------------------------------------------------

    async def _step(self, tick: bool) -> int:
        """Claim, evaluate, apply and record in one transaction; returns the batches claimed."""
        engine = self._engine
        assert engine is not None
        advanced = idle = False
        try:
            async with (
                self.store.connection() as conn,
                conn.transaction() as tx,
                conn.cursor(row_factory=dict_row) as cur,
            ):
                await cur.execute("SELECT nextval('rule_claim_seq') AS claim")
                number = int((await cur.fetchone() or {"claim": 0})["claim"])
                batches = await claim(cur, number, self.cfg.claim_max_batches)
                if not batches and not tick:
                    idle = True
                    raise psycopg.Rollback(tx)  # nothing to do: no claim number spent on the record
                decoded = [decode_outbox(b["payload"]) for b in batches]
                if self._unknown_sensors(decoded):  # registered since the last refresh
                    await self._refresh_sensors()
                now = self._clock()
                advanced = True
                # In a thread: the event loop stays free for the notifier and the LISTEN pump while a
                # big step evaluates (the engine is touched by one step at a time).
                signals = await asyncio.to_thread(self._evaluate, engine, decoded, now, tick)
                if signals:  # before any alert is touched: alert events commit in id order (D20)
                    await lock_events(cur)
                outcomes = [await self._apply(cur, s) for s in signals]
                await cur.execute(
                    "INSERT INTO rule_claims (claim, worker, at, tick) VALUES (%s, %s, %s, %s)",
                    (number, self.name, now, tick),
                )
        except psycopg.OperationalError as exc:
            if advanced:
                self._engine = None  # evaluated ahead of what committed: rebuild from the checkpoint
            raise StoreUnavailable(str(exc)) from exc
        except BaseException:
            if advanced:
                self._engine = None
            raise
        if idle:
            return 0
        self._last_claim = number
        stats = self.stats
        stats.steps += 1
        stats.batches += len(batches)
        stats.ticks += tick
        for t in outcomes:
            stats.outcomes[t.outcome] += 1
        if batches:
            stats.max_lag_s = max(stats.max_lag_s, time.time() - min(float(b["created"]) for b in batches))
        return len(batches)

    def _unknown_sensors(self, decoded: Sequence[OutboxBatch]) -> bool:
        """Whether a batch names a sensor the engine does not know (at most once per refresh
        interval's tenth, so a stream of readings from a deleted sensor cannot force a reload each step)."""
        if time.monotonic() - self._registry_checked < _REGISTRY_REFRESH_S / 10:
            return False
        known = self._sensors
        for rows, rejections in decoded:
            if any(r[1] not in known for r in rows) or any(x[1] not in known for x in rejections):
                self._registry_checked = time.monotonic()
                return True
        return False

    def _evaluate(self, engine: Engine, decoded: Sequence[OutboxBatch], now: float, tick: bool) -> list[Signal]:
        """One step's evaluation; the same for live steps and replays."""
        readings: list[Reading] = []
        rejections: list[Rejection] = []
        for r, x in decoded:
            readings += r
            rejections += x
        self.stats.readings += len(readings)
        self.stats.rejections += len(rejections)
        signals = engine.evaluate(readings, rejections, arrived=now) if readings or rejections else []
        if tick:
            signals += engine.tick(now)
        return signals

    async def _apply(self, cur: AsyncCursor[DictRow], signal: Signal) -> Transition:
        if signal.kind is SignalKind.RAISE:
            assert signal.severity is not None
            return await self.alerts.raise_in(
                cur,
                signal.rule_id,
                signal.scope,
                city=signal.city,
                sensor_id=signal.sensor_id,
                severity=signal.severity,
                value=signal.value,
                event_ts=signal.event_time,
                reason=signal.reason,
                district=signal.district,
            )
        return await self.alerts.resolve_in(
            cur,
            signal.rule_id,
            signal.scope,
            by=ACTOR,
            reason=signal.reason,
            value=signal.value,
            event_ts=signal.event_time,
        )

    # -- state ------------------------------------------------------------------------------------

    async def _recover(self) -> None:
        """Restore the checkpoint and replay the claims committed since, without applying them again."""
        engine = Engine(self.rules, self._sensors)
        async with self.store.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute("SELECT last_claim, state FROM rule_checkpoints WHERE worker = %s", (self.name,))
            saved = await cur.fetchone()
            last = 0
            if saved is not None:
                last = int(saved["last_claim"])
                try:
                    dropped = engine.restore(msgspec.msgpack.decode(saved["state"]))
                except (ValueError, KeyError, TypeError, msgspec.DecodeError) as exc:
                    # A checkpoint of another engine version: start from fresh state. The open
                    # alerts of every rule are resolved at start, so none is left that nothing clears.
                    log.warning(
                        "rules: checkpoint of worker %r not usable (%s); starting from fresh state", self.name, exc
                    )
                    engine = Engine(self.rules, self._sensors)
                    dropped = [ev.rule.id for ev in engine.evaluators]
                active = {ev.rule.id for ev in engine.evaluators}
                self._reset_rules |= {rule_id for rule_id in dropped if rule_id in active}
                if dropped:
                    log.info(
                        "rules: state of %s dropped (rule removed, changed kind or engine upgraded)", ", ".join(dropped)
                    )
            await cur.execute(
                "SELECT claim, at, tick FROM rule_claims WHERE worker = %s AND claim > %s ORDER BY claim",
                (self.name, last),
            )
            claims = await cur.fetchall()
            for c in claims:
                await cur.execute("SELECT payload FROM ingest_batches WHERE claim = %s ORDER BY id", (c["claim"],))
                decoded = [decode_outbox(b["payload"]) for b in await cur.fetchall()]
                self._evaluate(engine, decoded, float(c["at"]), bool(c["tick"]))
                last = int(c["claim"])
        self._engine = engine
        self._last_claim = last
        _freeze_heap(full=True)  # the engine's objects, out of the collector's way
        self.stats.recoveries += 1
        self.stats.replayed_claims += len(claims)
        log.info(
            "rules: worker %r ready: %d rules over %d sensors; state %s, %d claims replayed",
            self.name,
            len(engine.evaluators),
            len(self._sensors),
            "restored" if saved is not None else "new",
            len(claims),
        )

    async def _checkpoint(self) -> None:
        """Save the engine state as of the last claim and drop the batches and claims it covers.

        The state is serialised by a forked child from a copy-on-write image of this process (as
        Redis' BGSAVE does): at 10,000 sensors × 20 rules `state()` takes a second or two, which
        must not stall evaluation. The serve loop runs this as a background task between steps;
        the image holds exactly the state of the last committed claim at the fork.
        """
        if self._engine is None:
            return
        last = self._last_claim
        started = time.monotonic()
        state = await _snapshot(self._engine)
        serialised = time.monotonic()
        async with self.store.connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO rule_checkpoints (worker, last_claim, saved_at, state) VALUES (%s, %s, now(), %s)"
                " ON CONFLICT (worker) DO UPDATE SET last_claim = excluded.last_claim,"
                " saved_at = excluded.saved_at, state = excluded.state",
                (self.name, last, state),
            )
            await conn.execute(
                "DELETE FROM ingest_batches b USING rule_claims c"
                " WHERE b.claim = c.claim AND c.worker = %s AND c.claim <= %s",
                (self.name, last),
            )
            await conn.execute("DELETE FROM rule_claims WHERE worker = %s AND claim <= %s", (self.name, last))
        done = time.monotonic()
        self.stats.checkpoints += 1
        self.stats.checkpoint_s = done - started
        log.debug(
            "rules: checkpoint at claim %d: %.1f MB serialised in %.2f s, saved in %.2f s",
            last,
            len(state) / 1e6,
            serialised - started,
            done - serialised,
        )

    async def _reconcile_alerts(self) -> None:
        """Resolve the open alerts that nothing would clear: those of rules no longer in the pack (or
        disabled), and those of rules whose state could not be restored (the rule changed kind, or
        a checkpoint of another engine version). The latter raise again if their condition holds."""
        assert self._engine is not None
        active = [ev.rule.id for ev in self._engine.evaluators]
        reset, self._reset_rules = sorted(self._reset_rules), set()
        async with self.store.connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            await lock_events(cur)
            await cur.execute(
                "SELECT rule_id, scope FROM alerts WHERE state <> 'resolved'"
                " AND (NOT (rule_id = ANY(%s)) OR rule_id = ANY(%s))",
                (active, reset),
            )
            for row in await cur.fetchall():
                rule_id = row["rule_id"]
                if rule_id in reset:
                    why = f"rule {rule_id}: its evaluation state was reset; it is raised again if the condition holds"
                else:
                    why = f"rule {rule_id} is no longer in the rule pack (removed or disabled)"
                await self.alerts.resolve_in(cur, rule_id, row["scope"], by=ACTOR, reason=why)
                log.info("rules: resolved open alert %s (%s): %s", rule_id, row["scope"], why)

    # -- sensors ----------------------------------------------------------------------------------

    async def _load_sensors(self, digest: str | None = None) -> None:
        """Read the registry; `digest` is its fingerprint when the caller has just computed it."""
        self._registry_digest = digest if digest is not None else await self._registry_fingerprint()
        self._sensors = {s.id: s for s in await self.store.sensors()}

    async def _registry_fingerprint(self) -> str:
        """A digest of everything rules read from the registry (not `last_seen`), computed by the
        database: comparing 10,000 sensors in Python every refresh stalled evaluation."""
        async with self.store.connection() as conn:
            cur = await conn.execute(_REGISTRY_DIGEST)
            row = await cur.fetchone()
        return str(row[0]) if row else ""

    async def _refresh_sensors(self) -> None:
        """Pick up registry edits: a new engine over the new registry, carrying the state over."""
        digest = await self._registry_fingerprint()
        if digest == self._registry_digest or self._engine is None:
            return
        await self._load_sensors(digest)
        self._engine.set_sensors(self._sensors)
        log.info("rules: sensor registry changed; now %d sensors", len(self._sensors))

    def _report(self) -> None:
        s = self.stats
        log.info(
            "rules: %d readings in %d batches, %d transitions (%s), worst lag %.3f s",
            s.readings,
            s.batches,
            sum(n for o, n in s.outcomes.items() if o is not Outcome.ALREADY_OPEN),
            ", ".join(f"{o.value} {n}" for o, n in sorted(s.outcomes.items())) or "none",
            s.max_lag_s,
        )
        s.max_lag_s = 0.0


def _freeze_heap(*, full: bool) -> None:
    """Keep the engine's objects out of the garbage collector's way.

    At 10,000 sensors × 20 rules the engine holds about a million objects, and a full (oldest
    generation) collection walks them all: it stalled evaluation for 0.1 to 0.4 s. `gc.freeze()`
    moves every object alive now to a permanent generation that collections skip; a forked
    checkpoint child then also copies no page just to update collector headers (the advice on
    fork in the `gc` docs). Cyclic garbage frozen with them would wait for a full collection:
    `full` unfreezes and collects everything first (after a recovery, and hourly); otherwise
    the young generations are collected first, so what just became garbage is not frozen.
    """
    if full:
        gc.unfreeze()
        gc.collect()
    else:
        gc.collect(1)
    gc.freeze()


def _lowest_priority() -> None:
    """Run this process only on CPU time nothing else wants (Linux SCHED_IDLE, else nice 19): a
    checkpoint can wait, while the worker, ingest and the broker it would slow cannot."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)


async def _snapshot(engine: Engine) -> bytes:
    """`engine.state()`, msgpack-encoded by a forked child, so this process goes on meanwhile.

    The child touches nothing but the engine and a pipe and leaves with `os._exit` (no atexit
    handlers, no finalisers that could close the parent's database or MQTT connections).
    """
    _freeze_heap(full=False)  # so the child copies no page just to update collector headers
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a frozen image of the engine
        status = 1
        try:
            _lowest_priority()
            os.close(read_fd)
            with os.fdopen(write_fd, "wb") as out:
                out.write(_encode_state(engine.state()))
            status = 0
        finally:
            os._exit(status)
    os.close(write_fd)

    def collect() -> tuple[bytes, int]:
        with os.fdopen(read_fd, "rb") as pipe:
            data = pipe.read()
        return data, os.waitpid(pid, 0)[1]

    data, status = await asyncio.to_thread(collect)
    if status != 0:
        raise RuntimeError(f"checkpoint child {pid} failed (wait status {status})")
    return data


