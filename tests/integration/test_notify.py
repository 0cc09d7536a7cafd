"""The alert notifiers against a real PostgreSQL, a real mosquitto and a real HTTP receiver: events
on MQTT in order, the retained open-alerts snapshot, held-back events, webhook retries and
idempotency keys, cursors across restarts, reconnects, out-of-order commits and a standby notifier."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.utils
import json
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import paho.mqtt.client as paho
import psycopg
import pytest
from aiohttp import web
from paho.mqtt.enums import CallbackAPIVersion
from psycopg.rows import dict_row

from pantau.alerts import AlertStore, Transition, listen
from pantau.domain import Sensor
from pantau.embedded import EmbeddedMosquitto
from pantau.mqtt import free_port
from pantau.settings import Settings
from pantau.store import Store, connect
from pantau.topics import alerts_topic, open_alerts_topic
from rules import notify
from rules.notify import AlertNotifier, _Seen
from rules.sinks import _retry_after, idempotency_key
from tests.support import TcpProxy, await_until

CITY = "kotamobagu"
OTHER = "sampit"
RULE = "ispu-station"
T0 = datetime(2031, 5, 1, 8, 0, tzinfo=UTC)


# -- helpers ---------------------------------------------------------------------------------


class MqttWatcher:
    """A paho client on its own thread subscribed to `topic`; records (arrival, topic, payload, retain)."""

    def __init__(self, broker: EmbeddedMosquitto, topic: str = "pantau/v1/#", *, client_id: str = "") -> None:
        """With a `client_id` the session is persistent: the broker keeps what arrives while we are away."""
        self.received: list[tuple[float, str, bytes, bool]] = []
        self._subscribed = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311, clean_session=not client_id
        )
        self.client.on_message = lambda _c, _u, m: self.received.append((time.time(), m.topic, m.payload, m.retain))
        self.client.on_connect = lambda c, *_a: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_a: self._subscribed.set()
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self._subscribed.wait(10), "no SUBACK"

    def on(self, topic: str) -> list[dict[str, Any]]:
        return [json.loads(p) for _, t, p, _ in self.received if t == topic]

    def events(self, city: str = CITY) -> list[dict[str, Any]]:
        return self.on(alerts_topic(city))

    def event_ids(self, city: str = CITY) -> list[int]:
        return [e["event"]["id"] for e in self.events(city)]

    def last_snapshot(self, city: str = CITY) -> dict[str, Any] | None:
        snaps = self.on(open_alerts_topic(city))
        return snaps[-1] if snaps else None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def watcher(broker: EmbeddedMosquitto) -> AsyncIterator[MqttWatcher]:
    w = MqttWatcher(broker)
    yield w
    w.close()


async def retained(broker: EmbeddedMosquitto, topic: str) -> dict[str, Any]:
    """What a subscriber arriving now receives on `topic` (it must be a retained message)."""
    late = MqttWatcher(broker, topic)
    try:
        await await_until(lambda: late.received, timeout_s=5, what=f"a retained message on {topic}")
        _, _, payload, retain = late.received[0]
        assert retain, "the snapshot reached a late subscriber without the retain flag"
        return dict(json.loads(payload))
    finally:
        late.close()


class Receiver:
    """A real aiohttp server taking the webhook's POSTs; `respond(body, attempt)` says how to answer."""

    def __init__(self, respond: Callable[[dict[str, Any], int], tuple[int, dict[str, str]]] | None = None) -> None:
        self.requests: list[tuple[float, str, dict[str, Any], dict[str, str]]] = []  # (time, key, body, headers)
        self.respond = respond or (lambda _body, _attempt: (200, {}))
        self.delay_s: dict[tuple[str, int], float] = {}  # (key, attempt) -> answer this late
        self.every_delay_s = 0.0  # answer every request this late
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        key = request.headers["Idempotency-Key"]
        attempt = sum(1 for _, k, _, _ in self.requests if k == key) + 1
        self.requests.append((time.monotonic(), key, body, dict(request.headers)))
        await asyncio.sleep(self.delay_s.get((key, attempt), self.every_delay_s))
        status, headers = self.respond(body, attempt)
        return web.Response(status=status, headers=headers, text=f"answer {status}")

    async def start(self, port: int = 0) -> str:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        return f"http://127.0.0.1:{self._runner.addresses[0][1]}/hook"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def idempotency_keys(self) -> list[str]:
        return [k for _, k, _, _ in self.requests]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    yield r
    await r.stop()


def configure(settings: Settings, **rules: Any) -> Settings:
    """The test settings with a unique MQTT client id, fast webhook retries and `rules` overrides."""
    base = {"mqtt_client_id": f"pantau-rules-{secrets.token_hex(3)}", "webhook_backoff_max_s": 0.05}
    return dataclasses.replace(settings, rules=dataclasses.replace(settings.rules, **{**base, **rules}))


@asynccontextmanager
async def running(store: Store, settings: Settings, *, wait_ready: bool = True) -> AsyncIterator[AlertNotifier]:
    notifier = AlertNotifier(store, settings)
    task = asyncio.create_task(notifier.run())
    try:
        if wait_ready:
            ready = asyncio.create_task(notifier.ready.wait())
            done, _ = await asyncio.wait({task, ready}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
            if task in done:
                task.result()  # raises what stopped it
            assert notifier.ready.is_set(), "the notifier did not become ready"
        yield notifier
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def raise_(
    alerts: AlertStore, scope: str, severity: str = "warning", *, city: str = CITY, value: float = 150.0
) -> Transition:
    return await alerts.raise_alert(
        RULE, scope, city=city, sensor_id=scope, severity=severity, value=value, event_ts=T0, reason=f"ISPU {value:.0f}"
    )


async def upkeeps(notifier: AlertNotifier, rounds: int) -> None:
    """Wait until the notifier has done `rounds` more rounds of gap checks and cursor saves."""
    target = notifier.stats.upkeeps + rounds
    await await_until(lambda: notifier.stats.upkeeps >= target, timeout_s=10, what=f"{rounds} cursor saves")


async def cursors(store: Store) -> dict[str, int]:
    async with store.connection() as conn:
        cur = await conn.execute("SELECT sink, last_event FROM notify_cursors")
        return {str(r[0]): int(r[1]) for r in await cur.fetchall()}


def event_id(t: Transition) -> int:
    assert t.event is not None
    return t.event.id


@pytest.fixture
def alerts(store: Store) -> AlertStore:
    return AlertStore(store)


# -- MQTT ------------------------------------------------------------------------------------


async def test_events_reach_mqtt_in_order_with_the_notify_payload(
    store: Store, settings: Settings, alerts: AlertStore, watcher: MqttWatcher, database_url: str
) -> None:
    listener = await connect(database_url)
    await listen(listener)
    try:
        async with running(store, configure(settings)) as notifier:
            committed = []
            for step in (
                lambda: raise_(alerts, "KTG-AQ-07", "warning", value=150),
                lambda: raise_(alerts, "KTG-AQ-07", "critical", value=320),
                lambda: alerts.resolve(RULE, "KTG-AQ-07", reason="ISPU 80"),
            ):
                await step()
                committed.append(time.time())
            await await_until(lambda: len(watcher.events()) >= 3, timeout_s=5, what="three events on MQTT")
            assert notifier.stats["mqtt"].sent == 3
        notes = [n.payload async for n in listener.notifies(timeout=0.5)]
    finally:
        await listener.close()

    events = watcher.events()
    assert [e["event"]["kind"] for e in events] == ["opened", "escalated", "resolved"]
    assert [e["event"]["id"] for e in events] == sorted(e["event"]["id"] for e in events)
    assert {e["alert"]["id"] for e in events} == {events[0]["alert"]["id"]}
    assert events[1]["event"]["previous_severity"] == "warning" and events[1]["alert"]["severity"] == "critical"
    assert events[2]["alert"]["state"] == "resolved"
    assert all(e["v"] == 1 for e in events)
    # Byte for byte the NOTIFY payloads, and not retained.
    mine = [(p, r) for _, t, p, r in watcher.received if t == alerts_topic(CITY)]
    assert [p.decode() for p, _ in mine] == notes[:3]
    assert not any(r for _, r in mine)
    # Pushed, not polled: each event arrives well within a second of its commit.
    arrivals = [at for at, t, _, _ in watcher.received if t == alerts_topic(CITY)]
    assert max(a - c for a, c in zip(arrivals, committed, strict=True)) < 1.0


async def test_snapshot_is_retained_coalesced_and_empty_after_resolve(
    store: Store, settings: Settings, alerts: AlertStore, watcher: MqttWatcher, broker: EmbeddedMosquitto
) -> None:
    async with running(store, configure(settings)) as notifier:
        a = await raise_(alerts, "KTG-AQ-01", "warning")
        b = await raise_(alerts, "KTG-AQ-02", "critical", value=320)
        await raise_(alerts, "SPT-AQ-01", city=OTHER)

        def snapshot_ids(city: str = CITY) -> list[int] | None:
            snap = watcher.last_snapshot(city)
            return [x["id"] for x in snap["alerts"]] if snap else None

        assert a.alert and b.alert
        await await_until(lambda: snapshot_ids() == [a.alert.id, b.alert.id], timeout_s=5, what="a 2-alert snapshot")
        late = await retained(broker, open_alerts_topic(CITY))
        assert late["v"] == 1 and late["city"] == CITY
        assert [(x["id"], x["severity"], x["state"], x["silenced"]) for x in late["alerts"]] == [
            (a.alert.id, "warning", "open", False),
            (b.alert.id, "critical", "open", False),
        ]
        datetime.fromisoformat(late["at"])

        # A burst of opens is coalesced, and the last snapshot has them all.
        before = len(watcher.on(open_alerts_topic(CITY)))
        burst = [await raise_(alerts, f"KTG-AQ-{i:02d}") for i in range(10, 25)]
        await await_until(lambda: len(snapshot_ids() or []) == 17, timeout_s=5, what="a 17-alert snapshot")
        await asyncio.sleep(0.4)
        assert len(snapshot_ids() or []) == 17
        assert len(watcher.on(open_alerts_topic(CITY))) - before < len(burst)

        for t in [a, b, *burst]:
            assert t.alert
            await alerts.resolve_by_id(t.alert.id, "operator")
        await await_until(lambda: snapshot_ids() == [], timeout_s=5, what="an empty snapshot")
        assert (await retained(broker, open_alerts_topic(CITY)))["alerts"] == []
        assert len((await retained(broker, open_alerts_topic(OTHER)))["alerts"]) == 1
        assert notifier.stats["mqtt"].snapshots >= 4


async def test_silenced_events_are_held_back_but_the_snapshot_lists_the_alert(
    store: Store, settings: Settings, alerts: AlertStore, watcher: MqttWatcher, broker: EmbeddedMosquitto
) -> None:
    silence = await alerts.add_silence(city=CITY, ends_at=datetime.now(UTC) + timedelta(hours=1), created_by="ops")
    async with running(store, configure(settings)) as notifier:
        held = await raise_(alerts, "KTG-AQ-07")
        assert held.silenced and held.alert
        await alerts.acknowledge(held.alert.id, "ops")
        await raise_(alerts, "SPT-AQ-01", city=OTHER)  # a barrier: events reach the sink in order
        await await_until(lambda: watcher.events(OTHER), timeout_s=5, what="the barrier event")
        assert watcher.events(CITY) == []
        await await_until(lambda: watcher.last_snapshot(CITY), timeout_s=5, what="a snapshot")
        await await_until(
            lambda: (s := watcher.last_snapshot(CITY)) and s["alerts"][0]["state"] == "acknowledged",
            timeout_s=5,
            what="a snapshot with the acknowledgement",
        )
        (listed,) = (await retained(broker, open_alerts_topic(CITY)))["alerts"]
        assert (listed["id"], listed["silenced"], listed["silence_id"]) == (held.alert.id, True, silence.id)
        stats = notifier.stats["mqtt"]
        assert (stats.sent, stats.held_back) == (1, 2)


async def test_events_committed_while_the_broker_is_down_arrive_when_it_is_back(
    store: Store, settings: Settings, alerts: AlertStore, broker: EmbeddedMosquitto
) -> None:
    watcher = MqttWatcher(broker, f"pantau/v1/{CITY}/alerts", client_id=f"watcher-{secrets.token_hex(3)}")
    try:
        async with running(store, configure(settings)) as notifier:
            first = event_id(await raise_(alerts, "KTG-AQ-07"))
            await await_until(lambda: watcher.event_ids() == [first], timeout_s=5, what="the first event")
            await asyncio.to_thread(broker.stop)
            second = event_id(await raise_(alerts, "KTG-AQ-07", "critical"))
            await upkeeps(notifier, 2)  # two rounds of cursor saves with the event read and unacknowledged
            assert (await cursors(store))["mqtt"] == first  # not past an event the broker has not acknowledged
            await asyncio.to_thread(broker.start)
            await await_until(lambda: second in watcher.event_ids(), timeout_s=10, what="the event sent meanwhile")
            await await_until(_cursor_is(store, second), timeout_s=5, what="the cursor past the PUBACK")
        assert set(watcher.event_ids()) == {first, second}
    finally:
        watcher.close()


# -- webhook ---------------------------------------------------------------------------------


async def test_webhook_retries_with_the_same_key_and_gives_up_on_400(
    store: Store, settings: Settings, alerts: AlertStore, receiver: Receiver
) -> None:
    def respond(body: dict[str, Any], attempt: int) -> tuple[int, dict[str, str]]:
        scope = body["alert"]["scope"]
        if scope == "KTG-AQ-01":
            return {1: (500, {}), 2: (429, {"Retry-After": "1"})}.get(attempt, (200, {}))
        if scope == "KTG-AQ-02":
            return 400, {}
        return 200, {}

    receiver.respond = respond
    url = await receiver.start()
    async with running(store, configure(settings, webhook_url=url, mqtt_notify=False)) as notifier:
        first = await raise_(alerts, "KTG-AQ-01")
        refused = await raise_(alerts, "KTG-AQ-02")
        last = await raise_(alerts, "KTG-AQ-03")
        k1, k2, k3 = (idempotency_key(event_id(t)) for t in (first, refused, last))
        await await_until(
            lambda: k3 in receiver.idempotency_keys(), timeout_s=10, what="the third event at the webhook"
        )
        await asyncio.sleep(0.2)
        stats = notifier.stats["webhook"]
        assert (stats.sent, stats.failed, stats.retried) == (2, 1, 2)
        assert [s.name for s in notifier.sinks] == ["webhook"]

    assert receiver.idempotency_keys() == [k1, k1, k1, k2, k3]
    assert k1 == f"pantau-alert-event-{event_id(first)}"
    times = [at for at, _, _, _ in receiver.requests]
    assert times[1] - times[0] < 0.5  # backoff (max 0.05 s here)
    assert times[2] - times[1] >= 0.9  # Retry-After: 1 honoured
    bodies = [body for _, k, body, _ in receiver.requests if k == k1]
    assert bodies[0] == bodies[1] == bodies[2] and bodies[0]["event"]["id"] == event_id(first)
    assert bodies[0]["v"] == 1 and bodies[0]["event"]["kind"] == "opened"
    assert all(h["Content-Type"] == "application/json" for _, _, _, h in receiver.requests)


async def test_a_down_webhook_does_not_delay_mqtt_and_gets_the_event_when_back(
    store: Store, settings: Settings, alerts: AlertStore, watcher: MqttWatcher, receiver: Receiver
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    async with running(store, configure(settings, webhook_url=url, webhook_timeout_s=0.5)) as notifier:
        t = await raise_(alerts, "KTG-AQ-07")
        committed = time.time()
        await await_until(lambda: watcher.events(), timeout_s=5, what="the event on MQTT")
        assert watcher.received[-1][0] - committed < 1.0
        await await_until(lambda: notifier.stats["webhook"].retried >= 2, timeout_s=5, what="webhook retries")
        key = idempotency_key(event_id(t))
        receiver.delay_s[(key, 1)] = 1.0  # the first answer comes after the timeout: retried
        await receiver.start(port)
        await await_until(
            lambda: receiver.idempotency_keys() == [key, key], timeout_s=10, what="a timed-out and a good POST"
        )
        await await_until(lambda: notifier.stats["webhook"].sent == 1, timeout_s=5, what="the webhook send")
        assert notifier.stats["mqtt"].sent == 1


async def test_a_sink_far_behind_drops_its_queue_and_rereads_in_order(
    store: Store,
    settings: Settings,
    alerts: AlertStore,
    watcher: MqttWatcher,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(notify, "_QUEUE_MAX", 3)
    monkeypatch.setattr(notify, "_PAGE", 2)
    receiver.every_delay_s = 0.05  # a slow receiver: the webhook lane falls behind
    async with running(store, configure(settings, webhook_url=await receiver.start())) as notifier:
        ids = [event_id(await raise_(alerts, f"KTG-AQ-{i:02d}")) for i in range(12)]
        await await_until(lambda: len(watcher.events()) == 12, timeout_s=5, what="all events on MQTT")
        await await_until(lambda: len(receiver.idempotency_keys()) == 12, timeout_s=10, what="all at the webhook")
        await asyncio.sleep(0.3)
        assert notifier.stats["webhook"].overflows >= 1 and notifier.stats["mqtt"].overflows == 0
        ids.append(event_id(await raise_(alerts, "KTG-AQ-99")))  # live again afterwards
        await await_until(lambda: len(receiver.idempotency_keys()) == 13, timeout_s=5, what="the live event")
    assert receiver.idempotency_keys() == [idempotency_key(i) for i in ids]
    assert watcher.event_ids() == ids


# -- cursors ---------------------------------------------------------------------------------


async def test_restart_delivers_what_was_committed_while_stopped_and_nothing_twice(
    store: Store, settings: Settings, alerts: AlertStore, watcher: MqttWatcher, receiver: Receiver
) -> None:
    cfg = configure(settings, webhook_url=await receiver.start())
    async with running(store, cfg):
        first = [await raise_(alerts, "KTG-AQ-07"), await raise_(alerts, "KTG-AQ-07", "critical")]
        await await_until(lambda: len(watcher.events()) == 2 and len(receiver.idempotency_keys()) == 2, timeout_s=5)
    ids = [event_id(t) for t in first]
    assert await cursors(store) == {"mqtt": ids[-1], "webhook": ids[-1]}  # saved on stop

    later = [await alerts.resolve(RULE, "KTG-AQ-07"), await raise_(alerts, "KTG-AQ-08")]
    ids += [event_id(t) for t in later]
    await asyncio.sleep(0.3)
    assert len(watcher.events()) == 2  # nobody is sending

    async with running(store, cfg):
        await await_until(lambda: len(watcher.events()) == 4 and len(receiver.idempotency_keys()) == 4, timeout_s=5)
        await asyncio.sleep(0.3)
    assert watcher.event_ids() == ids
    assert receiver.idempotency_keys() == [idempotency_key(i) for i in ids]
    assert await cursors(store) == {"mqtt": ids[-1], "webhook": ids[-1]}


async def test_a_fresh_database_starts_after_the_last_event_without_replaying_history(
    store: Store, settings: Settings, alerts: AlertStore, watcher: MqttWatcher, broker: EmbeddedMosquitto
) -> None:
    await store.upsert_sensors([Sensor(id="SPT-AQ-01", kind="air", city=OTHER)])  # type: ignore[arg-type]
    old = await raise_(alerts, "KTG-AQ-01")
    await raise_(alerts, "KTG-AQ-02")
    resolved = await alerts.resolve(RULE, "KTG-AQ-02")
    async with running(store, configure(settings)):
        assert await cursors(store) == {"mqtt": event_id(resolved)}
        # The snapshot at start lists what is open (and every city with sensors gets one).
        assert old.alert
        await await_until(lambda: watcher.last_snapshot(CITY) and watcher.last_snapshot(OTHER), timeout_s=5)
        assert [x["id"] for x in (await retained(broker, open_alerts_topic(CITY)))["alerts"]] == [old.alert.id]
        assert (await retained(broker, open_alerts_topic(OTHER)))["alerts"] == []
        new = await raise_(alerts, "KTG-AQ-03")
        await await_until(lambda: watcher.events(), timeout_s=5, what="the new event")
        await asyncio.sleep(0.3)
    assert watcher.event_ids() == [event_id(new)]


async def test_events_commit_in_id_order_and_a_rollback_holds_the_cursor_but_loses_nothing(
    store: Store, settings: Settings, alerts: AlertStore, watcher: MqttWatcher, database_url: str
) -> None:
    """A second writer of alert events waits for the first to commit (EVENTS_LOCK, D20), so ids are
    in commit order; a rolled-back event leaves a hole in the ids the notifier waits at, then passes."""

    async def held_open(scope: str) -> tuple[Any, int]:
        """An event inserted by a transaction left open; returns (connection, event id)."""
        conn = await connect(database_url, autocommit=False)
        cur = conn.cursor(row_factory=dict_row)
        t = await alerts.raise_in(
            cur, RULE, scope, city=CITY, sensor_id=scope, severity="warning", value=1.0, event_ts=T0
        )
        return conn, event_id(t)

    def waiting_for_the_lock() -> bool:
        with psycopg.connect(database_url) as conn:
            row = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted").fetchone()
        return bool(row and row[0] == 1)

    async with running(store, configure(settings)) as notifier:
        slow, first = await held_open("KTG-AQ-01")
        later = asyncio.create_task(raise_(alerts, "KTG-AQ-02"))
        await await_until(waiting_for_the_lock, timeout_s=5, what="the second writer waiting for the first")
        assert not later.done()
        await slow.commit()
        await slow.close()
        second = event_id(await later)
        assert second > first
        await await_until(lambda: watcher.event_ids() == [first, second], timeout_s=5, what="both, in order")
        await await_until(_cursor_is(store, second), timeout_s=5, what="the cursor past both")

        doomed, lost = await held_open("KTG-AQ-03")
        after_task = asyncio.create_task(raise_(alerts, "KTG-AQ-04"))
        await await_until(waiting_for_the_lock, timeout_s=5, what="the next writer waiting for the doomed one")
        await doomed.rollback()
        await doomed.close()
        after = event_id(await after_task)
        assert after > lost
        await await_until(lambda: watcher.event_ids()[-1:] == [after], timeout_s=5, what="the event after the gap")
        await await_until(_cursor_is(store, after), timeout_s=6, what="the cursor past the rolled-back id")
        assert notifier.stats.gaps_given_up == 1
        assert lost not in watcher.event_ids()


def _cursor_is(store: Store, value: int) -> Callable[[], Any]:
    async def check() -> bool:
        return (await cursors(store)).get("mqtt") == value

    return check


async def test_a_lost_database_connection_is_caught_up_once_reconnected(
    store: Store, settings: Settings, alerts: AlertStore, watcher: MqttWatcher, database_url: str
) -> None:
    parts = urlsplit(database_url)
    assert parts.hostname and parts.port
    proxy = TcpProxy(parts.hostname, parts.port)
    proxied = urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.port}", f":{proxy.port}")))
    try:
        async with running(store, configure(dataclasses.replace(settings, database_url=proxied))) as notifier:
            ids = [event_id(await raise_(alerts, "KTG-AQ-07"))]
            await await_until(lambda: watcher.event_ids() == ids, timeout_s=5, what="the first event")
            proxy.cut()  # the LISTEN connection goes; the pool (direct) stays
            await await_until(lambda: not notifier.ready.is_set(), timeout_s=5, what="the loss to be noticed")
            ids += [event_id(await alerts.resolve(RULE, "KTG-AQ-07")), event_id(await raise_(alerts, "KTG-AQ-08"))]
            await asyncio.sleep(0.3)
            proxy.restore()
            await await_until(lambda: watcher.event_ids() == ids, timeout_s=10, what="the events committed meanwhile")
            await asyncio.sleep(0.3)
            assert watcher.event_ids() == ids
            assert notifier.stats.reconnects >= 1
            assert notifier.ready.is_set()
    finally:
        proxy.close()


async def test_a_second_notifier_stands_by_and_takes_over_from_the_cursor(
    store: Store, settings: Settings, alerts: AlertStore, watcher: MqttWatcher
) -> None:
    cfg = configure(settings)  # the same MQTT client id for both, as two `pantau rules` would have
    first_ids = []
    async with running(store, cfg):
        second = AlertNotifier(store, cfg)
        standby = asyncio.create_task(second.run())
        try:
            await await_until(lambda: second.stats.lock_refusals >= 2, timeout_s=10, what="the second asking twice")
            assert not second.ready.is_set()
            first_ids.append(event_id(await raise_(alerts, "KTG-AQ-07")))
            await await_until(lambda: watcher.event_ids() == first_ids, timeout_s=5, what="the first event")
        except BaseException:
            standby.cancel()
            raise
    try:
        # The first stopped (cursor saved, lock released): the second takes over from its cursor.
        missed = event_id(await raise_(alerts, "KTG-AQ-08"))
        await asyncio.wait_for(second.ready.wait(), 10)
        new = event_id(await raise_(alerts, "KTG-AQ-09"))
        await await_until(lambda: watcher.event_ids() == [*first_ids, missed, new], timeout_s=5, what="all events")
        await asyncio.sleep(0.3)
        assert watcher.event_ids() == [*first_ids, missed, new]
    finally:
        standby.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await standby


# -- the bookkeeping on its own ----------------------------------------------------------------


async def test_seen_ids_track_gaps_and_the_floor() -> None:
    seen = _Seen(10)
    assert (seen.accept(11), seen.accept(14), seen.accept(11)) == (True, True, False)
    assert (seen.floor, seen.high) == (11, 14)  # 12 and 13 may still commit
    assert seen.accept(13) and seen.floor == 11
    assert seen.accept(20) and [(g.lo, g.hi) for g in seen.gaps] == [(12, 12), (15, 19)]
    assert seen.forget(12, 16) == 3 and seen.floor == 16
    assert not seen.accept(12)  # given up: a late copy is not offered again
    assert seen.accept(18) and seen.forget(0, 100) == 2 and seen.floor == seen.high == 20


def test_retry_after_takes_seconds_or_a_date_and_caps_them() -> None:
    assert _retry_after("3") == 3.0
    assert _retry_after(None) is None and _retry_after("soon") is None
    soon = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 < (_retry_after(soon) or 0) <= 30
    assert _retry_after("86400") == 900.0
