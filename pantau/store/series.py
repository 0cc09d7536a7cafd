"""One sensor's metric over time, at a level of the store: raw readings, 1-minute or 1-hour
rollups, or local days (from the hourly rollups, midnight to midnight in the city's zone).

The rollups hold n, avg, min and max per bucket; sum is avg × n; `last` (the newest reading of
each bucket) is read from the raw readings. On plain PostgreSQL a bucket that `pantau maintain` has
not yet refreshed (its minute is in `rollup_invalidations`) is aggregated from the raw readings
instead, so a series equals a direct aggregate of the raw rows whatever the refresh's pace. On
TimescaleDB the rollups are real-time continuous aggregates whose refresh stops one bucket short of
now: the buckets past the last refresh, the open one always among them, are aggregated from their
source when read (a late reading for a bucket already materialized waits for the next refresh,
at most 30 s for minutes, 5 minutes for hours).
Buckets with no reading are returned with None: gaps are explicit, never interpolated.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from psycopg import AsyncConnection

from pantau.store.migrations import Backend

Level = Literal["raw", "1m", "1h", "1d"]
AGGREGATES = ("avg", "min", "max", "count", "sum", "last")
STEP = {"1m": timedelta(minutes=1), "1h": timedelta(hours=1), "1d": timedelta(days=1)}


@dataclass(frozen=True, slots=True)
class Point:
    """One bucket (or one raw reading): its start and the asked aggregates (None: no reading)."""

    ts: datetime
    values: dict[str, float | None]


def align(when: datetime, level: Level, zone: ZoneInfo) -> datetime:
    """The start of the bucket of `level` holding `when` (a local day for 1d)."""
    if level == "1m":
        return when.replace(second=0, microsecond=0)
    if level == "1h":
        return when.replace(minute=0, second=0, microsecond=0)
    if level == "1d":
        local = when.astimezone(zone)
        return local.replace(hour=0, minute=0, second=0, microsecond=0)
    return when


def _next(at: datetime, level: Level, zone: ZoneInfo) -> datetime:
    if level == "1d":  # the next local midnight (Indonesia keeps no daylight saving)
        return (at.astimezone(zone) + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return at + STEP[level]


def buckets(start: datetime, end: datetime, level: Level, zone: ZoneInfo) -> list[datetime]:
    """The bucket starts from the one holding `start` up to before `end`."""
    out, at = [], align(start, level, zone)
    while at < end:
        out.append(at)
        at = _next(at, level, zone)
    return out


async def raw_count(conn: AsyncConnection, sensor_id: str, metric: str, start: datetime, end: datetime,
                    cap: int) -> int:  # fmt: skip
    """How many raw readings lie in [start, end), counted up to `cap` (an index range, never more)."""
    cur = await conn.execute(
        "SELECT count(*) FROM (SELECT 1 FROM readings WHERE sensor_id = %s AND metric = %s"
        " AND ts >= %s AND ts < %s LIMIT %s) x",
        (sensor_id, metric, start, end, cap),
    )
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def raw(conn: AsyncConnection, sensor_id: str, metric: str, start: datetime, end: datetime,
              limit: int) -> list[Point]:  # fmt: skip
    """The raw readings in [start, end), oldest first, at most `limit`."""
    cur = await conn.execute(
        "SELECT ts, value FROM readings WHERE sensor_id = %s AND metric = %s AND ts >= %s AND ts < %s"
        " ORDER BY ts LIMIT %s",
        (sensor_id, metric, start, end, limit),
    )
    return [Point(ts, {"value": value}) for ts, value in await cur.fetchall()]


# Per unit bucket (minute or hour): the rollup's row, or the raw readings' aggregate where the
# rollup is stale (plain PostgreSQL: its minute waits in rollup_invalidations).
_UNITS_PLAIN = """
WITH pending AS (
    SELECT DISTINCT date_bin(%(unit)s, bucket, timestamptz '2000-01-01 00:00:00+00') AS bucket
    FROM rollup_invalidations WHERE bucket >= %(lo)s AND bucket < %(hi)s
), rolled AS (
    SELECT bucket, n, avg_value, min_value, max_value FROM {table}
    WHERE sensor_id = %(sensor)s AND metric = %(metric)s AND bucket >= %(lo)s AND bucket < %(hi)s
      AND bucket NOT IN (SELECT bucket FROM pending)
), fresh AS (
    SELECT date_bin(%(unit)s, ts, timestamptz '2000-01-01 00:00:00+00') AS bucket,
           count(*) AS n, avg(value) AS avg_value, min(value) AS min_value, max(value) AS max_value
    FROM readings WHERE sensor_id = %(sensor)s AND metric = %(metric)s AND ts >= %(lo)s AND ts < %(hi)s
      -- only the span the pending buckets cover (recent, as a rule): not the whole range's raw rows
      AND ts >= (SELECT min(bucket) FROM pending) AND ts < (SELECT max(bucket) FROM pending) + %(unit)s
      AND date_bin(%(unit)s, ts, timestamptz '2000-01-01 00:00:00+00') IN (SELECT bucket FROM pending)
    GROUP BY 1
)
SELECT * FROM rolled UNION ALL SELECT * FROM fresh
"""
_UNITS_TIMESCALE = """
SELECT bucket, n, avg_value, min_value, max_value FROM {table}
WHERE sensor_id = %(sensor)s AND metric = %(metric)s AND bucket >= %(lo)s AND bucket < %(hi)s
"""


async def aggregated(
    conn: AsyncConnection,
    backend: Backend,
    sensor_id: str,
    metric: str,
    start: datetime,
    end: datetime,
    level: Level,
    aggregates: tuple[str, ...],
    zone: ZoneInfo,
) -> list[Point]:
    """The buckets of `level` (1m, 1h, 1d) from the one holding `start` up to before `end`, each
    with the asked `aggregates` of its readings (None where it has none)."""
    starts = buckets(start, end, level, zone)
    if not starts:
        return []
    lo, hi = starts[0], _next(starts[-1], level, zone)  # whole buckets, the last one too
    unit = "1h" if level == "1d" else level
    table = f"readings_{unit}"
    query = (_UNITS_PLAIN if backend is Backend.POSTGRES else _UNITS_TIMESCALE).replace("{table}", table)
    cur = await conn.execute(
        query, {"unit": STEP[unit], "lo": lo, "hi": hi, "sensor": sensor_id, "metric": metric}
    )  # fmt: skip
    combined: dict[datetime, list[Any]] = {}
    for bucket, n, avg_value, min_value, max_value in await cur.fetchall():
        key = align(bucket, level, zone) if level == "1d" else bucket
        have = combined.get(key)
        if have is None:
            combined[key] = [int(n), float(avg_value) * int(n), min_value, max_value]
        else:  # the hours of one local day
            have[0] += int(n)
            have[1] += float(avg_value) * int(n)
            have[2] = min(have[2], min_value)
            have[3] = max(have[3], max_value)
    lasts = await _lasts(conn, sensor_id, metric, lo, hi, level, zone) if "last" in aggregates else {}
    points = []
    for at in starts:
        row = combined.get(at)
        values: dict[str, float | None] = {}
        for agg in aggregates:
            if row is None:
                values[agg] = 0.0 if agg == "count" else None
            elif agg == "avg":
                values[agg] = row[1] / row[0]
            elif agg == "min":
                values[agg] = row[2]
            elif agg == "max":
                values[agg] = row[3]
            elif agg == "count":
                values[agg] = float(row[0])
            elif agg == "sum":
                values[agg] = row[1]
            else:
                values[agg] = lasts.get(at)
        points.append(Point(at, values))
    return points


async def _lasts(conn: AsyncConnection, sensor_id: str, metric: str, lo: datetime, hi: datetime, level: Level,
                 zone: ZoneInfo) -> dict[datetime, float]:  # fmt: skip
    """The newest raw reading of each bucket (the rollups keep no `last`)."""
    if level == "1d":
        bucket = "date_trunc('day', ts AT TIME ZONE %(zone)s) AT TIME ZONE %(zone)s"
    else:
        bucket = "date_bin(%(unit)s, ts, timestamptz '2000-01-01 00:00:00+00')"
    cur = await conn.execute(
        f"SELECT DISTINCT ON (1) {bucket}, value FROM readings"  # noqa: S608 - one of two fixed expressions
        " WHERE sensor_id = %(sensor)s AND metric = %(metric)s AND ts >= %(lo)s AND ts < %(hi)s ORDER BY 1, ts DESC",
        {"unit": STEP.get(level), "zone": zone.key, "sensor": sensor_id, "metric": metric, "lo": lo, "hi": hi},
    )
    return {at: value for at, value in await cur.fetchall()}
