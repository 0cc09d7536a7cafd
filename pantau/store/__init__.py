"""The store: schema, migrations and every query pantau makes, behind one API for both backends.

TimescaleDB (hypertable, compression, retention, continuous aggregates) when the extension is
installed and preloaded; otherwise plain PostgreSQL with daily range partitions and rollup tables
kept up to date by `pantau.store.maintenance`. Callers never see the difference: rollups are read
from `readings_1m` / `readings_1h` in both, with the same columns.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from pantau.audit import Actor, record
from pantau.domain import City, Sensor
from pantau.errors import StoreError, StoreUnavailable
from pantau.settings import StoreSettings
from pantau.store.maintenance import MaintenanceRun, last_run, partition_days
from pantau.store.migrations import SCHEMA_VERSION, Backend, current_backend, migrate, schema_version

__all__ = [
    "SCHEMA_VERSION", "Backend", "Job", "JobError", "Partitions", "Store", "StoreInfo", "TimescaleInfo", "connect",
    "redact_url",
]  # fmt: skip

log = logging.getLogger(__name__)

Resolution = Literal["raw", "1m", "1h"]


def _iso(value: datetime | date | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclass(frozen=True, slots=True)
class Partitions:
    """The daily partitions of `readings` on plain PostgreSQL (UTC days), as seen on `today`."""

    today: date
    days: tuple[date, ...]  # oldest first

    @property
    def has_today(self) -> bool:
        return self.today in self.days

    @property
    def ahead(self) -> int:
        """How many days after today have their partition (`pantau maintain` makes them)."""
        return sum(1 for day in self.days if day > self.today)

    @property
    def newest(self) -> date | None:
        return self.days[-1] if self.days else None

    def to_json(self) -> dict[str, Any]:
        return {
            "today": self.today.isoformat(),
            "has_today": self.has_today,
            "days_ahead": self.ahead,
            "newest": _iso(self.newest),
            "oldest": _iso(self.days[0] if self.days else None),
            "count": len(self.days),
        }


@dataclass(frozen=True, slots=True)
class JobError:
    """One failed run of a TimescaleDB job (timescaledb_information.job_errors)."""

    at: datetime
    sqlerrcode: str | None
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "sqlerrcode": self.sqlerrcode, "message": self.message}


@dataclass(frozen=True, slots=True)
class Job:
    """A TimescaleDB policy pantau set up (`_apply_timescale_policies`), with how its runs went."""

    id: int
    policy: str  # compression, retention or refresh (of a continuous aggregate)
    relation: str  # readings, readings_1m or readings_1h
    schedule_interval: timedelta
    config: Mapping[str, Any]  # compress_after, drop_after or start_offset / end_offset, as TimescaleDB keeps them
    scheduled: bool
    last_run_started_at: datetime | None  # None: it has not run yet
    last_run_status: str | None  # Success or Failed
    last_successful_finish: datetime | None
    next_start: datetime | None
    total_runs: int
    total_failures: int
    errors: tuple[JobError, ...]  # the latest first, at most `_JOB_ERRORS_SHOWN`

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "policy": self.policy,
            "relation": self.relation,
            "schedule_interval_s": self.schedule_interval.total_seconds(),
            "config": dict(self.config),
            "scheduled": self.scheduled,
            "last_run_started_at": _iso(self.last_run_started_at),
            "last_run_status": self.last_run_status,
            "last_successful_finish": _iso(self.last_successful_finish),
            "next_start": _iso(self.next_start),
            "total_runs": self.total_runs,
            "total_failures": self.total_failures,
            "errors": [e.to_json() for e in self.errors],
        }


@dataclass(frozen=True, slots=True)
class TimescaleInfo:
    """The `readings` hypertable's layout and compression, and pantau's policies on it and its rollups."""

    chunk_interval: timedelta | None
    compression: bool
    segmentby: tuple[str, ...]
    orderby: tuple[str, ...]
    jobs: tuple[Job, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "chunk_interval_s": self.chunk_interval.total_seconds() if self.chunk_interval else None,
            "compression": {
                "enabled": self.compression,
                "segmentby": list(self.segmentby),
                "orderby": list(self.orderby),
            },
            "jobs": [job.to_json() for job in self.jobs],
        }


@dataclass(frozen=True, slots=True)
class StoreInfo:
    """What `pantau db info` prints: what is in use, and what an operator checks first."""

    backend: Backend | None
    timescaledb_version: str | None
    server_version: str
    schema_version: int
    expected_schema_version: int
    row_counts: dict[str, int]
    maintenance: MaintenanceRun | None = None  # the last `pantau maintain` round; None: never ran
    partitions: Partitions | None = None  # plain PostgreSQL
    timescaledb: TimescaleInfo | None = None  # TimescaleDB

    def to_json(self) -> dict[str, Any]:
        """JSON-ready mapping (times in ISO 8601, intervals in seconds)."""
        return {
            "backend": self.backend.value if self.backend else None,
            "timescaledb_version": self.timescaledb_version,
            "server_version": self.server_version,
            "schema_version": self.schema_version,
            "expected_schema_version": self.expected_schema_version,
            "row_counts": self.row_counts,
            "maintenance": self.maintenance.to_json() if self.maintenance else None,
            "partitions": self.partitions.to_json() if self.partitions else None,
            "timescaledb": self.timescaledb.to_json() if self.timescaledb else None,
        }


# TimescaleDB's names for the policies pantau adds, and what `db info` calls them.
# In the order a reading meets them (into a rollup, compressed, dropped), for listing.
_POLICIES = {
    "policy_refresh_continuous_aggregate": "refresh",
    "policy_compression": "compression",
    "policy_retention": "retention",
}
_POLICY_RELATIONS = ("readings", "readings_1m", "readings_1h")
# A failing job fails again at every retry: its latest errors say what is wrong, older ones repeat it.
_JOB_ERRORS_SHOWN = 3


async def _timescale_info(conn: AsyncConnection) -> TimescaleInfo:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "SELECT d.time_interval, h.compression_enabled FROM timescaledb_information.hypertables h"
        " LEFT JOIN timescaledb_information.dimensions d ON d.hypertable_schema = h.hypertable_schema"
        "  AND d.hypertable_name = h.hypertable_name AND d.dimension_number = 1"
        " WHERE h.hypertable_name = 'readings' AND h.hypertable_schema = current_schema()"
    )
    table = await cur.fetchone() or {"time_interval": None, "compression_enabled": False}
    await cur.execute(
        "SELECT attname, segmentby_column_index, orderby_column_index, orderby_asc"
        " FROM timescaledb_information.compression_settings"
        " WHERE hypertable_name = 'readings' AND hypertable_schema = current_schema()"
    )
    columns = await cur.fetchall()
    segmentby = sorted((r for r in columns if r["segmentby_column_index"]), key=lambda r: r["segmentby_column_index"])
    orderby = sorted((r for r in columns if r["orderby_column_index"]), key=lambda r: r["orderby_column_index"])
    await cur.execute(
        # TimescaleDB writes -infinity for a time that has not happened (no successful finish yet).
        "SELECT j.job_id, j.proc_name, j.hypertable_name, j.schedule_interval, j.config, j.scheduled,"
        " s.last_run_status, coalesce(s.total_runs, 0) AS total_runs, coalesce(s.total_failures, 0) AS total_failures,"
        " CASE WHEN isfinite(s.last_run_started_at) THEN s.last_run_started_at END AS last_run_started_at,"
        " CASE WHEN isfinite(s.last_successful_finish) THEN s.last_successful_finish END AS last_successful_finish,"
        " (SELECT t FROM (VALUES (s.next_start), (j.next_start)) AS v(t) WHERE isfinite(t) LIMIT 1) AS next_start"
        " FROM timescaledb_information.jobs j LEFT JOIN timescaledb_information.job_stats s USING (job_id)"
        " WHERE j.proc_name = ANY(%s) AND j.hypertable_name = ANY(%s)",
        (list(_POLICIES), list(_POLICY_RELATIONS)),
    )
    order = list(_POLICIES)
    jobs = sorted(
        await cur.fetchall(),
        key=lambda j: (_POLICY_RELATIONS.index(j["hypertable_name"]), order.index(j["proc_name"]), j["job_id"]),
    )
    await cur.execute(
        "SELECT job_id, CASE WHEN isfinite(finish_time) THEN finish_time ELSE start_time END AS at,"
        " sqlerrcode, err_message FROM ("
        "  SELECT *, row_number() OVER (PARTITION BY job_id ORDER BY start_time DESC) AS n"
        "  FROM timescaledb_information.job_errors WHERE job_id = ANY(%s)) e"
        " WHERE n <= %s ORDER BY job_id, start_time DESC",
        ([j["job_id"] for j in jobs], _JOB_ERRORS_SHOWN),
    )
    errors: dict[int, list[JobError]] = {}
    for e in await cur.fetchall():
        errors.setdefault(e["job_id"], []).append(JobError(e["at"], e["sqlerrcode"], e["err_message"] or ""))
    return TimescaleInfo(
        chunk_interval=table["time_interval"],
        compression=bool(table["compression_enabled"]),
        segmentby=tuple(r["attname"] for r in segmentby),
        orderby=tuple(r["attname"] + ("" if r["orderby_asc"] else " DESC") for r in orderby),
        jobs=tuple(
            Job(
                id=j["job_id"],
                policy=_POLICIES[j["proc_name"]],
                relation=j["hypertable_name"],
                schedule_interval=j["schedule_interval"],
                config=j["config"] or {},
                scheduled=bool(j["scheduled"]),
                last_run_started_at=j["last_run_started_at"],
                last_run_status=j["last_run_status"],
                last_successful_finish=j["last_successful_finish"],
                next_start=j["next_start"],
                total_runs=int(j["total_runs"]),
                total_failures=int(j["total_failures"]),
                errors=tuple(errors.get(j["job_id"], ())),
            )
            for j in jobs
        ),
    )


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

    @property
    def url(self) -> str:
        """Where the pool connects: for a connection of one's own (a LISTEN)."""
        return self._url

    @classmethod
    @asynccontextmanager
    async def open(
        cls, url: str, settings: StoreSettings | None = None, *, statement_timeout_ms: int | None = None
    ) -> AsyncIterator[Store]:
        """Open a pool on `url`, wait until it works, close it on exit. With `statement_timeout_ms`,
        every statement on its connections is cancelled past that (a transaction may `SET LOCAL`
        another budget, e.g. 0 for an export that streams for minutes)."""
        settings = settings or StoreSettings()
        kwargs: dict[str, Any] = {"autocommit": True}
        if statement_timeout_ms is not None:
            kwargs["options"] = f"-c statement_timeout={int(statement_timeout_ms)}"
        pool = AsyncConnectionPool(url, min_size=1, max_size=settings.pool_max_size, open=False, kwargs=kwargs)
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
        except psycopg.errors.QueryCanceled:  # a statement over its budget: the server is fine
            raise
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
        """Backend, versions, row counts, the last maintenance run, and partitions ahead (plain
        PostgreSQL) or the hypertable's layout and policy jobs (TimescaleDB)."""
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
            maintenance = await last_run(conn) if version >= 1 else None
            partitions = timescale = None
            if version >= 2 and backend is Backend.POSTGRES:
                partitions = Partitions(datetime.now(UTC).date(), tuple(await partition_days(conn)))
            elif version >= 2 and backend is Backend.TIMESCALEDB:
                timescale = await _timescale_info(conn)
        return StoreInfo(
            backend,
            ts_row[0] if ts_row else None,
            server,
            version,
            SCHEMA_VERSION,
            counts,
            maintenance=maintenance,
            partitions=partitions,
            timescaledb=timescale,
        )

    # -- sensors -----------------------------------------------------------------------------

    async def upsert_sensors(self, sensors: Iterable[Sensor], *, by: Actor | None = None) -> tuple[int, int]:
        """Insert or update sensors by id; returns (inserted, updated). With `by`, the change goes to
        the audit log in the same transaction (one entry: each sensor before and after)."""
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
            before: dict[str, Any] = {}
            if by is not None:
                cur = await conn.execute(
                    f"SELECT id, {_AUDITED_SENSOR} FROM sensors WHERE id IN (SELECT id FROM sensors_in)"  # noqa: S608
                )
                before = {row[0]: row[1] for row in await cur.fetchall()}
            cur = await conn.execute(
                f"""
                INSERT INTO sensors AS s (id, kind, city, district, name, lat, lon, metadata)
                SELECT DISTINCT ON (id) id, kind, city, district, name, lat, lon, metadata FROM sensors_in
                ON CONFLICT (id) DO UPDATE SET
                    kind = excluded.kind, city = excluded.city, district = excluded.district,
                    name = excluded.name, lat = excluded.lat, lon = excluded.lon,
                    metadata = excluded.metadata
                RETURNING (xmax = 0) AS inserted, id, {_AUDITED_SENSOR}
                """  # noqa: S608 - a fixed expression
            )
            changed = await cur.fetchall()
            flags = [r[0] for r in changed]
            if by is not None:
                after = {r[1]: r[2] for r in changed if before.get(r[1]) != r[2]}
                target = f"sensor:{next(iter(after))}" if len(after) == 1 else f"sensors:{len(after)}"
                if after:  # a re-import of what is registered already changes nothing
                    await record(conn, by, "sensor.register", target, before={k: before.get(k) for k in after},
                                 after=after)  # fmt: skip
            # A sensor's city joins the registry (in Jakarta's zone until a fleet import or
            # `pantau cities set` says otherwise).
            await conn.execute("INSERT INTO cities (id) SELECT DISTINCT city FROM sensors_in ON CONFLICT DO NOTHING")
        inserted = sum(1 for f in flags if f)
        return inserted, len(flags) - inserted

    async def audit(self, by: Actor, action: str, target: str, *, before: Any = None, after: Any = None) -> None:
        """One audit entry for a change made outside the database (the broker's accounts)."""
        async with self.connection() as conn:
            await record(conn, by, action, target, before=before, after=after)

    async def upsert_city(self, city: City) -> None:
        """Insert or update a city of the registry."""
        async with self.connection() as conn:
            await conn.execute(
                "INSERT INTO cities (id, name, province, timezone) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (id) DO UPDATE SET name = excluded.name, province = excluded.province,"
                " timezone = excluded.timezone, updated_at = now()",
                (city.id, city.name, city.province, city.timezone),
            )

    async def cities(self) -> list[City]:
        """The registry's cities, by id."""
        async with self.connection() as conn:
            cur = await conn.execute("SELECT id, name, province, timezone FROM cities ORDER BY id")
            return [City(id=r[0], name=r[1], province=r[2], timezone=r[3]) for r in await cur.fetchall()]

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


# A sensor as the audit log records it (what a registration sets).
_AUDITED_SENSOR = "jsonb_build_object('kind', kind, 'city', city, 'district', district, 'name', name, 'lat', lat," \
    " 'lon', lon, 'metadata', metadata)"


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))
