"""Fixtures: a private PostgreSQL (or PANTAU_TEST_DATABASE_URL) and private mosquitto brokers.

The private cluster runs the PostgreSQL binaries in PANTAU_TEST_PG_BINDIR (default: the ones
`pantau up` would use), without TimescaleDB preloaded: pointed at a build that has TimescaleDB's
files, the whole suite runs on the "installed but not preloaded" fallback to plain PostgreSQL.
The cluster is started once per session and a migrated template database is made once; each
test gets a fresh database cloned from it (about 50 ms). Brokers are per test: they are cheap
and failure tests restart them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from pantau.embedded import EmbeddedMosquitto, EmbeddedPostgres, postgres_bindir
from pantau.settings import IngestSettings, RulesSettings, Settings, StoreSettings
from pantau.store import Backend, Store
from pantau.store.grants import Service, role_url, set_login_passwords

EXTERNAL_URL = os.environ.get("PANTAU_TEST_DATABASE_URL")
# Set (to anything): the `settings` fixture gives each service its database role's URL, so the
# services that tests build from it run as pantau_ingest, pantau_rules and pantau_api.
SERVICE_ROLES = bool(os.environ.get("PANTAU_TEST_SERVICE_ROLES"))


def pg_bindir() -> Path:
    """The PostgreSQL binaries private test clusters run: PANTAU_TEST_PG_BINDIR, or pantau's default."""
    configured = os.environ.get("PANTAU_TEST_PG_BINDIR")
    return Path(configured) if configured else postgres_bindir()


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@dataclasses.dataclass
class PgServer:
    admin_url: str
    template: str
    backend: Backend
    embedded: EmbeddedPostgres | None

    def url_for(self, name: str) -> str:
        return _with_database(self.admin_url, name)


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgServer]:
    embedded = None
    if EXTERNAL_URL:
        admin_url = EXTERNAL_URL
    else:
        # CI exercises the plain-PostgreSQL path: no TimescaleDB preload in the private cluster.
        embedded = EmbeddedPostgres(tmp_path_factory.mktemp("pg"), timescaledb=False, bindir=pg_bindir())
        embedded.start()
        admin_url = embedded.admin_url
    template = f"pantau_tpl_{secrets.token_hex(4)}"

    async def _migrate() -> Backend:
        async with Store.open(_with_database(admin_url, template), StoreSettings(pool_max_size=2)) as store:
            backend, _ = await store.migrate()
            return backend

    # The private cluster is stopped even when the template cannot be made: a failed migrate here
    # used to leave it running after the session.
    try:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{template}"')
        backend = asyncio.run(_migrate())
        if backend is Backend.TIMESCALEDB:
            _close_to_connections(admin_url, template)
        yield PgServer(admin_url, template, backend, embedded)
    finally:
        with contextlib.suppress(psycopg.Error), psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)')
        if embedded is not None:
            embedded.stop("immediate")


def _close_to_connections(admin_url: str, name: str) -> None:
    # TimescaleDB restarts a database's job scheduler on every CREATE DATABASE ... TEMPLATE it, and
    # the new scheduler connects before the copy checks for other sessions, so some clones fail
    # with "source database is being accessed by other users" (timescale/timescaledb#4048). A
    # template that refuses connections gets no restart and no scheduler.
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        for _ in range(100):
            cur = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s", (name,)
            )
            if cur.fetchone() == (0,):
                return
            time.sleep(0.05)
    raise RuntimeError(f"sessions on the template database {name} did not end")


def _clone(server: PgServer) -> str:
    name = f"pantau_t_{secrets.token_hex(6)}"
    with psycopg.connect(server.admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{server.template}"')
    return name


def _drop(server: PgServer, name: str) -> None:
    with contextlib.suppress(psycopg.Error), psycopg.connect(server.admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def role_passwords(pg_server: PgServer) -> dict[Service, str]:
    """Passwords the service roles log in with on the test cluster (set once per session)."""
    passwords = {service: secrets.token_urlsafe(16) for service in Service}

    async def _set() -> None:
        conn = await psycopg.AsyncConnection.connect(pg_server.admin_url, autocommit=True)
        try:
            await set_login_passwords(conn, passwords)
        finally:
            await conn.close()

    asyncio.run(_set())
    return passwords


@pytest.fixture
def role_urls(database_url: str, role_passwords: dict[Service, str]) -> dict[Service, str]:
    """This test's database as each service's role."""
    return {service: role_url(database_url, service, pw) for service, pw in role_passwords.items()}


@pytest.fixture
def database_url(pg_server: PgServer) -> Iterator[str]:
    """A fresh, migrated database for this test."""
    name = _clone(pg_server)
    try:
        yield pg_server.url_for(name)
    finally:
        _drop(pg_server, name)


@pytest.fixture
def empty_database_url(pg_server: PgServer) -> Iterator[str]:
    """A fresh database with no schema at all."""
    name = f"pantau_e_{secrets.token_hex(6)}"
    with psycopg.connect(pg_server.admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield pg_server.url_for(name)
    finally:
        _drop(pg_server, name)


@pytest.fixture
def backend(pg_server: PgServer) -> Backend:
    return pg_server.backend


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedMosquitto]:
    """A private mosquitto with pantau's deploy/ config, persistence on."""
    mq = EmbeddedMosquitto(tmp_path / "mosquitto")
    mq.start()
    try:
        yield mq
    finally:
        mq.stop()


@pytest.fixture
def settings(database_url: str, broker: EmbeddedMosquitto, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    urls = request.getfixturevalue("role_urls") if SERVICE_ROLES else {}
    return Settings(
        database_url=database_url,
        api_database_url=urls.get(Service.API),
        mqtt_url=broker.url,
        home=tmp_path / "home",
        ingest=IngestSettings(
            client_id=f"pantau-ingest-{secrets.token_hex(3)}",
            metrics_port=-1,
            last_seen_interval_s=0.2,
            database_url=urls.get(Service.INGEST),
        ),
        rules=RulesSettings(database_url=urls.get(Service.RULES)),
        store=StoreSettings(pool_max_size=2),
    )


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    async with Store.open(database_url, StoreSettings(pool_max_size=2)) as s:
        yield s
