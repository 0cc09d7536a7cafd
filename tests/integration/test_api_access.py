"""Access control of the API against real PostgreSQL (issue 13).

The access matrix is generated from the OpenAPI document: every operation, with no credentials,
as every role scoped to one city (asking of that city and of another), and as every role scoped
to all cities, gets the status the document's `x-pantau-roles` and `x-pantau-scope` promise. A
new route joins the matrix by being in the document; the test fails if it cannot build a request
for it. Then tokens expired and revoked, the screen's session with its CSRF token, and login
throttling.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from pantau.access import FAILURES_PER_USER, ROLES, Access
from pantau.alerts import AlertStore
from pantau.audit import Actor
from pantau.domain import City, Sensor
from pantau.settings import SHIPPED_DIR, Settings
from pantau.store import Store
from tests.support_basemap import world_archive

HOME, AWAY = "sampit", "sampang"
GAUGES = {
    HOME: Sensor(id="SPT-WL-01", kind="flood", city=HOME, metadata={"river": "Mentaya"}),
    AWAY: Sensor(id="SPG-WL-01", kind="flood", city=AWAY, metadata={"river": "Kemuning"}),
}
ADMIN = Actor("test", "admin", "cli")
PASSWORD = "kata-sandi-yang-panjang"
_fresh = itertools.count(1)


@pytest.fixture
async def app(settings: Settings, store: Store, tmp_path: Path) -> AsyncIterator[TestClient]:
    await store.upsert_city(City(id=HOME, name="Sampit", timezone="Asia/Jakarta"))
    await store.upsert_city(City(id=AWAY, name="Sampang", timezone="Asia/Jakarta"))
    await store.upsert_sensors(GAUGES.values())
    basemap = world_archive(tmp_path / "kota.pmtiles")  # the base map's tiles are routes too
    configured = dataclasses.replace(settings, api_basemap_pmtiles=str(basemap))
    async with TestClient(TestServer(create_app(configured))) as client:
        yield client


async def _token(store: Store, role: str, cities: list[str] | None) -> dict[str, str]:
    _t, secret = await Access(store).create_token(ADMIN, f"matrix-{role}", role, cities=cities)
    return {"Authorization": f"Bearer {secret}"}


class Targets:
    """A fresh thing of a city for each request that acts on one (acting twice on one alert would
    answer its state, not the caller's right)."""

    def __init__(self, store: Store) -> None:
        self.store, self.alerts, self.access = store, AlertStore(store), Access(store)

    async def alert(self, city: str) -> int:
        t = await self.alerts.raise_alert(
            "flood-siaga", f"matrix-{next(_fresh)}", city=city, sensor_id=GAUGES[city].id, severity="critical",
            value=650.0, event_ts=datetime.now(UTC), reason="Siaga 1",
        )  # fmt: skip
        assert t.alert is not None
        return t.alert.id

    async def silence(self, city: str) -> int:
        now = datetime.now(UTC)
        made = await self.alerts.add_silence(
            sensor_id=GAUGES[city].id, created_by="test", starts_at=now, ends_at=now + timedelta(hours=1)
        )
        return made.id

    async def username(self, city: str) -> str:
        name = f"staf-{city}-{next(_fresh)}"
        await self.access.add_user(ADMIN, name, PASSWORD, "agency", cities=[city])
        return name

    async def token(self, city: str) -> str:
        token, _secret = await self.access.create_token(ADMIN, f"logger-{next(_fresh)}", "agency", cities=[city])
        return token.id


async def _path_value(name: str, city: str, targets: Targets) -> str:
    makers: dict[str, Callable[[str], Awaitable[Any]]] = {
        "alert": targets.alert, "silence": targets.silence, "username": targets.username, "token": targets.token,
    }  # fmt: skip
    if name in makers:
        return str(await makers[name](city))
    return _query_value(name, city)


def _query_value(name: str, city: str) -> str:
    values = {
        "city": city, "sensor": GAUGES[city].id, "metric": "water_level_cm", "from": "2026-12-01T00:00:00+07:00",
        "to": "2026-12-02T00:00:00+07:00", "date": "2026-12-01", "path": "Things", "file": "screen.js",
        "z": "1", "x": "1", "y": "0",
    }  # fmt: skip
    assert name in values, f"the access matrix has no value for parameter {name!r}: add one"
    return values[name]


def _body(operation_id: str, city: str) -> dict[str, Any] | None:
    bodies: dict[str, dict[str, Any]] = {
        "ack_alert": {"note": "matrix"}, "resolve_alert": {"note": "matrix"},
        "add_silence": {"sensor": GAUGES[city].id, "minutes": 5, "note": "matrix"},
        "check_rules": {"yaml": (SHIPPED_DIR / "rules.yaml").read_text()},
        "add_user": {"username": f"baru-{next(_fresh)}", "password": PASSWORD, "role": "agency", "cities": [city]},
        "create_token": {"name": "matrix", "role": "agency", "cities": [city]},
        "register_sensor": {"id": f"MATRIX-{next(_fresh)}", "kind": "flood", "city": city},
        "login": {"username": "matrix-operator", "password": PASSWORD},
    }  # fmt: skip
    return bodies.get(operation_id, {})


async def _request(
    client: TestClient, method: str, path: str, op: dict[str, Any], city: str, targets: Targets,
    headers: dict[str, str],
) -> int:  # fmt: skip
    query: dict[str, str] = {}
    for param in op["parameters"]:
        if param["in"] == "path":
            path = path.replace("{" + param["name"] + "}", await _path_value(param["name"], city, targets))
        elif param["required"] or param["name"] == "city":
            query[param["name"]] = _query_value(param["name"], city)
    if method == "get":
        response = await client.get(path, params=query, headers=headers)
    else:
        response = await client.post(path, params=query, json=_body(op["operationId"], city), headers=headers)
    if "text/event-stream" in op["responses"].get("200", {}).get("content", {}) and response.status == 200:
        response.close()  # a live stream never ends: its status is the answer
    else:
        await response.read()
    client.session.cookie_jar.clear()  # a login's session must not speak for the next request
    return response.status


async def test_the_access_matrix_of_every_route_role_and_city(app: TestClient, store: Store) -> None:
    targets = Targets(store)
    await targets.access.add_user(ADMIN, "matrix-operator", PASSWORD, "operator", cities=[HOME])
    scoped = {role: await _token(store, role, [HOME]) for role in ROLES}
    everywhere = {role: await _token(store, role, None) for role in ROLES}
    document = await (await app.get("/api/v1/openapi.json")).json()
    wrong: list[str] = []
    checked = 0

    async def expect(method: str, path: str, op: dict[str, Any], who: str, city: str, headers: dict[str, str],
                     expected: Callable[[int], bool], what: str) -> None:  # fmt: skip
        nonlocal checked
        status = await _request(app, method, path, op, city, targets, headers)
        checked += 1
        if not expected(status):
            wrong.append(f"{method.upper()} {path} as {who} for {city}: {status}, expected {what}")

    for path, operations in document["paths"].items():
        for method, op in operations.items():
            roles, scope = op["x-pantau-roles"], op["x-pantau-scope"]
            if roles is None:  # open to anyone: never 401 or 403
                await expect(method, path, op, "nobody", HOME, {}, lambda s: s not in (401, 403), "no 401/403")
                continue
            await expect(method, path, op, "nobody", HOME, {}, lambda s: s == 401, "401")
            for role in ROLES:
                if role not in roles:
                    for headers, who in ((scoped[role], f"{role}@{HOME}"), (everywhere[role], f"{role}@all")):
                        await expect(method, path, op, who, HOME, headers, lambda s: s == 403, "403")
                    continue
                ok: Callable[[int], bool] = lambda s: 200 <= s < 300  # noqa: E731
                await expect(method, path, op, f"{role}@all", HOME, everywhere[role], ok, "2xx")
                if scope == "every-city":
                    await expect(method, path, op, f"{role}@{HOME}", HOME, scoped[role], lambda s: s == 403, "403")
                    continue
                await expect(method, path, op, f"{role}@{HOME}", HOME, scoped[role], ok, "2xx")
                if scope == "city":
                    await expect(method, path, op, f"{role}@{HOME}", AWAY, scoped[role], lambda s: s == 404, "404")
    assert not wrong, f"{len(wrong)} of {checked} answers are not what the document promises:\n" + "\n".join(wrong)
    assert checked > 200


async def test_a_scoped_caller_sees_only_its_cities_in_lists(app: TestClient, store: Store) -> None:
    targets = Targets(store)
    mine, theirs = await targets.alert(HOME), await targets.alert(AWAY)
    headers = await _token(store, "operator", [HOME])
    cities = (await (await app.get("/api/v1/cities", headers=headers)).json())["cities"]
    assert [c["id"] for c in cities] == [HOME]
    sensors = (await (await app.get("/api/v1/sensors", headers=headers)).json())["sensors"]
    assert [s["id"] for s in sensors] == [GAUGES[HOME].id]
    alerts = (await (await app.get("/api/v1/alerts", headers=headers)).json())["alerts"]
    assert [a["id"] for a in alerts] == [mine]
    assert (await app.get(f"/api/v1/alerts/{theirs}", headers=headers)).status == 404
    assert (await app.post(f"/api/v1/alerts/{theirs}/ack", json={}, headers=headers)).status == 404
    both = await _token(store, "operator", [HOME, AWAY])
    named = await app.get("/api/v1/sensors", headers=both)
    assert named.status == 400 and "city" in (await named.json())["detail"]


async def test_expired_and_revoked_tokens_are_refused(app: TestClient, store: Store) -> None:
    access = Access(store)
    token, secret = await access.create_token(ADMIN, "pintu-air", "operator", cities=[HOME])
    headers = {"Authorization": f"Bearer {secret}"}
    assert (await app.get("/api/v1/cities", headers=headers)).status == 200
    await access.revoke_token(ADMIN, token.id)
    revoked = await app.get("/api/v1/cities", headers=headers)
    assert revoked.status == 401 and "WWW-Authenticate" in revoked.headers
    soon = datetime.now(UTC) + timedelta(seconds=1)
    _t, short = await access.create_token(ADMIN, "sebentar", "operator", expires_at=soon)
    assert (await app.get("/api/v1/cities", headers={"Authorization": f"Bearer {short}"})).status == 200
    async with store.connection() as conn:  # its expiry passes (the clock is the database's and ours)
        await conn.execute("UPDATE api_tokens SET expires_at = now() - interval '1 second' WHERE name = 'sebentar'")
    assert (await app.get("/api/v1/cities", headers={"Authorization": f"Bearer {short}"})).status == 401
    tampered = secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")
    assert (await app.get("/api/v1/cities", headers={"Authorization": f"Bearer {tampered}"})).status == 401
    assert (await app.get("/api/v1/cities", headers={"Authorization": "Bearer rubbish"})).status == 401


async def test_the_screen_session_needs_its_csrf_token_for_every_change(app: TestClient, store: Store) -> None:
    targets = Targets(store)
    await targets.access.add_user(ADMIN, "rina", PASSWORD, "operator", cities=[HOME])
    signed = await app.post("/api/v1/auth/login", json={"username": "rina", "password": PASSWORD})
    assert signed.status == 200
    cookie = signed.cookies["pantau_session"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict"
    csrf = (await signed.json())["csrf_token"]
    me = await (await app.get("/api/v1/auth/me")).json()  # the cookie jar carries the session
    assert (me["name"], me["role"], me["cities"], me["csrf_token"]) == ("rina", "operator", [HOME], csrf)
    alert = await targets.alert(HOME)
    forged = await app.post(f"/api/v1/alerts/{alert}/ack", json={"note": "dari situs lain"})
    assert forged.status == 403 and "CSRF" in (await forged.json())["detail"]
    wrong = await app.post(f"/api/v1/alerts/{alert}/ack", json={}, headers={"X-CSRF-Token": csrf + "x"})
    assert wrong.status == 403
    acked = await app.post(f"/api/v1/alerts/{alert}/ack", json={"note": "OK"}, headers={"X-CSRF-Token": csrf})
    assert acked.status == 200 and (await acked.json())["alert"]["acked_by"] == "rina"
    await targets.access.disable_user(ADMIN, "rina")  # a disabled user's session ends at once
    assert (await app.get("/api/v1/auth/me")).status == 401


async def test_failed_logins_are_throttled_per_user_and_per_address(app: TestClient, store: Store) -> None:
    await Access(store).add_user(ADMIN, "budi", PASSWORD, "operator")
    for _ in range(FAILURES_PER_USER):
        failed = await app.post("/api/v1/auth/login", json={"username": "budi", "password": "salah-sekali-lagi"})
        assert failed.status == 401
    throttled = await app.post("/api/v1/auth/login", json={"username": "budi", "password": PASSWORD})
    assert throttled.status == 429 and int(throttled.headers["Retry-After"]) > 0  # the right password waits too
    # Another user from the same address is still let in below the address's own limit ...
    await Access(store).add_user(ADMIN, "sari", PASSWORD, "operator")
    assert (await app.post("/api/v1/auth/login", json={"username": "sari", "password": PASSWORD})).status == 200
    # ... until the address has failed too often, whichever names it tries.
    for i in range(30):
        await app.post("/api/v1/auth/login", json={"username": f"tebak-{i}", "password": "x" * 12})
    blocked = await app.post("/api/v1/auth/login", json={"username": "sari", "password": PASSWORD})
    assert blocked.status == 429


async def test_the_audit_log_is_append_only_for_everyone(app: TestClient, store: Store, database_url: str) -> None:
    await Access(store).add_user(ADMIN, "auditor", PASSWORD, "admin")
    with psycopg.connect(database_url, autocommit=True) as conn:
        (count,) = conn.execute("SELECT count(*) FROM audit_log WHERE target = 'user:auditor'").fetchone() or (0,)
        assert count == 1
        for statement in ("UPDATE audit_log SET actor = 'someone else'", "DELETE FROM audit_log", "TRUNCATE audit_log"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
        (still,) = conn.execute("SELECT count(*) FROM audit_log").fetchone() or (0,)
    assert still >= 1
    admin = await _token(store, "admin", None)
    page = await (await app.get("/api/v1/audit", params={"action": "user.add"}, headers=admin)).json()
    assert [e["target"] for e in page["entries"]] == ["user:auditor"]
    recorded = str(page["entries"][0]["after"])
    assert "password_hash" not in recorded and PASSWORD not in recorded and "argon2" not in recorded
    exported = await app.get("/api/v1/audit", params={"format": "csv"}, headers=admin)
    assert exported.status == 200 and "user:auditor" in await exported.text()


async def test_an_engineer_registers_and_changes_sensors_of_their_cities_audited(
    app: TestClient, store: Store, database_url: str
) -> None:
    engineer = await _token(store, "engineer", [HOME])
    gauge = {"id": "SPT-WL-09", "kind": "flood", "city": HOME, "metadata": {"river": "Mentaya", "siaga1_cm": 400}}
    made = await app.post("/api/v1/sensors", json=gauge, headers=engineer)
    assert made.status == 201 and (await made.json())["topic"] == "pantau/v1/sampit/flood/SPT-WL-09"
    again = await app.post("/api/v1/sensors", json=gauge, headers=engineer)
    assert again.status == 200
    moved = await app.post("/api/v1/sensors", json=gauge | {"name": "Jembatan Mentaya"}, headers=engineer)
    assert moved.status == 200
    elsewhere = await app.post("/api/v1/sensors", json=gauge | {"city": AWAY}, headers=engineer)
    assert elsewhere.status == 404  # neither registered in another city ...
    theirs = await app.post("/api/v1/sensors", json={"id": GAUGES[AWAY].id, "kind": "flood", "city": HOME},
                            headers=engineer)  # fmt: skip
    assert theirs.status == 404  # ... nor taken from one
    bad = await app.post("/api/v1/sensors", json=gauge | {"lat": 123.0}, headers=engineer)
    assert bad.status == 400 and (await bad.json())["invalid-params"][0]["name"] == "lat"
    with psycopg.connect(database_url) as conn:
        entries = conn.execute(
            "SELECT actor, role, before -> 'SPT-WL-09' ->> 'name', after -> 'SPT-WL-09' ->> 'name' FROM audit_log"
            " WHERE action = 'sensor.register' AND target = 'sensor:SPT-WL-09' ORDER BY id"
        ).fetchall()
    # One entry per change: the registration and the rename; the same registration again changed nothing.
    who = ("token:matrix-engineer", "engineer")
    assert entries == [(*who, None, ""), (*who, "", "Jembatan Mentaya")]

