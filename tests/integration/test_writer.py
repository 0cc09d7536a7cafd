"""The batch writer on its own: binary COPY round trips, and rejections with characters
PostgreSQL text cannot hold."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import psycopg

from ingest.writer import ReadingWriter
from pantau.readings import Rejection
from pantau.store import Backend


async def test_nul_characters_in_rejections_are_escaped_not_fatal(database_url: str, backend: Backend) -> None:
    async with ReadingWriter(database_url, backend) as writer:
        bad = Rejection(time.time(), None, "bad_topic", None, "pantau/v1/x\x00", "detail \x00 here", b"\x00raw")
        result = await writer.write([], [bad])
    assert result.rejected == 1
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT topic, payload, detail FROM rejected_messages").fetchone()
    assert row == ("pantau/v1/x\\x00", b"\x00raw", "detail \\x00 here")


def micros(ts: float) -> datetime:
    """`ts` as PostgreSQL stores it: microseconds since 2000-01-01, rounded half to even."""
    return datetime(2000, 1, 1, tzinfo=UTC) + timedelta(microseconds=round((ts - 946684800.0) * 1e6))


async def test_copy_round_trips_times_values_and_names(database_url: str, backend: Backend) -> None:
    # Each row's ts is stored to the microsecond, rounded half to even as Python's round() does,
    # its value bit for bit and its sensor id and metric as given (non-ASCII too), in any order
    # and through both the COPY path and the staging path a batch with a duplicate takes.
    base = time.time() - 3600
    times = [base, base + 0.0000005, base + 0.0000015, base + 0.1234567, base + 59.9999995, base - 86400.5]
    values = [0.0, -0.0, 1e-300, -273.15, 12345.678901234, 1e300]
    names = ["KTG-AQ-01", "SPT-RV-07", "MJK-Lalu-Lintas-é", "X"]
    rows = [
        (times[k % len(times)] + k, names[k % len(names)], ("pm25", "water_level_cm")[k % 2], values[k % len(values)])
        for k in range(60)
    ]
    async with ReadingWriter(database_url, backend) as writer:
        first = await writer.write(rows[::-1][:30], [])  # COPY
        second = await writer.write(rows[::-1], [])  # the first 30 again: a duplicate, the staging path
    assert (first.inserted, second.inserted, second.duplicates) == (30, 30, 30)
    with psycopg.connect(database_url) as conn:
        stored = conn.execute("SELECT sensor_id, metric, ts, value FROM readings").fetchall()
    want = sorted((sid, metric, micros(ts), value) for ts, sid, metric, value in rows)
    assert sorted(stored) == want
    assert [str(v) for *_x, v in sorted(stored)] == [str(v) for *_x, v in want]  # -0.0 stays -0.0


async def test_latest_readings_follow_the_newest_stored_reading(database_url: str, backend: Backend) -> None:
    # Out-of-order batches, a redelivery, a conflicting value at the newest time and two values for
    # one key in a batch: latest_readings always holds exactly the newest stored reading per sensor
    # and metric, time to the microsecond, as a query over `readings` would find it.
    t0 = time.time() - 3600
    batches = [
        [(t0 + 10.0000005, "A", "pm25", 1.0), (t0 + 5, "A", "pm10", 2.0), (t0, "B", "pm25", 3.0)],
        [(t0 + 2, "A", "pm25", 9.0), (t0 + 20, "B", "pm25", 4.0)],  # older for A: no move
        [(t0 + 20, "B", "pm25", 4.0)],  # a redelivery
        [(t0 + 20, "B", "pm25", 99.0)],  # a conflicting value at the newest time: the stored one stays
        [(t0 + 30, "A", "pm10", 5.0), (t0 + 30, "A", "pm10", 6.0)],  # twice in a batch: the first wins
    ]
    async with ReadingWriter(database_url, backend) as writer:
        for rows in batches:
            await writer.write(rows, [])
    with psycopg.connect(database_url) as conn:
        latest = conn.execute("SELECT sensor_id, metric, ts, value FROM latest_readings ORDER BY 1, 2").fetchall()
        newest = conn.execute(
            "SELECT DISTINCT ON (sensor_id, metric) sensor_id, metric, ts, value FROM readings"
            " ORDER BY sensor_id, metric, ts DESC"
        ).fetchall()
    assert latest == newest
    assert [(s, m, v) for s, m, _ts, v in latest] == [("A", "pm10", 5.0), ("A", "pm25", 1.0), ("B", "pm25", 4.0)]
