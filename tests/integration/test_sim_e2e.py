"""A simulated city day through real ingest; the load generator's readings all land."""

from __future__ import annotations

import asyncio
import os
import sys
import time

from pantau.domain import Reason
from pantau.embedded import EmbeddedMosquitto
from pantau.settings import Settings
from pantau.store import Backend, Store
from simulators.engine import SimConfig, Simulation
from simulators.fleet import load_fleet
from simulators.load import LoadConfig, load_sensors, run_load
from simulators.scenarios import load_scenario
from tests.integration.ingest_harness import running_ingest
from tests.support import REPO, await_until

FAULTS = "malformed=0.01,unregistered=0.005,duplicate=0.01,out_of_order=0.01,burst=0.002,dropout=0.002"


async def _count(store: Store, table: str, n: int, where: str = "TRUE", params: tuple = ()) -> bool:
    return await store.count(table, where, params) >= n


async def test_a_simulated_city_day_lands_in_the_database(
    settings: Settings, backend: Backend, store: Store, broker: EmbeddedMosquitto
) -> None:
    fleet = load_fleet("sampang")
    await store.upsert_sensors(fleet.sensors)
    # Yesterday, on 5-minute boundaries: a whole day of event time, all of it in the past.
    start = (int(time.time()) // 300) * 300 - 25 * 3600
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(start))
    argv = ["simulate", "--fleet", "sampang", "--scenario", "flash-flood+rush-hour-jam", "--start", stamp,
            "--duration", "24h", "--speed", "max", "--seed", "11", "--faults", FAULTS, "--quiet"]  # fmt: skip
    # The expected counts come from the same deterministic simulation, run here.
    from simulators.faults import parse_faults

    expected = Simulation(
        fleet,
        load_scenario("flash-flood+rush-hour-jam"),
        SimConfig(start=start, duration_s=86400, seed=11),
        faults=parse_faults(FAULTS),
    )
    for _ in expected.ticks():
        pass
    stats = expected.stats
    assert stats.malformed > 10 and stats.unregistered > 5
    env = {k: v for k, v in os.environ.items() if not k.startswith("PANTAU_")}
    env.update(PANTAU_MQTT_URL=broker.url, PANTAU_CONFIG=str(REPO / "tests" / "empty.toml"))
    async with running_ingest(settings, backend):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pantau", *argv, env=env, cwd=REPO, stderr=asyncio.subprocess.PIPE
        )
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        assert f"sent {stats.messages:,} messages ({stats.readings:,} readings)" in err.decode()
        rejected = stats.malformed + stats.unregistered
        await await_until(lambda: _count(store, "rejected_messages", rejected), timeout_s=30, what="rejections")
        await await_until(lambda: _count(store, "readings", stats.readings), timeout_s=30, what="readings")
        await asyncio.sleep(0.5)  # nothing more may arrive
    assert await store.count("readings") == stats.readings
    malformed = await store.count(
        "rejected_messages", "reason = ANY(%s)", ([Reason.MALFORMED_JSON.value, Reason.NON_FINITE.value],)
    )
    assert malformed == stats.malformed
    assert await store.count("rejected_messages", "reason = %s", (Reason.UNKNOWN_SENSOR.value,)) == stats.unregistered
    assert await store.count("rejected_messages") == rejected


async def test_load_generator_readings_are_all_acknowledged_and_stored(
    settings: Settings, backend: Backend, store: Store, broker: EmbeddedMosquitto
) -> None:
    await store.upsert_sensors(load_sensors(200))
    async with running_ingest(settings, backend):
        cfg = LoadConfig(host="127.0.0.1", port=broker.port, rate=20_000, duration_s=2, procs=2, batch=10, sensors=200)
        report = await asyncio.to_thread(run_load, cfg)
        assert not report.errors
        # The generator paces itself on the wall clock and stops at its duration: on a busy host it
        # sends a little less than rate x duration (39,900 once, with the CPU stolen). What must
        # hold is that every reading the broker acknowledged to it is stored, once.
        assert report.rate > 15_000 and report.readings % cfg.batch == 0
        await await_until(lambda: _count(store, "readings", report.readings), timeout_s=30, what="load readings")
    assert await store.count("readings") == report.readings
    assert await store.count("rejected_messages") == 0
