"""Least privilege in the database (pantau/store/grants.py), against a real PostgreSQL: each
service's role is refused what its code never does (every attempt tried on its own), and the real
ingest, rule worker, notifier and API run through a representative flow as their roles."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from ingest.writer import ReadingWriter
from pantau.access import Access
from pantau.alerts import AlertStore
from pantau.audit import Actor
from pantau.domain import Sensor
from pantau.embedded import EmbeddedMosquitto
from pantau.errors import MigrationError
from pantau.rulepack.config import parse_rules
from pantau.settings import RulesSettings, Settings, StoreSettings
from pantau.store import Backend, Store
from pantau.store.grants import NO_CREATEROLE, Service
from rules.notify import AlertNotifier
from rules.worker import RuleWorker
from tests.integration.ingest_harness import running_ingest
from tests.support import Publisher, await_until, bearer

GAUGE = Sensor(id="SPT-WL-03", kind="flood", city="sampit", district="Baamang", metadata={"river": "Mentaya"})
LEVEL_HIGH = {
    "id": "level-high",
    "kind": "threshold",
    "select": {"kind": "flood"},
    "metric": "water_level_cm",
    "op": ">=",
    "value": 300,
    "clear": {"op": "<", "value": 250},
    "severity": "critical",
}

_ALERT_ROW = (
    "INSERT INTO alerts (rule_id, scope, city, severity, opened_at, event_ts, updated_at)"
    " VALUES ('forged', 'SPT-WL-03', 'sampit', 'critical', now(), now(), now())"
)
_EVENT_ROW = (
    "INSERT INTO alert_events (alert_id, at, event_ts, kind, actor, severity, notification)"
    " SELECT id, now(), now(), 'resolved', 'prankster', 'critical', 'notify' FROM alerts"
)
_READING_ROW = "INSERT INTO readings (ts, sensor_id, metric, value) VALUES (now(), 'SPT-WL-03', 'water_level_cm', 650)"

_AUDIT_EDITS = ("UPDATE audit_log SET actor = 'nobody'", "DELETE FROM audit_log", "TRUNCATE audit_log")

# What each role must be refused: each statement is tried on its own connection.
FORBIDDEN: dict[Service, tuple[str, ...]] = {
    Service.INGEST: (
        "DELETE FROM readings",
        "UPDATE readings SET value = 0",
        "TRUNCATE readings",
        "DELETE FROM {partition}",  # a partition directly: nothing is granted on one
        _ALERT_ROW,
        "UPDATE alerts SET state = 'resolved', resolved_at = now(), resolved_by = 'ingest'",
        "DELETE FROM alerts",
        _EVENT_ROW,
        "UPDATE alert_events SET actor = 'nobody'",
        "DELETE FROM alert_events",
        "INSERT INTO silences (city, starts_at, ends_at, created_by) VALUES ('sampit', now(), now() + '1d', 'x')",
        "UPDATE sensors SET city = 'elsewhere'",  # only last_seen moves
        "DELETE FROM sensors",
        "DELETE FROM rejected_messages",
        "UPDATE ingest_batches SET claim = 1",
        "SELECT pantau_drop_partitions(now() + interval '10 days')",
        "INSERT INTO audit_log (actor, role, via, action, target) VALUES ('x', 'x', 'cli', 'forged', 'x')",
        *_AUDIT_EDITS,
    ),
    Service.RULES: (
        "DELETE FROM readings",
        "UPDATE readings SET value = 0",
        "TRUNCATE readings",
        _READING_ROW,
        "UPDATE alerts SET opened_at = now(), rule_id = 'rewritten'",  # history columns stay as written
        "DELETE FROM alerts",
        "UPDATE alert_events SET actor = 'nobody'",
        "DELETE FROM alert_events",
        "UPDATE sensors SET last_seen = now()",
        "DELETE FROM silences",
        *_AUDIT_EDITS,
    ),
    Service.API: (
        "DELETE FROM readings",
        "UPDATE readings SET value = 0",
        "TRUNCATE readings",
        _READING_ROW,
        "UPDATE alert_events SET actor = 'nobody', reason = 'rewritten'",
        "DELETE FROM alert_events",
        "DELETE FROM alerts",
        "UPDATE alerts SET rule_id = 'rewritten', opened_at = now()",
        _ALERT_ROW,
        "DELETE FROM silences",
        "UPDATE sensors SET last_seen = now()",
        "INSERT INTO ingest_batches (readings, rejections, payload) VALUES (0, 0, '')",
        "DELETE FROM ingest_batches",
        *_AUDIT_EDITS,
        "UPDATE users SET role = 'admin', cities = NULL",  # only disabling is the API's
        "UPDATE api_tokens SET role = 'admin', expires_at = NULL",  # only revoking and last use
        "DELETE FROM users",
    ),
}
CASES = [(service, statement) for service, statements in FORBIDDEN.items() for statement in statements]


@pytest.fixture
async def seeded(store: Store, database_url: str, backend: Backend) -> str:
    """A reading, an alert with its event and a rejection, as the owner; the reading's partition."""
    await store.upsert_sensors([GAUGE])
    t = time.time() - 60
    async with ReadingWriter(database_url, backend) as writer:
        await writer.write([(t, GAUGE.id, "water_level_cm", 180.0)], [])
    opened = await AlertStore(store).raise_alert(
        "level-high", GAUGE.id, city="sampit", sensor_id=GAUGE.id, severity="critical", value=650.0,
        event_ts=datetime.now(UTC),
    )  # fmt: skip
    assert opened.alert is not None
    return f"readings_p{datetime.fromtimestamp(t, UTC):%Y%m%d}"


@pytest.mark.parametrize(("service", "statement"), CASES, ids=[f"{s}: {q[:60]}" for s, q in CASES])
async def test_a_role_is_refused_what_its_service_never_does(
    service: Service, statement: str, seeded: str, role_urls: dict[Service, str], backend: Backend
) -> None:
    if "{partition}" in statement and backend is not Backend.POSTGRES:
        pytest.skip("daily partitions are plain PostgreSQL's")
    conn = await psycopg.AsyncConnection.connect(role_urls[service], autocommit=True)
    try:
        cur = await conn.execute("SELECT current_user")
        assert await cur.fetchone() == (service.role,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute(statement.format(partition=seeded))  # type: ignore[arg-type]
    finally:
        await conn.close()


async def test_nothing_was_changed_by_the_refused_attempts(
    seeded: str, role_urls: dict[Service, str], store: Store
) -> None:
    for service, statements in FORBIDDEN.items():
        async with await psycopg.AsyncConnection.connect(role_urls[service], autocommit=True) as conn:
            for statement in statements:
                with contextlib.suppress(psycopg.Error):
                    await conn.execute(statement.format(partition=seeded))  # type: ignore[arg-type]
    assert await store.count("readings") == 1
    assert await store.count("alerts", "rule_id = 'level-high' AND state = 'open'") == 1
    assert await store.count("alert_events") == 1
    assert await store.count("sensors", "city = 'sampit'") == 1


async def test_migrate_grants_again_what_was_changed_by_hand(database_url: str, role_urls: dict[Service, str]) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("GRANT DELETE ON readings TO pantau_ingest")
    async with Store.open(database_url, StoreSettings(pool_max_size=1)) as store:
        await store.migrate()  # on every migrate, not only the first
    async with await psycopg.AsyncConnection.connect(role_urls[Service.INGEST], autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("DELETE FROM readings")


async def test_a_migrating_user_that_may_not_create_roles_is_told_what_to_do(
    empty_database_url: str, role_passwords: dict[Service, str]
) -> None:
    # The roles exist in the cluster already (the template's migrate made them): a user who owns a
    # database but may not create roles migrates it while they exist, and is told what to do when
    # one is missing.
    from urllib.parse import urlsplit, urlunsplit

    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS pantau_owner_test")
        conn.execute("CREATE ROLE pantau_owner_test LOGIN PASSWORD 'owner-test' NOCREATEROLE")
        database = urlsplit(empty_database_url).path.lstrip("/")
        conn.execute(f'ALTER DATABASE "{database}" OWNER TO pantau_owner_test')
        conn.execute("ALTER SCHEMA public OWNER TO pantau_owner_test")
    parts = urlsplit(empty_database_url)
    owner_url = urlunsplit(parts._replace(netloc=f"pantau_owner_test:owner-test@{parts.hostname}:{parts.port}"))
    try:
        async with Store.open(owner_url, StoreSettings(pool_max_size=1, timescaledb="off")) as store:
            await store.migrate()
            with psycopg.connect(empty_database_url, autocommit=True) as conn:
                conn.execute("ALTER ROLE pantau_api RENAME TO pantau_api_away")
            try:
                with pytest.raises(MigrationError) as raised:
                    await store.migrate()
            finally:
                with psycopg.connect(empty_database_url, autocommit=True) as conn:
                    conn.execute("ALTER ROLE pantau_api_away RENAME TO pantau_api")
        assert str(raised.value) == NO_CREATEROLE.format(role="pantau_api", user="pantau_owner_test")
        assert "PANTAU_STORE_SERVICE_ROLES=off" in str(raised.value)
    finally:
        with psycopg.connect(empty_database_url, autocommit=True) as conn:
            database = urlsplit(empty_database_url).path.lstrip("/")
            conn.execute(f'ALTER DATABASE "{database}" OWNER TO CURRENT_USER')
            conn.execute("REASSIGN OWNED BY pantau_owner_test TO CURRENT_USER")
            conn.execute("DROP OWNED BY pantau_owner_test")
            conn.execute("DROP ROLE pantau_owner_test")


@pytest.fixture
def role_settings(settings: Settings, role_urls: dict[Service, str]) -> Settings:
    """`settings` with each service on its role's URL; checkpoints often, so they are exercised."""
    rules = RulesSettings(
        database_url=role_urls[Service.RULES], tick_interval_s=0.2, checkpoint_interval_s=0.5, mqtt_notify=True
    )
    ingest = dataclasses.replace(settings.ingest, database_url=role_urls[Service.INGEST])
    return dataclasses.replace(settings, api_database_url=role_urls[Service.API], ingest=ingest, rules=rules)


@pytest.fixture
async def rules_running(role_settings: Settings) -> AsyncIterator[RuleWorker]:
    """The rule worker and the notifier, on a store opened as pantau_rules."""
    async with Store.open(role_settings.service_database_url("rules"), role_settings.store) as rules_store:
        worker = RuleWorker(rules_store, role_settings, parse_rules({"version": 1, "rules": [LEVEL_HIGH]}))
        notifier = AlertNotifier(rules_store, role_settings)
        tasks = [asyncio.create_task(worker.run()), asyncio.create_task(notifier.run())]
        try:
            await asyncio.wait_for(worker.ready.wait(), 20)
            await asyncio.wait_for(notifier.ready.wait(), 20)
            yield worker
        finally:
            worker.stop()
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for result in results:
                assert not isinstance(result, Exception), result


async def _users(store: Store) -> set[str]:
    async with store.connection() as conn:
        cur = await conn.execute(
            "SELECT DISTINCT usename FROM pg_stat_activity"
            " WHERE datname = current_database() AND usename <> current_user"
        )
        return {str(r[0]) for r in await cur.fetchall()}


async def test_the_services_work_as_their_roles(
    role_settings: Settings,
    rules_running: RuleWorker,
    store: Store,
    backend: Backend,
    broker: EmbeddedMosquitto,
) -> None:
    await store.upsert_sensors([GAUGE])
    now = int(time.time())
    two_days_ago = now - 2 * 86400  # a day with no partition yet: ingest makes it
    async with running_ingest(role_settings, backend) as ingest:
        pub = Publisher(broker.port)
        pub.publish_all(
            [
                (GAUGE.topic, json.dumps({"ts": two_days_ago, "water_level_cm": 120})),
                (GAUGE.topic, json.dumps({"ts": now - 30, "water_level_cm": 650})),
                (GAUGE.topic, json.dumps({"ts": now - 30, "water_level_cm": 650})),  # a redelivery
                (GAUGE.topic, json.dumps({"ts": now - 30, "water_level_cm": 640})),  # a conflicting value
                (GAUGE.topic, b"not json"),
            ]
        )
        pub.close()
        await await_until(lambda: store.count("readings", "sensor_id = %s", (GAUGE.id,)), what="readings")
        await await_until(lambda: _count(store, "rejected_messages", 2), what="the bad message and the conflict")
        await await_until(lambda: _count(store, "alerts", 1, "state = 'open'"), what="the alert")
        await await_until(lambda: _last_seen(store), what="last_seen")
        operator, agency, engineer = [await bearer(store, role) for role in ("operator", "agency", "engineer")]
        await Access(store).add_user(Actor("test", "admin", "cli"), "sari", "kata-sandi-panjang", "operator")
        async with TestClient(TestServer(create_app(role_settings)), headers=operator) as client:
            listed = (await (await client.get("/api/v1/alerts", params={"city": "sampit"})).json())["alerts"]
            assert [(a["rule_id"], a["severity"], a["state"]) for a in listed] == [("level-high", "critical", "open")]
            alert = listed[0]["id"]
            acked = await client.post(f"/api/v1/alerts/{alert}/ack", json={"note": "on it"})
            assert acked.status == 200, await acked.text()
            detail = await (await client.get(f"/api/v1/alerts/{alert}")).json()
            assert [e["kind"] for e in detail["events"]] == ["opened", "acknowledged"]
            latest = await (await client.get("/api/v1/latest", params={"city": "sampit"})).json()
            assert latest["sensors"][0]["values"]["water_level_cm"]["value"] == 650.0
            # The last hour, whatever the time of day (a day's span missed readings just past midnight).
            span = {f: datetime.fromtimestamp(t, UTC).isoformat() for f, t in (("from", now - 3600), ("to", now + 60))}
            series = await client.get("/api/v1/series", params={"sensor": GAUGE.id, "metric": "water_level_cm"} | span)
            assert series.status == 200, await series.text()
            assert (await client.get("/api/v1/sensors", params={"city": "sampit"})).status == 200
            ready = await (await client.get("/readyz")).json()  # reads the outbox and the newest reading
            assert ready["database"]["ok"] and ready["ingest"]["ok"], ready
            overview = await client.get("/api/v1/overview", params={"city": "sampit"})
            assert overview.status == 200, await overview.text()
            exported = await client.get("/api/v1/export", params={"city": "sampit"} | span, headers=agency)
            assert exported.status == 200, await exported.text()
            assert "650" in await exported.text()
            silenced = await client.post(
                "/api/v1/silences", json={"sensor": GAUGE.id, "minutes": 30, "note": "kalibrasi"}
            )
            assert silenced.status == 201, await silenced.text()
            ended = await client.post(f"/api/v1/silences/{(await silenced.json())['id']}/end", json={})
            assert ended.status == 200, await ended.text()
            resolved = await client.post(f"/api/v1/alerts/{alert}/resolve", json={})
            # Access control as the API's role: a failed and a good sign-in, a sensor registered, the
            # audit log read back (each change above went into it).
            wrong = await client.post("/api/v1/auth/login", json={"username": "sari", "password": "salah-sekali"})
            assert wrong.status == 401, await wrong.text()
            good = {"username": "sari", "password": "kata-sandi-panjang"}
            signed = await client.post("/api/v1/auth/login", json=good)
            assert signed.status == 200, await signed.text()
            client.session.cookie_jar.clear()
            registered = await client.post("/api/v1/sensors", headers=engineer,
                                           json={"id": "SPT-WL-77", "kind": "flood", "city": "sampit"})  # fmt: skip
            assert registered.status == 201, await registered.text()
            assert resolved.status == 200, await resolved.text()
            assert await _users(store) >= {"pantau_ingest", "pantau_rules", "pantau_api"}
        assert ingest.metrics is not None
    await await_until(lambda: _count(store, "rule_checkpoints", 1), what="a checkpoint")
    await await_until(lambda: _delivered(store), what="the notifier's cursor")
    day_before = datetime.fromtimestamp(two_days_ago, UTC)
    if backend is Backend.POSTGRES:
        async with store.connection() as conn:
            cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"readings_p{day_before:%Y%m%d}",))
            assert await cur.fetchone() == (True,)




async def _count(store: Store, table: str, n: int, where: str = "TRUE") -> bool:
    return await store.count(table, where) == n


async def _last_seen(store: Store) -> bool:
    return any(s.last_seen is not None for s in await store.sensors())


async def _delivered(store: Store) -> Any:
    async with store.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM notify_cursors WHERE last_event > 0")
        return (await cur.fetchone() or (0,))[0]
