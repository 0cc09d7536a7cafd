"""What the screens and the agency read beside raw series: sensor status, trailing-window means,
hourly sums and counts over many sensors, a value an hour back. Indexed reads over one city's
sensors; the domain meaning (ISPU, Siaga, BMKG, LOS) is `pantau.indices`'.

A sensor's status, in this order (the first that holds):
- `offline`: nothing stored from it for `offline_after` (never heard from counts too);
- `rejected`: its newest message, within the last hour, was rejected (what it sends now is lost);
- `stuck`: one of its metrics has at least `STUCK_MIN_READINGS` readings in the last hour, all equal;
- `ok`.
These are measured from the data, not read from the rule pack's alerts, so they hold whatever rules
are in force (the pack's absence and stuck rules raise alerts on the same facts).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from psycopg import AsyncConnection

from pantau.store.migrations import Backend
from pantau.topics import parse_sensor_topic

STATUSES = ("ok", "offline", "stuck", "rejected")
OFFLINE_AFTER = timedelta(minutes=15)  # three missed 5-minute reports, as the default pack's absence rules
STUCK_WINDOW = timedelta(hours=1)
STUCK_MIN_READINGS = 6
REJECTED_WINDOW = timedelta(hours=1)


async def statuses(
    conn: AsyncConnection,
    last_seen: Mapping[str, datetime | None],
    now: datetime,
    *,
    offline_after: timedelta = OFFLINE_AFTER,
) -> dict[str, str]:
    """Each sensor's status (see the module's docstring) from its `last_seen` at `now`."""
    status = {sid: "offline" for sid, seen in last_seen.items() if seen is None or now - seen > offline_after}
    live = [sid for sid in last_seen if sid not in status]
    if live:
        cur = await conn.execute(
            "SELECT topic, max(received_at) FROM rejected_messages WHERE received_at > %s AND received_at <= %s"
            " GROUP BY topic",
            (now - REJECTED_WINDOW, now),
        )
        for topic, newest in await cur.fetchall():
            parsed = parse_sensor_topic(topic)
            seen = last_seen.get(parsed[2]) if parsed else None
            if parsed and parsed[2] not in status and seen is not None and newest > seen:
                status[parsed[2]] = "rejected"
        cur = await conn.execute(
            "SELECT DISTINCT sensor_id FROM readings WHERE sensor_id = ANY(%s) AND ts > %s AND ts <= %s"
            " GROUP BY sensor_id, metric HAVING count(*) >= %s AND min(value) = max(value)",
            ([s for s in live if s not in status], now - STUCK_WINDOW, now, STUCK_MIN_READINGS),
        )
        for (sid,) in await cur.fetchall():
            status.setdefault(sid, "stuck")
    return {sid: status.get(sid, "ok") for sid in last_seen}


@dataclass(frozen=True, slots=True)
class WindowMean:
    """The mean of a metric's readings over a trailing window: `n` readings, the newest at `newest`."""

    mean: float
    n: int
    newest: datetime


async def window_means(
    conn: AsyncConnection, sensor_ids: Sequence[str], windows: Mapping[str, timedelta], at: datetime
) -> dict[tuple[str, str], WindowMean]:
    """For each sensor and metric of `windows`, the mean of its readings in (at − window, at]."""
    if not sensor_ids or not windows:
        return {}
    metrics = list(windows)
    cur = await conn.execute(
        "SELECT r.sensor_id, r.metric, avg(r.value), count(*), max(r.ts)"
        " FROM readings r JOIN unnest(%(metrics)s::text[], %(windows)s::interval[]) AS w(metric, win)"
        "   ON r.metric = w.metric AND r.ts > %(at)s - w.win"
        " WHERE r.sensor_id = ANY(%(sensors)s) AND r.metric = ANY(%(metrics)s)"
        "   AND r.ts > %(lo)s AND r.ts <= %(at)s"
        " GROUP BY r.sensor_id, r.metric",
        {
            "metrics": metrics,
            "windows": [windows[m] for m in metrics],
            "at": at,
            "lo": at - max(windows.values()),
            "sensors": list(sensor_ids),
        },
    )
    rows = await cur.fetchall()
    return {(sid, metric): WindowMean(float(mean), int(n), newest) for sid, metric, mean, n, newest in rows}


# Hourly n and sum over many sensors and metrics. Plain PostgreSQL: an hour whose refresh is pending
# (a minute of it in rollup_invalidations) is summed from the raw readings instead. TimescaleDB:
# readings_1h is a real-time aggregate, so the hours past its last refresh are aggregated when read.
_HOURLY_PLAIN = """
WITH pending AS (
    SELECT DISTINCT date_bin('1 hour', bucket, timestamptz '2000-01-01 00:00:00+00') AS bucket
    FROM rollup_invalidations WHERE bucket >= %(lo)s AND bucket < %(hi)s
)
SELECT sensor_id, metric, bucket, n, avg_value * n FROM readings_1h
WHERE sensor_id = ANY(%(sensors)s) AND metric = ANY(%(metrics)s) AND bucket >= %(lo)s AND bucket < %(hi)s
  AND bucket NOT IN (SELECT bucket FROM pending)
UNION ALL
SELECT sensor_id, metric, date_bin('1 hour', ts, timestamptz '2000-01-01 00:00:00+00'), count(*), sum(value)
FROM readings
WHERE sensor_id = ANY(%(sensors)s) AND metric = ANY(%(metrics)s) AND ts >= %(lo)s AND ts < %(hi)s
  AND ts >= (SELECT min(bucket) FROM pending) AND ts < (SELECT max(bucket) FROM pending) + interval '1 hour'
  AND date_bin('1 hour', ts, timestamptz '2000-01-01 00:00:00+00') IN (SELECT bucket FROM pending)
GROUP BY 1, 2, 3
"""
_HOURLY_TIMESCALE = """
SELECT sensor_id, metric, bucket, n, avg_value * n FROM readings_1h
WHERE sensor_id = ANY(%(sensors)s) AND metric = ANY(%(metrics)s) AND bucket >= %(lo)s AND bucket < %(hi)s
"""

Hourly = dict[tuple[str, str], dict[datetime, tuple[int, float]]]


async def hourly(
    conn: AsyncConnection,
    backend: Backend,
    sensor_ids: Iterable[str],
    metrics: Iterable[str],
    lo: datetime,
    hi: datetime,
) -> Hourly:
    """(n, sum) of each hour in [lo, hi) that has readings, per (sensor, metric); `lo` and `hi` on
    whole hours (Indonesia's zones are whole hours from UTC, so a local day is 24 of them)."""
    cur = await conn.execute(
        _HOURLY_PLAIN if backend is Backend.POSTGRES else _HOURLY_TIMESCALE,
        {"sensors": list(sensor_ids), "metrics": list(metrics), "lo": lo, "hi": hi},
    )
    out: Hourly = defaultdict(dict)
    for sid, metric, bucket, n, total in await cur.fetchall():
        out[(sid, metric)][bucket] = (int(n), float(total))
    return dict(out)


async def values_before(
    conn: AsyncConnection, metric: str, wanted: Mapping[str, datetime]
) -> dict[str, tuple[datetime, float]]:
    """For each sensor, its newest reading of `metric` at or before the given time (one index probe each)."""
    if not wanted:
        return {}
    sensors = list(wanted)
    cur = await conn.execute(
        "SELECT w.sensor_id, r.ts, r.value FROM unnest(%s::text[], %s::timestamptz[]) AS w(sensor_id, at)"
        " CROSS JOIN LATERAL (SELECT ts, value FROM readings"
        "   WHERE sensor_id = w.sensor_id AND metric = %s AND ts <= w.at ORDER BY ts DESC LIMIT 1) r",
        (sensors, [wanted[s] for s in sensors], metric),
    )
    return {sid: (ts, float(value)) for sid, ts, value in await cur.fetchall()}


async def sums(
    conn: AsyncConnection, metric: str, sensor_ids: Sequence[str], lo: datetime, hi: datetime
) -> dict[str, tuple[int, float]]:
    """(n, sum) of each sensor's `metric` readings in [lo, hi)."""
    if not sensor_ids:
        return {}
    cur = await conn.execute(
        "SELECT sensor_id, count(*), sum(value) FROM readings"
        " WHERE sensor_id = ANY(%s) AND metric = %s AND ts >= %s AND ts < %s GROUP BY sensor_id",
        (list(sensor_ids), metric, lo, hi),
    )
    return {sid: (int(n), float(total)) for sid, n, total in await cur.fetchall()}


async def latest(conn: AsyncConnection, sensor_ids: Sequence[str]) -> dict[str, dict[str, tuple[datetime, float]]]:
    """Each sensor's latest value per metric (`latest_readings`, kept by ingest per committed batch)."""
    cur = await conn.execute(
        "SELECT sensor_id, metric, ts, value FROM latest_readings WHERE sensor_id = ANY(%s)", (list(sensor_ids),)
    )
    out: dict[str, dict[str, tuple[datetime, float]]] = defaultdict(dict)
    for sid, metric, ts, value in await cur.fetchall():
        out[sid][metric] = (ts, float(value))
    return dict(out)
