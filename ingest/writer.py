"""Batch writer: readings by binary COPY, duplicates dropped by the unique key, all in one commit.

Fast path: COPY straight into `readings` inside a savepoint. Redeliveries after a restart make
that COPY fail on the unique key; the batch then goes through a temp staging table and
`INSERT ... ON CONFLICT DO NOTHING` (the first of a batch's readings for a key wins), which also
counts the duplicates. After a conflict the staging path stays on for a while, since redeliveries
come in runs. A staged reading whose key is stored with another value is no redelivery but a
conflict: it becomes a `conflicting_value` rejection naming both values, in the same transaction.

The rows, their rollup invalidations (plain PostgreSQL), the batch's rejections and its outbox
row for the rule engine (`ingest_batches`, with a `NOTIFY pantau_batches`; docs/decisions.md D10)
commit in one transaction: the caller acknowledges the MQTT messages only after `write` returns.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from types import TracebackType
from typing import Any

import numpy as np
import psycopg
from numpy.typing import NDArray
from psycopg import AsyncConnection, errors

from pantau.domain import Reason
from pantau.errors import StoreError, StoreUnavailable
from pantau.outbox import BATCHES_CHANNEL, outbox_payload
from pantau.readings import Reading, Rejection
from pantau.store import connect
from pantau.store.maintenance import ensure_partitions
from pantau.store.migrations import Backend

log = logging.getLogger(__name__)

_PG_EPOCH_S = 946684800.0  # 2000-01-01T00:00:00Z, PostgreSQL's binary timestamp origin
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)
_FIELD_COUNT = struct.pack(">h", 4)
# A row: its field count and the sensor id and metric as text (one `bytes` per sensor and metric,
# remembered), then ts (int64 microseconds) and value (float8) with their lengths: the fixed tail
# of every row, made for the whole batch at once by numpy.
_COPY_COLUMNS = "(sensor_id, metric, ts, value)"
_ROW_TAIL = np.dtype([("ts_len", ">i4"), ("ts", ">i8"), ("value_len", ">i4"), ("value", ">f8")])
_ROW_TAIL_BYTES = _ROW_TAIL.itemsize
# (sensor, metric) row heads remembered at most: many times a fleet's, and a bound on made-up ids.
_ROW_HEAD_CACHE_MAX = 262144
# After a batch hit duplicates, this many batches take the staging path before trying COPY again.
_STAGING_STREAK = 20

@dataclass(frozen=True, slots=True)
class WriteResult:
    inserted: int
    duplicates: int  # the same value already stored (a redelivery): nothing to do
    rejected: int  # the batch's rejections and its conflicts
    conflicts: int = 0  # another value already stored for the key (or earlier in the batch)


def _text_field(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">i", len(raw)) + raw


class ReadingWriter:
    """Owns one database connection; `write` commits a batch or raises.

    Raises StoreUnavailable when the connection is lost (the caller retries the same batch after
    a backoff) and StoreError for anything else.
    """

    def __init__(
        self, url: str, backend: Backend, *, outbox: bool = True, topic_of: Callable[[str], str] = str
    ) -> None:
        self.url = url
        self.backend = backend
        self.outbox = outbox
        self.topic_of = topic_of  # sensor id -> its topic, for the rejection of a conflicting value
        self._conn: AsyncConnection | None = None
        self._known_days: set[int] = set()
        self._row_heads: dict[tuple[str, str], bytes] = {}
        self._staging_left = 0

    async def __aenter__(self) -> ReadingWriter:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def _connection(self) -> AsyncConnection:
        if self._conn is None or self._conn.closed:
            self._conn = await connect(self.url, autocommit=True)
            await self._conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS readings_stage (ts timestamptz, value double precision,"
                " sensor_id text, metric text, ord bigint GENERATED ALWAYS AS IDENTITY) ON COMMIT DELETE ROWS"
            )
        return self._conn

    def _encode(self, rows: list[Reading], ts: NDArray[np.float64]) -> bytes:
        """The rows as binary COPY data; `ts` is their times as an array (the caller has it)."""
        tail = np.empty(len(rows), dtype=_ROW_TAIL)
        tail["ts_len"] = 8
        tail["ts"] = np.round((ts - _PG_EPOCH_S) * 1e6)  # round half to even, as Python's round
        tail["value_len"] = 8
        tail["value"] = np.fromiter((r[3] for r in rows), dtype=np.float64, count=len(rows))
        tails = tail.tobytes()
        heads = self._row_heads
        if len(heads) >= _ROW_HEAD_CACHE_MAX:
            heads.clear()
        parts: list[bytes] = [_COPY_HEADER]
        append = parts.append
        at = 0
        for _ts, sensor_id, metric, _value in rows:
            key = (sensor_id, metric)
            head = heads.get(key)
            if head is None:
                head = heads[key] = _FIELD_COUNT + _text_field(sensor_id) + _text_field(metric)
            append(head)
            append(tails[at : at + _ROW_TAIL_BYTES])
            at += _ROW_TAIL_BYTES
        append(_COPY_TRAILER)
        return b"".join(parts)

    async def write(self, rows: list[Reading], rejections: list[Rejection]) -> WriteResult:
        """Commit the readings and rejections of one batch."""
        try:
            return await self._write(rows, rejections)
        except psycopg.OperationalError as exc:
            await self.close()
            raise StoreUnavailable(f"database connection lost: {exc}") from exc
        except psycopg.Error as exc:
            await self._rollback_quietly()
            raise StoreError(f"batch write failed: {exc}") from exc

    async def _rollback_quietly(self) -> None:
        if self._conn is not None and not self._conn.closed:
            try:
                await self._conn.rollback()
            except psycopg.Error:
                await self.close()

    async def _write(self, rows: list[Reading], rejections: list[Rejection]) -> WriteResult:
        conn = await self._connection()
        ts = np.fromiter((r[0] for r in rows), dtype=np.float64, count=len(rows)) if rows else None
        if ts is not None and self.backend is Backend.POSTGRES:
            days = {int(d) for d in np.unique(ts // 86400.0)} - self._known_days
            if days:
                await ensure_partitions(conn, {date.fromordinal(d + 719163) for d in days})
                self._known_days |= days
        inserted = 0
        conflicts: list[Rejection] = []
        async with conn.transaction():
            if rows:
                assert ts is not None
                data = self._encode(rows, ts)
                inserted, conflicts = await self._insert(conn, data, len(rows))
                if inserted:
                    await self._raise_latest(conn, rows, ts)
                if self.backend is Backend.POSTGRES and inserted:
                    minutes = np.unique(ts // 60.0) * 60.0
                    await conn.execute(
                        "INSERT INTO rollup_invalidations (bucket) SELECT to_timestamp(b) FROM unnest(%s::float8[]) b",
                        (minutes.tolist(),),
                    )
            if conflicts:
                rejections = [*rejections, *conflicts]
            if rejections:
                async with conn.cursor().copy(
                    "COPY rejected_messages (received_at, topic, payload, reason, detail) FROM STDIN"
                ) as copy:
                    for x in rejections:
                        # PostgreSQL text cannot hold NUL: keep it visible rather than fail the batch.
                        at = datetime.fromtimestamp(x.received_at, UTC)
                        topic, detail = x.topic.replace("\x00", "\\x00"), x.detail.replace("\x00", "\\x00")
                        await copy.write_row((at, topic, x.payload, x.reason, detail))
            if self.outbox and (rows or rejections):
                await conn.execute(
                    "INSERT INTO ingest_batches (readings, rejections, payload) VALUES (%s, %s, %s)",
                    (len(rows), len(rejections), outbox_payload(rows, rejections)),
                )
                await conn.execute(f"NOTIFY {BATCHES_CHANNEL}")
        return WriteResult(inserted, len(rows) - inserted - len(conflicts), len(rejections), len(conflicts))

    @staticmethod
    async def _raise_latest(conn: AsyncConnection, rows: list[Reading], ts: NDArray[np.float64]) -> None:
        """Move `latest_readings` forward to the batch's newest reading per sensor and metric (the
        API's wall map reads it, never `readings`). Times go as the microseconds COPY stored, so a
        latest row's time is exactly its reading's; a value that conflicted with a stored one never
        moves it (the stored reading is at least as new)."""
        micros = np.round((ts - _PG_EPOCH_S) * 1e6).astype(np.int64).tolist()
        newest: dict[tuple[str, str], int] = {}
        for i, (_t, sensor_id, metric, _value) in enumerate(rows):
            key = (sensor_id, metric)
            at = newest.get(key)
            if at is None or micros[i] > micros[at]:
                newest[key] = i
        picked = list(newest.values())
        await conn.execute(
            "INSERT INTO latest_readings (sensor_id, metric, ts, value)"
            " SELECT s, m, timestamptz '2000-01-01 00:00:00+00' + us * interval '1 microsecond', v"
            " FROM unnest(%s::text[], %s::text[], %s::int8[], %s::float8[]) AS u(s, m, us, v)"
            " ON CONFLICT (sensor_id, metric) DO UPDATE SET ts = excluded.ts, value = excluded.value"
            " WHERE latest_readings.ts < excluded.ts",
            (
                [rows[i][1] for i in picked],
                [rows[i][2] for i in picked],
                [micros[i] for i in picked],
                [rows[i][3] for i in picked],
            ),
        )

    async def _insert(self, conn: AsyncConnection, data: bytes, count: int) -> tuple[int, list[Rejection]]:
        """Insert the COPY data; how many rows were new, and the rejections of conflicting values."""
        if self._staging_left == 0:
            try:
                async with (
                    conn.transaction(),
                    conn.cursor().copy(f"COPY readings {_COPY_COLUMNS} FROM STDIN (FORMAT BINARY)") as copy,
                ):
                    await copy.write(data)
                return count, []
            except errors.UniqueViolation:
                self._staging_left = _STAGING_STREAK
        self._staging_left -= 1
        async with conn.cursor().copy(f"COPY readings_stage {_COPY_COLUMNS} FROM STDIN (FORMAT BINARY)") as copy:
            await copy.write(data)
        cur = await conn.execute(
            "INSERT INTO readings (ts, value, sensor_id, metric)"
            " SELECT DISTINCT ON (sensor_id, metric, ts) ts, value, sensor_id, metric FROM readings_stage"
            " ORDER BY sensor_id, metric, ts, ord ON CONFLICT DO NOTHING"
        )
        inserted = cur.rowcount
        if inserted == count:
            return inserted, []
        # Staged readings whose key now holds another value: stored before, or earlier in this batch.
        cur = await conn.execute(
            "SELECT s.sensor_id, s.metric, s.ts, s.value, r.value FROM readings_stage s"
            " JOIN readings r ON r.sensor_id = s.sensor_id AND r.metric = s.metric AND r.ts = s.ts"
            # The batch's time span as constants of the statement: the partitions outside it are
            # pruned at the start, not probed once per staged row (a year's backfill has 360).
            " AND r.ts >= (SELECT min(ts) FROM readings_stage) AND r.ts <= (SELECT max(ts) FROM readings_stage)"
            " WHERE r.value <> s.value ORDER BY s.ord"
        )
        found: list[tuple[str, str, datetime, float, float]] = await cur.fetchall()
        now = time.time()
        conflicts = [
            Rejection(
                now,
                sensor_id,
                Reason.CONFLICTING_VALUE.value,
                metric,
                self.topic_of(sensor_id),
                f"{metric}={value!r} at {at.astimezone(UTC).isoformat().replace('+00:00', 'Z')} conflicts with"
                f" {stored!r} stored for that sensor, metric and time; the stored value is kept",
            )
            for sensor_id, metric, at, value, stored in found
        ]
        return inserted, conflicts

    async def touch_last_seen(self, seen: dict[str, float]) -> None:
        """Raise `sensors.last_seen` to the given receive times (one statement for all)."""
        if not seen:
            return
        conn = await self._connection()
        ids = list(seen)
        times = [seen[i] for i in ids]
        try:
            await conn.execute(
                "UPDATE sensors s SET last_seen = to_timestamp(v.t) FROM unnest(%s::text[], %s::float8[]) v(id, t)"
                " WHERE s.id = v.id AND (s.last_seen IS NULL OR s.last_seen < to_timestamp(v.t))",
                (ids, times),
            )
        except psycopg.OperationalError as exc:
            await self.close()
            raise StoreUnavailable(str(exc)) from exc

    async def registry(self, ids: list[str] | None = None) -> dict[str, tuple[str, str]]:
        """sensor id -> (kind, city), for all sensors or the given ids."""
        conn = await self._connection()
        try:
            if ids is None:
                cur = await conn.execute("SELECT id, kind, city FROM sensors")
            else:
                cur = await conn.execute("SELECT id, kind, city FROM sensors WHERE id = ANY(%s)", (ids,))
            rows: list[Any] = await cur.fetchall()
        except psycopg.OperationalError as exc:
            await self.close()
            raise StoreUnavailable(str(exc)) from exc
        return {r[0]: (r[1], r[2]) for r in rows}
