"""Every bad input lands in `rejected_messages` with its own reason; nothing crashes ingest."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from datetime import UTC, datetime

import psycopg
import pytest

from pantau.domain import Reason, Sensor
from pantau.embedded import EmbeddedMosquitto
from pantau.settings import Settings
from pantau.store import Backend, Store
from tests.integration.ingest_harness import running_ingest
from tests.support import Publisher, await_until

AIR = Sensor(id="MJK-AQ-01", kind="air", city="mojokerto", district="Prajurit Kulon")
FLOOD = Sensor(id="MJK-RV-01", kind="flood", city="mojokerto", metadata={"river": "Brantas"})


def _cases(now: int) -> list[tuple[str, bytes, Reason]]:
    air, flood = AIR.topic, FLOOD.topic
    return [
        ("pantau/v1//air/MJK-AQ-01", b'{"pm25": 1}', Reason.BAD_TOPIC),  # `+` matches an empty city
        ("pantau/v1/mojokerto/air/", b'{"pm25": 1}', Reason.BAD_TOPIC),
        (air, b'{"pm25": 1, "pad": "' + b"x" * 70000 + b'"}', Reason.OVERSIZE),
        (air, b"", Reason.EMPTY),
        (air, b'{"pm25": 12.0,', Reason.MALFORMED_JSON),
        (air, b"hello", Reason.MALFORMED_JSON),
        (air, b'{"pm25": "12"}', Reason.WRONG_TYPE),
        (air, b'{"pm25": NaN}', Reason.NON_FINITE),
        (air, b'{"pm25": 1e999}', Reason.NON_FINITE),
        (air, b'[{"n": "MJK-AQ-01:pm25", "v": 1, "x_": 2}]', Reason.INVALID_SENML),
        (air, b'{"ts": "yesterday", "pm25": 1}', Reason.BAD_TIMESTAMP),
        (air, json.dumps({"ts": now + 3600, "pm25": 1}).encode(), Reason.FUTURE_TIMESTAMP),
        (air, json.dumps({"ts": now - 400 * 86400, "pm25": 1}).encode(), Reason.TOO_OLD),
        (air, b'{"pm1": 3}', Reason.UNKNOWN_METRIC),
        (air, b'{"water_level_cm": 3}', Reason.METRIC_NOT_FOR_KIND),
        (flood, b'[{"n": "water_level_cm", "u": "ft", "v": 3}]', Reason.BAD_UNIT),
        (air, b'{"pm25": -5}', Reason.OUT_OF_RANGE),
        (air, b'{"sensor_id": "MJK-AQ-02", "pm25": 5}', Reason.TOPIC_MISMATCH),
        ("pantau/v1/mojokerto/air/MJK-AQ-99", b'{"pm25": 5}', Reason.UNKNOWN_SENSOR),
        ("pantau/v1/mojokerto/flood/MJK-AQ-01", b'{"water_level_cm": 5}', Reason.KIND_MISMATCH),
        ("pantau/v1/sampang/air/MJK-AQ-01", b'{"pm25": 5}', Reason.CITY_MISMATCH),
        (air, b"[" * 1000 + b"]" * 1000, Reason.TOO_DEEP),
        (air, b"[" * 32000 + b"]" * 32000, Reason.TOO_DEEP),
        (air, b'{"a":' * 5000 + b"1" + b"}" * 5000, Reason.TOO_DEEP),
        (air, b'{"pm25": 20, "pm25": 900}', Reason.DUPLICATE_KEY),
        (flood, b'[{"n": "water_level_cm", "v": 100, "v": 900}]', Reason.DUPLICATE_KEY),
        (air, b'{"pm25": 1, "note": "\\ud800"}', Reason.MALFORMED_JSON),
    ]


async def test_each_bad_message_is_rejected_with_its_reason(
    settings: Settings, backend: Backend, store: Store, broker: EmbeddedMosquitto
) -> None:
    await store.upsert_sensors([AIR, FLOOD])
    now = int(time.time())
    cases = _cases(now)
    good = (AIR.topic, json.dumps({"ts": now, "pm25": 20.5}).encode())
    async with running_ingest(settings, backend) as service:
        pub = Publisher(broker.port)
        pub.publish_all([(t, p) for t, p, _ in cases] + [good])
        pub.close()
        await await_until(lambda: _rejected_count(store, len(cases)), what="all rejections", timeout_s=15)
        await await_until(lambda: _readings_count(store, 1), what="the good reading")
        assert service.mqtt.connected  # bad input never took ingest down
    assert settings.database_url is not None
    with psycopg.connect(settings.database_url) as conn:
        got = conn.execute("SELECT topic, payload, reason, detail FROM rejected_messages ORDER BY id").fetchall()
    limit = settings.ingest.max_payload_bytes
    # Messages of sensors missing from the registry cache are resolved at flush, so order may differ.
    expected = sorted((topic, payload[:limit], reason.value) for topic, payload, reason in cases)
    assert sorted((row[0], bytes(row[1]), row[2]) for row in got) == expected
    assert all(row[3] for row in got), "every rejection carries a detail"


async def test_partly_valid_pack_keeps_good_records(
    settings: Settings, backend: Backend, store: Store, broker: EmbeddedMosquitto
) -> None:
    await store.upsert_sensors([FLOOD])
    now = int(time.time())
    pack = [
        {"bn": "MJK-RV-01:", "bt": now - 300, "bu": "m", "n": "water_level_cm", "v": 2.0},
        {"n": "water_level_cm", "t": 60, "v": 250.0},  # 25,000 cm: out of range
        {"n": "water_level_cm", "t": 120, "v": 2.2},
        {"n": "pm25", "t": 120, "v": 3},  # not a flood metric
        {"n": "water_level_cm", "t": 180, "vs": "high"},  # string value
        {"n": "rain_mm", "u": "mm", "t": 180, "v": 4.5},
    ]
    async with running_ingest(settings, backend):
        pub = Publisher(broker.port)
        pub.publish_all([(FLOOD.topic, json.dumps(pack))])
        pub.close()
        await await_until(lambda: _rejected_count(store, 3), what="3 rejections")
        await await_until(lambda: _readings_count(store, 3), what="3 readings")
    assert settings.database_url is not None
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute("SELECT metric, value FROM readings ORDER BY ts, metric").fetchall()
        reasons = conn.execute(
            "SELECT reason, detail, payload IS NOT NULL FROM rejected_messages ORDER BY id"
        ).fetchall()
    assert [r[0] for r in rows] == ["water_level_cm", "water_level_cm", "rain_mm"]
    assert [r[1] for r in rows] == pytest.approx([200.0, 220.0, 4.5])
    assert [r[0] for r in reasons] == ["out_of_range", "metric_not_for_kind", "wrong_type"]
    assert [r[1].split(":")[0] for r in reasons] == ["record 1", "record 3", "record 4"]
    # The payload is kept once per message, with its first rejection.
    assert [r[2] for r in reasons] == [True, False, False]


async def test_late_registration_is_picked_up(
    settings: Settings, backend: Backend, store: Store, broker: EmbeddedMosquitto
) -> None:
    """A sensor registered while ingest runs is accepted on its first message."""
    async with running_ingest(settings, backend):
        await store.upsert_sensors([AIR])
        pub = Publisher(broker.port)
        pub.publish_all([(AIR.topic, b'{"pm25": 11}')])
        pub.close()
        await await_until(lambda: _readings_count(store, 1), what="reading of a newly registered sensor")
    assert await store.count("rejected_messages") == 0


async def test_a_message_too_deep_for_the_decoder_from_a_sensor_just_registered(
    settings: Settings, backend: Backend, store: Store, broker: EmbeddedMosquitto
) -> None:
    """A sensor missing from ingest's registry cache has its messages decoded in the flush loop:
    a payload nested 1,000 deep there is a rejection too, and ingest keeps going (it raised
    RecursionError out of the flush loop and exited)."""
    async with running_ingest(settings, backend) as service:
        await store.upsert_sensors([AIR])
        pub = Publisher(broker.port)
        pub.publish_all([(AIR.topic, b"[" * 1000 + b"]" * 1000), (AIR.topic, b'{"pm25": 11}')])
        pub.close()
        await await_until(lambda: _readings_count(store, 1), what="the reading after the deep payload")
        assert service.mqtt.connected
    assert settings.database_url is not None
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute("SELECT reason, detail FROM rejected_messages").fetchall()
    assert rows == [("too_deep", "JSON nested 1000 levels deep; readings need at most 2")]


async def test_a_conflicting_value_is_a_rejection_and_a_redelivery_is_silent(
    settings: Settings, backend: Backend, store: Store, broker: EmbeddedMosquitto
) -> None:
    """A reading for a stored (sensor, metric, time) with another value is recorded as
    conflicting_value with both values and counted; the same value again is a silent no-op; two
    records of one pack at the same time keep the first and reject the second."""
    await store.upsert_sensors([AIR, FLOOD])
    t0 = int(time.time()) - 3600
    at = datetime.fromtimestamp(t0 - 600, UTC).isoformat().replace("+00:00", "Z")
    pack = [
        {"bn": "MJK-RV-01:", "bt": t0, "n": "water_level_cm", "v": 100},
        {"n": "water_level_cm", "v": 999},
        {"n": "water_level_cm", "t": 60, "v": 120},
    ]
    first = json.dumps({"ts": at, "pm25": 40}).encode()
    async with running_ingest(settings, backend) as service:
        pub = Publisher(broker.port)
        pub.publish_all([(AIR.topic, first)])
        await await_until(lambda: _readings_count(store, 1), what="the first reading")
        pub.publish_all([(AIR.topic, json.dumps({"ts": at, "pm25": 99}).encode())])
        await await_until(lambda: _rejected_count(store, 1), what="the conflict")
        pub.publish_all([(AIR.topic, first), (FLOOD.topic, json.dumps(pack).encode())])
        await await_until(lambda: _readings_count(store, 3), what="the pack's readings")
        await await_until(lambda: _rejected_count(store, 2), what="the pack's conflict")
        pub.publish_all([(AIR.topic, json.dumps({"ts": at, "pm10": 50}).encode())])  # a later batch
        await await_until(lambda: _readings_count(store, 4), what="the reading after them")
        pub.close()
        counted = service.metrics.registry.get_sample_value(
            "pantau_ingest_rejected_total", {"reason": "conflicting_value"}
        )
    assert counted == 2
    assert settings.database_url is not None
    with psycopg.connect(settings.database_url) as conn:
        readings = conn.execute("SELECT sensor_id, metric, value FROM readings ORDER BY sensor_id, ts").fetchall()
        rejected = conn.execute("SELECT topic, reason, detail FROM rejected_messages ORDER BY id").fetchall()
    assert readings == [
        ("MJK-AQ-01", "pm25", 40.0),
        ("MJK-AQ-01", "pm10", 50.0),
        ("MJK-RV-01", "water_level_cm", 100.0),
        ("MJK-RV-01", "water_level_cm", 120.0),
    ]
    assert rejected == [
        (
            AIR.topic,
            "conflicting_value",
            f"pm25=99.0 at {at} conflicts with 40.0 stored for that sensor, metric and time; the stored value is kept",
        ),
        (
            FLOOD.topic,
            "conflicting_value",
            f"water_level_cm=999.0 at {datetime.fromtimestamp(t0, UTC).isoformat().replace('+00:00', 'Z')}"
            " conflicts with 100.0 stored for that sensor, metric and time; the stored value is kept",
        ),
    ]


async def test_ingest_takes_sensor_topics_only_and_drops_the_whole_tree_filter(
    settings: Settings, backend: Backend, store: Store, broker: EmbeddedMosquitto
) -> None:
    """Ingest subscribes to pantau/v1/+/{kind}/+ for the four kinds: the notifier's alert events
    and anything else under pantau/v1 never reach it (they came back to be dropped), and a session
    an earlier ingest kept with `pantau/v1/#` loses that filter when it is resumed."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    await store.upsert_sensors([AIR])
    subscribed = threading.Event()
    old = paho.Client(CallbackAPIVersion.VERSION2, client_id=settings.ingest.client_id, protocol=paho.MQTTv311,
                      clean_session=False)  # fmt: skip
    old.on_subscribe = lambda *_args: subscribed.set()
    old.connect("127.0.0.1", broker.port)
    old.loop_start()
    old.subscribe("pantau/v1/#", qos=1)  # what ingest subscribed to before
    assert subscribed.wait(10), "no SUBACK"
    old.disconnect()
    old.loop_stop()
    settings = dataclasses.replace(settings, ingest=dataclasses.replace(settings.ingest, mqtt_protocol=4))
    async with running_ingest(settings, backend) as service:
        pub = Publisher(broker.port)
        pub.publish_all(
            [
                ("pantau/v1/mojokerto/alerts", b'{"event": "opened"}'),
                ("pantau/v1/mojokerto/alerts/open", b"[]"),
                ("pantau/v1/mojokerto/weather/MJK-AQ-01", b'{"pm25": 1}'),
                ("pantau/v1/mojokerto", b'{"pm25": 1}'),
                (AIR.topic, b'{"pm25": 11}'),
            ]
        )
        pub.close()
        await await_until(lambda: _readings_count(store, 1), what="the sensor's reading")
        received = service.metrics.registry.get_sample_value("pantau_ingest_messages_total")
    assert received == 1, f"ingest received {received} messages, not only the sensor's"
    assert await store.count("rejected_messages") == 0


async def _rejected_count(store: Store, n: int) -> bool:
    return await store.count("rejected_messages") >= n


async def _readings_count(store: Store, n: int) -> bool:
    return await store.count("readings") >= n


async def test_a_batch_the_database_refuses_is_isolated_not_lost(
    settings: Settings, backend: Backend, store: Store, broker: EmbeddedMosquitto
) -> None:
    """A refusal that is not a lost connection (here an operator's CHECK constraint) costs only
    the refused readings, dead-lettered as store_error; the rest of the batch, including its other
    rejections, is stored, and ingest keeps going."""
    assert settings.database_url is not None
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE readings ADD CONSTRAINT pm25_below_1000 CHECK (metric <> 'pm25' OR value < 1000)")
    await store.upsert_sensors([AIR])
    now = int(time.time())
    async with running_ingest(settings, backend) as service:
        pub = Publisher(broker.port)
        pub.publish_all(
            [
                (AIR.topic, json.dumps({"ts": now - 3, "pm25": 40.0}).encode()),
                (AIR.topic, json.dumps({"ts": now - 2, "pm25": 1500.0}).encode()),  # plausible, refused by the CHECK
                (AIR.topic, b"{not json"),
                (AIR.topic, json.dumps({"ts": now - 1, "pm10": 60.0}).encode()),
            ]
        )
        pub.close()
        await await_until(lambda: _rejected_count(store, 2), what="both rejections")
        await await_until(lambda: _readings_count(store, 2), what="the two good readings")
        assert service.mqtt.connected
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute("SELECT metric, value FROM readings ORDER BY ts").fetchall()
        rejected = conn.execute("SELECT topic, reason, detail FROM rejected_messages ORDER BY reason").fetchall()
    assert rows == [("pm25", 40.0), ("pm10", 60.0)]
    assert [(r[0], r[1]) for r in rejected] == [(AIR.topic, "malformed_json"), (AIR.topic, "store_error")]
    assert "pm25_below_1000" in rejected[1][2]


async def test_a_nul_character_in_a_rejection_does_not_poison_ingest(
    settings: Settings, backend: Backend, store: Store, broker: EmbeddedMosquitto
) -> None:
    await store.upsert_sensors([AIR])
    async with running_ingest(settings, backend):
        pub = Publisher(broker.port)
        # An unknown metric named with a NUL: its name ends up in the rejection's detail.
        pub.publish_all([(AIR.topic, b'{"pm\\u000025": 3}'), (AIR.topic, b'{"pm25": 3}')])
        pub.close()
        await await_until(lambda: _rejected_count(store, 1), what="the rejection")
        await await_until(lambda: _readings_count(store, 1), what="the reading after it")
    assert settings.database_url is not None
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute("SELECT reason, detail FROM rejected_messages").fetchone()
    assert row is not None and row[0] == "unknown_metric" and "\\x00" in row[1]
