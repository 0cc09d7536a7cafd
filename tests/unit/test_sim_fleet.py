"""Fleet manifests, scaling to 10,000 sensors, scenario files, and CLI errors that name the field."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml

from pantau.cli import main
from pantau.domain import valid_sensor_id
from pantau.errors import ConfigError, ManifestError
from pantau.metrics import SensorKind
from pantau.sensors import load_manifest
from simulators.engine import SimConfig, Simulation
from simulators.fleet import CITIES, FLEET_DIR, load_fleet, scale_fleet
from simulators.scenarios import load_scenario


@pytest.mark.parametrize("city", CITIES)
def test_reference_fleets_import_and_carry_the_metadata_rules_need(city: str) -> None:
    sensors = load_manifest(FLEET_DIR / f"{city}.yaml")
    fleet = load_fleet(city)
    assert [s.id for s in sensors] == [s.id for s in fleet.sensors]
    assert {s.kind for s in sensors} == set(SensorKind)
    assert len(fleet.districts) >= 3
    for s in sensors:
        assert s.city == city and s.district in {d.name for d in fleet.districts}
        near = min(abs(s.lat - d.lat) + abs(s.lon - d.lon) for d in fleet.districts)
        assert near < 0.2, f"{s.id} is far from every district"
        md = s.metadata
        if s.kind is SensorKind.FLOOD:
            assert md["siaga3_cm"] < md["siaga2_cm"] < md["siaga1_cm"] and md["order"] >= 1 and md["river"]
        if s.kind is SensorKind.RAIN:
            assert md["river"] and md["order"] >= 1
        if s.kind is SensorKind.TRAFFIC:
            assert md["corridor"] and md["capacity_pcu_h"] > 0 and md["lanes"] >= 1
    rivers = {s.metadata["river"] for s in sensors if s.kind is SensorKind.FLOOD}
    for river in rivers:
        orders = sorted(s.metadata["order"] for s in sensors if s.metadata.get("river") == river and s.kind == "flood")
        assert orders == list(range(1, len(orders) + 1))


def test_fleet_scales_to_10000_sensors_over_its_districts(tmp_path: Path) -> None:
    base = load_fleet("mojokerto")
    fleet = scale_fleet(base, 10_000, seed=1)
    ids = [s.id for s in fleet.sensors]
    assert len(ids) == len(set(ids)) == 10_000 and all(valid_sensor_id(i) for i in ids)
    per_district = Counter(s.district for s in fleet.sensors)
    assert set(per_district) == {d.name for d in base.districts}
    assert min(per_district.values()) > 10_000 / len(base.districts) / 3
    kinds = Counter(s.kind for s in fleet.sensors)
    base_kinds = Counter(s.kind for s in base.sensors)
    for kind in SensorKind:
        assert kinds[kind] == pytest.approx(10_000 * base_kinds[kind] / len(base.sensors), rel=0.02)
    path = tmp_path / "big.csv"  # CSV: YAML takes seconds for 10,000 sensors, CSV a fraction
    fleet.write_manifest(path)
    assert [s.id for s in load_manifest(path)] == ids
    again = load_fleet(str(path))
    assert [s.metadata for s in again.sensors] == [s.metadata for s in fleet.sensors]
    sim = Simulation(fleet, load_scenario("normal-day"), SimConfig(start=1.7e9, duration_s=600, seed=1))
    ticks = list(sim.ticks())
    assert [len(t.messages) for t in ticks] == [10_000, 10_000]
    small = scale_fleet(base, 6)
    assert {s.kind for s in small.sensors} == set(SensorKind)


def _write_fleet(tmp_path: Path, change) -> Path:  # type: ignore[no-untyped-def]
    doc = yaml.safe_load((FLEET_DIR / "sampang.yaml").read_text())
    change(doc)
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _flood(doc):  # type: ignore[no-untyped-def]
    return next(s for s in doc["sensors"] if s["kind"] == "flood")


def _traffic(doc):  # type: ignore[no-untyped-def]
    return next(s for s in doc["sensors"] if s["kind"] == "traffic")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: _flood(d)["metadata"].pop("siaga1_cm"), "metadata.siaga1_cm"),
        (lambda d: _flood(d)["metadata"].update(siaga2_cm=10_000), "metadata.siaga2_cm"),
        (lambda d: _flood(d)["metadata"].update(river="Kali Entah"), "metadata.river"),
        (lambda d: _flood(d)["metadata"].update(order=0), "metadata.order"),
        (lambda d: _traffic(d)["metadata"].pop("capacity_pcu_h"), "metadata.capacity_pcu_h"),
        (lambda d: _traffic(d).update(kind="radar"), "kind"),
        (lambda d: _traffic(d).update(lat="north"), "lat"),
        (lambda d: _traffic(d).update(district="Atlantis"), "district"),
        (lambda d: d["districts"][0].pop("lat"), "lat"),
        (lambda d: d.update(utc_offset_h="WIB"), "utc_offset_h"),
    ],
)
def test_bad_fleet_manifest_names_the_field(tmp_path: Path, change, field: str) -> None:  # type: ignore[no-untyped-def]
    path = _write_fleet(tmp_path, change)
    with pytest.raises(ManifestError, match=rf"'{field}'"):
        load_fleet(str(path))


def test_scenarios_compose_and_load_from_files(tmp_path: Path) -> None:
    both = load_scenario("flash-flood+rush-hour-jam")
    assert both.storms and both.incidents and both.traffic_factor > 1 and both.rain_factor > 1
    path = tmp_path / "banjir.yaml"
    path.write_text(
        "include: [haze-episode]\ntraffic_factor: 1.2\n"
        'storms: [{at: "14:00", duration_h: 2, peak_mmh: 70, over: upstream}]\nfaults: {dropout: 0.01}\n'
    )
    s = load_scenario(f"{path}+sensor-outage")
    assert s.haze and len(s.storms) == 1 and s.storms[0].peak_mmh == 70 and s.outages
    assert s.faults == {"dropout": 0.002}  # the later scenario's rate wins
    assert load_scenario(str(path)).faults == {"dropout": 0.01}
    for text, field in (
        ("storms: [{at: '25:00'}]", "storms[0].at"),
        ("storms: [{at: '14:00', peak_mmh: -1}]", "storms[0].peak_mmh"),
        ("incidents: [{at: '+1h', capacity_factor: 3}]", "incidents[0].capacity_factor"),
        ("faults: {gremlins: 0.1}", "faults.gremlins"),
        ("weather: sunny", "weather"),
    ):
        path.write_text(text)
        with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
            load_scenario(str(path))
    with pytest.raises(ConfigError, match="--scenario"):
        load_scenario("zombie-apocalypse")


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in ("PANTAU_MQTT_URL", "PANTAU_DATABASE_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PANTAU_CONFIG", str(Path(__file__).parent.parent / "empty.toml"))
    monkeypatch.setenv("PANTAU_HOME", str(tmp_path / "home"))
    return tmp_path


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["simulate"], "--fleet"),
        (["simulate", "--fleet", "atlantis"], "--fleet"),
        (["simulate", "--fleet", "sampit", "--speed", "warp"], "--speed"),
        (["simulate", "--fleet", "sampit", "--out", "x.csv"], "--out"),
        (["simulate", "--fleet", "sampit", "--faults", "gremlins=1"], "--faults"),
        (["simulate", "--fleet", "sampit", "--start", "2024-03-04T06:00"], "--start"),
        (["simulate", "--fleet", "sampit", "--duration", "soon"], "--duration"),
        (["simulate", "--fleet", "sampit", "--scenario", "nope"], "--scenario"),
        (["simulate", "--fleet", "sampit", "--sensors", "0"], "--sensors"),
        (["simulate", "--fleet", "sampit", "--speed", "max"], "PANTAU_MQTT_URL"),
        (["simulate", "load", "--rate", "fast", "--duration", "1s"], "--rate"),
        (["simulate", "load", "--rate", "10", "--duration", "1s"], "PANTAU_MQTT_URL"),
    ],
)
def test_cli_errors_name_the_option(cli_env: Path, capsys: pytest.CaptureFixture[str], argv, field) -> None:  # type: ignore[no-untyped-def]
    assert main(argv) in (1, 2)
    assert field in capsys.readouterr().err


def test_cli_writes_jsonl_byte_for_byte_the_same_for_a_seed(cli_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    faults = "malformed=0.01,duplicate=0.01,burst=0.005"
    args = ["simulate", "--fleet", "kotamobagu", "--scenario", "flash-flood", "--start", "2024-01-15", "--duration",
            "6h", "--speed", "max", "--seed", "5", "--faults", faults, "--quiet"]  # fmt: skip
    a, b = cli_env / "a.jsonl", cli_env / "b.jsonl"
    assert main([*args, "--out", str(a)]) == 0
    assert main([*args, "--out", str(b)]) == 0
    assert a.read_bytes() == b.read_bytes()
    assert (cli_env / "a.faults.jsonl").read_bytes() == (cli_env / "b.faults.jsonl").read_bytes()
    lines = a.read_text().splitlines()
    assert len(lines) >= 0.9 * 21 * 72 and json.loads(lines[0])["topic"].startswith("pantau/v1/kotamobagu/")
    assert "sent" in capsys.readouterr().err
    manifest = cli_env / "fleet.yaml"
    assert main(["simulate", "--fleet", "sampit", "--sensors", "500", "--write-manifest", str(manifest)]) == 0
    assert len(load_manifest(manifest)) == 500
