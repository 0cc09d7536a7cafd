"""Simulated flash-flood and haze episodes through the whole stack: the simulator publishes over
MQTT, `pantau ingest` and `pantau rules` run as processes, and the alerts they commit (and send
on MQTT) are exactly the ones the rule engine computes from the same simulated readings, in
order, escalating on one alert and resolved when the episode is over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from psycopg.rows import dict_row

from pantau.alerts import Severity
from pantau.embedded import EmbeddedMosquitto
from pantau.metrics import SensorKind
from pantau.rulepack.config import load_rules
from pantau.settings import Settings
from pantau.store import Store
from rules.engine import Engine
from rules.signals import Signal, SignalKind
from simulators.engine import SimConfig, Simulation
from simulators.fleet import Fleet, load_fleet
from simulators.scenarios import load_scenario
from tests.support import REPO, Subscriber, await_until, decoded_ticks, ingest_env, wait_until

WIB = timezone(timedelta(hours=7))
RANK = {Severity.INFO.value: 0, Severity.WARNING.value: 1, Severity.CRITICAL.value: 2}
TRANSITIONS = ("opened", "escalated", "deescalated", "resolved")


@dataclass(frozen=True)
class Episode:
    scenario: str
    days: int
    seed: int = 3

    @property
    def start(self) -> float:
        """Local midnight `days` days ago: the whole episode is in the past."""
        today = datetime.now(WIB).replace(hour=0, minute=0, second=0, microsecond=0)
        return (today - timedelta(days=self.days)).timestamp()


def simulate(fleet: Fleet, episode: Episode, start: float) -> tuple[Simulation, list[Signal]]:
    """The episode's readings through the pure engine and the default pack: the expected signals."""
    config = SimConfig(start=start, duration_s=episode.days * 86400, seed=episode.seed)
    sim = Simulation(fleet, load_scenario(episode.scenario), config, faults={})
    engine = Engine(load_rules(REPO / "deploy" / "rules.yaml"), {s.id: s for s in fleet.sensors})
    signals: list[Signal] = []
    for _, rows in decoded_ticks(sim.ticks()):
        signals += engine.evaluate(rows)
    return sim, signals


def expected_events(signals: list[Signal]) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """What the alert lifecycle records for these signals: (kind, severity) per rule and scope."""
    open_severity: dict[tuple[str, str], str] = {}
    out: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for s in signals:
        key = (s.rule_id, s.scope)
        current = open_severity.get(key)
        if s.kind is SignalKind.RAISE:
            assert s.severity is not None
            new = s.severity.value
            if current is None:
                out[key].append(("opened", new))
            elif RANK[new] != RANK[current]:
                out[key].append(("escalated" if RANK[new] > RANK[current] else "deescalated", new))
            open_severity[key] = new
        elif current is not None:
            out[key].append(("resolved", current))
            del open_severity[key]
    return dict(out)


@contextmanager
def process(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pantau", *argv], env=env, stdout=out, stderr=out, cwd=REPO)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def recorded_events(store: Store, city: str) -> list[dict[str, Any]]:
    async with store.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT e.id, e.kind, e.severity, e.event_ts, e.notification, a.id AS alert_id, a.rule_id, a.scope,"
            " a.sensor_id, a.state FROM alert_events e JOIN alerts a ON a.id = e.alert_id"
            " WHERE a.city = %s ORDER BY e.id",
            (city,),
        )
        return await cur.fetchall()


async def run_episode(
    episode: Episode, settings: Settings, store: Store, broker: EmbeddedMosquitto, tmp_path: Path
) -> tuple[list[Signal], list[dict[str, Any]], list[dict[str, Any]]]:
    """Publish the episode through the stack; returns (expected signals, recorded events, MQTT events)."""
    fleet = load_fleet("sampit")
    await store.upsert_sensors(fleet.sensors)
    start = episode.start
    sim, signals = simulate(fleet, episode, start)
    assert settings.database_url is not None and settings.mqtt_url is not None
    env = ingest_env(settings.database_url, settings.mqtt_url, PANTAU_INGEST_METRICS_PORT="-1")
    listener = Subscriber(broker.port)
    try:
        with (
            process(["ingest"], env, tmp_path / "ingest.log"),
            process(["rules"], env, tmp_path / "rules.log"),
        ):
            wait_until(lambda: "ready:" in (tmp_path / "rules.log").read_text(), what="the rule worker")
            stamp = datetime.fromtimestamp(start, WIB).isoformat()
            argv = ["simulate", "--fleet", "sampit", "--scenario", episode.scenario, "--start", stamp,
                    "--duration", f"{episode.days}d", "--speed", "max", "--seed", str(episode.seed),
                    "--quiet"]  # fmt: skip
            sim_env = {k: v for k, v in os.environ.items() if not k.startswith("PANTAU_")}
            sim_env.update(PANTAU_MQTT_URL=broker.url, PANTAU_CONFIG=env["PANTAU_CONFIG"])
            done = subprocess.run(
                [sys.executable, "-m", "pantau", *argv],
                env=sim_env,
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, done.stderr
            readings = sim.stats.readings
            await await_until(lambda: _at_least(store, "readings", readings), timeout_s=60, what="all readings")
            await await_until(lambda: _none_waiting(store), timeout_s=60, what="every batch evaluated")
            recorded = await recorded_events(store, "sampit")
            notified = [r for r in recorded if r["notification"] == "notify"]
            wait_until(lambda: len(_alert_messages(listener)) >= len(notified), timeout_s=30, what="MQTT events")
            time.sleep(0.5)  # nothing more may arrive
            assert "Traceback" not in (tmp_path / "rules.log").read_text()
    finally:
        listener.close()
    assert await store.count("readings") == sim.stats.readings
    return signals, recorded, _alert_messages(listener)


def _alert_messages(listener: Subscriber) -> list[dict[str, Any]]:
    return [json.loads(p) for t, p in listener.messages() if t == "pantau/v1/sampit/alerts"]


async def _at_least(store: Store, table: str, n: int) -> bool:
    return await store.count(table) >= n


async def _none_waiting(store: Store) -> bool:
    return await store.count("ingest_batches", "claim IS NULL") == 0


def by_scope(recorded: list[dict[str, Any]]) -> dict[tuple[str, str], list[tuple[str, str]]]:
    out: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for r in recorded:
        if r["kind"] in TRANSITIONS:
            out[(r["rule_id"], r["scope"])].append((r["kind"], r["severity"]))
    return dict(out)


def assert_same_on_mqtt(recorded: list[dict[str, Any]], sent: list[dict[str, Any]]) -> None:
    """Every event notifiers may send went out on MQTT once, in commit order; held-back ones did not."""
    want = [(r["id"], r["kind"]) for r in recorded if r["notification"] == "notify"]
    got = [(m["event"]["id"], m["event"]["kind"]) for m in sent]
    assert got == want


async def test_flash_flood_raises_siaga_upstream_first_escalates_and_resolves(
    settings: Settings, store: Store, broker: EmbeddedMosquitto, tmp_path: Path
) -> None:
    signals, recorded, sent = await run_episode(Episode("flash-flood", days=3), settings, store, broker, tmp_path)
    expected = expected_events(signals)
    assert by_scope(recorded) == expected
    assert_same_on_mqtt(recorded, sent)
    fleet = load_fleet("sampit")
    gauges = [s for s in fleet.sensors if s.kind is SensorKind.FLOOD]
    siaga = [r for r in recorded if r["rule_id"] == "river-siaga"]
    for river in {s.metadata["river"] for s in gauges}:
        ordered = sorted((s for s in gauges if s.metadata["river"] == river), key=lambda s: s.metadata["order"])
        opened = {r["sensor_id"]: r["event_ts"] for r in siaga if r["kind"] == "opened"}
        times = [opened[s.id] for s in ordered]
        assert times == sorted(times), f"{river}: Siaga reached downstream before upstream"
        for s in ordered:
            kinds = [(r["kind"], r["severity"]) for r in siaga if r["sensor_id"] == s.id]
            # One alert per gauge episode climbs Waspada → Siaga → Awas and is resolved at the end.
            assert ("escalated", "critical") in kinds, s.id
            assert kinds[-1][0] == "resolved", s.id
    assert any(r["rule_id"] == "river-rising-fast" for r in recorded)
    # The composite early warning (heavy rain upstream and the level rising downstream), once per river.
    warning = by_scope([r for r in recorded if r["rule_id"] == "flood-early-warning"])
    rivers = {s.metadata["river"] for s in gauges}
    assert set(warning) == {("flood-early-warning", f"river:sampit/{river}") for river in rivers}
    assert all(kinds[0][0] == "opened" and kinds[-1][0] == "resolved" for kinds in warning.values())
    assert not [r for r in recorded if r["rule_id"].endswith("-offline")]  # no faults: nobody went silent
    assert {r["state"] for r in recorded if r["rule_id"] == "river-siaga"} == {"resolved"}


async def test_haze_raises_ispu_escalates_and_resolves_when_it_lifts(
    settings: Settings, store: Store, broker: EmbeddedMosquitto, tmp_path: Path
) -> None:
    signals, recorded, sent = await run_episode(Episode("haze-episode", days=6), settings, store, broker, tmp_path)
    assert by_scope(recorded) == expected_events(signals)
    assert_same_on_mqtt(recorded, sent)
    stations = [s.id for s in load_fleet("sampit").sensors if s.kind is SensorKind.AIR]
    ispu = [r for r in recorded if r["rule_id"] == "air-ispu"]
    for sid in stations:
        kinds = [(r["kind"], r["severity"]) for r in ispu if r["sensor_id"] == sid]
        assert kinds[0] == ("opened", "warning"), sid  # Tidak Sehat first
        assert ("escalated", "critical") in kinds, sid  # then Sangat Tidak Sehat or worse, same alert
        assert kinds[-1][0] == "resolved", sid  # and resolved once the haze has lifted
        assert len({r["alert_id"] for r in ispu if r["sensor_id"] == sid}) == 1, sid
    assert not [r for r in recorded if r["rule_id"].startswith("river-")]
