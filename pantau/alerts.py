"""The alert lifecycle: open, escalate, de-escalate, acknowledge, resolve; flapping and silences.

One alert per (rule, scope) that is not resolved, enforced by the partial unique index
`alerts_one_open` (migration 3): a raise that loses a race to a concurrent raise becomes an update
of the winner's alert. Every transition is a row in `alert_events` and a `NOTIFY pantau_alerts`
in the same transaction, so the live stream sees exactly what was committed.

Each lifecycle call returns a `Transition` whose `outcome` names what happened (alertmanager's
dedup style: a reason, not a bool) and whose `notification` says whether notifiers send its event
or why they hold it back (a silence applies, or the rule and scope are flapping). Alerts are
recorded either way. The NOTIFY payload is `notify_payload()`; docs/alerts.md describes it.

Who acts is recorded (`acked_by`, `resolved_by`, a silence's `created_by` and `ended_by`, each
event's `actor`) and must name someone: a blank actor is refused with `InvalidArgument` before
anything is written.

Clocks: `opened_at`, `acked_at`, `resolved_at` and each event's `at` are the wall clock
(`AlertStore(clock=...)`); `event_ts` is the event time of the reading behind a transition, given
by the evaluator. Flapping is counted in event time, silences in wall-clock time.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

import psycopg
from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import DictRow, dict_row

from pantau import audit
from pantau.audit import Actor
from pantau.errors import InvalidArgument, StoreError
from pantau.store import Store

__all__ = [
    "ALERTS_CHANNEL",
    "Alert",
    "AlertEvent",
    "AlertState",
    "AlertStore",
    "EventKind",
    "FlapPolicy",
    "Notification",
    "Outcome",
    "Silence",
    "Transition",
    "listen",
    "notify_payload",
]

log = logging.getLogger(__name__)

# PostgreSQL NOTIFY channel of alert events (the API's live stream LISTENs on it).
ALERTS_CHANNEL = "pantau_alerts"
# alert_events' ids are in commit order, so that the live stream resumes after an id without a gap
# or a double (docs/decisions.md D20): every transaction that writes alert events takes this lock
# before it touches an alert, and holds it until it commits. Transitions are short and few.
EVENTS_LOCK = (0x70616E74, 1)  # pg_advisory_xact_lock(int4 'pant', 1)
NOTIFY_PAYLOAD_VERSION = 1
# NOTIFY payloads must stay under 8,000 bytes; reasons are free text, so they are cut to this many
# characters in the payload (the full text stays in the tables).
_PAYLOAD_REASON_CHARS = 500
# A raise that conflicts with an open alert which is resolved before we can lock it inserts again;
# more than a few such races in a row means something is wrong, not busy.
_RAISE_ATTEMPTS = 5


class Severity(StrEnum):
    """Alert severity, least to most urgent."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """0, 1, 2: compare severities (escalation) by rank."""
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {s: i for i, s in enumerate(Severity)}


class AlertState(StrEnum):
    """open → acknowledged → resolved (or open → resolved)."""

    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class EventKind(StrEnum):
    """What an `alert_events` row records."""

    OPENED = "opened"
    ESCALATED = "escalated"
    DEESCALATED = "deescalated"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"
    FLAPPING = "flapping"  # the rule and scope started flapping: later notifications are held
    FLAPPING_ENDED = "flapping_ended"  # fewer transitions than the limit in the window again


class Outcome(StrEnum):
    """Why a lifecycle call did what it did."""

    OPENED = "opened"  # a new alert
    ESCALATED = "escalated"  # the open alert's severity went up (an acknowledged one is open again)
    DEESCALATED = "deescalated"  # the open alert's severity went down
    ALREADY_OPEN = "already_open"  # same severity: current value refreshed, no event
    ACKNOWLEDGED = "acknowledged"
    ALREADY_ACKNOWLEDGED = "already_acknowledged"
    RESOLVED = "resolved"
    ALREADY_RESOLVED = "already_resolved"  # resolve or acknowledge of a resolved alert
    NOT_OPEN = "not_open"  # automatic resolve with no open alert for the rule and scope
    NOT_FOUND = "not_found"  # no alert with that id


class Notification(StrEnum):
    """Whether notifiers send a transition's event, or why not."""

    NOTIFY = "notify"
    SILENCED = "silenced"  # a silence covers the alert: recorded, not sent
    FLAPPING = "flapping"  # the rule and scope are flapping: recorded, not sent
    NONE = "none"  # nothing was recorded, so there is nothing to send (only in `Transition`)


@dataclass(frozen=True, slots=True, kw_only=True)
class FlapPolicy:
    """Flapping: at least `transitions` opens and resolves of one rule and scope within `window`."""

    # Four transitions are two full open/resolve cycles: one cycle is a real event, two within half
    # an hour are a value hovering at a threshold that hysteresis did not absorb.
    transitions: int = 4
    window: timedelta = timedelta(minutes=30)

    def __post_init__(self) -> None:
        if self.transitions < 2:
            raise ValueError(f"transitions: {self.transitions} is below 2 (one open and one resolve)")
        if self.window <= timedelta(0):
            raise ValueError(f"window: {self.window} is not positive")


@dataclass(frozen=True, slots=True, kw_only=True)
class Alert:
    """One row of `alerts`."""

    id: int
    rule_id: str
    scope: str
    city: str
    district: str
    sensor_id: str | None
    severity: Severity
    state: AlertState
    opened_at: datetime
    event_ts: datetime
    updated_at: datetime
    acked_at: datetime | None
    acked_by: str | None
    resolved_at: datetime | None
    resolved_by: str | None
    trigger_value: float | None
    current_value: float | None
    reason: str
    flapping: bool

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Alert:
        return cls(**{**row, "severity": Severity(row["severity"]), "state": AlertState(row["state"])})

    def to_json(self) -> dict[str, Any]:
        """JSON-ready mapping (times in ISO 8601)."""
        return {name: _jsonable(getattr(self, name)) for name in self.__dataclass_fields__}


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertEvent:
    """One row of `alert_events`."""

    id: int
    alert_id: int
    at: datetime
    event_ts: datetime
    kind: EventKind
    actor: str
    value: float | None
    severity: Severity
    previous_severity: Severity | None
    reason: str
    notification: Notification
    silence_id: int | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> AlertEvent:
        prev = row["previous_severity"]
        return cls(
            **{
                **row,
                "kind": EventKind(row["kind"]),
                "severity": Severity(row["severity"]),
                "previous_severity": Severity(prev) if prev else None,
                "notification": Notification(row["notification"]),
            }
        )

    def to_json(self) -> dict[str, Any]:
        """JSON-ready mapping (times in ISO 8601)."""
        return {name: _jsonable(getattr(self, name)) for name in self.__dataclass_fields__}


@dataclass(frozen=True, slots=True, kw_only=True)
class Silence:
    """One row of `silences`: a sensor, or a city (and optionally one district), optionally one rule."""

    id: int
    sensor_id: str | None
    city: str | None
    district: str | None
    rule_id: str | None
    starts_at: datetime
    ends_at: datetime
    created_at: datetime
    created_by: str
    comment: str
    ended_by: str | None  # who ended it early (`end_silence`); None while it runs its course

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Silence:
        return cls(**row)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready mapping (times in ISO 8601)."""
        return {name: _jsonable(getattr(self, name)) for name in self.__dataclass_fields__}

    def describe(self) -> str:
        """`sensor KTG-AQ-07` / `city kotamobagu, district Kotamobagu Barat`, plus the rule if any."""
        what = f"sensor {self.sensor_id}" if self.sensor_id else f"city {self.city}"
        if self.district:
            what += f", district {self.district}"
        if self.rule_id:
            what += f", rule {self.rule_id}"
        return what


@dataclass(frozen=True, slots=True)
class Transition:
    """What a lifecycle call did: outcome, the alert as committed and the events it recorded.

    `events` is empty when nothing was recorded (ALREADY_OPEN without a flapping change, NOT_OPEN,
    NOT_FOUND, ALREADY_*). A notifier sends each event whose `notification` is NOTIFY, with `alert`.
    """

    outcome: Outcome
    alert: Alert | None
    events: tuple[AlertEvent, ...] = ()
    silence: Silence | None = None

    @property
    def event(self) -> AlertEvent | None:
        """The transition's own event (a flapping start or end follows it in `events`)."""
        return self.events[0] if self.events else None

    @property
    def notification(self) -> Notification:
        """Whether the transition's own event is sent, or why not."""
        return self.events[0].notification if self.events else Notification.NONE

    @property
    def silenced(self) -> bool:
        """True when a silence covers the alert (its events are recorded but not sent)."""
        return self.silence is not None

    @property
    def held_back(self) -> bool:
        """True when the transition's event was recorded but notifiers must not send it."""
        return self.notification in (Notification.SILENCED, Notification.FLAPPING)


def notify_payload(alert: Alert, event: AlertEvent) -> str:
    """The JSON sent with `NOTIFY pantau_alerts` for one event (see docs/alerts.md)."""
    alert_json = alert.to_json()
    event_json = event.to_json()
    alert_json["reason"] = alert.reason[:_PAYLOAD_REASON_CHARS]
    event_json["reason"] = event.reason[:_PAYLOAD_REASON_CHARS]
    del event_json["alert_id"]
    return json.dumps({"v": NOTIFY_PAYLOAD_VERSION, "alert": alert_json, "event": event_json}, separators=(",", ":"))


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _require_actor(value: str | Actor, argument: str = "actor") -> str:
    """The name of who acts; InvalidArgument unless there is one (empty or only whitespace is not).
    An `Actor` (the API's caller, someone at the CLI) also gets the change into the audit log."""
    name = value.name if isinstance(value, Actor) else value
    if not isinstance(name, str) or not name.strip():
        raise InvalidArgument(argument, f"{name!r} is blank: say who acts (an operator, or a service such as 'rules')")
    return name


async def _audit(
    cur: AsyncCursor[DictRow], actor: str | Actor, action: str, target: str, before: Any, after: Any
) -> None:
    if isinstance(actor, Actor):
        await audit.record(cur, actor, action, target, before=before, after=after)


_ALERT_COLUMNS = (
    "id, rule_id, scope, city, district, sensor_id, severity, state, opened_at, event_ts, updated_at,"
    " acked_at, acked_by, resolved_at, resolved_by, trigger_value, current_value, reason, flapping"
)
_EVENT_COLUMNS = (
    "id, alert_id, at, event_ts, kind, actor, value, severity, previous_severity, reason, notification, silence_id"
)
_SILENCE_COLUMNS = (
    "id, sensor_id, city, district, rule_id, starts_at, ends_at, created_at, created_by, comment, ended_by"
)

# A silence covers an alert when its rule (if any) is the alert's and it names the alert's sensor,
# or its city and (if any) district.
_SILENCE_MATCH = """
    (rule_id IS NULL OR rule_id = %(rule_id)s)
    AND ((sensor_id IS NOT NULL AND sensor_id = %(sensor_id)s)
         OR (sensor_id IS NULL AND city = %(city)s AND (district IS NULL OR district = %(district)s)))
    AND starts_at <= %(at)s AND ends_at > %(at)s
"""

ListState = Literal["open", "acknowledged", "resolved", "active", "all"]


class AlertStore:
    """The alert lifecycle on `Store`'s pool; every call is one transaction."""

    def __init__(
        self,
        store: Store,
        *,
        flap_policy: FlapPolicy | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._store = store
        self.flap_policy = flap_policy or FlapPolicy()
        self._clock = clock or (lambda: datetime.now(UTC))

    @asynccontextmanager
    async def _transaction(self, *, writes_events: bool = False) -> AsyncIterator[AsyncCursor[DictRow]]:
        try:
            async with (
                self._store.connection() as conn,
                conn.transaction(),
                conn.cursor(row_factory=dict_row) as cur,
            ):
                if writes_events:
                    await lock_events(cur)
                yield cur
        except psycopg.Error as exc:  # connection failures arrive as StoreUnavailable already
            raise StoreError(f"alert store: {exc}") from exc

    # -- raise and resolve (the evaluator's side) ----------------------------------------------

    async def raise_alert(
        self,
        rule_id: str,
        scope: str,
        *,
        city: str,
        sensor_id: str | None,
        severity: Severity | str,
        value: float | None,
        event_ts: datetime,
        reason: str = "",
        district: str | None = None,
    ) -> Transition:
        """Open an alert for (rule, scope), or update the open one: escalate, de-escalate or refresh.

        `district` defaults to the sensor's registered district (silences match on it).
        """
        async with self._transaction(writes_events=True) as cur:
            return await self.raise_in(
                cur,
                rule_id,
                scope,
                city=city,
                sensor_id=sensor_id,
                severity=severity,
                value=value,
                event_ts=event_ts,
                reason=reason,
                district=district,
            )

    async def raise_in(
        self,
        cur: AsyncCursor[DictRow],
        rule_id: str,
        scope: str,
        *,
        city: str,
        sensor_id: str | None,
        severity: Severity | str,
        value: float | None,
        event_ts: datetime,
        reason: str = "",
        district: str | None = None,
    ) -> Transition:
        """`raise_alert` inside the caller's transaction (a `dict_row` cursor on a READ COMMITTED
        connection): the rule worker commits a batch's claim and its alert transitions together."""
        severity = Severity(severity)
        if district is None:
            district = await _sensor_district(cur, sensor_id)
        for _ in range(_RAISE_ATTEMPTS):
            now = self._clock()
            await cur.execute(
                f"""
                INSERT INTO alerts (rule_id, scope, city, district, sensor_id, severity, state, opened_at,
                                    event_ts, updated_at, trigger_value, current_value, reason)
                VALUES (%(rule_id)s, %(scope)s, %(city)s, %(district)s, %(sensor_id)s, %(severity)s, 'open',
                        %(now)s, %(event_ts)s, %(now)s, %(value)s, %(value)s, %(reason)s)
                ON CONFLICT (rule_id, scope) WHERE state <> 'resolved' DO NOTHING
                RETURNING {_ALERT_COLUMNS}
                """,  # noqa: S608 - fixed column list
                {
                    "rule_id": rule_id,
                    "scope": scope,
                    "city": city,
                    "district": district,
                    "sensor_id": sensor_id,
                    "severity": severity.value,
                    "now": now,
                    "event_ts": event_ts,
                    "value": value,
                    "reason": reason,
                },
            )
            row = await cur.fetchone()
            if row is not None:
                return await self._opened(cur, Alert.from_row(row), now)
            current = await _lock_open(cur, rule_id, scope)
            if current is None:
                continue  # resolved between our INSERT and the lock (each statement sees the latest commits)
            return await self._update_open(cur, current, severity, value, event_ts, reason, now)
        raise StoreError(f"alert for rule {rule_id!r} scope {scope!r}: could not open or update it (kept racing)")

    async def resolve(
        self,
        rule_id: str,
        scope: str,
        *,
        by: str = "system",
        reason: str = "",
        value: float | None = None,
        event_ts: datetime | None = None,
    ) -> Transition:
        """Resolve the open alert of (rule, scope) because its clear condition holds."""
        async with self._transaction(writes_events=True) as cur:
            return await self.resolve_in(cur, rule_id, scope, by=by, reason=reason, value=value, event_ts=event_ts)

    async def resolve_in(
        self,
        cur: AsyncCursor[DictRow],
        rule_id: str,
        scope: str,
        *,
        by: str = "system",
        reason: str = "",
        value: float | None = None,
        event_ts: datetime | None = None,
    ) -> Transition:
        """`resolve` inside the caller's transaction."""
        _require_actor(by, "by")
        now = self._clock()
        current = await _lock_open(cur, rule_id, scope)
        if current is None:
            return Transition(Outcome.NOT_OPEN, None)
        return await self._resolve(cur, current, by, reason, value, event_ts or now, now)

    # -- actions by hand -----------------------------------------------------------------------

    async def resolve_by_id(self, alert_id: int, actor: str | Actor, *, reason: str = "") -> Transition:
        """Resolve an alert by hand; `actor` says who."""
        name = _require_actor(actor)
        async with self._transaction(writes_events=True) as cur:
            now = self._clock()
            current = await _lock_id(cur, alert_id)
            if current is None:
                return Transition(Outcome.NOT_FOUND, None)
            if current.state is AlertState.RESOLVED:
                return Transition(Outcome.ALREADY_RESOLVED, current)
            done = await self._resolve(cur, current, name, reason, None, now, now)
            assert done.alert is not None
            after = done.alert.to_json() | {"note": reason}
            await _audit(cur, actor, "alert.resolve", f"alert:{alert_id}", current.to_json(), after)
            return done

    async def acknowledge(self, alert_id: int, actor: str | Actor, *, reason: str = "") -> Transition:
        """Acknowledge an open alert: `actor` is on it."""
        name = _require_actor(actor)
        async with self._transaction(writes_events=True) as cur:
            now = self._clock()
            current = await _lock_id(cur, alert_id)
            if current is None:
                return Transition(Outcome.NOT_FOUND, None)
            if current.state is AlertState.RESOLVED:
                return Transition(Outcome.ALREADY_RESOLVED, current)
            if current.state is AlertState.ACKNOWLEDGED:
                return Transition(Outcome.ALREADY_ACKNOWLEDGED, current)
            alert = await _update(
                cur,
                current.id,
                "state = 'acknowledged', acked_at = %(now)s, acked_by = %(actor)s, updated_at = %(now)s",
                {"now": now, "actor": name},
            )
            silence = await _silence_for(cur, alert, now)
            event = await _record(
                cur, alert, EventKind.ACKNOWLEDGED, now, now, name, alert.current_value, reason, silence, None
            )
            after = alert.to_json() | {"note": reason}
            await _audit(cur, actor, "alert.acknowledge", f"alert:{alert_id}", current.to_json(), after)
            return Transition(Outcome.ACKNOWLEDGED, alert, (event,), silence)

    # -- steps -----------------------------------------------------------------------------------

    async def _opened(self, cur: AsyncCursor[DictRow], alert: Alert, now: datetime) -> Transition:
        silence = await _silence_for(cur, alert, now)
        previous = await _previous_flapping(cur, alert)
        flapping = await self._flapping(cur, alert, alert.event_ts)
        if flapping:
            alert = await _update(cur, alert.id, "flapping = true", {})
        event = await _record(
            cur,
            alert,
            EventKind.OPENED,
            now,
            alert.event_ts,
            "system",
            alert.trigger_value,
            alert.reason,
            silence,
            None,
        )
        events = [event]
        if flapping and not previous:
            events.append(await self._flapping_event(cur, alert, EventKind.FLAPPING, now, alert.event_ts, silence))
        return Transition(Outcome.OPENED, alert, tuple(events), silence)

    async def _update_open(
        self,
        cur: AsyncCursor[DictRow],
        current: Alert,
        severity: Severity,
        value: float | None,
        event_ts: datetime,
        reason: str,
        now: datetime,
    ) -> Transition:
        silence = await _silence_for(cur, current, now)
        events: list[AlertEvent] = []
        if severity.rank == current.severity.rank:
            alert = await _update(
                cur, current.id, "current_value = %(value)s, updated_at = %(now)s", {"value": value, "now": now}
            )
            outcome = Outcome.ALREADY_OPEN
        else:
            outcome = Outcome.ESCALATED if severity.rank > current.severity.rank else Outcome.DEESCALATED
            # An escalated alert needs someone's attention again, even if the milder one was acknowledged.
            reopen = ", state = 'open', acked_at = NULL, acked_by = NULL" if outcome is Outcome.ESCALATED else ""
            alert = await _update(
                cur,
                current.id,
                "severity = %(severity)s, current_value = %(value)s, reason = %(reason)s, updated_at = %(now)s"
                + reopen,
                {"severity": severity.value, "value": value, "reason": reason, "now": now},
            )
            kind = EventKind.ESCALATED if outcome is Outcome.ESCALATED else EventKind.DEESCALATED
            events.append(
                await _record(cur, alert, kind, now, event_ts, "system", value, reason, silence, current.severity)
            )
        if alert.flapping and not await self._flapping(cur, alert, event_ts, pending=0):
            alert = await _update(cur, alert.id, "flapping = false", {})
            events.append(await self._flapping_event(cur, alert, EventKind.FLAPPING_ENDED, now, event_ts, silence))
        return Transition(outcome, alert, tuple(events), silence)

    async def _resolve(
        self,
        cur: AsyncCursor[DictRow],
        current: Alert,
        actor: str,
        reason: str,
        value: float | None,
        event_ts: datetime,
        now: datetime,
    ) -> Transition:
        flapping = await self._flapping(cur, current, event_ts)
        alert = await _update(
            cur,
            current.id,
            "state = 'resolved', resolved_at = %(now)s, resolved_by = %(actor)s, updated_at = %(now)s,"
            " current_value = coalesce(%(value)s, current_value), flapping = %(flapping)s",
            {"now": now, "actor": actor, "value": value, "flapping": flapping},
        )
        silence = await _silence_for(cur, alert, now)
        events = [await _record(cur, alert, EventKind.RESOLVED, now, event_ts, actor, value, reason, silence, None)]
        if flapping and not current.flapping:
            events.append(await self._flapping_event(cur, alert, EventKind.FLAPPING, now, event_ts, silence))
        return Transition(Outcome.RESOLVED, alert, tuple(events), silence)

    async def _flapping(self, cur: AsyncCursor[DictRow], alert: Alert, event_ts: datetime, *, pending: int = 1) -> bool:
        """True when the transitions of the alert's rule and scope in the window, plus `pending`, reach the limit."""
        await cur.execute(
            """
            SELECT count(*) AS n FROM alert_events e JOIN alerts a ON a.id = e.alert_id
            WHERE a.rule_id = %s AND a.scope = %s AND e.kind IN ('opened', 'resolved')
              AND e.event_ts > %s AND e.event_ts <= %s
            """,
            (alert.rule_id, alert.scope, event_ts - self.flap_policy.window, event_ts),
        )
        row = await cur.fetchone()
        return int(row["n"] if row else 0) + pending >= self.flap_policy.transitions

    async def _flapping_event(
        self,
        cur: AsyncCursor[DictRow],
        alert: Alert,
        kind: EventKind,
        now: datetime,
        event_ts: datetime,
        silence: Silence | None,
    ) -> AlertEvent:
        n, window = self.flap_policy.transitions, self.flap_policy.window
        if kind is EventKind.FLAPPING:
            text = f"{n} or more opens and resolves within {window}: notifications held back"
        else:
            text = f"fewer than {n} opens and resolves within {window}: notifications resume"
        # The start and end of flapping are themselves sent (unless silenced): they say why the
        # events in between were not.
        return await _record(
            cur, alert, kind, now, event_ts, "system", alert.current_value, text, silence, None, held=False
        )

    # -- silences --------------------------------------------------------------------------------

    async def add_silence(
        self,
        *,
        created_by: str | Actor,
        ends_at: datetime,
        sensor_id: str | None = None,
        city: str | None = None,
        district: str | None = None,
        rule_id: str | None = None,
        starts_at: datetime | None = None,
        comment: str = "",
    ) -> Silence:
        """Silence a sensor, or a city (optionally one district), optionally for one rule only."""
        name = _require_actor(created_by, "created_by")
        if (sensor_id is None) == (city is None):
            raise ValueError("a silence names either a sensor or a city (with an optional district)")
        if district is not None and city is None:
            raise ValueError("a district silence needs its city")
        starts_at = starts_at or self._clock()
        if ends_at <= starts_at:
            raise ValueError(f"ends_at {ends_at.isoformat()} is not after starts_at {starts_at.isoformat()}")
        async with self._transaction() as cur:
            await cur.execute(
                f"""
                INSERT INTO silences (sensor_id, city, district, rule_id, starts_at, ends_at, created_by, comment)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING {_SILENCE_COLUMNS}
                """,  # noqa: S608 - fixed column list
                (sensor_id, city, district, rule_id, starts_at, ends_at, name, comment),
            )
            row = await cur.fetchone()
            assert row is not None
            silence = Silence.from_row(row)
            await _audit(cur, created_by, "silence.add", f"silence:{silence.id}", None, silence.to_json())
        return silence

    async def active_silence(
        self,
        *,
        rule_id: str,
        sensor_id: str | None = None,
        city: str | None = None,
        district: str = "",
        at: datetime | None = None,
    ) -> Silence | None:
        """The silence covering an alert of `rule_id` on that sensor / city / district at `at` (default now)."""
        async with self._transaction() as cur:
            return await _active_silence(cur, rule_id, sensor_id, city, district, at or self._clock())

    async def silences(self, *, active_at: datetime | None = None) -> list[Silence]:
        """All silences, or those active at `active_at`, latest ending first."""
        async with self._transaction() as cur:
            await cur.execute(
                f"SELECT {_SILENCE_COLUMNS} FROM silences"  # noqa: S608 - fixed column list
                " WHERE %(at)s::timestamptz IS NULL OR (starts_at <= %(at)s AND ends_at > %(at)s)"
                " ORDER BY ends_at DESC, id DESC",
                {"at": active_at},
            )
            return [Silence.from_row(r) for r in await cur.fetchall()]

    async def end_silence(self, silence_id: int, actor: str | Actor) -> Silence | None:
        """End a silence now (a maintenance window finished early), recording `actor` as `ended_by`;
        None when there is no such silence or it has already ended. One that has not started yet
        ends at its start."""
        name = _require_actor(actor)
        async with self._transaction() as cur:
            await cur.execute(
                f"SELECT {_SILENCE_COLUMNS} FROM silences WHERE id = %s FOR UPDATE",  # noqa: S608 - fixed columns
                (silence_id,),
            )
            found = await cur.fetchone()
            await cur.execute(
                "UPDATE silences SET ends_at = greatest(%(now)s, starts_at + interval '1 microsecond'),"  # noqa: S608
                f" ended_by = %(actor)s WHERE id = %(id)s AND ends_at > %(now)s RETURNING {_SILENCE_COLUMNS}",
                {"id": silence_id, "now": self._clock(), "actor": name},
            )
            row = await cur.fetchone()
            if row is None or found is None:
                return None
            ended = Silence.from_row(row)
            before = Silence.from_row(found).to_json()
            await _audit(cur, actor, "silence.end", f"silence:{silence_id}", before, ended.to_json())
        log.info("silence %d ended by %s", silence_id, name)
        return ended

    # -- reading ---------------------------------------------------------------------------------

    async def get(self, alert_id: int) -> Alert | None:
        """One alert by id."""
        async with self._transaction() as cur:
            await cur.execute(f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE id = %s", (alert_id,))  # noqa: S608
            row = await cur.fetchone()
        return Alert.from_row(row) if row else None

    async def events(self, alert_id: int) -> list[AlertEvent]:
        """An alert's events, oldest first."""
        async with self._transaction() as cur:
            await cur.execute(
                f"SELECT {_EVENT_COLUMNS} FROM alert_events WHERE alert_id = %s ORDER BY id",  # noqa: S608
                (alert_id,),
            )
            return [AlertEvent.from_row(r) for r in await cur.fetchall()]

    async def list_alerts(
        self,
        *,
        state: ListState | AlertState = "active",
        city: str | None = None,
        severity: Severity | str | None = None,
        rule_id: str | None = None,
        sensor_id: str | None = None,
        cities: Sequence[str] | None = None,
        before: tuple[datetime, int] | None = None,
        limit: int = 100,
    ) -> list[Alert]:
        """Alerts, newest first. `state`: one state, "active" (open or acknowledged) or "all".
        `cities` limits them to those (a caller's scope); `before` continues a listing after its
        last alert's (opened_at, id): keyset paging, stable while alerts keep opening."""
        states = {
            "active": ["open", "acknowledged"],
            "all": ["open", "acknowledged", "resolved"],
        }.get(str(state)) or [AlertState(state).value]
        async with self._transaction() as cur:
            await cur.execute(
                f"SELECT {_ALERT_COLUMNS} FROM alerts"  # noqa: S608 - fixed column list
                " WHERE state = ANY(%(states)s)"
                " AND (%(city)s::text IS NULL OR city = %(city)s)"
                " AND (%(severity)s::text IS NULL OR severity = %(severity)s)"
                " AND (%(rule_id)s::text IS NULL OR rule_id = %(rule_id)s)"
                " AND (%(sensor_id)s::text IS NULL OR sensor_id = %(sensor_id)s)"
                " AND (%(cities)s::text[] IS NULL OR city = ANY(%(cities)s))"
                " AND (%(before_at)s::timestamptz IS NULL OR (opened_at, id) < (%(before_at)s, %(before_id)s))"
                " ORDER BY opened_at DESC, id DESC LIMIT %(limit)s",
                {
                    "states": states,
                    "city": city,
                    "severity": Severity(severity).value if severity else None,
                    "rule_id": rule_id,
                    "sensor_id": sensor_id,
                    "cities": list(cities) if cities is not None else None,
                    "before_at": before[0] if before else None,
                    "before_id": before[1] if before else None,
                    "limit": limit,
                },
            )
            return [Alert.from_row(r) for r in await cur.fetchall()]


# -- queries ---------------------------------------------------------------------------------------


async def _sensor_district(cur: AsyncCursor[DictRow], sensor_id: str | None) -> str:
    if sensor_id is None:
        return ""
    await cur.execute("SELECT district FROM sensors WHERE id = %s", (sensor_id,))
    row = await cur.fetchone()
    return str(row["district"]) if row else ""


async def _lock_open(cur: AsyncCursor[DictRow], rule_id: str, scope: str) -> Alert | None:
    await cur.execute(
        f"SELECT {_ALERT_COLUMNS} FROM alerts"  # noqa: S608 - fixed column list
        " WHERE rule_id = %s AND scope = %s AND state <> 'resolved' FOR UPDATE",
        (rule_id, scope),
    )
    row = await cur.fetchone()
    return Alert.from_row(row) if row else None


async def _lock_id(cur: AsyncCursor[DictRow], alert_id: int) -> Alert | None:
    await cur.execute(f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE id = %s FOR UPDATE", (alert_id,))  # noqa: S608
    row = await cur.fetchone()
    return Alert.from_row(row) if row else None


async def _update(cur: AsyncCursor[DictRow], alert_id: int, assignments: str, params: dict[str, Any]) -> Alert:
    await cur.execute(
        f"UPDATE alerts SET {assignments} WHERE id = %(alert_id)s RETURNING {_ALERT_COLUMNS}",  # noqa: S608
        {**params, "alert_id": alert_id},
    )
    row = await cur.fetchone()
    assert row is not None, "the alert row is locked by this transaction"
    return Alert.from_row(row)


async def _previous_flapping(cur: AsyncCursor[DictRow], alert: Alert) -> bool:
    """Whether the alert before this one of the same rule and scope was flapping."""
    await cur.execute(
        "SELECT flapping FROM alerts WHERE rule_id = %s AND scope = %s AND id < %s ORDER BY id DESC LIMIT 1",
        (alert.rule_id, alert.scope, alert.id),
    )
    row = await cur.fetchone()
    return bool(row and row["flapping"])


async def _active_silence(
    cur: AsyncCursor[DictRow], rule_id: str, sensor_id: str | None, city: str | None, district: str, at: datetime
) -> Silence | None:
    await cur.execute(
        f"SELECT {_SILENCE_COLUMNS} FROM silences WHERE {_SILENCE_MATCH}"  # noqa: S608 - fixed text
        " ORDER BY ends_at DESC, id DESC LIMIT 1",
        {"rule_id": rule_id, "sensor_id": sensor_id, "city": city, "district": district, "at": at},
    )
    row = await cur.fetchone()
    return Silence.from_row(row) if row else None


async def _silence_for(cur: AsyncCursor[DictRow], alert: Alert, at: datetime) -> Silence | None:
    return await _active_silence(cur, alert.rule_id, alert.sensor_id, alert.city, alert.district, at)


async def _record(
    cur: AsyncCursor[DictRow],
    alert: Alert,
    kind: EventKind,
    at: datetime,
    event_ts: datetime,
    actor: str,
    value: float | None,
    reason: str,
    silence: Silence | None,
    previous_severity: Severity | None,
    *,
    held: bool | None = None,
) -> AlertEvent:
    """Insert one event and NOTIFY it; `held` overrides the alert's flapping flag."""
    await lock_events(cur)  # held already by a transaction that took it first, as all should
    if silence is not None:
        notification = Notification.SILENCED
    elif alert.flapping if held is None else held:
        notification = Notification.FLAPPING
    else:
        notification = Notification.NOTIFY
    await cur.execute(
        f"""
        INSERT INTO alert_events (alert_id, at, event_ts, kind, actor, value, severity, previous_severity, reason,
                                  notification, silence_id)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {_EVENT_COLUMNS}
        """,  # noqa: S608 - fixed column list
        (
            alert.id,
            at,
            event_ts,
            kind.value,
            actor,
            value,
            alert.severity.value,
            previous_severity.value if previous_severity else None,
            reason,
            notification.value,
            silence.id if silence else None,
        ),
    )
    row = await cur.fetchone()
    assert row is not None
    event = AlertEvent.from_row(row)
    # Delivered to listeners on commit, and only then: the stream never shows a rolled-back event.
    await cur.execute("SELECT pg_notify(%s, %s)", (ALERTS_CHANNEL, notify_payload(alert, event)))
    log.debug("alert %d %s (%s): %s", alert.id, kind.value, notification.value, reason)
    return event


async def lock_events(cur: AsyncCursor[Any]) -> None:
    """Take the alert events' commit-order lock for this transaction (see EVENTS_LOCK); a second
    call in the same transaction is free."""
    await cur.execute("SELECT pg_advisory_xact_lock(%s, %s)", EVENTS_LOCK)


async def listen(conn: AsyncConnection) -> None:
    """Make an autocommit connection receive alert events (`conn.notifies()` yields them)."""
    await conn.execute(f"LISTEN {ALERTS_CHANNEL}")
