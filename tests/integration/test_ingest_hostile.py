"""A running `pantau ingest` under hostile input: every message the broker took is stored or
recorded as rejected, and ingest stays up.

Each hypothesis example publishes a handful of payloads (tests/hostile.py), each to a sensor of its
own, so that the readings and rejections of one message are told apart by sensor. Half the sensors
are registered before ingest starts (the receive callback decodes them), half while it runs (they
are decoded in the flush loop, where a RecursionError once stopped ingest). A last reading on its
own sensor closes the example: ingest commits batches in order, so once it is stored every message
before it has been committed.
"""

from __future__ import annotations

import itertools
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pantau.embedded import EmbeddedMosquitto
from pantau.mqtt import free_port
from tests.hostile import Hostile, payloads
from tests.support import Publisher, ingest_env, start_ingest_process, wait_until

pytestmark = pytest.mark.slow

CITY = "kotamobagu"
MESSAGES_PER_EXAMPLE = 12
EXAMPLES = 40
# Sensors registered before ingest starts: room for hypothesis' shrinking after a failure too.
EARLY_SENSORS = 20000
_serial = itertools.count()


def _topic(sensor_id: str) -> str:
    return f"pantau/v1/{CITY}/air/{sensor_id}"


def _register(url: str, ids: list[str]) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO sensors (id, kind, city) SELECT unnest(%s::text[]), 'air', %s", (ids, CITY))


@pytest.fixture
def ingest(database_url: str, broker: EmbeddedMosquitto, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real `pantau ingest` with sensors E-<n> registered before it started."""
    _register(database_url, [f"E-{n}" for n in range(EARLY_SENSORS)])
    env = ingest_env(database_url, broker.url, PANTAU_INGEST_METRICS_PORT=str(free_port()))
    proc = start_ingest_process(env, tmp_path / "ingest.log")
    pub = Publisher(broker.port)

    def probe() -> bool:  # the broker drops what comes before ingest's first subscription: try again
        pub.publish_all([(_topic("E-0"), b'{"pm25": 1}')])
        return "E-0" in _accounted(database_url, ["E-0"])

    try:
        wait_until(probe, timeout_s=30, interval_s=0.5, what="ingest up")
        pub.close()
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _accounted(url: str, sensor_ids: list[str]) -> dict[str, tuple[int, int]]:
    """sensor id -> (readings stored, rejections recorded) for the sensors that have either."""
    with psycopg.connect(url) as conn:
        stored = conn.execute(
            "SELECT sensor_id, count(*) FROM readings WHERE sensor_id = ANY(%s) GROUP BY 1", (sensor_ids,)
        ).fetchall()
        rejected = conn.execute(
            "SELECT topic, count(*) FROM rejected_messages WHERE topic = ANY(%s) GROUP BY 1",
            ([_topic(s) for s in sensor_ids],),
        ).fetchall()
    out = {s: (n, 0) for s, n in stored}
    for topic, n in rejected:
        s = topic.rsplit("/", 1)[1]
        out[s] = (out.get(s, (0, 0))[0], n)
    return out


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(batch=st.lists(payloads, min_size=1, max_size=MESSAGES_PER_EXAMPLE))
def test_every_acknowledged_message_is_stored_or_rejected_and_ingest_stays_up(
    batch: list[Hostile], ingest: subprocess.Popen[bytes], database_url: str, broker: EmbeddedMosquitto
) -> None:
    serial = next(_serial)
    first = 1 + serial * (MESSAGES_PER_EXAMPLE + 1) % (EARLY_SENSORS - MESSAGES_PER_EXAMPLE - 2)
    early = [f"E-{first + i}" for i in range(len(batch))]
    late = [f"L-{serial}-{i}" for i in range(len(batch))]
    _register(database_url, late)  # after ingest loaded its registry: resolved at flush
    sensors = [early[i] if i % 2 else late[i] for i in range(len(batch))]
    closing = f"E-{first + MESSAGES_PER_EXAMPLE}"
    pub = Publisher(broker.port)
    try:
        pub.publish_all(
            [*((_topic(s), h.payload) for s, h in zip(sensors, batch, strict=True)), (_topic(closing), b'{"pm10": 7}')]
        )
    finally:
        pub.close()
    wait_until(
        lambda: ingest.poll() is not None or closing in _accounted(database_url, [closing]),
        timeout_s=30,
        what="the closing reading",
    )
    assert ingest.poll() is None, f"ingest exited with {ingest.returncode}"
    found = _accounted(database_url, sensors)
    for sensor_id, hostile in zip(sensors, batch, strict=True):
        stored, rejected = found.get(sensor_id, (0, 0))
        assert stored or rejected, f"{hostile.payload[:200]!r} left no trace (sensor {sensor_id})"
        if hostile.duplicate:
            assert stored == 0, f"{hostile.payload[:200]!r} names a key twice, yet {stored} readings were stored"
