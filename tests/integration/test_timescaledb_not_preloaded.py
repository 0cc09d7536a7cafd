"""TimescaleDB installed but not preloaded (the package installed, `shared_preload_libraries` left
alone): the first migrate falls back to plain PostgreSQL with one warning saying how to preload it.

CREATE EXTENSION on such a server is a FATAL that closes the connection, so these tests need a
PostgreSQL that has TimescaleDB's files: they run a private cluster from PANTAU_TEST_PG_BINDIR
(default: pantau's own choice of binaries), started without the preload, and skip when that build
has no TimescaleDB.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import psycopg
import pytest

from pantau.embedded import EmbeddedPostgres, timescaledb_installed
from pantau.settings import StoreSettings
from pantau.store import SCHEMA_VERSION, Backend, Store, migrations
from pantau.store.migrations import NOT_PRELOADED
from tests.conftest import pg_bindir
from tests.support import pantau_env, run_pantau

HINT = "shared_preload_libraries = 'timescaledb' in postgresql.conf and restart PostgreSQL"


@pytest.fixture(scope="module")
def unpreloaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """A private cluster whose PostgreSQL has TimescaleDB's files, not preloaded."""
    bindir = pg_bindir()
    if not timescaledb_installed(bindir):
        pytest.skip(
            f"TimescaleDB's files are not installed for the PostgreSQL at {bindir}; "
            "set PANTAU_TEST_PG_BINDIR to a build that has them"
        )
    pg = EmbeddedPostgres(tmp_path_factory.mktemp("pg-unpreloaded"), timescaledb=False, bindir=bindir)
    pg.start()
    try:
        with psycopg.connect(pg.admin_url) as conn:
            available = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone()
            preload = conn.execute("SHOW shared_preload_libraries").fetchone()
        assert available and preload is not None and "timescaledb" not in preload[0]
        yield pg
    finally:
        pg.stop("immediate")


def _database(pg: EmbeddedPostgres, name: str) -> str:
    with psycopg.connect(pg.admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return pg.url.rsplit("/", 1)[0] + f"/{name}"


async def test_migrate_falls_back_to_plain_postgresql(
    unpreloaded: EmbeddedPostgres, caplog: pytest.LogCaptureFixture
) -> None:
    url = _database(unpreloaded, "migrate_api")
    caplog.set_level(logging.WARNING)
    async with Store.open(url, StoreSettings(pool_max_size=1)) as store:
        backend, applied = await store.migrate()
        assert backend is Backend.POSTGRES and len(applied) == SCHEMA_VERSION
        info = await store.info()
        assert (info.backend, info.timescaledb_version, info.schema_version) == (Backend.POSTGRES, None, SCHEMA_VERSION)
        assert await store.migrate() == (Backend.POSTGRES, [])  # the recorded backend: no second attempt
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [NOT_PRELOADED] and HINT in NOT_PRELOADED


async def test_a_failed_create_extension_leaves_the_migration_connection_working(
    unpreloaded: EmbeddedPostgres, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Past the preload check (as if it were listed), CREATE EXTENSION meets the real FATAL: it
    # closes only the probe's connection, and the migration goes on on its own.
    monkeypatch.setattr(migrations, "_preloaded", lambda _libraries: True)
    url = _database(unpreloaded, "migrate_probe")
    caplog.set_level(logging.WARNING)
    async with Store.open(url, StoreSettings(pool_max_size=1)) as store:
        backend, applied = await store.migrate()
    assert backend is Backend.POSTGRES and len(applied) == SCHEMA_VERSION
    [warning] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warning.startswith('timescaledb is installed but cannot be used (extension "timescaledb" must be preloaded')
    assert "\n" not in warning and warning.endswith("; using plain PostgreSQL")


def test_db_migrate_command_falls_back_with_one_warning(unpreloaded: EmbeddedPostgres) -> None:
    env = pantau_env(PANTAU_DATABASE_URL=_database(unpreloaded, "migrate_cli"))
    proc = run_pantau(["db", "migrate"], env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "schema up to date on postgresql"
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and " WARNING pantau.store.migrations: " in lines[0] and HINT in lines[0], proc.stderr
    info = run_pantau(["db", "info"], env)
    assert info.returncode == 0 and "backend:        postgresql\n" in info.stdout
