"""Readings published over MQTT land in `readings`; bad ones land in `rejected_messages`."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace

from pantau.domain import Sensor
from pantau.embedded import EmbeddedMosquitto
from pantau.settings import Settings
from pantau.store import Backend, Store
from tests.integration.ingest_harness import running_ingest
from tests.support import Publisher, await_until

AIR = Sensor(id="KTG-AQ-01", kind="air", city="kotamobagu", district="Kotamobagu Barat")
RIVER = Sensor(id="SPT-RV-01", kind="flood", city="sampit", metadata={"siaga3_cm": 150})


async def test_json_and_senml_readings_land(
    settings: Settings, backend: Backend, store: Store, broker: EmbeddedMosquitto
) -> None:
    await store.upsert_sensors([AIR, RIVER])
    now = int(time.time())
    async with running_ingest(settings, backend):
        pub = Publisher(broker.port)
        pub.publish_all(
            [
                (AIR.topic, json.dumps({"ts": now - 60, "pm25": 35.5, "pm10": 80})),
                (
                    RIVER.topic,
                    json.dumps(
                        [
                            {"bn": "SPT-RV-01:", "bt": now - 120, "bu": "m", "n": "water_level_cm", "v": 1.25},
                            {"n": "water_level_cm", "t": 60, "v": 1.5},
                        ]
                    ),
                ),
            ]
        )
        pub.close()
        await await_until(lambda: store.count("readings"), what="readings", timeout_s=10)
        await await_until(lambda: _count_is(store, 4), what="4 readings")
    rows = await store.readings("SPT-RV-01", "water_level_cm", _dt(now - 3600), _dt(now + 1))
    assert [r["value"] for r in rows] == [125.0, 150.0]
    assert [r["ts"].timestamp() for r in rows] == [now - 120, now - 60]


async def _count_is(store: Store, n: int) -> bool:
    return await store.count("readings") == n


def _dt(epoch: float):  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC)


async def test_redelivered_message_is_stored_once_and_counted(
    settings: Settings, backend: Backend, store: Store, broker: EmbeddedMosquitto
) -> None:
    await store.upsert_sensors([AIR])
    payload = json.dumps({"ts": int(time.time()) - 5, "pm25": 18.0, "pm10": 30.0})
    async with running_ingest(settings, backend) as service:
        pub = Publisher(broker.port)
        pub.publish_all([(AIR.topic, payload)])
        await await_until(lambda: _count_is(store, 2), what="first delivery")
        pub.publish_all([(AIR.topic, payload), (AIR.topic, payload)])  # as a broker redelivers
        pub.close()
        registry = service.metrics.registry
        await await_until(
            lambda: registry.get_sample_value("pantau_ingest_duplicates_total") == 4,
            what="4 duplicate readings counted",
        )
        assert registry.get_sample_value("pantau_ingest_readings_accepted_total") == 2
        assert registry.get_sample_value("pantau_ingest_messages_total") == 3
        assert registry.get_sample_value("pantau_ingest_inflight_messages") == 0
    assert await store.count("readings") == 2


async def test_last_seen_follows_the_latest_message(
    settings: Settings, backend: Backend, store: Store, broker: EmbeddedMosquitto
) -> None:
    await store.upsert_sensors([AIR, RIVER])
    before = time.time()
    async with running_ingest(settings, backend):
        pub = Publisher(broker.port)
        # A backfilled (old) reading still means the sensor was heard from now.
        pub.publish_all([(AIR.topic, json.dumps({"ts": before - 86400, "pm25": 9.0}))])
        pub.close()

        async def seen() -> object:
            sensors = {s.id: s for s in await store.sensors()}
            return sensors["KTG-AQ-01"].last_seen

        first = await await_until(seen, what="last_seen of KTG-AQ-01")
        assert first.timestamp() >= before - 1  # type: ignore[attr-defined]
        pub = Publisher(broker.port)
        pub.publish_all([(AIR.topic, b'{"pm25": 9.5}')])
        pub.close()
        await await_until(lambda: _later(seen, first), what="last_seen to move on")
    sensors = {s.id: s for s in await store.sensors()}
    assert sensors["SPT-RV-01"].last_seen is None  # never heard from


async def _later(seen, first) -> bool:  # type: ignore[no-untyped-def]
    now = await seen()
    return bool(now and now > first)


async def test_a_blocked_last_seen_write_does_not_hold_up_readings(
    settings: Settings, backend: Backend, store: Store, broker: EmbeddedMosquitto, database_url: str
) -> None:
    # `last_seen` is written on a connection of its own: while another transaction holds the
    # sensor's row (as a slow UPDATE over thousands of sensors would hold ingest), readings go on
    # landing, and last_seen catches up once the row is free.
    import psycopg

    await store.upsert_sensors([AIR])
    async with running_ingest(settings, backend):
        pub = Publisher(broker.port)
        pub.publish_all([(AIR.topic, b'{"pm25": 9.0}')])
        await await_until(lambda: _count_is(store, 1), what="the first reading")

        async def seen() -> object:
            return {s.id: s for s in await store.sensors()}["KTG-AQ-01"].last_seen

        first = await await_until(seen, what="last_seen of KTG-AQ-01")
        async with await psycopg.AsyncConnection.connect(database_url) as locker:
            await locker.execute("SELECT 1 FROM sensors WHERE id = 'KTG-AQ-01' FOR NO KEY UPDATE")
            for k in range(5):
                pub.publish_all([(AIR.topic, json.dumps({"ts": time.time() - 60 + k, "pm25": 10.0 + k}))])
                await asyncio.sleep(settings.ingest.last_seen_interval_s * 2)  # a last_seen write is due, and waits
            await await_until(lambda: _count_is(store, 6), what="readings landing while last_seen waits", timeout_s=5)
            assert await seen() == first
            await locker.rollback()
        await await_until(lambda: _later(seen, first), what="last_seen once the row is free")
        pub.close()


async def test_last_seen_reaches_every_sensor_across_statements(
    settings: Settings, backend: Backend, store: Store, broker: EmbeddedMosquitto
) -> None:
    # last_seen goes out a thousand sensors a statement: 2,500 sensors take three, and every
    # sensor heard from gets its time, the ones not heard from none.
    fleet = [Sensor(id=f"LS-{i:04d}", kind="air", city="kotamobagu") for i in range(2600)]
    await store.upsert_sensors(fleet)
    before = time.time()
    async with running_ingest(settings, backend):
        pub = Publisher(broker.port)
        pub.publish_all([(s.topic, b'{"pm25": 7}') for s in fleet[:2500]])
        pub.close()

        async def all_seen() -> bool:
            seen = {s.id: s.last_seen for s in await store.sensors()}
            return all(seen[s.id] is not None for s in fleet[:2500])

        await await_until(all_seen, what="last_seen of 2,500 sensors", timeout_s=30)
    seen = {s.id: s.last_seen for s in await store.sensors()}
    assert all(seen[s.id].timestamp() >= before - 1 for s in fleet[:2500])  # type: ignore[union-attr]
    assert all(seen[s.id] is None for s in fleet[2500:])


async def test_a_registry_edit_reaches_a_running_ingest(
    settings: Settings, backend: Backend, store: Store, broker: EmbeddedMosquitto, database_url: str
) -> None:
    # The registry cache is read again every registry_refresh_s (on the side connection): a sensor
    # moved to another city is then accepted under its new topic and refused under its old one.
    import psycopg

    settings = replace(settings, ingest=replace(settings.ingest, registry_refresh_s=0.3))
    await store.upsert_sensors([AIR])
    moved = Sensor(id=AIR.id, kind="air", city="sampit")
    async with running_ingest(settings, backend) as service:
        pub = Publisher(broker.port)
        pub.publish_all([(AIR.topic, b'{"pm25": 5}')])
        await await_until(lambda: _count_is(store, 1), what="the reading under the old city")
        await store.upsert_sensors([moved])
        await await_until(lambda: service._registry.get(AIR.id) == ("air", "sampit"), what="the refreshed cache")
        pub.publish_all([(moved.topic, b'{"pm25": 6}'), (AIR.topic, b'{"pm25": 7}')])
        pub.close()
        await await_until(lambda: _count_is(store, 2), what="the reading under the new city")
        await await_until(lambda: store.count("rejected_messages"), what="the old topic's rejection")
    with psycopg.connect(database_url) as conn:
        rejected = conn.execute("SELECT topic, reason FROM rejected_messages").fetchall()
    assert rejected == [(AIR.topic, "city_mismatch")]
