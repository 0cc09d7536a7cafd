"""The plain-PostgreSQL store: daily partitions, rollup refresh and the maintenance job.

This is the path CI runs; with PANTAU_TEST_DATABASE_URL on a TimescaleDB server these tests skip
and test_store_timescale.py covers the other backend. Readings go in through
`ReadingWriter.write`, the path ingest uses; time is simulated with `maintain_once(now=...)`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta

import pytest
from psycopg import AsyncConnection

from ingest.writer import ReadingWriter
from pantau.readings import Reading, Rejection
from pantau.settings import StoreSettings
from pantau.store import Backend, Store, connect
from pantau.store.maintenance import maintain_once, refresh_rollups
from tests.support import assert_rollups, await_until, expected_rollups

SENSOR = "SPT-RV-01"
# A fixed, future instant keeps these tests independent of the clock and of each other's days.
NOW = datetime(2031, 3, 10, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _needs_plain_postgres(backend: Backend) -> None:
    if backend is not Backend.POSTGRES:
        pytest.skip("exercises the plain-PostgreSQL path; the test server uses TimescaleDB")


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[AsyncConnection]:
    c = await connect(database_url)
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
async def writer(database_url: str) -> AsyncIterator[ReadingWriter]:
    async with ReadingWriter(database_url, Backend.POSTGRES) as w:
        yield w


async def _partitions(conn: AsyncConnection) -> list[str]:
    cur = await conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'readings'::regclass ORDER BY 1"
    )
    return [r[0] for r in await cur.fetchall()]


def _name(day: date) -> str:
    return f"readings_p{day:%Y%m%d}"


def _epoch(at: datetime) -> float:
    return at.timestamp()


def _series(start: datetime, minutes: int, per_minute: int) -> list[Reading]:
    step = 60 / per_minute
    base = _epoch(start)
    return [
        (base + m * 60 + k * step, SENSOR, "water_level_cm", float((m * 11 + k * 5) % 40) + k / 8)
        for m in range(minutes)
        for k in range(per_minute)
    ]


async def test_readings_is_range_partitioned_by_day(conn: AsyncConnection, writer: ReadingWriter) -> None:
    cur = await conn.execute(
        "SELECT p.partstrat, pg_get_partkeydef(p.partrelid) FROM pg_partitioned_table p"
        " WHERE p.partrelid = 'readings'::regclass"
    )
    assert await cur.fetchall() == [("r", "RANGE (ts)")]
    # Two readings a second apart across midnight UTC land in two daily partitions.
    midnight = _epoch(datetime(2031, 3, 2, tzinfo=UTC))
    rows = [(midnight - 1, SENSOR, "water_level_cm", 1.0), (midnight, SENSOR, "water_level_cm", 2.0)]
    assert (await writer.write(rows, [])).inserted == 2
    cur = await conn.execute("SELECT tableoid::regclass::text, value FROM readings ORDER BY ts")
    assert await cur.fetchall() == [("readings_p20310301", 1.0), ("readings_p20310302", 2.0)]
    assert await _partitions(conn) == ["readings_p20310301", "readings_p20310302"]


async def test_ensure_partition_makes_one_utc_day_once(conn: AsyncConnection) -> None:
    day = date(2031, 1, 2)
    await conn.execute("SET TimeZone = 'Asia/Jakarta'")  # the bounds are UTC days whatever the session's zone
    cur = await conn.execute("SELECT pantau_ensure_partition(%s), pantau_ensure_partition(%s)", (day, day))
    assert await cur.fetchone() == (True, False)
    assert await _partitions(conn) == [_name(day)]
    await conn.execute("SET TimeZone = 'UTC'")
    cur = await conn.execute("SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE relname = %s", (_name(day),))
    assert await cur.fetchone() == ("FOR VALUES FROM ('2031-01-02 00:00:00+00') TO ('2031-01-03 00:00:00+00')",)


async def test_maintenance_creates_partitions_ahead_and_drops_past_retention(
    store: Store, conn: AsyncConnection, writer: ReadingWriter
) -> None:
    settings = StoreSettings(retention_days=10, partition_ahead_days=3)
    report = await maintain_once(conn, Backend.POSTGRES, settings, now=NOW)
    today = NOW.date()
    expected = [_name(today + timedelta(days=d)) for d in range(-1, 4)]
    assert (report.skipped, report.partitions_created, report.partitions_dropped) == (False, 5, 0)
    assert await _partitions(conn) == expected
    assert (await maintain_once(conn, Backend.POSTGRES, settings, now=NOW)).partitions_created == 0

    rows = _series(NOW - timedelta(hours=1), minutes=3, per_minute=2)
    await writer.write(rows, [])
    assert (await maintain_once(conn, Backend.POSTGRES, settings, now=NOW)).minute_buckets_refreshed == 3

    # Twelve days on the cutoff is 12 March noon: the partitions of 9, 10 and 11 March end at or
    # before it and go; 12 and 13 March stay, and the days around the new today are made.
    later = NOW + timedelta(days=12)
    report = await maintain_once(conn, Backend.POSTGRES, settings, now=later)
    assert (report.partitions_created, report.partitions_dropped) == (5, 3)
    assert await _partitions(conn) == [_name(date(2031, 3, 12)), _name(date(2031, 3, 13))] + [
        _name(later.date() + timedelta(days=d)) for d in range(-1, 4)
    ]
    # The raw rows of 10 March are gone; their rollups stay for rollup_retention_days.
    assert await store.count("readings") == 0
    window = (NOW - timedelta(days=1), NOW)
    assert_rollups(await store.readings(SENSOR, "water_level_cm", *window, resolution="1m"), expected_rollups(rows, 60))


async def test_refresh_rollups_is_exact_with_late_data_and_duplicates(
    store: Store, conn: AsyncConnection, writer: ReadingWriter
) -> None:
    start = datetime(2031, 3, 9, 10, 0, tzinfo=UTC)
    rows = _series(start, minutes=90, per_minute=4)
    assert (await writer.write(rows[:200], [])).inserted == 200
    redelivered = await writer.write(rows[150:], [])  # 50 redelivered rows, then the rest
    assert (redelivered.inserted, redelivered.duplicates) == (len(rows) - 200, 50)

    assert await refresh_rollups(conn) == (90, 2)
    assert await refresh_rollups(conn) == (0, 0)  # nothing logged since
    window = (start - timedelta(hours=1), start + timedelta(hours=3))
    assert_rollups(await store.readings(SENSOR, "water_level_cm", *window, resolution="1m"), expected_rollups(rows, 60))
    hour = await store.readings(SENSOR, "water_level_cm", *window, resolution="1h")
    assert_rollups(hour, expected_rollups(rows, 3600))
    assert [r["n"] for r in hour] == [240, 120]

    # Late readings for a minute that was already refreshed, sent with a duplicate of a stored row.
    t0 = _epoch(start)
    late = [(t0 + 7.5, SENSOR, "water_level_cm", 500.0), (t0 + 8.5, SENSOR, "water_level_cm", -20.0)]
    result = await writer.write([*late, rows[0]], [])
    assert (result.inserted, result.duplicates) == (2, 1)
    assert await refresh_rollups(conn) == (1, 1)
    assert_rollups(
        await store.readings(SENSOR, "water_level_cm", *window, resolution="1m"), expected_rollups(rows + late, 60)
    )
    assert_rollups(
        await store.readings(SENSOR, "water_level_cm", *window, resolution="1h"), expected_rollups(rows + late, 3600)
    )

    # A batch made only of redeliveries changes nothing and logs nothing.
    assert (await writer.write(rows[:30], [])).inserted == 0
    assert await refresh_rollups(conn) == (0, 0)
    assert await store.count("readings_1m") == 90


async def test_maintenance_deletes_rejected_messages_past_retention(
    store: Store, conn: AsyncConnection, writer: ReadingWriter
) -> None:
    settings = StoreSettings(retention_days=30)
    old = _epoch(NOW - timedelta(days=31))
    recent = _epoch(NOW - timedelta(days=29))
    rejections = [
        Rejection(old, "X", "bad_json", None, "pantau/v1/sampit/flood/X", "old", b"{"),
        Rejection(recent, "X", "bad_json", None, "pantau/v1/sampit/flood/X", "recent", b"{"),
    ]
    assert (await writer.write([], rejections)).rejected == 2
    report = await maintain_once(conn, Backend.POSTGRES, settings, now=NOW)
    assert report.rejected_deleted == 1
    cur = await conn.execute("SELECT detail FROM rejected_messages")
    assert await cur.fetchall() == [("recent",)]


async def test_concurrent_maintainer_skips(database_url: str, writer: ReadingWriter) -> None:
    """While one maintainer is mid-round, a second one returns at once with skipped=True."""
    settings = StoreSettings()
    await writer.write(_series(NOW, minutes=2, per_minute=2), [])
    first, second, blocker = [await connect(database_url) for _ in range(3)]
    try:
        # Hold the invalidation log so that the first maintainer stops inside its round, lock held.
        await blocker.execute("BEGIN")
        await blocker.execute("LOCK TABLE rollup_invalidations IN ACCESS EXCLUSIVE MODE")
        running = asyncio.create_task(maintain_once(first, Backend.POSTGRES, settings, now=NOW))
        pid = first.info.backend_pid

        async def first_is_waiting() -> bool:
            # Asked on `second`: inside the blocker's transaction pg_stat_activity is a snapshot.
            cur = await second.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,))
            return await cur.fetchone() == ("Lock",)

        await await_until(first_is_waiting, timeout_s=10, what="the first maintainer to block")
        assert (await maintain_once(second, Backend.POSTGRES, settings, now=NOW)).skipped
        await blocker.execute("ROLLBACK")
        done = await asyncio.wait_for(running, 10)
        assert not done.skipped and done.minute_buckets_refreshed == 2
        # The lock was released: the next round runs.
        assert not (await maintain_once(second, Backend.POSTGRES, settings, now=NOW)).skipped
    finally:
        for c in (first, second, blocker):
            await c.close()
