"""Statistical properties of the simulated city: traffic peaks, floods, haze and washout."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest

from pantau.metrics import SensorKind
from simulators.fleet import CITIES, Fleet, load_fleet
from simulators.models import CityModel
from simulators.scenarios import At, Scenario, Storm, load_scenario

STEP_S = 300.0


def _local_midnight(fleet: Fleet, day: str) -> float:
    tz = timezone(timedelta(hours=fleet.utc_offset_h))
    return datetime.fromisoformat(day).replace(tzinfo=tz).timestamp()


def _run(fleet: Fleet, scenario: Scenario, start: float, hours: float, seed: int = 1) -> list[dict]:
    model = CityModel(fleet, scenario, start=start, step_s=STEP_S, rng=np.random.default_rng(seed))
    out = []
    for k in range(1, int(hours * 3600 / STEP_S) + 1):
        t = start + k * STEP_S
        values = model.step(t)
        out.append({"t": t, **{kind: kv.values for kind, kv in values.items()}})
    return out


def _hourly(rows: list[dict], kind: SensorKind, metric: str, offset_h: float) -> np.ndarray:
    """Mean over sensors and over each local hour of the day (interval midpoints)."""
    sums, counts = np.zeros(24), np.zeros(24)
    for r in rows:
        hour = int(((r["t"] - STEP_S / 2 + offset_h * 3600) % 86400) // 3600)
        sums[hour] += r[kind][metric].mean()
        counts[hour] += 1
    return sums / np.maximum(counts, 1)


@pytest.mark.parametrize("city", ["mojokerto", "sampit"])
def test_weekday_traffic_peaks_in_the_morning_and_evening(city: str) -> None:
    fleet = load_fleet(city)
    monday = _local_midnight(fleet, "2024-03-04")
    hourly = _hourly(_run(fleet, load_scenario("normal-day"), monday, 24), SensorKind.TRAFFIC, "vehicle_count", 7)
    morning = int(np.argmax(hourly[:12]))
    evening = 12 + int(np.argmax(hourly[12:]))
    assert 6 <= morning <= 8, hourly.round()
    assert 16 <= evening <= 18, hourly.round()
    assert hourly[morning] > 1.3 * hourly[11] and hourly[evening] > 1.3 * hourly[13]
    assert hourly[2:4].mean() < 0.15 * hourly[morning]  # the small hours are quiet


def test_weekend_has_no_morning_rush() -> None:
    fleet = load_fleet("mojokerto")
    monday = _local_midnight(fleet, "2024-03-04")
    sunday = _local_midnight(fleet, "2024-03-10")
    weekday = _hourly(_run(fleet, Scenario(), monday, 24), SensorKind.TRAFFIC, "vehicle_count", 7)
    weekend = _hourly(_run(fleet, Scenario(), sunday, 24), SensorKind.TRAFFIC, "vehicle_count", 7)
    assert weekend[7] < 0.7 * weekday[7]


def test_speed_falls_and_occupancy_rises_in_a_rush_hour_jam() -> None:
    fleet = load_fleet("sampang")
    monday = _local_midnight(fleet, "2024-03-04")
    rows = _run(fleet, load_scenario("rush-hour-jam"), monday, 24)
    normal = _run(fleet, Scenario(), monday, 24)
    at = [i for i, r in enumerate(rows) if 7.0 <= ((r["t"] + 7 * 3600) % 86400) / 3600 <= 8.0]
    ratio = min(
        (rows[i][SensorKind.TRAFFIC]["avg_speed_kmh"] / normal[i][SensorKind.TRAFFIC]["avg_speed_kmh"]).min()
        for i in at
    )
    assert ratio < 0.5  # the crashed corridors crawl at under half their usual rush-hour speed
    jam_occ = max(rows[i][SensorKind.TRAFFIC]["occupancy"].max() for i in at)
    assert jam_occ > max(normal[i][SensorKind.TRAFFIC]["occupancy"].max() for i in at)


@pytest.mark.parametrize("city", CITIES)
def test_flash_flood_crosses_siaga_levels_upstream_first_and_recedes(city: str) -> None:
    fleet = load_fleet(city)
    start = _local_midnight(fleet, "2024-01-15")
    rows = _run(fleet, load_scenario("flash-flood"), start, 60)
    gauges = fleet.of_kind(SensorKind.FLOOD)
    levels = np.array([r[SensorKind.FLOOD]["water_level_cm"] for r in rows])  # ticks x gauges
    times = np.array([r["t"] for r in rows])
    crossing: dict[str, list[float]] = {}
    for j, g in enumerate(gauges):
        md = g.metadata
        assert levels[:12, j].max() < md["siaga3_cm"], f"{g.id} starts above Normal"
        firsts = []
        for key in ("siaga3_cm", "siaga2_cm", "siaga1_cm"):
            above = np.flatnonzero(levels[:, j] >= md[key])
            assert len(above), f"{g.id} never reached {key}"
            firsts.append(times[above[0]])
        assert firsts[0] <= firsts[1] <= firsts[2], f"{g.id}: Waspada, Siaga, Awas out of order"
        crossing[g.id] = firsts
        assert levels[-1, j] < md["siaga3_cm"], f"{g.id} has not receded after 60 h"
    for river in fleet.rivers:
        on = sorted((g for g in gauges if g.metadata["river"] == river.name), key=lambda g: g.metadata["order"])
        for up, down in itertools.pairwise(on):
            assert crossing[up.id][2] < crossing[down.id][2], f"{down.id} reached Awas before {up.id}"
            assert crossing[up.id][0] <= crossing[down.id][0]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_normal_day_stays_below_awas(seed: int) -> None:
    fleet = load_fleet("sampang")
    rows = _run(fleet, Scenario(), _local_midnight(fleet, "2024-01-15"), 24, seed=seed)
    levels = np.array([r[SensorKind.FLOOD]["water_level_cm"] for r in rows])
    awas = np.array([g.metadata["siaga1_cm"] for g in fleet.of_kind(SensorKind.FLOOD)])
    assert (levels < awas).all()


def test_haze_episode_lifts_pm25_to_tidak_sehat_or_worse() -> None:
    fleet = load_fleet("sampit")
    start = _local_midnight(fleet, "2019-09-10")
    rows = _run(fleet, load_scenario("haze-episode"), start, 72)
    pm25 = np.array([r[SensorKind.AIR]["pm25"] for r in rows])  # ticks x stations
    day2 = pm25[288:576]
    # ISPU: 24-h PM2.5 above 55.4 µg/m³ is "Tidak Sehat"; above 150.4 "Sangat Tidak Sehat".
    assert (day2.mean(axis=0) > 55.4).all()
    assert day2.mean() > 150.4
    clean = np.array([r[SensorKind.AIR]["pm25"] for r in _run(fleet, Scenario(rain_factor=0.2), start, 48)])
    assert clean[288:].mean() < 55.4


def test_rain_washes_pm_down() -> None:
    fleet = load_fleet("mojokerto")
    start = _local_midnight(fleet, "2024-03-04")
    dry = Scenario(rain_factor=0.0)
    storm = Scenario(rain_factor=0.0, storms=(Storm(At.parse("at", "07:00"), duration_h=2, peak_mmh=20, over="city"),))
    pm_dry = np.array([r[SensorKind.AIR]["pm25"] for r in _run(fleet, dry, start, 12)])
    rows = _run(fleet, storm, start, 12)
    pm_wet = np.array([r[SensorKind.AIR]["pm25"] for r in rows])
    rain = np.array([r[SensorKind.RAIN]["rain_mm"].sum() for r in rows])
    window = slice(8 * 12, 10 * 12)  # 08:00-10:00 local, inside the storm
    assert rain[window].sum() > 10
    assert pm_wet[window].mean() < 0.6 * pm_dry[window].mean()
    assert pm_wet[: 6 * 12].mean() == pytest.approx(pm_dry[: 6 * 12].mean(), rel=0.2)


def test_values_stay_in_plausible_ranges_and_rain_is_in_tipping_bucket_steps() -> None:
    from pantau.metrics import METRICS

    fleet = load_fleet("sampit")
    rows = _run(
        fleet, load_scenario("flash-flood+haze-episode+rush-hour-jam"), _local_midnight(fleet, "2024-01-15"), 48
    )
    for r in rows:
        for kind in SensorKind:
            for name, arr in r[kind].items():
                assert ((arr >= METRICS[name].low) & (arr <= METRICS[name].high)).all(), name
    rain = np.concatenate([r[SensorKind.RAIN]["rain_mm"] for r in rows])
    assert np.allclose(rain / 0.2, np.round(rain / 0.2))


def test_at_resolves_local_clock_and_offsets() -> None:
    start = datetime(2024, 3, 4, 1, 0, tzinfo=UTC).timestamp()  # 08:00 WIB
    assert At.parse("at", "07:00").resolve(start, 7) == start + 23 * 3600
    assert At.parse("at", "09:30").resolve(start, 7) == start + 5400
    assert At.parse("at", "+2h").resolve(start, 7) == start + 7200
