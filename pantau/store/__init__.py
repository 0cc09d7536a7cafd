"""The store: schema, migrations and every query pantau makes, behind one API for both backends.

TimescaleDB (hypertable, compression, retention, continuous aggregates) when the extension is
installed and preloaded; otherwise plain PostgreSQL with daily range partitions and rollup tables
kept up to date by `pantau.store.maintenance`. Callers never see the difference: rollups are read
from `readings_1m` / `readings_1h` in both, with the same columns.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from pantau.domain import Sensor
from pantau.errors import StoreError, StoreUnavailable
from pantau.settings import StoreSettings
from pantau.store.migrations import SCHEMA_VERSION, Backend, current_backend, migrate, schema_version

__all__ = ["SCHEMA_VERSION", "Backend", "Store", "StoreInfo", "connect", "redact_url"]

log = logging.getLogger(__name__)

Resolution = Literal["raw", "1m", "1h"]


@dataclass(frozen=True, slots=True)
class StoreInfo:
    """What `pantau db info` prints."""

    backend: Backend | None
    timescaledb_version: str | None
    server_version: str
    schema_version: int
    expected_schema_version: int
    row_counts: dict[str, int]


async def connect(url: str, *, autocommit: bool = True, timeout_s: float = 10.0) -> AsyncConnection:
    """One connection; connection failures become StoreUnavailable."""
    try:
        return await AsyncConnection.connect(url, autocommit=autocommit, connect_timeout=int(max(1, timeout_s)))
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc


# Tables `Store.count` may be asked about (the name goes into SQL, so only these).
_COUNTABLE = frozenset(
    {
        "readings", "readings_1m", "readings_1h", "sensors", "rejected_messages", "alerts", "alert_events",
        "ingest_batches", "rule_claims", "rule_checkpoints",
    }
)  # fmt: skip


class Store:
    """A connection pool with pantau's queries. Open with `async with Store.open(...)`."""

    def __init__(self, pool: AsyncConnectionPool, settings: StoreSettings, *, url: str) -> None:
        self._pool = pool
        self._url = url  # for a connection outside the pool (migrate's probe)
        self.settings = settings

    @classmethod
    @asynccontextmanager
    async def open(cls, url: str, settings: StoreSettings | None = None) -> AsyncIterator[Store]:
        """Open a pool on `url`, wait until it works, close it on exit."""
        settings = settings or StoreSettings()
        pool = AsyncConnectionPool(
            url, min_size=1, max_size=settings.pool_max_size, open=False, kwargs={"autocommit": True}
        )
        try:
            await pool.open(wait=True, timeout=15.0)
        except psycopg.pool.PoolTimeout as exc:  # type: ignore[attr-defined]
            await pool.close()
            raise StoreUnavailable(f"cannot connect to PostgreSQL at {redact_url(url)}") from exc
        try:
            yield cls(pool, settings, url=url)
        finally:
            await pool.close()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection]:
        """Borrow a pooled autocommit connection."""
        try:
            async with self._pool.connection() as conn:
                yield conn
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(str(exc)) from exc

    # -- schema ------------------------------------------------------------------------------

    async def migrate(self) -> tuple[Backend, list[str]]:
        """Apply pending migrations; returns the backend and the names of what was applied."""
        async with self.connection() as conn:
            backend, applied = await migrate(conn, self.settings, connect=lambda: connect(self._url))
        return backend, [f"{m.version}: {m.name}" for m in applied]

    async def backend(self) -> Backend:
        """The backend chosen at migrate time."""
        async with self.connection() as conn:
            found = await current_backend(conn)
        if found is None:
            raise StoreError("the database has not been migrated: run `pantau db migrate`")
        return found

    async def info(self) -> StoreInfo:
        """Backend, versions and row counts."""
        async with self.connection() as conn:
            backend = await current_backend(conn)
            version = await schema_version(conn)
            cur = await conn.execute("SHOW server_version")
            server = (await cur.fetchone() or ("?",))[0]
            cur = await conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
            ts_row = await cur.fetchone()
            counts: dict[str, int] = {}
            if version >= 2:
                for table in ("sensors", "readings", "readings_1m", "readings_1h", "rejected_messages"):
                    cur = await conn.execute(f"SELECT count(*) FROM {table}")  # noqa: S608 - fixed names
                    counts[table] = int((await cur.fetchone() or (0,))[0])
            if version >= 3:
                cur = await conn.execute("SELECT count(*) FROM alerts")
                counts["alerts"] = int((await cur.fetchone() or (0,))[0])
        return StoreInfo(backend, ts_row[0] if ts_row else None, server, version, SCHEMA_VERSION, counts)

    # -- sensors -----------------------------------------------------------------------------

    async def upsert_sensors(self, sensors: Iterable[Sensor]) -> tuple[int, int]:
        """Insert or update sensors by id; returns (inserted, updated)."""
        rows = [(s.id, s.kind.value, s.city, s.district, s.name, s.lat, s.lon, json.dumps(s.metadata)) for s in sensors]
        if not rows:
            return 0, 0
        async with self.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS sensors_in (LIKE sensors INCLUDING DEFAULTS) ON COMMIT DROP"
            )
            async with conn.cursor().copy(
                "COPY sensors_in (id, kind, city, district, name, lat, lon, metadata) FROM STDIN"
            ) as copy:
                for row in rows:
                    await copy.write_row(row)
            cur = await conn.execute(
                """
                INSERT INTO sensors AS s (id, kind, city, district, name, lat, lon, metadata)
                SELECT DISTINCT ON (id) id, kind, city, district, name, lat, lon, metadata FROM sensors_in
                ON CONFLICT (id) DO UPDATE SET
                    kind = excluded.kind, city = excluded.city, district = excluded.district,
                    name = excluded.name, lat = excluded.lat, lon = excluded.lon,
                    metadata = excluded.metadata
                RETURNING (xmax = 0) AS inserted
                """
            )
            flags = [r[0] for r in await cur.fetchall()]
        inserted = sum(1 for f in flags if f)
        return inserted, len(flags) - inserted

    async def sensors(self, *, city: str | None = None, kind: str | None = None) -> list[Sensor]:
        """Registered sensors, optionally filtered, ordered by city and id."""
        async with self.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "SELECT id, kind, city, district, name, lat, lon, metadata, created_at, last_seen"
                " FROM sensors WHERE (%(city)s::text IS NULL OR city = %(city)s)"
                " AND (%(kind)s::text IS NULL OR kind = %(kind)s) ORDER BY city, id",
                {"city": city, "kind": kind},
            )
            return [Sensor(**row) for row in await cur.fetchall()]

    # -- readings ----------------------------------------------------------------------------

    async def readings(
        self,
        sensor_id: str,
        metric: str,
        start: datetime,
        end: datetime,
        *,
        resolution: Resolution = "raw",
        limit: int = 100_000,
    ) -> list[dict[str, Any]]:
        """Readings of one sensor and metric in [start, end), raw or rolled up (n/avg/min/max)."""
        if resolution == "raw":
            query = (
                "SELECT ts, value FROM readings WHERE sensor_id = %s AND metric = %s"
                " AND ts >= %s AND ts < %s ORDER BY ts LIMIT %s"
            )
        elif resolution in ("1m", "1h"):
            query = (
                f"SELECT bucket, n, avg_value, min_value, max_value FROM readings_{resolution}"  # noqa: S608
                " WHERE sensor_id = %s AND metric = %s AND bucket >= %s AND bucket < %s"
                " ORDER BY bucket LIMIT %s"
            )
        else:
            raise ValueError(f"resolution must be raw, 1m or 1h, not {resolution!r}")
        async with self.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(query, (sensor_id, metric, start, end, limit))
            return await cur.fetchall()

    async def count(self, table: str, where: str = "TRUE", params: Sequence[Any] = ()) -> int:
        """Row count of one of pantau's tables (used by tools and tests)."""
        if table not in _COUNTABLE:
            raise ValueError(f"unknown table {table!r}")
        async with self.connection() as conn:
            cur = await conn.execute(f"SELECT count(*) FROM {table} WHERE {where}", params)  # noqa: S608
            return int((await cur.fetchone() or (0,))[0])


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))
