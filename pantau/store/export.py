"""Readings out, for any filter and range, streamed straight from PostgreSQL with flat memory and no
row cap: CSV through `COPY ... TO STDOUT` (PostgreSQL writes it), NDJSON and Parquet through a
server-side cursor (Parquet a row group of `PARQUET_ROW_GROUP` rows at a time, each sent as soon as
it is written). The API's /api/v1/export and `pantau export` are both this code.

Columns: ts (RFC 3339, UTC; in Parquet a UTC timestamp in microseconds), sensor_id, metric, value,
unit (the metric's, pantau.metrics).
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from psycopg import AsyncConnection, sql

from pantau.metrics import METRICS

Format = Literal["csv", "ndjson", "parquet"]
FORMATS: tuple[Format, ...] = ("csv", "ndjson", "parquet")
MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "ndjson": "application/x-ndjson",
               "parquet": "application/vnd.apache.parquet"}  # fmt: skip
PARQUET_ROW_GROUP = 65_536
# Bytes handed to the client at a time: one write per row would cost more than the rows.
_CHUNK_BYTES = 1 << 16
# An export streams for as long as its rows take: no statement budget (the API's pool sets one).
NO_BUDGET = "SET LOCAL statement_timeout = 0"
HEADER = "ts,sensor_id,metric,value,unit\n"
# Rows a server-side cursor hands over at a time (NDJSON): large enough to amortise the round trip,
# small enough that memory stays flat.
_FETCH_ROWS = 5000


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportFilter:
    """Which readings: [start, end), and optionally sensors, a city, a kind and metrics."""

    start: datetime
    end: datetime
    sensors: Sequence[str] = ()
    city: str | None = None
    kind: str | None = None
    metrics: Sequence[str] = ()


def _select(f: ExportFilter, *, text_ts: bool) -> sql.Composed:
    units = sql.SQL(", ").join(
        sql.SQL("({}, {})").format(sql.Literal(m.name), sql.Literal(m.unit)) for m in METRICS.values()
    )
    ts = (
        sql.SQL("""to_char(r.ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')""") if text_ts else sql.SQL("r.ts")
    )
    where: list[sql.Composable] = [
        sql.SQL("r.ts >= {}").format(sql.Literal(f.start)),
        sql.SQL("r.ts < {}").format(sql.Literal(f.end)),
    ]
    if f.sensors:
        where.append(sql.SQL("r.sensor_id = ANY({})").format(sql.Literal(list(f.sensors))))
    if f.metrics:
        where.append(sql.SQL("r.metric = ANY({})").format(sql.Literal(list(f.metrics))))
    if f.city is not None or f.kind is not None:
        registry: list[sql.Composable] = [sql.SQL("s.id = r.sensor_id")]
        if f.city is not None:
            registry.append(sql.SQL("s.city = {}").format(sql.Literal(f.city)))
        if f.kind is not None:
            registry.append(sql.SQL("s.kind = {}").format(sql.Literal(f.kind)))
        where.append(sql.SQL("EXISTS (SELECT 1 FROM sensors s WHERE {})").format(sql.SQL(" AND ").join(registry)))
    return sql.SQL(
        "SELECT {ts}, r.sensor_id, r.metric, r.value, u.unit FROM readings r"
        " JOIN (VALUES {units}) AS u(metric, unit) ON u.metric = r.metric"
        " WHERE {where} ORDER BY r.sensor_id, r.metric, r.ts"
    ).format(ts=ts, units=units, where=sql.SQL(" AND ").join(where))


async def export(conn: AsyncConnection, f: ExportFilter, fmt: Format) -> AsyncIterator[bytes]:
    """The readings as `fmt`, chunk by chunk (the CSV with its header line)."""
    if fmt == "csv":
        yield HEADER.encode()
        query = sql.SQL("COPY ({}) TO STDOUT (FORMAT csv)").format(_select(f, text_ts=True))
        async with conn.transaction():
            await conn.execute(NO_BUDGET)
            async with conn.cursor().copy(query) as copy:
                buffer = bytearray()
                async for row in copy:  # libpq hands over COPY data a row at a time
                    buffer += row
                    if len(buffer) >= _CHUNK_BYTES:
                        yield bytes(buffer)
                        buffer.clear()
                if buffer:
                    yield bytes(buffer)
        return
    if fmt == "parquet":
        async for chunk in _parquet(conn, f):
            yield chunk
        return
    # A named (server-side) cursor lives in a transaction.
    async with conn.transaction(), conn.cursor(name="pantau_export") as cur:
        await conn.execute(NO_BUDGET)
        await cur.execute(_select(f, text_ts=True))
        while rows := await cur.fetchmany(_FETCH_ROWS):
            yield "".join(
                json.dumps({"ts": ts, "sensor_id": s, "metric": m, "value": v, "unit": u}, ensure_ascii=False) + "\n"
                for ts, s, m, v, u in rows
            ).encode()


class _Chunks(io.RawIOBase):
    """A write-only file that keeps what is written until it is taken: the Parquet writer's sink."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self.parts.append(chunk)
        self.position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self.position

    def take(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


async def _parquet(conn: AsyncConnection, f: ExportFilter) -> AsyncIterator[bytes]:
    import pyarrow as pa  # a large library: loaded when a Parquet export asks for it
    import pyarrow.parquet as pq

    schema = pa.schema([("ts", pa.timestamp("us", tz="UTC")), ("sensor_id", pa.string()), ("metric", pa.string()),
                        ("value", pa.float64()), ("unit", pa.string())])  # fmt: skip
    sink = _Chunks()
    writer = pq.ParquetWriter(sink, schema, compression="zstd")
    async with conn.transaction(), conn.cursor(name="pantau_export") as cur:
        await conn.execute(NO_BUDGET)
        await cur.execute(_select(f, text_ts=False))
        while rows := await cur.fetchmany(PARQUET_ROW_GROUP):
            columns = zip(*rows, strict=True)
            arrays = [pa.array(column, type=kind.type) for column, kind in zip(columns, schema, strict=True)]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
            if chunk := sink.take():
                yield chunk
    writer.close()
    yield sink.take()
