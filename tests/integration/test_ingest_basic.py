"""Readings published over MQTT land in `readings`; bad ones land in `rejected_messages`."""

from __future__ import annotations

import json
import time

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
