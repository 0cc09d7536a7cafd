"""The rule worker against a real PostgreSQL: batches committed by the real writer (with their
outbox rows) are evaluated exactly once, across crashes, checkpoints and a second worker."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec
import pytest
from psycopg.rows import dict_row

from ingest.writer import ReadingWriter
from pantau.domain import Sensor
from pantau.outbox import decode_outbox
from pantau.readings import Reading, Rejection
from pantau.rulepack.config import parse_rules
from pantau.rulepack.model import RuleSet
from pantau.settings import RulesSettings, Settings
from pantau.store import Store
from pantau.store.maintenance import maintain_once
from pantau.store.migrations import Backend
from rules.worker import RuleWorker, _lowest_priority
from tests.support import TcpProxy, await_until

CITY = "sampit"
GAUGE = Sensor(id="SPT-FL-01", kind="flood", city=CITY, district="Baamang", metadata={"river": "Mentaya"})
OTHER = Sensor(id="SPT-FL-02", kind="flood", city=CITY, district="Baamang", metadata={"river": "Mentaya"})

LEVEL_HIGH = {
    "id": "level-high",
    "kind": "threshold",
    "select": {"kind": "flood"},
    "metric": "water_level_cm",
    "op": ">=",
    "value": 300,
    "for": "10m",
    "clear": {"op": "<", "value": 250},
    "severity": "warning",
}
OFFLINE = {"id": "gauge-offline", "kind": "absence", "select": {"kind": "flood"}, "for": "2s", "severity": "info"}


def pack(*rules: dict[str, Any]) -> RuleSet:
    return parse_rules({"version": 1, "rules": list(rules)})


@pytest.fixture
def worker_settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        rules=RulesSettings(tick_interval_s=0.2, checkpoint_interval_s=3600.0, mqtt_notify=False),
    )


@pytest.fixture
async def sensors(store: Store) -> None:
    await store.upsert_sensors([GAUGE, OTHER])


async def write(database_url: str, backend: Backend, rows: list[Reading], rejections: list[Rejection] = []) -> None:  # noqa: B006
    async with ReadingWriter(database_url, backend) as writer:
        await writer.write(rows, rejections)


def levels(sensor: Sensor, t0: float, values: list[float], step_s: float = 60.0) -> list[Reading]:
    return [(t0 + i * step_s, sensor.id, "water_level_cm", v) for i, v in enumerate(values)]


@asynccontextmanager
async def running(
    store: Store, settings: Settings, rules: RuleSet
) -> AsyncIterator[tuple[RuleWorker, asyncio.Task[None]]]:
    worker = RuleWorker(store, settings, rules)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.ready.wait(), 20)
    try:
        yield worker, task
    finally:
        if not task.done():
            worker.stop()
            await asyncio.wait_for(task, 20)


async def crash(task: asyncio.Task[None]) -> None:
    """Stop a worker the way kill -9 would: no final checkpoint, the step in hand rolled back."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def rows_of(store: Store, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    async with store.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        return await cur.fetchall()


async def events(store: Store, rule_id: str = "level-high") -> list[tuple[str, str]]:
    rows = await rows_of(
        store,
        "SELECT e.kind, a.scope FROM alert_events e JOIN alerts a ON a.id = e.alert_id"
        " WHERE a.rule_id = %s ORDER BY e.id",
        (rule_id,),
    )
    return [(r["kind"], r["scope"]) for r in rows]


async def waiting_batches(store: Store) -> int:
    return await store.count("ingest_batches", "claim IS NULL")


async def test_batch_commits_with_its_outbox_row(
    database_url: str, backend: Backend, store: Store, sensors: None
) -> None:
    t0 = time.time() - 600
    await write(database_url, backend, levels(GAUGE, t0, [100, 110]))
    [batch] = await rows_of(store, "SELECT readings, rejections, payload, claim FROM ingest_batches")
    assert (batch["readings"], batch["rejections"], batch["claim"]) == (2, 0, None)
    assert decode_outbox(batch["payload"])[0] == levels(GAUGE, t0, [100, 110])


async def test_threshold_raises_once_and_resolves(
    database_url: str, backend: Backend, store: Store, sensors: None, worker_settings: Settings
) -> None:
    t0 = time.time() - 3600
    async with running(store, worker_settings, pack(LEVEL_HIGH)):
        # At or above 300 cm from minute 1: the `for` of 10 minutes completes at minute 11.
        await write(database_url, backend, levels(GAUGE, t0, [200, 300, 310, 320, 330, 340]))
        await write(database_url, backend, levels(GAUGE, t0 + 360, [350, 340, 330, 320, 310]))
        await asyncio.sleep(0.5)
        assert await events(store) == []  # minute 10: still pending
        await write(database_url, backend, levels(GAUGE, t0 + 660, [305]))
        await await_until(lambda: events(store), what="an opened event")
        await write(database_url, backend, levels(GAUGE, t0 + 720, [260, 240]))  # 240 < 250: clears
        await await_until(lambda: _has(store, ("resolved", GAUGE.id)), what="the resolve")
    assert await events(store) == [("opened", GAUGE.id), ("resolved", GAUGE.id)]
    [alert] = await rows_of(store, "SELECT * FROM alerts")
    assert (alert["state"], alert["resolved_by"], alert["trigger_value"]) == ("resolved", "rules", 305.0)
    assert await waiting_batches(store) == 0


async def _has(store: Store, event: tuple[str, str]) -> bool:
    return event in await events(store)


async def test_crash_while_pending_neither_loses_the_for_nor_raises_twice(
    database_url: str, backend: Backend, store: Store, sensors: None, worker_settings: Settings
) -> None:
    t0 = time.time() - 3600
    rules = pack(LEVEL_HIGH)
    async with running(store, worker_settings, rules) as (worker, task):
        await write(database_url, backend, levels(GAUGE, t0, [300, 305, 310, 315, 320]))  # 4 minutes pending
        await await_until(lambda: worker.stats.batches == 1, what="the batch evaluated")
        await crash(task)
    assert await events(store) == []
    assert await store.count("rule_claims") >= 1  # no checkpoint: the claim stays for the replay
    async with running(store, worker_settings, rules) as (worker, _):
        assert worker.stats.replayed_claims >= 1
        await write(database_url, backend, levels(GAUGE, t0 + 300, [325, 330, 335, 340, 345, 350, 355]))
        await await_until(lambda: events(store), what="the opened event")
        # The batch that completed the `for` and a later one at the same level: still one event.
        await write(database_url, backend, levels(GAUGE, t0 + 720, [360, 370]))
        await await_until(lambda: worker.stats.batches == 2, what="both batches evaluated")
    assert await events(store) == [("opened", GAUGE.id)]


async def test_restart_after_checkpoint_and_after_a_raise(
    database_url: str, backend: Backend, store: Store, sensors: None, worker_settings: Settings
) -> None:
    t0 = time.time() - 3600
    rules = pack(LEVEL_HIGH)
    fast = dataclasses.replace(
        worker_settings, rules=dataclasses.replace(worker_settings.rules, checkpoint_interval_s=0.1)
    )
    async with running(store, fast, rules) as (worker, task):
        await write(
            database_url, backend, levels(GAUGE, t0, [300, 310, 320, 330, 340, 350, 360, 370, 380, 390, 400, 410])
        )
        await await_until(lambda: events(store), what="the opened event")
        await await_until(lambda: worker.stats.checkpoints >= 2, what="a checkpoint after the raise")
        await crash(task)
    assert await store.count("ingest_batches") == 0  # the checkpoint covered them
    [checkpoint] = await rows_of(store, "SELECT last_claim FROM rule_checkpoints")
    assert checkpoint["last_claim"] > 0
    async with running(store, fast, rules) as (worker, _):
        # Still high: no second opened event; then it falls and the restored state clears it.
        await write(database_url, backend, levels(GAUGE, t0 + 720, [420, 200]))
        await await_until(lambda: _has(store, ("resolved", GAUGE.id)), what="the resolve")
    assert await events(store) == [("opened", GAUGE.id), ("resolved", GAUGE.id)]


async def test_the_engine_is_frozen_out_of_the_collector_and_checkpoints_go_on(
    database_url: str, backend: Backend, store: Store, sensors: None, worker_settings: Settings
) -> None:
    # A full collection over a large engine paused evaluation (docs/decisions.md D13): after its
    # recovery the worker's objects are in the permanent generation, and each checkpoint freezes
    # what was made since.
    gc.unfreeze()
    fast = dataclasses.replace(
        worker_settings, rules=dataclasses.replace(worker_settings.rules, checkpoint_interval_s=0.1)
    )
    try:
        async with running(store, fast, pack(LEVEL_HIGH)) as (worker, _):
            frozen = gc.get_freeze_count()
            assert frozen > 0
            await write(database_url, backend, levels(GAUGE, time.time() - 3600, [300 + 10 * k for k in range(12)]))
            await await_until(lambda: events(store), what="the opened event")
            await await_until(lambda: worker.stats.checkpoints >= 2, what="checkpoints")
            assert gc.get_freeze_count() > frozen
    finally:
        gc.unfreeze()
    assert await events(store) == [("opened", GAUGE.id)]


def test_the_checkpoint_child_takes_only_idle_cpu() -> None:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            _lowest_priority()
            os.write(write_fd, b"%d %d" % (os.sched_getscheduler(0), os.nice(0)))
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        policy, nice = map(int, pipe.read().split())
    os.waitpid(pid, 0)
    assert policy == os.SCHED_IDLE or nice == 19


async def test_batches_committed_while_no_worker_runs_are_evaluated_in_order(
    database_url: str, backend: Backend, store: Store, sensors: None, worker_settings: Settings
) -> None:
    t0 = time.time() - 7200
    # Open, clear, open again: three batches waiting before the worker starts.
    await write(database_url, backend, levels(GAUGE, t0, [300 + i for i in range(12)]))
    await write(database_url, backend, levels(GAUGE, t0 + 720, [100]))
    await write(database_url, backend, levels(GAUGE, t0 + 780, [400 + i for i in range(12)]))
    small = dataclasses.replace(worker_settings, rules=dataclasses.replace(worker_settings.rules, claim_max_batches=1))
    async with running(store, small, pack(LEVEL_HIGH)):
        await await_until(lambda: _count_kind(store, "opened", 2), what="two openings")
    assert await events(store) == [("opened", GAUGE.id), ("resolved", GAUGE.id), ("opened", GAUGE.id)]


async def _count_kind(store: Store, kind: str, n: int) -> bool:
    return [k for k, _ in await events(store)].count(kind) >= n


async def test_a_second_worker_waits_and_takes_over_the_state(
    database_url: str, backend: Backend, store: Store, sensors: None, worker_settings: Settings
) -> None:
    t0 = time.time() - 3600
    rules = pack(LEVEL_HIGH)
    async with running(store, worker_settings, rules) as (first, _):
        second = RuleWorker(store, worker_settings, rules)
        second_task = asyncio.create_task(second.run())
        await write(database_url, backend, levels(GAUGE, t0, [300, 310, 320, 330, 340]))
        await await_until(lambda: first.stats.batches == 1, what="the first worker evaluated the batch")
        await asyncio.sleep(0.5)
        assert not second.ready.is_set()
    # The first stopped cleanly (checkpoint); the second gets the lock and its pending `for`.
    try:
        await asyncio.wait_for(second.ready.wait(), 20)
        await write(database_url, backend, levels(GAUGE, t0 + 300, [350, 360, 370, 380, 390, 400]))
        await await_until(lambda: events(store), what="the opened event")
        assert second.stats.batches == 1
    finally:
        second.stop()
        await asyncio.wait_for(second_task, 20)
    assert await events(store) == [("opened", GAUGE.id)]


async def test_offline_on_the_wall_clock_even_for_a_backfill(
    database_url: str, backend: Backend, store: Store, sensors: None, worker_settings: Settings
) -> None:
    day_old = time.time() - 86400
    async with running(store, worker_settings, pack(OFFLINE)):
        # Day-old readings arriving now: the sensor is reporting, not silent.
        await write(database_url, backend, levels(GAUGE, day_old, [100, 101]) + levels(OTHER, day_old, [90]))
        await asyncio.sleep(1.0)
        assert await events(store, "gauge-offline") == []
        # Then both go quiet for longer than the rule's 2 s; one comes back.
        await await_until(lambda: _count_kind_of(store, "gauge-offline", "opened", 2), what="both offline")
        await write(database_url, backend, levels(GAUGE, day_old + 120, [102]))
        await await_until(lambda: _has_of(store, "gauge-offline", ("resolved", GAUGE.id)), what="the gauge back")
    got = await events(store, "gauge-offline")
    assert sorted(got[:2]) == [("opened", GAUGE.id), ("opened", OTHER.id)]
    assert got[2:] == [("resolved", GAUGE.id)]


async def _count_kind_of(store: Store, rule_id: str, kind: str, n: int) -> bool:
    return [k for k, _ in await events(store, rule_id)].count(kind) >= n


async def _has_of(store: Store, rule_id: str, event: tuple[str, str]) -> bool:
    return event in await events(store, rule_id)


async def test_alerts_of_a_removed_rule_are_resolved_at_start(
    database_url: str, backend: Backend, store: Store, sensors: None, worker_settings: Settings
) -> None:
    t0 = time.time() - 3600
    async with running(store, worker_settings, pack(LEVEL_HIGH)):
        await write(database_url, backend, levels(GAUGE, t0, [300 + i for i in range(12)]))
        await await_until(lambda: events(store), what="the opened event")
    async with running(store, worker_settings, pack(OFFLINE)):
        pass
    [alert] = await rows_of(store, "SELECT state, resolved_by, reason FROM alerts WHERE rule_id = 'level-high'")
    assert (alert["state"], alert["resolved_by"]) == ("resolved", "rules")
    [event] = await rows_of(store, "SELECT reason FROM alert_events WHERE kind = 'resolved'")
    assert "no longer in the rule pack" in event["reason"]


async def test_maintenance_drops_only_old_unclaimed_batches(
    database_url: str, backend: Backend, store: Store, sensors: None, worker_settings: Settings
) -> None:
    t0 = time.time() - 3600
    await write(database_url, backend, levels(GAUGE, t0, [100]))
    async with running(store, worker_settings, pack(LEVEL_HIGH)) as (worker, _):
        await await_until(lambda: worker.stats.batches == 1, what="the batch claimed")
    await write(database_url, backend, levels(GAUGE, t0 + 60, [101]))
    async with store.connection() as conn:
        kept = await maintain_once(conn, backend, store.settings, unclaimed_max_age=timedelta(hours=1))
        assert kept.unclaimed_dropped == 0
        await asyncio.sleep(0.05)
        report = await maintain_once(conn, backend, store.settings, unclaimed_max_age=timedelta(milliseconds=10))
    assert report.unclaimed_dropped == 1
    assert await waiting_batches(store) == 0


async def test_lost_database_connection_resumes_from_the_checkpoint(
    database_url: str, backend: Backend, store: Store, sensors: None, worker_settings: Settings
) -> None:
    parts = urlsplit(database_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    proxied = urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.port}", f":{proxy.port}")))
    settings = dataclasses.replace(worker_settings, database_url=proxied)
    t0 = time.time() - 3600
    try:
        async with (
            Store.open(proxied, store.settings) as through_proxy,
            running(through_proxy, settings, pack(LEVEL_HIGH)) as (worker, _),
        ):
            await write(database_url, backend, levels(GAUGE, t0, [300, 310, 320, 330, 340]))  # pending
            await await_until(lambda: worker.stats.batches == 1, what="the first batch evaluated")
            proxy.cut()
            # Completes the `for` while the worker cannot reach the database.
            await write(database_url, backend, levels(GAUGE, t0 + 300, [350, 360, 370, 380, 390, 400, 410]))
            await asyncio.sleep(1.0)
            assert await events(store) == []
            proxy.restore()
            await await_until(lambda: events(store), timeout_s=30, what="the opened event after the outage")
            assert worker.stats.recoveries >= 2  # rebuilt from the checkpoint and the replayed claim
    finally:
        proxy.close()
    assert await events(store) == [("opened", GAUGE.id)]


async def test_a_checkpoint_of_another_engine_version_starts_fresh_and_resolves_what_it_held(
    database_url: str, backend: Backend, store: Store, sensors: None, worker_settings: Settings
) -> None:
    t0 = time.time() - 3600
    rules = pack(LEVEL_HIGH)
    async with running(store, worker_settings, rules):
        await write(database_url, backend, levels(GAUGE, t0, [300 + i for i in range(12)]))
        await await_until(lambda: events(store), what="the opened event")
    async with store.connection() as conn:  # as if written by an older release
        await conn.execute("UPDATE rule_checkpoints SET state = %s", (msgspec.msgpack.encode({"version": 0}),))
    async with running(store, worker_settings, rules):
        [alert] = await rows_of(store, "SELECT state FROM alerts")
        assert alert["state"] == "resolved"  # nothing would have cleared it
        [resolved] = await rows_of(store, "SELECT reason FROM alert_events WHERE kind = 'resolved'")
        assert "evaluation state was reset" in resolved["reason"]
        # Still high for another `for`: raised again, as a new alert.
        await write(database_url, backend, levels(GAUGE, t0 + 720, [400 + i for i in range(12)]))
        await await_until(lambda: _count_kind(store, "opened", 2), what="the alert raised again")
    assert await events(store) == [("opened", GAUGE.id), ("resolved", GAUGE.id), ("opened", GAUGE.id)]


async def test_a_sensor_registered_while_running_gets_its_rules(
    database_url: str,
    backend: Backend,
    store: Store,
    sensors: None,
    worker_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("rules.worker._REGISTRY_REFRESH_S", 0.2)
    late = Sensor(id="SPT-FL-09", kind="flood", city=CITY, district="Baamang", metadata={"river": "Mentaya"})
    t0 = time.time() - 3600
    async with running(store, worker_settings, pack(LEVEL_HIGH)) as (worker, _):
        await store.upsert_sensors([late])
        await await_until(lambda: late.id in worker._sensors, what="the registry refresh")
        await write(database_url, backend, levels(late, t0, [300 + i for i in range(12)]))
        await await_until(lambda: events(store), what="the new sensor's alert")
        assert worker.stats.recoveries == 1  # the state was carried over, not rebuilt
    assert await events(store) == [("opened", late.id)]


async def test_the_first_readings_of_a_just_registered_sensor_are_evaluated(
    database_url: str, backend: Backend, store: Store, sensors: None, worker_settings: Settings
) -> None:
    late = Sensor(id="SPT-FL-10", kind="flood", city=CITY, district="Baamang", metadata={"river": "Mentaya"})
    t0 = time.time() - 3600
    async with running(store, worker_settings, pack(LEVEL_HIGH)) as (worker, _):
        await store.upsert_sensors([late])  # long before the periodic registry refresh
        await write(database_url, backend, levels(late, t0, [300 + i for i in range(12)]))
        await await_until(lambda: events(store), what="the new sensor's alert")
        assert worker.engine_stats is not None
        assert worker.engine_stats.skipped == {}  # nothing was skipped as an unknown sensor
    assert await events(store) == [("opened", late.id)]
