"""Versioned schema migrations, with the TimescaleDB / plain PostgreSQL choice made at migrate time.

Each migration runs once, in its own transaction, and is recorded in `pantau_schema`. The backend
chosen by the first migrate is recorded in `pantau_meta` and kept: installing TimescaleDB later
does not silently switch an existing database (`pantau db info` reports what is in use). TimescaleDB
installed but not in `shared_preload_libraries` means plain PostgreSQL, with one warning saying how
to preload it (CREATE EXTENSION there is a FATAL that closes the connection).
Policies (compression, retention, continuous-aggregate refresh) are re-applied on every migrate so
that changed settings take effect, and so are the service roles' privileges (`pantau.store.grants`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

import psycopg
from psycopg import AsyncConnection, sql

from pantau.errors import MigrationError
from pantau.settings import StoreSettings

log = logging.getLogger(__name__)


class Backend(StrEnum):
    TIMESCALEDB = "timescaledb"
    POSTGRES = "postgresql"


CORE = """
CREATE TABLE pantau_meta (key text PRIMARY KEY, value text NOT NULL);

CREATE TABLE sensors (
    id          text PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('air', 'traffic', 'flood', 'rain')),
    city        text NOT NULL,
    district    text NOT NULL DEFAULT '',
    name        text NOT NULL DEFAULT '',
    lat         double precision CHECK (lat BETWEEN -90 AND 90),
    lon         double precision CHECK (lon BETWEEN -180 AND 180),
    metadata    jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz
);
CREATE INDEX sensors_city_kind ON sensors (city, kind);

CREATE TABLE rejected_messages (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now(),
    topic       text NOT NULL,
    payload     bytea,
    reason      text NOT NULL,
    detail      text NOT NULL DEFAULT ''
);
CREATE INDEX rejected_messages_received_at ON rejected_messages (received_at);
CREATE INDEX rejected_messages_reason ON rejected_messages (reason, received_at);
"""

# Rollups keep n, avg, min and max per bucket: enough for charts and for re-aggregating upwards
# (the hourly average is the n-weighted mean of the minute averages).
_ROLLUP_COLUMNS = """
    bucket      timestamptz NOT NULL,
    sensor_id   text NOT NULL,
    metric      text NOT NULL,
    n           bigint NOT NULL,
    avg_value   double precision NOT NULL,
    min_value   double precision NOT NULL,
    max_value   double precision NOT NULL,
    PRIMARY KEY (sensor_id, metric, bucket)
"""

READINGS_PLAIN = """
CREATE TABLE readings (
    ts          timestamptz NOT NULL,
    sensor_id   text NOT NULL,
    metric      text NOT NULL,
    value       double precision NOT NULL,
    CONSTRAINT readings_key UNIQUE (sensor_id, metric, ts)
) PARTITION BY RANGE (ts);
-- Live data arrives nearly in time order, so a BRIN index serves the rollup refresh's time-range
-- scans for a fraction of a B-tree's insert cost.
CREATE INDEX readings_ts ON readings USING brin (ts);

CREATE TABLE readings_1m ({rollup_columns});
CREATE INDEX readings_1m_bucket ON readings_1m (bucket);
CREATE TABLE readings_1h ({rollup_columns});
CREATE INDEX readings_1h_bucket ON readings_1h (bucket);

-- Minute buckets touched by ingest since the last refresh (an append-only log, like
-- TimescaleDB's continuous-aggregate invalidation log: no row contention between writers).
CREATE TABLE rollup_invalidations (bucket timestamptz NOT NULL);

CREATE FUNCTION pantau_ensure_partition(day date) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    part text := format('readings_p%s', to_char(day, 'YYYYMMDD'));
BEGIN
    IF to_regclass(part) IS NOT NULL THEN
        RETURN false;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('pantau.partitions'));
    IF to_regclass(part) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format(
        'CREATE TABLE %I PARTITION OF readings FOR VALUES FROM (%L) TO (%L)',
        part, (day::timestamp AT TIME ZONE 'UTC'), ((day + 1)::timestamp AT TIME ZONE 'UTC'));
    RETURN true;
END
$$;

-- Drops every daily partition that ends at or before the cutoff; returns how many.
CREATE FUNCTION pantau_drop_partitions(cutoff timestamptz) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    part record;
    dropped integer := 0;
BEGIN
    FOR part IN
        SELECT c.relname
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'readings'::regclass AND c.relname ~ '^readings_p[0-9]{8}$'
    LOOP
        IF ((to_date(substr(part.relname, 11), 'YYYYMMDD') + 1)::timestamp AT TIME ZONE 'UTC') <= cutoff THEN
            EXECUTE format('DROP TABLE %I', part.relname);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    RETURN dropped;
END
$$;
""".replace("{rollup_columns}", _ROLLUP_COLUMNS)

READINGS_TIMESCALE = """
CREATE TABLE readings (
    ts          timestamptz NOT NULL,
    sensor_id   text NOT NULL,
    metric      text NOT NULL,
    value       double precision NOT NULL,
    CONSTRAINT readings_key UNIQUE (sensor_id, metric, ts)
);
SELECT create_hypertable('readings', 'ts', chunk_time_interval => interval '1 day');
ALTER TABLE readings SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'sensor_id, metric',
    timescaledb.compress_orderby = 'ts'
);

CREATE MATERIALIZED VIEW readings_1m WITH (timescaledb.continuous) AS
SELECT time_bucket('1 minute', ts) AS bucket, sensor_id, metric,
       count(*) AS n, avg(value) AS avg_value, min(value) AS min_value, max(value) AS max_value
FROM readings GROUP BY 1, sensor_id, metric
WITH NO DATA;

CREATE MATERIALIZED VIEW readings_1h WITH (timescaledb.continuous) AS
SELECT time_bucket('1 hour', bucket) AS bucket, sensor_id, metric,
       sum(n)::bigint AS n, sum(avg_value * n) / sum(n) AS avg_value,
       min(min_value) AS min_value, max(max_value) AS max_value
FROM readings_1m GROUP BY 1, sensor_id, metric
WITH NO DATA;
"""


# The alert lifecycle (pantau/alerts.py owns the queries). Plain tables on both backends: alerts are
# few next to readings and are updated in place, which hypertables are not made for.
ALERTS = """
CREATE TABLE alerts (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rule_id        text NOT NULL,
    -- What the alert is about: a sensor id, or a scope key such as 'district:kotamobagu/Kotamobagu
    -- Barat' or 'river:sampit/Mentaya' for rules over many sensors.
    scope          text NOT NULL,
    city           text NOT NULL,
    district       text NOT NULL DEFAULT '',
    -- No foreign key: alerts are history and outlive a sensor's registration.
    sensor_id      text,
    severity       text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    state          text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'acknowledged', 'resolved')),
    opened_at      timestamptz NOT NULL,
    event_ts       timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    acked_at       timestamptz,
    acked_by       text,
    resolved_at    timestamptz,
    resolved_by    text,
    trigger_value  double precision,
    current_value  double precision,
    reason         text NOT NULL DEFAULT '',
    flapping       boolean NOT NULL DEFAULT false,
    CONSTRAINT alerts_resolved_has_time CHECK ((state = 'resolved') = (resolved_at IS NOT NULL)),
    CONSTRAINT alerts_ack_has_actor CHECK ((acked_at IS NULL) = (acked_by IS NULL))
);
-- At most one alert that is not resolved per rule and scope: concurrent evaluators cannot open a
-- duplicate (the second INSERT conflicts here and becomes an update of the open alert).
CREATE UNIQUE INDEX alerts_one_open ON alerts (rule_id, scope) WHERE state <> 'resolved';
CREATE INDEX alerts_rule_scope ON alerts (rule_id, scope, id);
CREATE INDEX alerts_state_opened ON alerts (state, opened_at);
CREATE INDEX alerts_city_opened ON alerts (city, opened_at);

CREATE TABLE silences (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sensor_id   text,
    city        text,
    district    text,
    rule_id     text,
    starts_at   timestamptz NOT NULL,
    ends_at     timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text NOT NULL,
    comment     text NOT NULL DEFAULT '',
    CONSTRAINT silences_window CHECK (ends_at > starts_at),
    CONSTRAINT silences_selector CHECK (
        (sensor_id IS NOT NULL AND city IS NULL AND district IS NULL)
        OR (sensor_id IS NULL AND city IS NOT NULL))
);
CREATE INDEX silences_ends_at ON silences (ends_at);

CREATE TABLE alert_events (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id           bigint NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    at                 timestamptz NOT NULL,
    -- Event time of the reading behind the transition (the wall clock for actions by hand); the
    -- flapping window counts in this time so that replays at speed do not look like flapping.
    event_ts           timestamptz NOT NULL,
    kind               text NOT NULL CHECK (kind IN (
        'opened', 'escalated', 'deescalated', 'acknowledged', 'resolved', 'flapping', 'flapping_ended')),
    actor              text NOT NULL,
    value              double precision,
    severity           text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    previous_severity  text CHECK (previous_severity IN ('info', 'warning', 'critical')),
    reason             text NOT NULL DEFAULT '',
    -- Whether notifiers send this event: 'notify', or why not ('silenced', 'flapping').
    notification       text NOT NULL CHECK (notification IN ('notify', 'silenced', 'flapping')),
    silence_id         bigint REFERENCES silences (id) ON DELETE SET NULL
);
CREATE INDEX alert_events_alert ON alert_events (alert_id, id);
CREATE INDEX alert_events_transitions ON alert_events (alert_id, event_ts) WHERE kind IN ('opened', 'resolved');
"""


# The hand-off from ingest to the rule engine (docs/decisions.md D10): a transactional outbox.
# Ingest adds one `ingest_batches` row per committed batch, in the batch's own transaction, and
# NOTIFYs `pantau_batches`. A rule worker claims waiting batches (FOR UPDATE SKIP LOCKED), writes
# the alert transitions they cause and a `rule_claims` row in the same transaction, so a batch is
# evaluated exactly once. Claimed batches stay until the worker's next checkpoint of its state:
# after a crash the worker restores the checkpoint and replays the claims made since (without
# writing alerts again), which rebuilds pending `for`s and windows exactly.
RULES_HANDOFF = """
CREATE TABLE ingest_batches (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    readings    integer NOT NULL,
    rejections  integer NOT NULL,
    -- msgpack: {"r": [[ts, sensor_id, metric, value], ...], "x": [[received_at, sensor_id, reason], ...]}
    payload     bytea NOT NULL,
    -- The rule worker's claim that evaluated this batch; NULL while it waits.
    claim       bigint
);
CREATE INDEX ingest_batches_waiting ON ingest_batches (id) WHERE claim IS NULL;
CREATE INDEX ingest_batches_claimed ON ingest_batches (claim) WHERE claim IS NOT NULL;

CREATE SEQUENCE rule_claim_seq;
-- One row per evaluation step of a rule worker: the batches it claimed (ingest_batches.claim) and,
-- when `tick` is set, the absence timer it ran after them, both at wall-clock time `at`.
CREATE TABLE rule_claims (
    claim   bigint PRIMARY KEY,
    worker  text NOT NULL,
    at      double precision NOT NULL,
    tick    boolean NOT NULL
);
CREATE INDEX rule_claims_worker ON rule_claims (worker, claim);

-- A rule worker's engine state as of `last_claim` (msgpack of rules.engine.Engine.state()).
CREATE TABLE rule_checkpoints (
    worker      text PRIMARY KEY,
    last_claim  bigint NOT NULL,
    saved_at    timestamptz NOT NULL,
    state       bytea NOT NULL
);

-- How far each notification sink has delivered `alert_events` (by event id).
CREATE TABLE notify_cursors (
    sink        text PRIMARY KEY,
    last_event  bigint NOT NULL,
    updated_at  timestamptz NOT NULL
);
"""


# Who ended a silence early (`pantau alerts unsilence`); NULL for one that ran its course.
SILENCES_ENDED_BY = """
ALTER TABLE silences ADD COLUMN ended_by text;
"""


# The registry's cities (their local day is the API's day) and every sensor's newest value per
# metric, kept by ingest in each batch's transaction so that the wall map never scans `readings`.
CITIES_AND_LATEST = """
CREATE TABLE cities (
    id          text PRIMARY KEY,         -- the slug of the topics: kotamobagu, sampit
    name        text NOT NULL DEFAULT '',
    province    text NOT NULL DEFAULT '',
    timezone    text NOT NULL DEFAULT 'Asia/Jakarta',  -- IANA: Asia/Jakarta WIB, Asia/Makassar WITA, Asia/Jayapura WIT
    updated_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO cities (id) SELECT DISTINCT city FROM sensors;

CREATE TABLE latest_readings (
    sensor_id   text NOT NULL,
    metric      text NOT NULL,
    ts          timestamptz NOT NULL,
    value       double precision NOT NULL,
    PRIMARY KEY (sensor_id, metric)
);
-- Once, at this migration: what is stored already (later, ingest keeps it).
INSERT INTO latest_readings (sensor_id, metric, ts, value)
SELECT DISTINCT ON (sensor_id, metric) sensor_id, metric, ts, value FROM readings ORDER BY sensor_id, metric, ts DESC;
"""


# The rule pack each rule worker loaded, so the API shows the pack in force (not the file as it is
# now, which may have been edited since) and which worker runs it.
RULE_PACKS = """
CREATE TABLE rule_packs (
    worker      text PRIMARY KEY,
    digest      text NOT NULL,
    source      text NOT NULL,             -- the file it was loaded from
    content     text NOT NULL,             -- the YAML as loaded
    loaded_at   timestamptz NOT NULL DEFAULT now()
);
"""


# Who may see and do what (pantau.access): users with argon2 password hashes, API tokens kept
# only as hashes, the screen's sessions (their cookie kept only as a hash, with the CSRF token),
# failed logins for throttling, and the append-only audit log of every change (pantau.audit).
ACCESS = """
CREATE TABLE users (
    username      text PRIMARY KEY CHECK (username ~ '^[a-z0-9][a-z0-9._-]{0,63}$'),
    full_name     text NOT NULL DEFAULT '',
    role          text NOT NULL CHECK (role IN ('operator', 'agency', 'engineer', 'admin')),
    cities        text[],                    -- NULL: every city
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    created_by    text NOT NULL,
    disabled_at   timestamptz,
    disabled_by   text
);

CREATE TABLE api_tokens (
    id            text PRIMARY KEY,          -- public part of the token, shown in lists
    secret_sha256 bytea NOT NULL,            -- the secret part is never stored
    name          text NOT NULL,             -- the machine it is for: acts as "token:<name>"
    role          text NOT NULL CHECK (role IN ('operator', 'agency', 'engineer', 'admin')),
    cities        text[],
    created_at    timestamptz NOT NULL DEFAULT now(),
    created_by    text NOT NULL,
    expires_at    timestamptz,
    revoked_at    timestamptz,
    revoked_by    text,
    last_used_at  timestamptz
);

CREATE TABLE web_sessions (
    id_sha256     bytea PRIMARY KEY,         -- the cookie's value is never stored
    username      text NOT NULL REFERENCES users (username),
    csrf_token    text NOT NULL,
    address       text NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL
);
CREATE INDEX web_sessions_expiry ON web_sessions (expires_at);

CREATE TABLE login_failures (
    at            timestamptz NOT NULL DEFAULT now(),
    username      text NOT NULL,
    address       text NOT NULL
);
CREATE INDEX login_failures_user ON login_failures (username, at);
CREATE INDEX login_failures_address ON login_failures (address, at);

CREATE TABLE audit_log (
    id            bigserial PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT now(),
    actor         text NOT NULL CHECK (actor <> ''),
    role          text NOT NULL,
    via           text NOT NULL CHECK (via IN ('api', 'cli', 'service')),
    address       text NOT NULL DEFAULT '',
    action        text NOT NULL,
    target        text NOT NULL,
    before        jsonb,
    after         jsonb
);
CREATE INDEX audit_log_at ON audit_log (at);

-- Append-only for everyone, the owner included: a change is undone by another entry, never by
-- editing history.
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    statements: Callable[[Backend], str]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "core tables: sensors, rejected_messages", lambda _b: CORE),
    Migration(
        2,
        "readings with rollups at 1 minute and 1 hour",
        lambda b: READINGS_TIMESCALE if b is Backend.TIMESCALEDB else READINGS_PLAIN,
    ),
    Migration(3, "alerts, alert_events and silences", lambda _b: ALERTS),
    Migration(4, "rule engine hand-off: ingest_batches outbox, claims, checkpoints", lambda _b: RULES_HANDOFF),
    Migration(5, "silences.ended_by: who ended a silence early", lambda _b: SILENCES_ENDED_BY),
    Migration(
        6, "cities (name, province, time zone) and every sensor's latest value per metric", lambda _b: CITIES_AND_LATEST
    ),
    Migration(7, "rule_packs: the pack each rule worker runs", lambda _b: RULE_PACKS),
    Migration(8, "access: users, API tokens, sessions, failed logins, the audit log", lambda _b: ACCESS),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


# Opens a fresh autocommit connection to the database being migrated.
Connect = Callable[[], Awaitable[AsyncConnection]]

NOT_PRELOADED = (
    "timescaledb is installed but not preloaded; using plain PostgreSQL. To use TimescaleDB, set"
    " shared_preload_libraries = 'timescaledb' in postgresql.conf and restart PostgreSQL"
    " (before the first migrate: a migrated database keeps its backend)"
)


def _preloaded(libraries: str) -> bool:
    """Whether a `shared_preload_libraries` value lists timescaledb (`'timescaledb'`, `'$libdir/timescaledb'`)."""
    names = (lib.strip().strip('"').rsplit("/", 1)[-1] for lib in libraries.split(","))
    return any(name == "timescaledb" or name.startswith("timescaledb-") for name in names)


async def _can_use_timescaledb(conn: AsyncConnection, connect: Connect) -> bool:
    cur = await conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")
    if await cur.fetchone() is None:
        return False
    cur = await conn.execute("SELECT current_setting('shared_preload_libraries')")
    row = await cur.fetchone()
    if not _preloaded(str(row[0] if row else "")):
        # CREATE EXTENSION would fail with a FATAL ("must be preloaded") that closes the connection.
        log.warning(NOT_PRELOADED)
        return False
    # On a connection of its own: whatever the attempt does to its session (a FATAL closes it), the
    # migration's connection, holding the migrate lock, carries on.
    probe = await connect()
    try:
        async with probe.transaction():
            await probe.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except psycopg.Error as exc:
        # No privilege, or a loader and extension version that do not match: plain PostgreSQL.
        problem = " ".join(str(exc).split())
        log.warning("timescaledb is installed but cannot be used (%s); using plain PostgreSQL", problem)
        return False
    finally:
        await probe.close()
    return True


async def current_backend(conn: AsyncConnection) -> Backend | None:
    """The backend recorded by an earlier migrate, or None for a fresh database."""
    cur = await conn.execute("SELECT to_regclass('pantau_meta') IS NOT NULL")
    row = await cur.fetchone()
    if not row or not row[0]:
        return None
    cur = await conn.execute("SELECT value FROM pantau_meta WHERE key = 'backend'")
    found = await cur.fetchone()
    return Backend(found[0]) if found else None


async def schema_version(conn: AsyncConnection) -> int:
    """The highest migration applied, 0 for a fresh database."""
    cur = await conn.execute("SELECT to_regclass('pantau_schema') IS NOT NULL")
    row = await cur.fetchone()
    if not row or not row[0]:
        return 0
    cur = await conn.execute("SELECT coalesce(max(version), 0) FROM pantau_schema")
    found = await cur.fetchone()
    return int(found[0]) if found else 0


# How often the continuous aggregates are refreshed: minute rollups at most half a minute behind
# ingest; hourly ones less often, since each run re-reads the minute buckets of the open hour.
_REFRESH_EVERY = {"readings_1m": "30 seconds", "readings_1h": "5 minutes"}
# Both aggregates are real-time (materialized_only = false): a query gets the materialized buckets
# up to the aggregate's watermark and aggregates the rows past it on the fly. Each refresh stops one
# bucket short of now, so the open bucket stays past the watermark and is always aggregated live;
# with no end offset the refresh materialized the open bucket while it was filling, and the readings
# that arrived in it afterwards were missing from every answer until the next run (up to 30 s for a
# minute, 5 minutes for an hour). Late readings for a bucket already materialized still wait for
# the next run.
_REFRESH_END_OFFSET = {"readings_1m": "1 minute", "readings_1h": "1 hour"}


def _refresh_start_offset(settings: StoreSettings) -> str:
    """How far back the refresh policies look.

    Dropping chunks (retention) invalidates their time range, and refreshing an invalidated range
    whose source rows are gone deletes its buckets: a refresh reaching past the raw retention would
    wipe rollups that are meant to outlive the raw rows (rollup_retention_days). So the window
    stops an hour short of the nearer retention horizon; late data older than that is about to
    be dropped anyway.
    """
    horizon_h = 24 * min(settings.retention_days, settings.rollup_retention_days)
    # Never below the hour's end offset plus two hourly buckets, the smallest window TimescaleDB
    # accepts for readings_1h.
    return f"{max(horizon_h - 1, 3)} hours"


async def _apply_timescale_policies(conn: AsyncConnection, settings: StoreSettings) -> None:
    """(Re)create compression, retention and refresh policies from `settings`."""
    days = sql.Literal(f"{settings.retention_days} days")
    rollup_days = sql.Literal(f"{settings.rollup_retention_days} days")
    compress = sql.Literal(f"{settings.compress_after_days} days")
    start_offset = sql.Literal(_refresh_start_offset(settings))
    # The rollups are real-time aggregates (see _REFRESH_END_OFFSET): TimescaleDB (2.13 on) makes
    # a continuous aggregate materialized-only unless told, which left out every bucket the refresh
    # had not reached. Set here, not in migration 2, so that databases migrated before get it too.
    cur = await conn.execute(
        "SELECT view_name FROM timescaledb_information.continuous_aggregates"
        " WHERE view_schema = current_schema() AND materialized_only ORDER BY view_name DESC"
    )
    statements: list[sql.SQL | sql.Composed] = [
        sql.SQL("ALTER MATERIALIZED VIEW {} SET (timescaledb.materialized_only = false)").format(sql.Identifier(view))
        for (view,) in await cur.fetchall()
    ]
    statements += [
        sql.SQL("SELECT remove_compression_policy('readings', if_exists => true)"),
        sql.SQL("SELECT add_compression_policy('readings', compress_after => {}::interval)").format(compress),
        sql.SQL("SELECT remove_retention_policy('readings', if_exists => true)"),
        sql.SQL("SELECT add_retention_policy('readings', drop_after => {}::interval)").format(days),
    ]
    for view, every in _REFRESH_EVERY.items():
        name = sql.Literal(view)
        statements += [
            sql.SQL("SELECT remove_retention_policy({}, if_exists => true)").format(name),
            sql.SQL("SELECT add_retention_policy({}, drop_after => {}::interval)").format(name, rollup_days),
            sql.SQL("SELECT remove_continuous_aggregate_policy({}, if_exists => true)").format(name),
            # The open bucket is left to real-time aggregation (see _REFRESH_END_OFFSET).
            sql.SQL(
                "SELECT add_continuous_aggregate_policy({}, start_offset => {}::interval,"
                " end_offset => {}::interval, schedule_interval => {}::interval)"
            ).format(name, start_offset, sql.Literal(_REFRESH_END_OFFSET[view]), sql.Literal(every)),
        ]
    async with conn.transaction():
        for stmt in statements:
            await conn.execute(stmt)


async def migrate(
    conn: AsyncConnection, settings: StoreSettings, *, connect: Connect
) -> tuple[Backend, list[Migration]]:
    """Bring the schema to SCHEMA_VERSION; returns the backend and the migrations applied now.

    `conn` must be in autocommit mode; each migration gets its own transaction. Concurrent
    migrators are serialised by an advisory lock. `connect` opens a second connection to the same
    database, on which the first migrate tries CREATE EXTENSION timescaledb. Last, unless
    `settings.service_roles` is off, the service roles are created and granted (`pantau.store.grants`).
    """
    applied: list[Migration] = []
    await conn.execute("SELECT pg_advisory_lock(hashtext('pantau.migrate'))")
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS pantau_schema ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        backend = await current_backend(conn)
        if backend is None:
            use_ts = settings.timescaledb == "auto" and await _can_use_timescaledb(conn, connect)
            backend = Backend.TIMESCALEDB if use_ts else Backend.POSTGRES
        done = await schema_version(conn)
        if done > SCHEMA_VERSION:
            raise MigrationError(f"database schema is at version {done}, newer than this pantau ({SCHEMA_VERSION})")
        for migration in MIGRATIONS:
            if migration.version <= done:
                continue
            try:
                async with conn.transaction():
                    await conn.execute(migration.statements(backend))
                    await conn.execute(
                        "INSERT INTO pantau_schema (version, name) VALUES (%s, %s)",
                        (migration.version, migration.name),
                    )
                    if migration.version == 1:
                        await conn.execute(
                            "INSERT INTO pantau_meta (key, value) VALUES ('backend', %s)", (backend.value,)
                        )
            except psycopg.Error as exc:
                raise MigrationError(f"migration {migration.version} ({migration.name}) failed: {exc}") from exc
            log.debug("applied migration %d: %s", migration.version, migration.name)
            applied.append(migration)
        if backend is Backend.TIMESCALEDB:
            try:
                await _apply_timescale_policies(conn, settings)
            except psycopg.Error as exc:
                raise MigrationError(f"applying TimescaleDB policies failed: {exc}") from exc
        if settings.service_roles:
            from pantau.store.grants import apply_grants  # grants names this module's backends

            await apply_grants(conn, backend)
        return backend, applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock(hashtext('pantau.migrate'))")
