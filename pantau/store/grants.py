"""Least privilege in the database: a role per service, holding exactly what its code does.

    owner (who migrates)   owns every table; migrations, `pantau maintain`, the CLI
    pantau_ingest          readings, rejections and outbox rows in; `sensors.last_seen` moved
    pantau_rules           claims the outbox; writes alerts, their events, claims, checkpoints
    pantau_api             reads everything it shows; alert actions (ack, resolve, silences)

`PRIVILEGES` is the whole policy, one row per role and object, as GRANT spells it. Every migrate
ends with `apply_grants`: it creates the roles that are missing (roles are cluster-wide), revokes
whatever they held on pantau's objects and grants the rows again, in one transaction, so a row
removed here is a privilege gone at the next migrate and no session sees a half-granted state.
A new table gets its rows here and nothing else.

Notes on what the rows rely on:
- COPY and INSERT into the partitioned `readings` check privileges on the parent only; nobody but
  the owner is granted anything on a partition. Ingest makes a missing day's partition through
  `pantau_ensure_partition`, which runs with its owner's rights (attaching a partition needs the
  owner of `readings`), with its search_path pinned.
- TimescaleDB: a grant on the `readings` hypertable reaches its chunks (and later chunks); the
  continuous aggregates `readings_1m`/`readings_1h` are views, read with SELECT on the view.
- Identity columns need no grant on their sequence; `rule_claim_seq` is a sequence of its own.
- LISTEN/NOTIFY, advisory locks and `SET LOCAL statement_timeout` need no privilege.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg import AsyncConnection, sql

from pantau.errors import MigrationError
from pantau.store.migrations import Backend

log = logging.getLogger(__name__)


class Service(StrEnum):
    """A service that connects with a role of its own (`database_url` of its settings)."""

    INGEST = "ingest"
    RULES = "rules"
    API = "api"

    @property
    def role(self) -> str:
        """Its PostgreSQL role: pantau_ingest, pantau_rules, pantau_api."""
        return f"pantau_{self.value}"


INGEST, RULES, API = Service.INGEST, Service.RULES, Service.API


@dataclass(frozen=True, slots=True)
class Grant:
    """One row of the policy: `GRANT privileges ON on TO service.role` (on `backend` only, if set).

    `on` is GRANT's object: `TABLE t` (views too), `SEQUENCE s`, `FUNCTION f(args)`, or `DATABASE`
    and `SCHEMA` for the database and schema pantau is migrated into.
    """

    service: Service
    on: str
    privileges: str
    backend: Backend | None = None


PG = Backend.POSTGRES
# The alert columns each writer moves (pantau/alerts.py): the rule worker's transitions, and the
# actions by hand (acknowledge, resolve) of the API. Who opened what, when and why stays as written.
_ALERTS_RULES = (
    "severity, state, current_value, reason, flapping, updated_at, acked_at, acked_by, resolved_at, resolved_by"
)
_ALERTS_API = "state, current_value, flapping, updated_at, acked_at, acked_by, resolved_at, resolved_by"

# What an engineer's registration sets (never last_seen, which is ingest's, nor created_at).
_SENSOR_REGISTRATION = "kind, city, district, name, lat, lon, metadata"

PRIVILEGES: tuple[Grant, ...] = (
    # -- ingest (ingest/writer.py, ingest/service.py) ------------------------------------------------
    Grant(INGEST, "DATABASE", "CONNECT, TEMPORARY"),  # TEMPORARY: the staging table after a conflict
    Grant(INGEST, "SCHEMA", "USAGE"),
    Grant(INGEST, "TABLE pantau_meta", "SELECT"),  # the backend chosen at migrate
    Grant(INGEST, "TABLE sensors", "SELECT, UPDATE (last_seen)"),
    Grant(INGEST, "TABLE readings", "SELECT, INSERT"),  # SELECT: the conflicting-value check
    Grant(INGEST, "TABLE latest_readings", "SELECT, INSERT, UPDATE (ts, value)"),
    Grant(INGEST, "TABLE rejected_messages", "INSERT"),
    Grant(INGEST, "TABLE ingest_batches", "INSERT"),  # the outbox row of each batch
    Grant(INGEST, "TABLE rollup_invalidations", "INSERT", PG),
    Grant(INGEST, "FUNCTION pantau_ensure_partition(date)", "EXECUTE", PG),
    # -- rule worker and notifier (rules/worker.py, rules/notify.py, rules/sinks.py, pantau/alerts.py)
    Grant(RULES, "DATABASE", "CONNECT"),
    Grant(RULES, "SCHEMA", "USAGE"),
    Grant(RULES, "TABLE sensors", "SELECT"),
    # Claims batches (UPDATE claim) and drops those a checkpoint covers (DELETE).
    Grant(RULES, "TABLE ingest_batches", "SELECT, UPDATE (claim), DELETE"),
    Grant(RULES, "SEQUENCE rule_claim_seq", "USAGE"),
    Grant(RULES, "TABLE rule_claims", "SELECT, INSERT, DELETE"),
    Grant(RULES, "TABLE rule_checkpoints", "SELECT, INSERT, UPDATE"),
    Grant(RULES, "TABLE rule_packs", "SELECT, INSERT, UPDATE"),
    Grant(RULES, "TABLE alerts", f"SELECT, INSERT, UPDATE ({_ALERTS_RULES})"),
    Grant(RULES, "TABLE alert_events", "SELECT, INSERT"),
    Grant(RULES, "TABLE silences", "SELECT"),
    Grant(RULES, "TABLE notify_cursors", "SELECT, INSERT, UPDATE"),
    Grant(RULES, "TABLE audit_log", "INSERT"),  # a rule pack it loads that differs from the last: a deployment
    Grant(RULES, "SEQUENCE audit_log_id_seq", "USAGE"),
    # -- API (api/, pantau/store/views.py, series.py, export.py, pantau/alerts.py) -------------------
    Grant(API, "DATABASE", "CONNECT, TEMPORARY"),  # TEMPORARY: an engineer's sensor registration stages rows
    Grant(API, "SCHEMA", "USAGE"),
    Grant(API, "TABLE pantau_meta", "SELECT"),
    Grant(API, "TABLE cities", "SELECT, INSERT"),  # a sensor's city joins the registry
    Grant(API, "TABLE sensors", f"SELECT, INSERT, UPDATE ({_SENSOR_REGISTRATION})"),  # engineers register
    Grant(API, "TABLE readings", "SELECT"),
    Grant(API, "TABLE readings_1m", "SELECT"),
    Grant(API, "TABLE readings_1h", "SELECT"),
    Grant(API, "TABLE rollup_invalidations", "SELECT", PG),  # buckets the refresh has not reached
    Grant(API, "TABLE latest_readings", "SELECT"),
    Grant(API, "TABLE rejected_messages", "SELECT"),  # sensor status: rejected
    Grant(API, "TABLE ingest_batches", "SELECT"),  # readiness: the oldest unclaimed batch
    Grant(API, "TABLE rule_packs", "SELECT"),
    Grant(API, "TABLE alerts", f"SELECT, UPDATE ({_ALERTS_API})"),  # acknowledge, resolve
    Grant(API, "TABLE alert_events", "SELECT, INSERT"),  # history is appended, never changed
    Grant(API, "TABLE silences", "SELECT, INSERT, UPDATE (ends_at, ended_by)"),
    # Access control (migration 8): sign-in, tokens, the admins' changes; the audit log appended.
    Grant(API, "TABLE users", "SELECT, INSERT, UPDATE (disabled_at, disabled_by)"),
    Grant(API, "TABLE api_tokens", "SELECT, INSERT, UPDATE (revoked_at, revoked_by, last_used_at)"),
    Grant(API, "TABLE web_sessions", "SELECT, INSERT, DELETE"),
    Grant(API, "TABLE login_failures", "SELECT, INSERT, DELETE"),
    Grant(API, "TABLE audit_log", "SELECT, INSERT"),  # appended, never changed (a trigger refuses all else)
    Grant(API, "SEQUENCE audit_log_id_seq", "USAGE"),
)

# Functions that run with their owner's rights for the roles allowed to call them: ingest makes the
# partition of a day it has readings for, and attaching a partition needs the owner of `readings`.
_RUN_AS_OWNER: dict[Backend, tuple[str, ...]] = {PG: ("pantau_ensure_partition(date)",)}

NO_CREATEROLE = (
    "role {role} does not exist and {user} may not create roles: create pantau's service roles as a user"
    " with CREATEROLE (CREATE ROLE pantau_ingest LOGIN; CREATE ROLE pantau_rules LOGIN; CREATE ROLE pantau_api"
    " LOGIN) and migrate again, or set PANTAU_STORE_SERVICE_ROLES=off to skip them (every service then"
    " connects as the owner: no least privilege)"
)


async def _ensure_role(conn: AsyncConnection, role: str) -> None:
    cur = await conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
    if await cur.fetchone() is not None:
        return
    try:
        # LOGIN without a password: nobody logs in until someone sets one (`pantau up` does, for its
        # private PostgreSQL; an operator does for their own: README, "Database roles").
        await conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
        return  # made meanwhile by the migrate of another database in the cluster
    except psycopg.errors.InsufficientPrivilege:
        cur = await conn.execute("SELECT current_user")
        user = str((await cur.fetchone() or ("?",))[0])
        raise MigrationError(NO_CREATEROLE.format(role=role, user=user)) from None
    log.info("created database role %s", role)


async def _owned_objects(conn: AsyncConnection) -> list[tuple[str, str]]:
    """pantau's tables, views, sequences and functions in the current schema, as GRANT objects:
    those the migrating user owns (or is a member of the owner of), not an extension's, no partitions."""
    cur = await conn.execute(
        "SELECT CASE c.relkind WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, c.oid::regclass::text FROM pg_class c"
        " WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')"
        " AND NOT c.relispartition AND pg_has_role(c.relowner, 'USAGE')"
        " AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid"
        "  AND d.deptype = 'e')"
        " UNION ALL"
        " SELECT 'FUNCTION', p.oid::regprocedure::text FROM pg_proc p"
        " WHERE p.pronamespace = current_schema()::regnamespace AND pg_has_role(p.proowner, 'USAGE')"
        " AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid"
        "  AND d.deptype = 'e')"
    )
    return [(str(kind), str(name)) for kind, name in await cur.fetchall()]


def _object(grant_on: str, database: str, schema: str) -> sql.Composable:
    if grant_on == "DATABASE":
        return sql.SQL("DATABASE {}").format(sql.Identifier(database))
    if grant_on == "SCHEMA":
        return sql.SQL("SCHEMA {}").format(sql.Identifier(schema))
    return sql.SQL(grant_on)


async def apply_grants(conn: AsyncConnection, backend: Backend) -> None:
    """Create the service roles that are missing and give each exactly its rows of `PRIVILEGES`.

    `conn` is the migrate's autocommit connection (the roles are created one statement each, the
    grants in one transaction).
    """
    roles = [s.role for s in Service]
    for role in roles:
        await _ensure_role(conn, role)
    cur = await conn.execute("SELECT current_database(), current_schema()")
    database, schema = await cur.fetchone() or ("", "")
    everyone = sql.SQL(", ").join(sql.Identifier(r) for r in roles)
    try:
        async with conn.transaction():
            for kind, name in await _owned_objects(conn):
                # Names as the catalogue quotes them (regclass, regprocedure).
                target = sql.SQL(f"{kind} {name}")
                await conn.execute(sql.SQL("REVOKE ALL ON {} FROM {}").format(target, everyone))
                if kind == "FUNCTION":  # callable by PUBLIC unless revoked: pantau's are for the rows' roles
                    await conn.execute(sql.SQL("REVOKE ALL ON {} FROM PUBLIC").format(target))
            await conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(sql.Identifier(database), everyone))
            await conn.execute(sql.SQL("REVOKE ALL ON SCHEMA {} FROM {}").format(sql.Identifier(schema), everyone))
            for name in _RUN_AS_OWNER.get(backend, ()):
                await conn.execute(
                    sql.SQL("ALTER FUNCTION {} SECURITY DEFINER SET search_path = {}, pg_temp").format(
                        sql.SQL(name), sql.Identifier(schema)
                    )
                )
            for grant in PRIVILEGES:
                if grant.backend is not None and grant.backend is not backend:
                    continue
                on = _object(grant.on, database, schema)
                to = sql.Identifier(grant.service.role)
                await conn.execute(sql.SQL("GRANT {} ON {} TO {}").format(sql.SQL(grant.privileges), on, to))
    except psycopg.Error as exc:
        raise MigrationError(f"granting the service roles their privileges failed: {exc}") from exc


async def set_login_passwords(conn: AsyncConnection, passwords: dict[Service, str]) -> None:
    """Let each service's role log in with its password. The server is sent the SCRAM verifier,
    never the password, so it cannot reach a server log."""
    for service, password in passwords.items():
        verifier = conn.pgconn.encrypt_password(password.encode(), service.role.encode(), b"scram-sha-256")
        await conn.execute(
            sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(service.role), sql.Literal(verifier.decode())
            )
        )


def role_url(url: str, service: Service, password: str) -> str:
    """`url` (the owner's) with the service's role and password instead of the owner's."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{quote(service.role)}:{quote(password, safe='')}@{host}"))
