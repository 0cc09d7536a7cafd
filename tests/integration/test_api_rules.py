"""The rules through the API against a real PostgreSQL: the pack a running rule worker recorded as in
force (not the file as edited since), the sensors each rule selects, and candidate packs checked
with errors naming the rule and field."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from pantau.domain import Sensor
from pantau.rulepack import DEFAULT_RULES_FILE, pack_digest
from pantau.rulepack.config import load_rules
from pantau.settings import Settings
from pantau.store import Store
from rules.worker import RuleWorker
from tests.support import bearer

AIR = Sensor(id="KTG-AQ-01", kind="air", city="kotamobagu")
GAUGE = Sensor(id="SPT-WL-01", kind="flood", city="sampit", metadata={"river": "Sungai Mentaya", "order": 1,
               "siaga3_cm": 300, "siaga2_cm": 400, "siaga1_cm": 500})  # fmt: skip
PACK = """
rules:
- id: pm25-high
  kind: threshold
  select: {kind: air}
  metric: pm25
  op: ">"
  value: 55.4
  severity: warning
"""


@pytest.fixture
async def client(settings: Settings, store: Store) -> AsyncIterator[TestClient]:
    await store.upsert_sensors([AIR, GAUGE])
    async with TestClient(TestServer(create_app(settings)), headers=await bearer(store, "engineer")) as c:
        yield c


async def test_without_a_worker_the_pack_it_would_load_is_shown_not_in_force(client: TestClient) -> None:
    body = await (await client.get("/api/v1/rules")).json()
    shipped = load_rules(DEFAULT_RULES_FILE)
    assert body["in_force"] is False and body["source"] == str(DEFAULT_RULES_FILE)
    assert body["digest"] == pack_digest(DEFAULT_RULES_FILE.read_text())
    rules = {r["id"]: r for r in body["rules"]}
    assert list(rules) == [r.id for r in shipped]
    assert rules["air-ispu"]["sensors"] == [AIR.id] and rules["air-ispu"]["kind"] == "index_band"
    assert rules["river-gauge-offline"]["sensors"] == [GAUGE.id]
    assert rules["river-gauge-offline"]["severity"] == "warning"


async def test_the_pack_in_force_is_what_the_worker_loaded(
    client: TestClient, settings: Settings, store: Store, tmp_path: Path
) -> None:
    file = tmp_path / "rules.yaml"
    file.write_text(PACK)
    worker = RuleWorker(store, settings, load_rules(file))
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.ready.wait(), 20)
        file.write_text(PACK.replace("55.4", "150.4"))  # edited after the worker loaded it
        body = await (await client.get("/api/v1/rules")).json()
    finally:
        worker.stop()
        await asyncio.wait_for(task, 20)
    assert body["in_force"] is True and body["worker"] == "default" and body["loaded_at"] is not None
    assert body["source"] == str(file) and body["digest"] == pack_digest(PACK)
    assert [(r["id"], r["sensors"]) for r in body["rules"]] == [("pm25-high", [AIR.id])]
    other = await client.get("/api/v1/rules", params={"worker": "kotamobagu"})
    assert (await other.json())["in_force"] is False


async def test_a_candidate_pack_is_checked_with_the_rule_and_field_named(client: TestClient) -> None:
    good = await client.post("/api/v1/rules/check", json={"yaml": PACK})
    assert good.status == 200
    body = await good.json()
    assert body["ok"] is True and body["digest"] == pack_digest(PACK) and body["rules"][0]["sensors"] == [AIR.id]
    raw = await client.post("/api/v1/rules/check", data=PACK, headers={"Content-Type": "application/yaml"})
    assert raw.status == 200 and (await raw.json())["ok"] is True
    bad = await client.post("/api/v1/rules/check", json={"yaml": PACK.replace("metric: pm25", "metric: pm26")})
    assert bad.status == 422
    [error] = (await bad.json())["errors"]
    assert (error["rule"], error["field"]) == ("pm25-high", "metric") and "pm26" in error["message"]
    broken = await client.post("/api/v1/rules/check", json={"yaml": "rules:\n- id: x\n  kind: [unclosed"})
    assert broken.status == 422 and "not valid YAML" in (await broken.json())["errors"][0]["message"]
    empty = await client.post("/api/v1/rules/check", data=b"", headers={"Content-Type": "application/yaml"})
    assert empty.status == 400 and (await empty.json())["invalid-params"][0]["name"] == "body"
    assert bad.content_type == "application/problem+json"
    extra = await client.post("/api/v1/rules/check", json={"yaml": PACK, "dry_run": True})
    assert extra.status == 400
    huge = await client.post("/api/v1/rules/check", data=b"#" * 1_000_001, headers={"Content-Type": "application/yaml"})
    assert huge.status == 413


async def test_each_new_pack_a_worker_loads_is_a_deployment_in_the_audit_log(
    client: TestClient, settings: Settings, store: Store, tmp_path: Path, database_url: str
) -> None:
    file = tmp_path / "rules.yaml"
    edited = PACK.replace("55.4", "150.4")
    for text in (PACK, PACK, edited):  # the first load, a restart on the same pack, an edited pack
        file.write_text(text)
        worker = RuleWorker(store, settings, load_rules(file))
        task = asyncio.create_task(worker.run())
        try:
            await asyncio.wait_for(worker.ready.wait(), 20)
        finally:
            worker.stop()
            await asyncio.wait_for(task, 20)
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT actor, via, before->>'digest', after->>'digest' FROM audit_log WHERE action = 'rules.deploy'"
            " ORDER BY id"
        ).fetchall()
    assert rows == [
        ("rules:default", "service", None, pack_digest(PACK)),
        ("rules:default", "service", pack_digest(PACK), pack_digest(edited)),
    ]
