"""`pantau db info` (and `--json`) through the real command: what is in use, and what an operator
checks first: the partitions ahead and the last maintenance run on plain PostgreSQL; the
hypertable's chunks, compression and policy jobs (last run, status, errors) on TimescaleDB."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest

from pantau.settings import StoreSettings
from pantau.store import SCHEMA_VERSION, Backend
from tests.conftest import EXTERNAL_URL
from tests.e2e.test_cli import pantau
from tests.support import pantau_env, wait_until

pytestmark = pytest.mark.slow

TS_SKIP_REASON = (
    "needs PANTAU_TEST_DATABASE_URL pointing at a server with TimescaleDB preloaded; CI runs the plain-PostgreSQL path"
)


def _info(env: dict[str, str]) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(pantau("db", "info", "--json", env=env).stdout)
    return found


def _recent(iso: str) -> bool:
    return timedelta(0) <= datetime.now(UTC) - datetime.fromisoformat(iso) < timedelta(minutes=5)


def test_db_info_on_plain_postgresql_shows_partitions_ahead_and_the_last_maintenance(
    database_url: str, backend: Backend
) -> None:
    if backend is not Backend.POSTGRES:
        pytest.skip("exercises the plain-PostgreSQL path; the test server uses TimescaleDB")
    env = pantau_env(PANTAU_DATABASE_URL=database_url)
    pantau("sensors", "add", "--id", "SPT-WL-01", "--kind", "flood", "--city", "sampit", env=env)

    before = _info(env)
    assert (before["backend"], before["timescaledb_version"], before["timescaledb"]) == ("postgresql", None, None)
    assert before["schema_version"] == before["expected_schema_version"] == SCHEMA_VERSION
    assert before["server_version"][:2].isdigit()
    assert before["row_counts"] == {
        "sensors": 1, "readings": 0, "readings_1m": 0, "readings_1h": 0, "rejected_messages": 0, "alerts": 0,
    }  # fmt: skip
    today = date.fromisoformat(before["partitions"]["today"])
    assert before["partitions"] == {
        "today": today.isoformat(), "has_today": False, "days_ahead": 0, "newest": None, "oldest": None, "count": 0,
    }  # fmt: skip
    assert before["maintenance"] is None
    text = pantau("db", "info", env=env).stdout
    assert "backend:        postgresql\n" in text
    assert f"partitions:     0 days ahead of today, 0 in all; none for today ({today}) yet\n" in text
    assert "maintenance:    never (`pantau maintain` has not run on this database)\n" in text
    assert "sensors:                   1\n" in text

    pantau("maintain", "--once", env=env)
    after = _info(env)
    ahead = StoreSettings().partition_ahead_days
    newest = today + timedelta(days=ahead)
    assert after["partitions"] == {
        "today": today.isoformat(),
        "has_today": True,
        "days_ahead": ahead,
        "newest": newest.isoformat(),
        "oldest": (today - timedelta(days=1)).isoformat(),
        "count": ahead + 2,
    }
    run = after["maintenance"]
    assert _recent(run["at"]) and 0 <= run["took_s"] < 60
    assert {k: v for k, v in run.items() if k not in ("at", "took_s")} == {
        "partitions_created": ahead + 2, "partitions_dropped": 0, "minute_buckets_refreshed": 0,
        "hour_buckets_refreshed": 0, "rejected_deleted": 0, "unclaimed_dropped": 0,
    }  # fmt: skip
    text = pantau("db", "info", env=env).stdout
    assert f"partitions:     {ahead} days ahead of today (newest {newest}), {ahead + 2} in all\n" in text
    assert f"maintenance:    last run {datetime.fromisoformat(run['at']):%Y-%m-%d %H:%M:%S}Z (" in text
    assert f"s): {ahead + 2} partitions made, 0 dropped, 0 minute and 0 hour rollups refreshed," in text

    pantau("maintain", "--once", env=env)  # nothing left to make: the record is of the latest run
    again = _info(env)["maintenance"]
    assert again["at"] > run["at"] and again["partitions_created"] == 0


@pytest.mark.timescaledb
def test_db_info_on_timescaledb_shows_chunks_compression_and_the_policy_jobs(request: pytest.FixtureRequest) -> None:
    # Checked before asking for the database, so that without the variable no cluster is started.
    if not EXTERNAL_URL or request.getfixturevalue("backend") is not Backend.TIMESCALEDB:
        pytest.skip(TS_SKIP_REASON)
    database_url: str = request.getfixturevalue("database_url")
    env = pantau_env(PANTAU_DATABASE_URL=database_url)
    defaults = StoreSettings()

    # A refresh of readings_1m that fails: its materialization refuses rows, and there is one to add.
    with psycopg.connect(database_url, autocommit=True) as conn:
        [(mat, job_id)] = conn.execute(
            "SELECT c.materialization_hypertable_schema || '.' || c.materialization_hypertable_name, j.job_id"
            " FROM timescaledb_information.continuous_aggregates c JOIN timescaledb_information.jobs j"
            " ON j.hypertable_name = c.view_name AND j.proc_name = 'policy_refresh_continuous_aggregate'"
            " WHERE c.view_name = 'readings_1m'"
        ).fetchall()
        conn.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN RAISE EXCEPTION 'refused by the test'; END $$"
        )
        conn.execute(f"CREATE TRIGGER refuse BEFORE INSERT ON {mat} FOR EACH ROW EXECUTE FUNCTION refuse()")
        conn.execute("INSERT INTO readings VALUES (now() - interval '1 hour', 'KTG-AQ-01', 'pm25', 12.5)")
        conn.execute("SELECT alter_job(%s, next_start => now())", (job_id,))

    def failed() -> dict[str, Any] | None:
        info = _info(env)
        job = next(j for j in info["timescaledb"]["jobs"] if j["id"] == job_id)
        return info if job["last_run_status"] == "Failed" and job["errors"] else None

    # The database's job scheduler runs it: it starts within the launcher's poll for a new database.
    info = wait_until(failed, timeout_s=150, interval_s=1, what="a failed run of the readings_1m refresh")
    assert info["backend"] == "timescaledb" and info["timescaledb_version"]
    assert info["partitions"] is None and info["maintenance"] is None
    ts = info["timescaledb"]
    assert ts["chunk_interval_s"] == 86400
    assert ts["compression"] == {"enabled": True, "segmentby": ["sensor_id", "metric"], "orderby": ["ts"]}
    jobs = {(j["policy"], j["relation"]): j for j in ts["jobs"]}
    assert list(jobs) == [  # the raw table's, then each rollup's, as a reading meets them
        ("compression", "readings"),
        ("retention", "readings"),
        ("refresh", "readings_1m"),
        ("retention", "readings_1m"),
        ("refresh", "readings_1h"),
        ("retention", "readings_1h"),
    ]
    assert jobs["compression", "readings"]["config"]["compress_after"] == f"{defaults.compress_after_days} days"
    assert jobs["retention", "readings"]["config"]["drop_after"] == f"{defaults.retention_days} days"
    assert jobs["retention", "readings_1m"]["config"]["drop_after"] == f"{defaults.rollup_retention_days} days"
    assert jobs["refresh", "readings_1m"]["schedule_interval_s"] == 30
    assert jobs["refresh", "readings_1h"]["schedule_interval_s"] == 300
    assert jobs["compression", "readings"]["schedule_interval_s"] > 0 and all(j["scheduled"] for j in jobs.values())
    refresh = jobs["refresh", "readings_1m"]
    refresh_start, refresh_end = refresh["config"]["start_offset"], refresh["config"]["end_offset"]
    assert refresh_end == "00:01:00"  # the open minute is aggregated live, never materialized while it fills
    assert refresh["total_failures"] >= 1 and refresh["total_runs"] >= refresh["total_failures"]
    assert _recent(refresh["last_run_started_at"]) and _recent(refresh["errors"][0]["at"])
    assert refresh["errors"][0]["message"] and refresh["errors"][0]["sqlerrcode"]

    text = pantau("db", "info", env=env).stdout
    assert "chunks:         1d each\n" in text
    assert "compression:    on, segmentby sensor_id, metric, orderby ts\n" in text
    lines = text.splitlines()
    policy = f"(end_offset {refresh_end}, start_offset {refresh_start})"
    at = lines.index(f"  {job_id:>6} refresh readings_1m every 30s {policy}")
    assert lines[at + 1].startswith("         last run ") and ": Failed (" in lines[at + 1]
    assert "runs failed); next " in lines[at + 1]
    error = refresh["errors"][0]
    assert lines[at + 2].startswith(
        f"         error {datetime.fromisoformat(error['at']):%Y-%m-%d %H:%M:%S}Z {error['sqlerrcode']}: "
    )
    assert "maintenance:    never" in text

    pantau("maintain", "--once", env=env)
    run = _info(env)["maintenance"]
    assert _recent(run["at"]) and run["partitions_created"] == 0
