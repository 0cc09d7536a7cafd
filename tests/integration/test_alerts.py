"""The alert lifecycle against a real PostgreSQL: transitions, uniqueness under concurrency,
flapping, silences and the NOTIFY stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from pantau.alerts import (
    ALERTS_CHANNEL,
    AlertState,
    AlertStore,
    EventKind,
    FlapPolicy,
    Notification,
    Outcome,
    Severity,
    Transition,
    listen,
)
from pantau.domain import Sensor
from pantau.errors import InvalidArgument, StoreError
from pantau.settings import StoreSettings
from pantau.store import Store, connect

T0 = datetime(2031, 5, 1, 8, 0, tzinfo=UTC)
RULE = "ispu-station"
SCOPE = "KTG-AQ-07"
CITY = "kotamobagu"
AIR = Sensor(id=SCOPE, kind="air", city=CITY, district="Kotamobagu Barat")


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def alerts(store: Store, clock: Clock) -> AlertStore:
    return AlertStore(store, clock=clock)


async def _raise(
    alerts: AlertStore,
    severity: Severity | str,
    value: float,
    at: datetime = T0,
    *,
    rule: str = RULE,
    scope: str = SCOPE,
) -> Transition:
    return await alerts.raise_alert(
        rule,
        scope,
        city=CITY,
        sensor_id=scope if not scope.startswith("district:") else None,
        severity=severity,
        value=value,
        event_ts=at,
        reason=f"ISPU {value:.0f}",
    )


async def test_raise_opens_an_alert_and_records_the_event(alerts: AlertStore, store: Store) -> None:
    await store.upsert_sensors([AIR])
    t = await _raise(alerts, "warning", 150.0)
    assert t.outcome is Outcome.OPENED
    assert t.notification is Notification.NOTIFY and not t.silenced and not t.held_back
    alert = t.alert
    assert alert is not None
    assert (alert.rule_id, alert.scope, alert.city, alert.sensor_id) == (RULE, SCOPE, CITY, SCOPE)
    assert alert.district == "Kotamobagu Barat"  # from the sensor registry
    assert alert.state is AlertState.OPEN and alert.severity is Severity.WARNING
    assert alert.trigger_value == alert.current_value == 150.0
    assert alert.event_ts == T0 and alert.opened_at == T0
    events = await alerts.events(alert.id)
    assert [(e.kind, e.actor, e.value, e.severity) for e in events] == [
        (EventKind.OPENED, "system", 150.0, Severity.WARNING)
    ]
    assert events == list(t.events)


async def test_severity_escalates_and_deescalates_on_the_same_alert(alerts: AlertStore) -> None:
    opened = await _raise(alerts, Severity.WARNING, 150.0)  # Tidak Sehat
    same = await _raise(alerts, Severity.WARNING, 180.0, T0 + timedelta(minutes=10))
    up = await _raise(alerts, Severity.CRITICAL, 320.0, T0 + timedelta(minutes=20))  # Berbahaya
    down = await _raise(alerts, Severity.WARNING, 190.0, T0 + timedelta(minutes=30))
    assert [t.outcome for t in (opened, same, up, down)] == [
        Outcome.OPENED,
        Outcome.ALREADY_OPEN,
        Outcome.ESCALATED,
        Outcome.DEESCALATED,
    ]
    assert same.events == () and same.notification is Notification.NONE  # a refresh is not a transition
    assert {t.alert.id for t in (opened, same, up, down) if t.alert} == {opened.alert.id}  # type: ignore[union-attr]
    assert down.alert is not None
    assert down.alert.severity is Severity.WARNING
    assert down.alert.trigger_value == 150.0 and down.alert.current_value == 190.0
    events = await alerts.events(down.alert.id)
    assert [(e.kind, e.previous_severity, e.severity, e.value) for e in events] == [
        (EventKind.OPENED, None, Severity.WARNING, 150.0),
        (EventKind.ESCALATED, Severity.WARNING, Severity.CRITICAL, 320.0),
        (EventKind.DEESCALATED, Severity.CRITICAL, Severity.WARNING, 190.0),
    ]
    assert [e.event_ts for e in events] == [T0, T0 + timedelta(minutes=20), T0 + timedelta(minutes=30)]
    assert len(await alerts.list_alerts(state="all")) == 1


async def test_escalation_needs_attention_again_but_deescalation_keeps_the_ack(alerts: AlertStore) -> None:
    opened = await _raise(alerts, Severity.WARNING, 150.0)
    assert opened.alert is not None
    ack = await alerts.acknowledge(opened.alert.id, "rina")
    down = await _raise(alerts, Severity.INFO, 90.0)
    assert down.alert is not None and down.alert.state is AlertState.ACKNOWLEDGED
    assert down.alert.acked_by == "rina"
    up = await _raise(alerts, Severity.CRITICAL, 320.0)
    assert ack.outcome is Outcome.ACKNOWLEDGED and up.outcome is Outcome.ESCALATED
    assert up.alert is not None
    assert up.alert.state is AlertState.OPEN and up.alert.acked_by is None and up.alert.acked_at is None


async def test_resolve_then_raise_opens_a_new_alert(alerts: AlertStore, clock: Clock) -> None:
    first = await _raise(alerts, Severity.WARNING, 150.0)
    clock.advance(timedelta(minutes=5))
    resolved = await alerts.resolve(RULE, SCOPE, reason="ISPU 80 below clear", value=80.0, event_ts=T0)
    assert resolved.outcome is Outcome.RESOLVED and resolved.alert is not None
    assert resolved.alert.state is AlertState.RESOLVED
    assert resolved.alert.resolved_by == "system" and resolved.alert.resolved_at == clock.now
    assert resolved.alert.current_value == 80.0
    assert resolved.event is not None and resolved.event.kind is EventKind.RESOLVED
    assert resolved.event.reason == "ISPU 80 below clear"
    again = await alerts.resolve(RULE, SCOPE)
    assert again.outcome is Outcome.NOT_OPEN and again.alert is None and again.events == ()

    second = await _raise(alerts, Severity.WARNING, 160.0, T0 + timedelta(hours=1))
    assert second.outcome is Outcome.OPENED and second.alert is not None and first.alert is not None
    assert second.alert.id != first.alert.id
    assert [a.id for a in await alerts.list_alerts(state="all")] == [second.alert.id, first.alert.id]
    assert [a.id for a in await alerts.list_alerts(state="resolved")] == [first.alert.id]
    assert [a.id for a in await alerts.list_alerts()] == [second.alert.id]  # active by default


async def test_acknowledge_and_resolve_by_hand_with_named_outcomes(alerts: AlertStore, clock: Clock) -> None:
    opened = await _raise(alerts, Severity.CRITICAL, 320.0)
    assert opened.alert is not None
    alert_id = opened.alert.id
    clock.advance(timedelta(minutes=2))
    ack = await alerts.acknowledge(alert_id, "rina", reason="on it")
    assert ack.outcome is Outcome.ACKNOWLEDGED and ack.alert is not None
    assert (ack.alert.state, ack.alert.acked_by, ack.alert.acked_at) == (AlertState.ACKNOWLEDGED, "rina", clock.now)
    assert (await alerts.acknowledge(alert_id, "budi")).outcome is Outcome.ALREADY_ACKNOWLEDGED
    clock.advance(timedelta(minutes=30))
    done = await alerts.resolve_by_id(alert_id, "budi", reason="sensor cleaned")
    assert done.outcome is Outcome.RESOLVED and done.alert is not None
    assert (done.alert.state, done.alert.resolved_by, done.alert.resolved_at) == (
        AlertState.RESOLVED,
        "budi",
        clock.now,
    )
    twice = await alerts.resolve_by_id(alert_id, "budi")
    late_ack = await alerts.acknowledge(alert_id, "rina")
    assert twice.outcome is Outcome.ALREADY_RESOLVED and twice.events == ()
    assert late_ack.outcome is Outcome.ALREADY_RESOLVED and late_ack.alert == done.alert
    assert (await alerts.acknowledge(99999, "rina")).outcome is Outcome.NOT_FOUND
    assert (await alerts.resolve_by_id(99999, "rina")).outcome is Outcome.NOT_FOUND
    events = await alerts.events(alert_id)
    assert [(e.kind, e.actor, e.reason) for e in events] == [
        (EventKind.OPENED, "system", "ISPU 320"),
        (EventKind.ACKNOWLEDGED, "rina", "on it"),
        (EventKind.RESOLVED, "budi", "sensor cleaned"),
    ]
    assert (await alerts.resolve(RULE, SCOPE)).outcome is Outcome.NOT_OPEN


@pytest.fixture
async def stores(database_url: str) -> AsyncIterator[list[Store]]:
    """Twenty stores, one connection each: twenty concurrent evaluators."""
    async with AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(Store.open(database_url, StoreSettings(pool_max_size=1))) for _ in range(20)
        ]


async def test_no_duplicate_open_alert_under_concurrent_evaluation(stores: list[Store], database_url: str) -> None:
    severities = [Severity.INFO, Severity.WARNING, Severity.CRITICAL]
    for round_ in range(3):
        scope = f"district:{CITY}/Kotamobagu Barat#{round_}"
        results = await asyncio.gather(
            *(
                AlertStore(s).raise_alert(
                    RULE,
                    scope,
                    city=CITY,
                    sensor_id=None,
                    severity=severities[i % 3],
                    value=float(i),
                    event_ts=T0,
                    district="Kotamobagu Barat",
                )
                for i, s in enumerate(stores)
            )
        )
        outcomes = [r.outcome for r in results]
        assert outcomes.count(Outcome.OPENED) == 1, outcomes
        assert set(outcomes) <= {Outcome.OPENED, Outcome.ALREADY_OPEN, Outcome.ESCALATED, Outcome.DEESCALATED}
        assert len({r.alert.id for r in results if r.alert}) == 1
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        cur = await conn.execute("SELECT scope, count(*) FROM alerts WHERE state <> 'resolved' GROUP BY scope")
        assert sorted(n for _, n in await cur.fetchall()) == [1, 1, 1]
        # Every escalation or de-escalation was recorded against that one alert.
        cur = await conn.execute("SELECT count(DISTINCT alert_id) FROM alert_events")
        assert await cur.fetchone() == (3,)
        # The database itself refuses a second open alert for the rule and scope ...
        insert = (
            "INSERT INTO alerts (rule_id, scope, city, severity, state, opened_at, event_ts, updated_at)"
            " VALUES (%s, %s, 'kotamobagu', 'info', %s, now(), now(), now())"
        )
        with pytest.raises(psycopg.errors.UniqueViolation):
            await conn.execute(insert, (RULE, f"district:{CITY}/Kotamobagu Barat#0", "acknowledged"))
        # ... but keeps any number of resolved ones beside the open one.
        for _ in range(2):
            await conn.execute(
                "INSERT INTO alerts (rule_id, scope, city, severity, state, opened_at, event_ts, updated_at,"
                " resolved_at) VALUES (%s, %s, 'kotamobagu', 'info', 'resolved', now(), now(), now(), now())",
                (RULE, f"district:{CITY}/Kotamobagu Barat#0"),
            )


async def test_a_raise_waiting_on_an_uncommitted_open_alert_updates_it(alerts: AlertStore, database_url: str) -> None:
    """The loser of an INSERT race waits for the winner's commit and then escalates its alert."""
    async with await psycopg.AsyncConnection.connect(database_url) as other:
        cur = await other.execute(
            "INSERT INTO alerts (rule_id, scope, city, sensor_id, severity, state, opened_at, event_ts, updated_at)"
            " VALUES (%s, %s, %s, %s, 'warning', 'open', now(), now(), now()) RETURNING id",
            (RULE, SCOPE, CITY, SCOPE),
        )
        row = await cur.fetchone()
        assert row is not None
        racing = asyncio.ensure_future(_raise(alerts, Severity.CRITICAL, 320.0))
        await asyncio.sleep(0.3)
        assert not racing.done(), "the raise should wait on the uncommitted open alert"
        await other.commit()
    t = await asyncio.wait_for(racing, 10)
    assert t.outcome is Outcome.ESCALATED and t.alert is not None and t.alert.id == row[0]


async def test_flapping_is_flagged_and_its_notifications_held_back(store: Store, clock: Clock) -> None:
    alerts = AlertStore(store, clock=clock, flap_policy=FlapPolicy(transitions=4, window=timedelta(minutes=30)))
    minute = timedelta(minutes=1)
    t1 = await _raise(alerts, Severity.WARNING, 150.0, T0)
    t2 = await alerts.resolve(RULE, SCOPE, event_ts=T0 + 5 * minute)
    t3 = await _raise(alerts, Severity.WARNING, 152.0, T0 + 10 * minute)
    assert [t.notification for t in (t1, t2, t3)] == [Notification.NOTIFY] * 3
    assert t3.alert is not None and not t3.alert.flapping

    t4 = await alerts.resolve(RULE, SCOPE, event_ts=T0 + 15 * minute)  # 4 transitions in 15 minutes
    assert t4.outcome is Outcome.RESOLVED and t4.alert is not None and t4.alert.flapping
    assert t4.notification is Notification.FLAPPING and t4.held_back
    # The start of flapping is itself sent: it says why what follows is not.
    assert [(e.kind, e.notification) for e in t4.events] == [
        (EventKind.RESOLVED, Notification.FLAPPING),
        (EventKind.FLAPPING, Notification.NOTIFY),
    ]

    t5 = await _raise(alerts, Severity.WARNING, 155.0, T0 + 20 * minute)
    assert t5.outcome is Outcome.OPENED and t5.alert is not None and t5.alert.flapping
    assert [(e.kind, e.notification) for e in t5.events] == [(EventKind.OPENED, Notification.FLAPPING)]
    t6 = await _raise(alerts, Severity.CRITICAL, 320.0, T0 + 25 * minute)
    assert t6.outcome is Outcome.ESCALATED and t6.notification is Notification.FLAPPING  # still recorded

    # Half an hour after the opening at +20 min only that one transition is left in the window.
    t7 = await _raise(alerts, Severity.CRITICAL, 321.0, T0 + 51 * minute)
    assert t7.outcome is Outcome.ALREADY_OPEN and t7.alert is not None and not t7.alert.flapping
    assert [(e.kind, e.notification) for e in t7.events] == [(EventKind.FLAPPING_ENDED, Notification.NOTIFY)]
    t8 = await _raise(alerts, Severity.WARNING, 200.0, T0 + 52 * minute)
    assert t8.notification is Notification.NOTIFY


async def test_transitions_spread_wider_than_the_window_are_not_flapping(store: Store) -> None:
    alerts = AlertStore(store, flap_policy=FlapPolicy(transitions=4, window=timedelta(minutes=30)))
    every = timedelta(minutes=10)
    await _raise(alerts, Severity.WARNING, 150.0, T0)
    await alerts.resolve(RULE, SCOPE, event_ts=T0 + every)
    await _raise(alerts, Severity.WARNING, 150.0, T0 + 2 * every)
    # The fourth lands exactly one window after the first, which has left the window.
    fourth = await alerts.resolve(RULE, SCOPE, event_ts=T0 + 3 * every)
    assert fourth.notification is Notification.NOTIFY
    assert fourth.alert is not None and not fourth.alert.flapping
    fifth = await _raise(alerts, Severity.WARNING, 150.0, T0 + 3 * every + timedelta(seconds=1))
    assert fifth.alert is not None and fifth.alert.flapping  # now four within 30 minutes


def test_flap_policy_checks_itself() -> None:
    with pytest.raises(ValueError, match="transitions"):
        FlapPolicy(transitions=1)
    with pytest.raises(ValueError, match="window"):
        FlapPolicy(window=timedelta(0))


async def test_silences_hold_notifications_back_but_record_and_expire(
    alerts: AlertStore, store: Store, clock: Clock
) -> None:
    await store.upsert_sensors([AIR, Sensor(id="KTG-AQ-08", kind="air", city=CITY, district="Kotamobagu Timur")])
    silence = await alerts.add_silence(
        sensor_id=SCOPE, ends_at=T0 + timedelta(hours=2), created_by="rina", comment="filter change"
    )
    assert (silence.starts_at, silence.created_by, silence.describe()) == (T0, "rina", f"sensor {SCOPE}")
    t = await _raise(alerts, Severity.CRITICAL, 320.0)
    assert t.outcome is Outcome.OPENED and t.silenced and t.silence == silence
    assert t.notification is Notification.SILENCED and t.held_back
    assert t.alert is not None and [a.id for a in await alerts.list_alerts()] == [t.alert.id]  # recorded
    events = await alerts.events(t.alert.id)
    assert [(e.notification, e.silence_id) for e in events] == [(Notification.SILENCED, silence.id)]
    other = await _raise(alerts, Severity.CRITICAL, 320.0, scope="KTG-AQ-08")
    assert not other.silenced and other.notification is Notification.NOTIFY

    # A district silence for one rule covers that district's sensors (district from the registry).
    district = await alerts.add_silence(
        city=CITY,
        district="Kotamobagu Timur",
        rule_id="offline",
        ends_at=T0 + timedelta(minutes=30),
        created_by="budi",
    )
    assert district.describe() == "city kotamobagu, district Kotamobagu Timur, rule offline"
    assert (await _raise(alerts, Severity.WARNING, 0.0, rule="offline", scope="KTG-AQ-08")).silenced
    # KTG-AQ-07 is in Kotamobagu Barat: only its own sensor silence covers it.
    assert (await _raise(alerts, Severity.WARNING, 0.0, rule="offline", scope=SCOPE)).silence == silence
    found = await alerts.active_silence(rule_id="offline", city=CITY, district="Kotamobagu Timur")
    assert found == district
    assert await alerts.active_silence(rule_id="ispu", city=CITY, district="Kotamobagu Timur") is None
    assert await alerts.active_silence(rule_id="offline", city=CITY, district="Kotamobagu Barat") is None
    assert await alerts.silences(active_at=clock.now) == [silence, district]

    # Expiry: past its end a silence no longer applies; resolving now is notified again.
    clock.advance(timedelta(hours=2))
    assert await alerts.active_silence(rule_id=RULE, sensor_id=SCOPE, city=CITY) is None
    assert await alerts.silences(active_at=clock.now) == []
    resolved = await alerts.resolve(RULE, SCOPE, event_ts=clock.now)
    assert resolved.outcome is Outcome.RESOLVED and not resolved.silenced
    assert resolved.notification is Notification.NOTIFY
    # A silence that starts later does not apply yet.
    await alerts.add_silence(
        city=CITY, starts_at=clock.now + timedelta(hours=1), ends_at=clock.now + timedelta(hours=3), created_by="x"
    )
    assert not (await _raise(alerts, Severity.WARNING, 150.0, clock.now)).silenced
    clock.advance(timedelta(hours=1))
    assert (await _raise(alerts, Severity.CRITICAL, 320.0, clock.now)).silenced


async def test_silence_needs_a_sensor_or_a_city(alerts: AlertStore) -> None:
    end = T0 + timedelta(hours=1)
    with pytest.raises(ValueError, match="either a sensor or a city"):
        await alerts.add_silence(ends_at=end, created_by="x")
    with pytest.raises(ValueError, match="either a sensor or a city"):
        await alerts.add_silence(sensor_id=SCOPE, city=CITY, ends_at=end, created_by="x")
    with pytest.raises(ValueError, match="not after"):
        await alerts.add_silence(sensor_id=SCOPE, ends_at=T0, created_by="x")


@pytest.mark.parametrize("blank", ["", "   ", "\t\n"])
async def test_who_acts_must_be_named(alerts: AlertStore, blank: str) -> None:
    opened = await _raise(alerts, Severity.WARNING, 150.0)
    assert opened.alert is not None
    alert_id = opened.alert.id
    silence = await alerts.add_silence(sensor_id=SCOPE, ends_at=T0 + timedelta(hours=1), created_by="rina")
    attempts = [
        ("actor", alerts.acknowledge(alert_id, blank)),
        ("actor", alerts.resolve_by_id(alert_id, blank)),
        ("by", alerts.resolve(RULE, SCOPE, by=blank)),
        ("created_by", alerts.add_silence(city=CITY, ends_at=T0 + timedelta(hours=1), created_by=blank)),
        ("actor", alerts.end_silence(silence.id, blank)),
    ]
    for argument, attempt in attempts:
        with pytest.raises(InvalidArgument, match="is blank: say who acts") as refused:
            await attempt
        assert refused.value.argument == argument and isinstance(refused.value, ValueError)
    # Nothing was written: the alert is open and unacknowledged, the silence runs on.
    alert = await alerts.get(alert_id)
    assert alert is not None and alert.state is AlertState.OPEN
    assert (alert.acked_by, alert.resolved_by) == (None, None)
    assert [e.kind for e in await alerts.events(alert_id)] == [EventKind.OPENED]
    assert await alerts.silences() == [silence]

    ended = await alerts.end_silence(silence.id, "budi")
    assert ended is not None and ended.ended_by == "budi" and silence.ended_by is None


async def test_every_event_is_notified_on_commit(alerts: AlertStore, database_url: str) -> None:
    listener = await connect(database_url)
    try:
        await listen(listener)
        opened = await _raise(alerts, Severity.WARNING, 150.0)
        await _raise(alerts, Severity.WARNING, 151.0)  # no event, no NOTIFY
        await _raise(alerts, Severity.CRITICAL, 320.0)
        assert opened.alert is not None
        await alerts.acknowledge(opened.alert.id, "rina")
        await alerts.resolve(RULE, SCOPE, reason="x" * 10_000)  # long reasons are cut in the payload
        payloads = [
            json.loads(n.payload)
            async for n in listener.notifies(timeout=5, stop_after=4)
            if n.channel == ALERTS_CHANNEL
        ]
    finally:
        await listener.close()
    assert [(p["event"]["kind"], p["alert"]["state"], p["alert"]["severity"]) for p in payloads] == [
        ("opened", "open", "warning"),
        ("escalated", "open", "critical"),
        ("acknowledged", "acknowledged", "critical"),
        ("resolved", "resolved", "critical"),
    ]
    first = payloads[0]
    assert first["v"] == 1
    assert first["alert"]["id"] == opened.alert.id and first["alert"]["rule_id"] == RULE
    assert first["alert"]["opened_at"] == T0.isoformat()
    assert first["event"] == {
        "id": first["event"]["id"],
        "at": T0.isoformat(),
        "event_ts": T0.isoformat(),
        "kind": "opened",
        "actor": "system",
        "value": 150.0,
        "severity": "warning",
        "previous_severity": None,
        "reason": "ISPU 150",
        "notification": "notify",
        "silence_id": None,
    }
    assert payloads[1]["event"]["previous_severity"] == "warning"
    assert len(payloads[3]["event"]["reason"]) == 500


async def test_nothing_is_notified_when_the_transaction_rolls_back(database_url: str, store: Store) -> None:
    """The NOTIFY rides the event's transaction: a failed transition leaves no alert and no message."""
    listener = await connect(database_url)
    try:
        await listen(listener)
        async with store.connection() as conn:
            await conn.execute("ALTER TABLE alert_events ADD CONSTRAINT no_value CHECK (value IS NULL OR value < 1000)")
        with pytest.raises(StoreError, match="no_value"):
            await AlertStore(store).raise_alert(
                RULE, SCOPE, city=CITY, sensor_id=SCOPE, severity="critical", value=5000.0, event_ts=T0
            )
        got = [n async for n in listener.notifies(timeout=0.5)]
    finally:
        await listener.close()
    assert got == []
    assert await AlertStore(store).list_alerts(state="all") == []
