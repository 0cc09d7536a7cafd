"""Store upkeep that TimescaleDB does by itself and plain PostgreSQL needs us for.

Plain PostgreSQL: make daily partitions ahead, drop those past retention, and refresh the
`readings_1m` / `readings_1h` rollups for the minute buckets ingest logged in
`rollup_invalidations`. Both backends: trim `rejected_messages` past retention, and drop
`ingest_batches` that no rule worker claimed for `unclaimed_max_age` (none is running), with a
warning naming how many. One maintainer
runs at a time across machines (an advisory lock), so every node may run the job. Each round that
runs records when and what it did in `pantau_meta` (`last_run`; `pantau db info` shows it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from psycopg import AsyncConnection

from pantau.errors import StoreUnavailable
from pantau.settings import StoreSettings
from pantau.store.migrations import Backend

log = logging.getLogger(__name__)

_LOCK = "hashtext('pantau.maintenance')"


@dataclass(frozen=True, slots=True)
class MaintenanceReport:
    partitions_created: int = 0
    partitions_dropped: int = 0
    minute_buckets_refreshed: int = 0
    hour_buckets_refreshed: int = 0
    rejected_deleted: int = 0
    unclaimed_dropped: int = 0
    skipped: bool = False


@dataclass(frozen=True, slots=True)
class MaintenanceRun:
    """The last round of upkeep that ran (one skipped for another maintainer's lock is not one)."""

    at: datetime
    took_s: float
    report: MaintenanceReport

    def to_json(self) -> dict[str, Any]:
        """JSON-ready mapping: `at` in ISO 8601, then the report's counts."""
        counts = {k: v for k, v in dataclasses.asdict(self.report).items() if k != "skipped"}
        return {"at": self.at.isoformat(), "took_s": self.took_s, **counts}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MaintenanceRun:
        names = {f.name for f in dataclasses.fields(MaintenanceReport)} - {"skipped"}
        counts: dict[str, Any] = {name: int(value) for name, value in data.items() if name in names}
        report = dataclasses.replace(MaintenanceReport(), **counts)
        return cls(datetime.fromisoformat(data["at"]), float(data["took_s"]), report)


# Where the last run is kept: a row of `pantau_meta` (key -> text), a JSON `MaintenanceRun`.
_LAST_RUN_KEY = "maintenance_last_run"


async def last_run(conn: AsyncConnection) -> MaintenanceRun | None:
    """The last round of upkeep recorded in this database; None when none has run."""
    cur = await conn.execute("SELECT value FROM pantau_meta WHERE key = %s", (_LAST_RUN_KEY,))
    row = await cur.fetchone()
    return MaintenanceRun.from_json(json.loads(row[0])) if row else None


_PARTITION_NAME = re.compile(r"readings_p(\d{4})(\d{2})(\d{2})")


async def partition_days(conn: AsyncConnection) -> list[date]:
    """The days that have a partition of `readings` (plain PostgreSQL), oldest first."""
    cur = await conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'readings'::regclass"
    )
    days = []
    for (name,) in await cur.fetchall():
        found = _PARTITION_NAME.fullmatch(name)
        if found:
            days.append(date(*(int(part) for part in found.groups())))
    return sorted(days)


async def ensure_partitions(conn: AsyncConnection, days: set[date]) -> int:
    """Create the daily partitions for `days` that do not exist yet; returns how many were made."""
    made = 0
    for day in sorted(days):
        cur = await conn.execute("SELECT pantau_ensure_partition(%s)", (day,))
        row = await cur.fetchone()
        made += int(bool(row and row[0]))
    return made


# Logged buckets closer than this are refreshed by one scan of the time range between them; a gap
# wider starts another scan (a late reading from last week is not a reason to read the whole week).
_SPAN_GAP = timedelta(hours=1)


def _spans(buckets: list[datetime], width: timedelta) -> list[tuple[datetime, datetime, list[datetime]]]:
    """Sorted bucket starts as runs [lo, hi) with their buckets, split where the gap exceeds _SPAN_GAP."""
    runs: list[tuple[datetime, datetime, list[datetime]]] = []
    for bucket in buckets:
        if runs and bucket - runs[-1][1] <= _SPAN_GAP:
            lo, _hi, members = runs[-1]
            members.append(bucket)
            runs[-1] = (lo, bucket + width, members)
        else:
            runs.append((bucket, bucket + width, [bucket]))
    return runs


async def refresh_rollups(conn: AsyncConnection) -> tuple[int, int]:
    """Recompute the rollup buckets logged since the last refresh; returns (minutes, hours).

    Recomputing a bucket from its source rows is idempotent, so redelivered or late readings,
    and a refresh interrupted half-way, leave the rollups exact.
    """
    async with conn.transaction():
        cur = await conn.execute(
            "WITH gone AS (DELETE FROM rollup_invalidations RETURNING bucket)"
            " SELECT DISTINCT bucket FROM gone ORDER BY bucket"
        )
        minutes = [r[0] for r in await cur.fetchall()]
        if not minutes:
            return 0, 0
        for lo, hi, span in _spans(minutes, timedelta(minutes=1)):
            await conn.execute(
                """
                INSERT INTO readings_1m AS r (bucket, sensor_id, metric, n, avg_value, min_value, max_value)
                SELECT date_trunc('minute', ts), sensor_id, metric, count(*), avg(value), min(value), max(value)
                FROM readings WHERE ts >= %s AND ts < %s AND date_trunc('minute', ts) = ANY(%s::timestamptz[])
                GROUP BY 1, sensor_id, metric
                ON CONFLICT (sensor_id, metric, bucket) DO UPDATE SET
                    n = excluded.n, avg_value = excluded.avg_value,
                    min_value = excluded.min_value, max_value = excluded.max_value
                """,
                (lo, hi, span),
            )
        hours = sorted({m.replace(minute=0, second=0, microsecond=0) for m in minutes})
        for lo, hi, span in _spans(hours, timedelta(hours=1)):
            await conn.execute(
                """
                INSERT INTO readings_1h AS r (bucket, sensor_id, metric, n, avg_value, min_value, max_value)
                SELECT date_trunc('hour', bucket), sensor_id, metric, sum(n),
                       sum(avg_value * n) / sum(n), min(min_value), max(max_value)
                FROM readings_1m
                WHERE bucket >= %s AND bucket < %s AND date_trunc('hour', bucket) = ANY(%s::timestamptz[])
                GROUP BY 1, sensor_id, metric
                ON CONFLICT (sensor_id, metric, bucket) DO UPDATE SET
                    n = excluded.n, avg_value = excluded.avg_value,
                    min_value = excluded.min_value, max_value = excluded.max_value
                """,
                (lo, hi, span),
            )
    return len(minutes), len(hours)


# Default for `maintain_once(unclaimed_max_age=...)`: [rules] unclaimed_max_age_h.
UNCLAIMED_MAX_AGE = timedelta(hours=24)


async def maintain_once(
    conn: AsyncConnection,
    backend: Backend,
    settings: StoreSettings,
    *,
    now: datetime | None = None,
    unclaimed_max_age: timedelta = UNCLAIMED_MAX_AGE,
) -> MaintenanceReport:
    """One round of upkeep; skipped when another maintainer holds the lock."""
    now = now or datetime.now(UTC)
    started = time.monotonic()
    cur = await conn.execute(f"SELECT pg_try_advisory_lock({_LOCK})")
    row = await cur.fetchone()
    if not row or not row[0]:
        return MaintenanceReport(skipped=True)
    try:
        created = dropped = minutes = hours = 0
        if backend is Backend.POSTGRES:
            today = now.date()
            days = {today + timedelta(days=d) for d in range(-1, settings.partition_ahead_days + 1)}
            created = await ensure_partitions(conn, days)
            cutoff = now - timedelta(days=settings.retention_days)
            cur = await conn.execute("SELECT pantau_drop_partitions(%s)", (cutoff,))
            dropped = int((await cur.fetchone() or (0,))[0])
            minutes, hours = await refresh_rollups(conn)
            rollup_cutoff = now - timedelta(days=settings.rollup_retention_days)
            for table in ("readings_1m", "readings_1h"):
                await conn.execute(f"DELETE FROM {table} WHERE bucket < %s", (rollup_cutoff,))  # noqa: S608
        cur = await conn.execute(
            "DELETE FROM rejected_messages WHERE received_at < %s",
            (now - timedelta(days=settings.retention_days),),
        )
        rejected = cur.rowcount
        cur = await conn.execute(
            "DELETE FROM ingest_batches WHERE claim IS NULL AND created_at < %s", (now - unclaimed_max_age,)
        )
        if cur.rowcount:
            log.warning(
                "dropped %d ingest batches no rule worker claimed within %s: is `pantau rules` running?",
                cur.rowcount,
                unclaimed_max_age,
            )
        report = MaintenanceReport(created, dropped, minutes, hours, rejected, cur.rowcount)
        run = MaintenanceRun(now, round(time.monotonic() - started, 3), report)
        await conn.execute(
            "INSERT INTO pantau_meta (key, value) VALUES (%s, %s)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (_LAST_RUN_KEY, json.dumps(run.to_json())),
        )
        return report
    finally:
        await conn.execute(f"SELECT pg_advisory_unlock({_LOCK})")


async def run_maintenance(
    url: str, backend: Backend, settings: StoreSettings, *, unclaimed_max_age: timedelta = UNCLAIMED_MAX_AGE
) -> None:
    """Run `maintain_once` every `maintenance_interval_s` until cancelled, riding out outages."""
    from pantau.store import connect

    conn: AsyncConnection | None = None
    try:
        while True:
            try:
                if conn is None or conn.closed:
                    conn = await connect(url)
                report = await maintain_once(conn, backend, settings, unclaimed_max_age=unclaimed_max_age)
                if report.partitions_created or report.partitions_dropped:
                    log.info("partitions: %d created, %d dropped", report.partitions_created, report.partitions_dropped)
            except (StoreUnavailable, psycopg.OperationalError) as exc:
                log.warning("maintenance: database unavailable (%s); retrying", exc)
                if conn is not None:
                    await conn.close()
                conn = None
            await asyncio.sleep(settings.maintenance_interval_s)
    finally:
        if conn is not None:
            await conn.close()
