"""The TimescaleDB store: hypertable, policies from settings, continuous aggregates, duplicates.

These need a server with TimescaleDB preloaded (PANTAU_TEST_DATABASE_URL); CI runs the
plain-PostgreSQL path, whose counterpart is test_store_plain.py. Readings go in through
`ReadingWriter.write`, the path ingest uses.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from ingest.writer import ReadingWriter
from pantau.readings import Reading
from pantau.settings import StoreSettings
from pantau.store import Backend, Store, series, views
from tests.conftest import EXTERNAL_URL
from tests.support import assert_rollups, expected_rollups

pytestmark = pytest.mark.timescaledb

SKIP_REASON = (
    "needs PANTAU_TEST_DATABASE_URL pointing at a server with TimescaleDB preloaded; CI runs the plain-PostgreSQL path"
)
SENSOR = "KTG-AQ-01"


@pytest.fixture(autouse=True)
def _needs_timescaledb(request: pytest.FixtureRequest) -> None:
    # Checked before asking for `backend`, so that without the variable no cluster is started
    # just to skip.
    if not EXTERNAL_URL or request.getfixturevalue("backend") is not Backend.TIMESCALEDB:
        pytest.skip(SKIP_REASON)


@pytest.fixture
async def writer(database_url: str) -> AsyncIterator[ReadingWriter]:
    async with ReadingWriter(database_url, Backend.TIMESCALEDB) as w:
        yield w


async def _rows(store: Store, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    async with store.connection() as conn:
        cur = await conn.execute(query, params)
        return await cur.fetchall()


async def _refresh(store: Store) -> None:
    # The hourly aggregate reads the minute one, so the order matters.
    async with store.connection() as conn:
        await conn.execute("CALL refresh_continuous_aggregate('readings_1m', NULL, NULL)")
        await conn.execute("CALL refresh_continuous_aggregate('readings_1h', NULL, NULL)")


def _series(start: float, minutes: int, per_minute: int) -> list[Reading]:
    """`per_minute` readings in each of `minutes` minutes from `start`, with varied values."""
    step = 60 / per_minute
    return [
        (start + m * 60 + k * step, SENSOR, "pm25", float((m * 7 + k * 13) % 50) + k / 4)
        for m in range(minutes)
        for k in range(per_minute)
    ]


def _hour_aligned(hours_ago: int) -> float:
    return (int(time.time()) // 3600 - hours_ago) * 3600.0


async def test_readings_is_a_compressed_hypertable(store: Store) -> None:
    found = await _rows(
        store,
        "SELECT primary_dimension, compression_enabled FROM timescaledb_information.hypertables"
        " WHERE hypertable_schema = 'public' AND hypertable_name = 'readings'",
    )
    assert found == [("ts", True)]
    segmentby = await _rows(
        store,
        "SELECT attname FROM timescaledb_information.compression_settings"
        " WHERE hypertable_name = 'readings' AND segmentby_column_index IS NOT NULL"
        " ORDER BY segmentby_column_index",
    )
    assert [r[0] for r in segmentby] == ["sensor_id", "metric"]


async def _policy(store: Store, proc: str, table: str, key: str) -> list[timedelta | None]:
    found = await _rows(
        store,
        "SELECT (config->>%s)::interval FROM timescaledb_information.jobs"
        " WHERE proc_name = %s AND hypertable_name = %s",
        (key, proc, table),
    )
    return [r[0] for r in found]


async def test_compression_and_retention_policies_follow_settings(store: Store, database_url: str) -> None:
    defaults = StoreSettings()
    assert await _policy(store, "policy_compression", "readings", "compress_after") == [
        timedelta(days=defaults.compress_after_days)
    ]
    assert await _policy(store, "policy_retention", "readings", "drop_after") == [
        timedelta(days=defaults.retention_days)
    ]
    for view in ("readings_1m", "readings_1h"):
        assert await _policy(store, "policy_retention", view, "drop_after") == [
            timedelta(days=defaults.rollup_retention_days)
        ]

    changed = StoreSettings(pool_max_size=1, compress_after_days=2, retention_days=30, rollup_retention_days=400)
    async with Store.open(database_url, changed) as again:
        backend, applied = await again.migrate()
    assert (backend, applied) == (Backend.TIMESCALEDB, [])
    # Replaced, not added to: exactly one policy of each kind.
    assert await _policy(store, "policy_compression", "readings", "compress_after") == [timedelta(days=2)]
    assert await _policy(store, "policy_retention", "readings", "drop_after") == [timedelta(days=30)]
    for view in ("readings_1m", "readings_1h"):
        assert await _policy(store, "policy_retention", view, "drop_after") == [timedelta(days=400)]
        [start] = await _policy(store, "policy_refresh_continuous_aggregate", view, "start_offset")
        assert start is not None and start < timedelta(days=30)


async def test_rollups_are_hierarchical_continuous_aggregates_with_refresh_policies(store: Store) -> None:
    found = await _rows(
        store,
        "SELECT view_name, hypertable_name FROM timescaledb_information.continuous_aggregates"
        " WHERE view_schema = 'public' ORDER BY view_name",
    )
    assert [r[0] for r in found] == ["readings_1h", "readings_1m"]
    sources = dict(found)
    assert sources["readings_1m"] == "readings"
    # readings_1h is built on readings_1m's materialization, not on the raw rows.
    [(mat,)] = await _rows(
        store,
        "SELECT materialization_hypertable_name FROM timescaledb_information.continuous_aggregates"
        " WHERE view_name = 'readings_1m'",
    )
    assert sources["readings_1h"] == mat
    # Real-time aggregates: the buckets past the last refresh are aggregated from their source when read.
    assert await _rows(
        store,
        "SELECT view_name, materialized_only FROM timescaledb_information.continuous_aggregates"
        " WHERE view_schema = 'public' ORDER BY view_name",
    ) == [("readings_1h", False), ("readings_1m", False)]
    for view, bucket in (("readings_1m", timedelta(minutes=1)), ("readings_1h", timedelta(hours=1))):
        columns = await _rows(
            store,
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s ORDER BY ordinal_position",
            (view,),
        )
        assert [c[0] for c in columns] == ["bucket", "sensor_id", "metric", "n", "avg_value", "min_value", "max_value"]
        [start] = await _policy(store, "policy_refresh_continuous_aggregate", view, "start_offset")
        # The refresh window must stop short of the raw retention horizon (see the next tests).
        assert start is not None and start < timedelta(days=StoreSettings().retention_days)
        # The open bucket is never materialized while it fills: real-time aggregation answers for it.
        assert await _policy(store, "policy_refresh_continuous_aggregate", view, "end_offset") == [bucket]


async def test_refreshed_rollups_are_exact_and_duplicates_count_once(store: Store, writer: ReadingWriter) -> None:
    start = _hour_aligned(3)
    rows = _series(start, minutes=90, per_minute=4)  # one full hour and half of the next
    first = await writer.write(rows[:200], [])
    assert (first.inserted, first.duplicates) == (200, 0)
    # A redelivered run (rows 150..199 again) followed by the rest.
    second = await writer.write(rows[150:], [])
    assert (second.inserted, second.duplicates) == (len(rows) - 200, 50)
    assert await store.count("readings") == len(rows)

    await _refresh(store)
    window = (datetime.fromtimestamp(start - 3600, UTC), datetime.fromtimestamp(start + 4 * 3600, UTC))
    assert_rollups(await store.readings(SENSOR, "pm25", *window, resolution="1m"), expected_rollups(rows, 60))
    hour = await store.readings(SENSOR, "pm25", *window, resolution="1h")
    assert_rollups(hour, expected_rollups(rows, 3600))
    assert [r["n"] for r in hour] == [240, 120]

    # Late data for an already materialized minute is re-aggregated exactly by the next refresh.
    late = [(start + 30.5, SENSOR, "pm25", 1000.0), (start + 31.5, SENSOR, "pm25", -5.0)]
    assert (await writer.write([*late, rows[0]], [])).inserted == 2
    await _refresh(store)
    assert_rollups(await store.readings(SENSOR, "pm25", *window, resolution="1m"), expected_rollups(rows + late, 60))
    assert_rollups(await store.readings(SENSOR, "pm25", *window, resolution="1h"), expected_rollups(rows + late, 3600))


async def test_redelivered_batch_is_not_stored_twice(store: Store, writer: ReadingWriter) -> None:
    rows = _series(_hour_aligned(2), minutes=10, per_minute=6)
    assert (await writer.write(rows, [])).inserted == len(rows)
    again = await writer.write(rows, [])
    assert (again.inserted, again.duplicates) == (0, len(rows))
    # Duplicates inside one batch, too.
    extra = (rows[-1][0] + 1, SENSOR, "pm25", 3.0)
    inside = await writer.write([extra, extra, rows[0]], [])
    assert (inside.inserted, inside.duplicates) == (1, 2)
    assert await store.count("readings") == len(rows) + 1


async def test_info_reports_the_timescaledb_version(store: Store) -> None:
    info = await store.info()
    [(extversion,)] = await _rows(store, "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
    assert info.backend is Backend.TIMESCALEDB
    assert info.timescaledb_version == extversion
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", info.timescaledb_version)


async def test_writes_into_a_compressed_chunk_with_duplicates(store: Store, database_url: str) -> None:
    start = _hour_aligned(24 * 10)  # old enough that a real deployment would have compressed it
    rows = _series(start, minutes=20, per_minute=3)
    async with ReadingWriter(database_url, Backend.TIMESCALEDB) as w:
        assert (await w.write(rows, [])).inserted == len(rows)
    compressed = await _rows(store, "SELECT compress_chunk(c) FROM show_chunks('readings') c")
    assert compressed
    assert await _rows(
        store, "SELECT DISTINCT is_compressed FROM timescaledb_information.chunks WHERE hypertable_name = 'readings'"
    ) == [(True,)]

    new = [(start + 20 * 60 + k, SENSOR, "pm25", float(k)) for k in range(5)]
    # A fresh writer tries the COPY fast path first; the compressed chunk still enforces the key.
    async with ReadingWriter(database_url, Backend.TIMESCALEDB) as w:
        mixed = await w.write([*rows[:10], *new[:3]], [])
        assert (mixed.inserted, mixed.duplicates) == (3, 10)
    async with ReadingWriter(database_url, Backend.TIMESCALEDB) as w:
        clean = await w.write(new[3:], [])  # no duplicate: COPY straight into the compressed chunk
        assert (clean.inserted, clean.duplicates) == (2, 0)
        again = await w.write(rows, [])
        assert (again.inserted, again.duplicates) == (0, len(rows))
    assert await store.count("readings") == len(rows) + len(new)

    await _refresh(store)
    window = (datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(start + 3600, UTC))
    assert_rollups(await store.readings(SENSOR, "pm25", *window, resolution="1m"), expected_rollups(rows + new, 60))


async def test_rollups_outlive_raw_retention(store: Store, database_url: str) -> None:
    settings = StoreSettings(pool_max_size=1, retention_days=30, rollup_retention_days=3650)
    async with Store.open(database_url, settings) as s:
        await s.migrate()
    start = _hour_aligned(24 * 40)  # past the raw retention
    rows = _series(start, minutes=5, per_minute=2)
    async with ReadingWriter(database_url, Backend.TIMESCALEDB) as w:
        await w.write(rows, [])
    await _refresh(store)  # as if the rows had been materialized while they were recent
    window = (datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(start + 3600, UTC))
    assert len(await store.readings(SENSOR, "pm25", *window, resolution="1m")) == 5

    jobs = dict(
        await _rows(
            store,
            "SELECT hypertable_name || ':' || proc_name, job_id FROM timescaledb_information.jobs"
            " WHERE hypertable_name IN ('readings', 'readings_1m', 'readings_1h')",
        )
    )
    async with store.connection() as conn:
        await conn.execute("CALL run_job(%s)", (jobs["readings:policy_retention"],))
        # Dropping the chunk logged an invalidation for its range; the policies must not act on it.
        await conn.execute("CALL run_job(%s)", (jobs["readings_1m:policy_refresh_continuous_aggregate"],))
        await conn.execute("CALL run_job(%s)", (jobs["readings_1h:policy_refresh_continuous_aggregate"],))
    assert await store.count("readings") == 0
    assert_rollups(await store.readings(SENSOR, "pm25", *window, resolution="1m"), expected_rollups(rows, 60))
    assert_rollups(await store.readings(SENSOR, "pm25", *window, resolution="1h"), expected_rollups(rows, 3600))


async def test_series_and_hourly_sums_hold_readings_the_refresh_policies_have_not_reached(
    store: Store, writer: ReadingWriter
) -> None:
    # The production case: the refresh policies have run, then readings arrive in the open minute
    # and hour. The API's series and hourly sums must hold them at once, as on plain PostgreSQL.
    now = time.time()
    minute = now // 60 * 60
    rows = [(minute - 60 * k, SENSOR, "pm25", float(k % 17)) for k in range(150)]  # up to the open minute
    await writer.write(rows, [])
    jobs = dict(
        await _rows(
            store,
            "SELECT hypertable_name, job_id FROM timescaledb_information.jobs"
            " WHERE proc_name = 'policy_refresh_continuous_aggregate'",
        )
    )
    async with store.connection() as conn:
        await conn.execute("CALL run_job(%s)", (jobs["readings_1m"],))
        await conn.execute("CALL run_job(%s)", (jobs["readings_1h"],))
    newer = [(minute + (now - minute) / 2, SENSOR, "pm25", 1000.0)]  # the open minute, after the policies ran
    await writer.write(newer, [])

    lo = datetime.fromtimestamp(minute // 3600 * 3600 - 3 * 3600, UTC)
    hi = datetime.fromtimestamp(minute + 60, UTC)
    everything = rows + newer
    async with store.connection() as conn:
        for level, width in (("1m", 60), ("1h", 3600)):
            points = await series.aggregated(conn, Backend.TIMESCALEDB, SENSOR, "pm25", lo, hi, level,
                                             ("count", "avg", "min", "max"), ZoneInfo("UTC"))  # fmt: skip
            got = {p.ts: tuple(p.values.values()) for p in points if p.values["count"]}
            want = {at: (float(n), avg, low, high) for at, (n, avg, low, high) in
                    expected_rollups(everything, width).items()}  # fmt: skip
            assert got.keys() == want.keys(), level
            for at, value in want.items():
                assert got[at] == pytest.approx(value), (level, at)
        hourly = await views.hourly(conn, Backend.TIMESCALEDB, [SENSOR], ["pm25"], lo, hi)
    assert hourly[(SENSOR, "pm25")] == {
        at: (n, pytest.approx(n * avg)) for at, (n, avg, _low, _high) in expected_rollups(everything, 3600).items()
    }


async def test_a_database_migrated_before_gets_real_time_rollups_on_the_next_migrate(
    store: Store, database_url: str
) -> None:
    # As an earlier pantau left it: materialized-only aggregates, refreshes up to the open bucket.
    async with store.connection() as conn:
        for view in ("readings_1m", "readings_1h"):
            await conn.execute(f"ALTER MATERIALIZED VIEW {view} SET (timescaledb.materialized_only = true)")
            await conn.execute("SELECT remove_continuous_aggregate_policy(%s)", (view,))
            await conn.execute(
                "SELECT add_continuous_aggregate_policy(%s, start_offset => interval '2 hours', end_offset => NULL,"
                " schedule_interval => interval '1 minute')",
                (view,),
            )
    async with Store.open(database_url, StoreSettings(pool_max_size=1)) as again:
        assert await again.migrate() == (Backend.TIMESCALEDB, [])
    assert await _rows(
        store,
        "SELECT view_name, materialized_only FROM timescaledb_information.continuous_aggregates"
        " WHERE view_schema = 'public' ORDER BY view_name",
    ) == [("readings_1h", False), ("readings_1m", False)]
    assert await _policy(store, "policy_refresh_continuous_aggregate", "readings_1m", "end_offset") == [
        timedelta(minutes=1)
    ]
    assert await _policy(store, "policy_refresh_continuous_aggregate", "readings_1h", "end_offset") == [
        timedelta(hours=1)
    ]
