"""The HTTP API against a real PostgreSQL (and a real broker for readiness): cities, sensors,
latest values, alerts and their actions, errors as problem documents, and the OpenAPI document
held to the routes."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from api.openapi import API
from ingest.writer import ReadingWriter
from pantau.alerts import AlertStore
from pantau.domain import City, Sensor
from pantau.embedded import EmbeddedMosquitto
from pantau.mqtt import free_port
from pantau.settings import Settings
from pantau.store import Backend, Store
from tests.support import bearer

KTG = City(id="kotamobagu", name="Kotamobagu", province="Sulawesi Utara", timezone="Asia/Makassar")
AIR = Sensor(id="KTG-AQ-01", kind="air", city="kotamobagu", district="Kotamobagu Barat")
GAUGE = Sensor(id="SPT-WL-01", kind="flood", city="sampit", metadata={"river": "Mentaya"})


@pytest.fixture
async def client(settings: Settings, store: Store) -> AsyncIterator[TestClient]:
    await store.upsert_sensors([AIR, GAUGE])
    await store.upsert_city(KTG)
    async with TestClient(TestServer(create_app(settings)), headers=await bearer(store, "operator")) as c:
        yield c


def _problem(doc: dict[str, object], status: int, param: str) -> None:
    assert doc["status"] == status
    assert [p["name"] for p in doc["invalid-params"]] == [param]  # type: ignore[union-attr]


async def test_every_route_is_in_the_openapi_document_and_back(client: TestClient) -> None:
    doc = await (await client.get("/api/v1/openapi.json")).json()
    assert doc["openapi"] == "3.1.0"
    documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    routed = {
        (route.method, route.resource.canonical)
        for route in client.server.app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    assert documented == routed
    assert len(documented) == len(API.operations)


async def test_cities_and_sensors(client: TestClient) -> None:
    cities = (await (await client.get("/api/v1/cities")).json())["cities"]
    assert [(c["id"], c["timezone"], c["zone"]) for c in cities] == [
        ("kotamobagu", "Asia/Makassar", "WITA"),
        ("sampit", "Asia/Jakarta", "WIB"),
    ]
    missing = await client.get("/api/v1/cities/atlantis")
    assert missing.status == 404 and missing.content_type == "application/problem+json"
    assert (await missing.json())["detail"] == "city 'atlantis' does not exist"
    gauges = (await (await client.get("/api/v1/sensors", params={"river": "Mentaya"})).json())["sensors"]
    assert [(s["id"], s["river"]) for s in gauges] == [("SPT-WL-01", "Mentaya")]
    air = (await (await client.get("/api/v1/sensors", params={"city": "kotamobagu", "kind": "air"})).json())["sensors"]
    assert [s["id"] for s in air] == ["KTG-AQ-01"]
    bad = await client.get("/api/v1/sensors", params={"kind": "weather"})
    assert bad.status == 400
    _problem(await bad.json(), 400, "kind")


async def test_latest_values_with_etag_and_local_time(
    client: TestClient, settings: Settings, backend: Backend, store: Store, database_url: str
) -> None:
    t = float(int(time.time()) - 600)
    async with ReadingWriter(database_url, backend) as writer:  # what ingest does
        await writer.write(
            [(t - 60, AIR.id, "pm25", 30.0), (t, AIR.id, "pm25", 41.5), (t, GAUGE.id, "water_level_cm", 180.0),
             (t + 0.25, GAUGE.id, "rain_mm", 1.5)], []
        )
    first = await client.get("/api/v1/latest", params={"city": "kotamobagu"})
    body = await first.json()
    at = datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")
    values = {"pm25": {"ts": at, "value": 41.5}}
    assert body == {"sensors": [{"id": AIR.id, "city": "kotamobagu", "kind": "air", "values": values}]}
    again = await client.get(
        "/api/v1/latest", params={"city": "kotamobagu"}, headers={"If-None-Match": first.headers["ETag"]}
    )
    assert again.status == 304
    one = await (await client.get(f"/api/v1/sensors/{AIR.id}", params={"tz": "local"})).json()
    assert one["latest"]["pm25"]["ts"].endswith("+08:00")  # WITA
    assert one["latest"]["pm25"]["value"] == 41.5 and one["open_alerts"] == []
    bands = [(line["value"], line["label"], line["colour"]) for line in one["thresholds"]["pm25"]]
    assert bands == [(15.5, "Sedang", "blue"), (55.4, "Tidak Sehat", "yellow"), (150.4, "Sangat Tidak Sehat", "red"),
                     (250.4, "Berbahaya", "black")]  # where each ISPU band of PM2.5 begins  # fmt: skip
    no_levels = await (await client.get(f"/api/v1/sensors/{GAUGE.id}")).json()
    assert no_levels["thresholds"] == {}  # a gauge without Siaga levels in its metadata draws none
    assert (await client.get("/api/v1/sensors/NOPE")).status == 404
    gauge = (await (await client.get("/api/v1/latest", params={"city": "sampit"})).json())["sensors"]
    at_quarter = datetime.fromtimestamp(t + 0.25, UTC).isoformat().replace("+00:00", "Z")
    assert gauge == [{"id": GAUGE.id, "city": "sampit", "kind": "flood", "values": {
        "rain_mm": {"ts": at_quarter, "value": 1.5}, "water_level_cm": {"ts": at, "value": 180.0}}}]  # fmt: skip
    assert at_quarter.endswith(".250000Z")


async def test_alerts_paged_by_cursor_and_acted_on_with_actor_and_note(
    client: TestClient, store: Store, database_url: str
) -> None:
    alerts = AlertStore(store)
    opened = []
    for i in range(5):
        t = await alerts.raise_alert(
            "air-ispu", f"S{i}", city="kotamobagu", sensor_id=f"S{i}", severity="warning", value=150.0 + i,
            event_ts=datetime.now(UTC), reason="ISPU",
        )  # fmt: skip
        assert t.alert is not None
        opened.append(t.alert.id)
    seen, cursor = [], None
    while True:
        params = {"limit": "2", "city": "kotamobagu"} | ({"cursor": cursor} if cursor else {})
        page = await (await client.get("/api/v1/alerts", params=params)).json()
        seen += [a["id"] for a in page["alerts"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(opened, reverse=True)  # every alert once, newest first

    anonymous = await client.post(
        f"/api/v1/alerts/{opened[0]}/ack", json={"note": "on it"}, headers={"Authorization": ""}
    )
    assert anonymous.status == 401
    acked = await client.post(f"/api/v1/alerts/{opened[0]}/ack", json={"note": "tim BPBD berangkat"})
    assert acked.status == 200 and (await acked.json())["alert"]["acked_by"] == "token:rina"
    detail = await (await client.get(f"/api/v1/alerts/{opened[0]}")).json()
    assert [(e["kind"], e["actor"], e["reason"]) for e in detail["events"]][-1] == (
        "acknowledged",
        "token:rina",
        "tim BPBD berangkat",
    )
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT actor, reason FROM alert_events WHERE alert_id = %s AND kind = 'acknowledged'", (opened[0],)
        ).fetchone()
        assert row == ("token:rina", "tim BPBD berangkat")
        audited = conn.execute(
            "SELECT actor, role, via, before->>'state', after->>'state', after->>'note' FROM audit_log"
            " WHERE action = 'alert.acknowledge' AND target = %s",
            (f"alert:{opened[0]}",),
        ).fetchall()
    assert audited == [("token:rina", "operator", "api", "open", "acknowledged", "tim BPBD berangkat")]
    assert (await client.post("/api/v1/alerts/999999/resolve", json={})).status == 404
    bad = await client.get("/api/v1/alerts", params={"limit": "lots"})
    _problem(await bad.json(), 400, "limit")
    worse = await client.get("/api/v1/alerts", params={"cursor": "not-a-cursor"})
    _problem(await worse.json(), 400, "cursor")


async def test_silences_are_added_listed_and_ended_by_someone(client: TestClient) -> None:
    made = await client.post(
        "/api/v1/silences", json={"sensor": AIR.id, "minutes": 60, "note": "kalibrasi"}
    )
    assert made.status == 201
    silence = await made.json()
    assert (silence["sensor_id"], silence["created_by"], silence["comment"]) == (AIR.id, "token:rina", "kalibrasi")
    listed = (await (await client.get("/api/v1/silences")).json())["silences"]
    assert [s["id"] for s in listed] == [silence["id"]]
    both = await client.post(
        "/api/v1/silences", json={"sensor": AIR.id, "city": "kotamobagu", "minutes": 5, "note": "x"}
    )
    _problem(await both.json(), 400, "sensor")
    ended = await client.post(f"/api/v1/silences/{silence['id']}/end", json={})
    assert (await ended.json())["ended_by"] == "token:rina"
    assert (await (await client.get("/api/v1/silences")).json())["silences"] == []


async def test_ready_names_what_is_not(settings: Settings, store: Store, broker: EmbeddedMosquitto) -> None:
    async with TestClient(TestServer(create_app(settings)), headers=await bearer(store, "operator")) as ok:
        assert (await ok.get("/healthz")).status == 200
        ready = await ok.get("/readyz")
        assert ready.status == 200 and (await ready.json())["broker"]["ok"] is True
    elsewhere = dataclasses.replace(settings, mqtt_url=f"mqtt://127.0.0.1:{free_port()}")
    async with TestClient(TestServer(create_app(elsewhere)), headers=await bearer(store, "operator")) as not_ready:
        answer = await not_ready.get("/readyz")
        body = await answer.json()
        assert answer.status == 503 and body["database"]["ok"] is True and body["broker"]["ok"] is False


async def test_the_reference_page_is_served_offline(client: TestClient) -> None:
    page = await client.get("/api/v1/docs")
    html = await page.text()
    assert page.status == 200 and page.content_type == "text/html"
    assert 'fetch("/api/v1/openapi.json")' in html
    assert "http://" not in html and "https://" not in html  # nothing from elsewhere: it works with the internet cut


async def test_cursor_paging_gives_every_alert_once_while_new_ones_keep_opening(
    client: TestClient, store: Store
) -> None:
    alerts = AlertStore(store)

    async def raise_one(i: int) -> int:
        t = await alerts.raise_alert(
            "air-ispu", f"P{i}", city="kotamobagu", sensor_id=f"P{i}", severity="warning", value=150.0,
            event_ts=datetime.now(UTC), reason="ISPU",
        )  # fmt: skip
        assert t.alert is not None
        return t.alert.id

    before = {await raise_one(i) for i in range(40)}
    seen: list[int] = []
    cursor, n = None, 40
    while True:  # between pages, new alerts open: they come first in the order, never on a later page twice
        for _ in range(3):
            await raise_one(n)
            n += 1
        params = {"limit": "7", "state": "all"} | ({"cursor": cursor} if cursor else {})
        page = await (await client.get("/api/v1/alerts", params=params)).json()
        seen += [a["id"] for a in page["alerts"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)), "an alert was paged twice"
    assert before <= set(seen), f"missed: {sorted(before - set(seen))}"


async def test_cors_answers_the_configured_origins_only(settings: Settings, store: Store) -> None:
    allowed = "https://cc.kotamobagukota.go.id"
    configured = dataclasses.replace(settings, api_cors_origins=allowed)
    async with TestClient(TestServer(create_app(configured)), headers=await bearer(store, "operator")) as c:
        ok = await c.get("/api/v1/cities", headers={"Origin": allowed})
        assert ok.headers["Access-Control-Allow-Origin"] == allowed and ok.headers["Vary"] == "Origin"
        assert "ETag" in ok.headers["Access-Control-Expose-Headers"]
        preflight = await c.options("/api/v1/alerts/1/ack", headers={
            "Origin": allowed, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, authorization"})  # fmt: skip
        assert preflight.status == 204
        assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
        assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
        missing = await c.get("/api/v1/cities/atlantis", headers={"Origin": allowed})  # errors are readable too
        assert missing.status == 404 and missing.headers["Access-Control-Allow-Origin"] == allowed
        other = await c.get("/api/v1/cities", headers={"Origin": "https://elsewhere.example"})
        assert other.status == 200 and "Access-Control-Allow-Origin" not in other.headers
    async with TestClient(TestServer(create_app(settings)), headers=await bearer(store)) as c:  # none: no CORS
        plain = await c.get("/api/v1/cities", headers={"Origin": allowed})
        assert "Access-Control-Allow-Origin" not in plain.headers
        refused = await c.options("/api/v1/cities", headers={"Origin": allowed, "Access-Control-Request-Method": "GET"})
        assert refused.status == 405


async def test_ready_holds_ingest_and_rules_to_their_limits_and_metrics_count_requests(
    settings: Settings, store: Store, database_url: str, backend: Backend
) -> None:
    async with TestClient(TestServer(create_app(settings)), headers=await bearer(store, "operator")) as c:
        fresh = await (await c.get("/readyz")).json()  # a new installation: no reading yet is not a failure
        assert fresh["ingest"] == {"ok": True, "newest_reading_age_s": None, "limit_s": 900.0}
        assert fresh["rules"]["ok"] is True and fresh["rules"]["oldest_unevaluated_batch_s"] == 0.0
        await store.upsert_sensors([AIR])
        old = time.time() - 3600
        async with ReadingWriter(database_url, backend) as writer:  # an hour old, and no rule worker claims it
            await writer.write([(old, AIR.id, "pm25", 30.0)], [])
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("UPDATE ingest_batches SET created_at = now() - interval '2 minutes'")
        stale = await c.get("/readyz")
        body = await stale.json()
        assert stale.status == 503 and body["ready"] is False
        assert body["ingest"]["ok"] is False and 3590 <= body["ingest"]["newest_reading_age_s"] <= 3700
        assert body["rules"]["ok"] is False and 119 <= body["rules"]["oldest_unevaluated_batch_s"] <= 200
        assert body["database"]["ok"] and body["broker"]["ok"]
        await c.get("/api/v1/cities")
        await c.get("/api/v1/cities/atlantis")
        text = await (await c.get("/metrics")).text()
        assert 'pantau_api_requests_total{method="GET",route="/api/v1/cities",status="200"} 1.0' in text
        assert 'pantau_api_requests_total{method="GET",route="/api/v1/cities/{city}",status="404"} 1.0' in text
        assert 'pantau_api_request_seconds_count{route="/readyz"} 2.0' in text


async def test_a_request_past_its_statement_budget_is_a_422_not_a_hang(
    settings: Settings, store: Store, database_url: str
) -> None:
    budgeted = dataclasses.replace(settings, api_statement_timeout_ms=300)
    async with TestClient(TestServer(create_app(budgeted)), headers=await bearer(store, "operator")) as c:
        assert (await c.get("/api/v1/sensors")).status == 200
        with psycopg.connect(database_url) as holder:  # a migration or a vacuum full holds the table
            holder.execute("LOCK TABLE sensors IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            stuck = await c.get("/api/v1/sensors")
            waited = time.monotonic() - started
            holder.rollback()
        assert stuck.status == 422 and stuck.content_type == "application/problem+json"
        assert "narrow" in (await stuck.json())["detail"] and waited < 5
        assert (await c.get("/api/v1/sensors")).status == 200  # the pool's connection is fine again
