"""Unit tests of `pantau.indices`: ISPU, EPA AQI, Siaga, BMKG rain classes, degree of saturation and LOS."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pantau.domain import Sensor
from pantau.errors import PantauError, SensorMetadataError
from pantau.indices import (
    ISPU_P14_2020,
    ISPU_POLLUTANTS,
    AqiCategory,
    AtThreshold,
    IspuCategories,
    IspuCategory,
    IspuTable,
    LevelOfService,
    RainClass,
    SiagaLevel,
    SiagaThresholds,
    capacity_pcu_h,
    day_window_max,
    degree_of_saturation,
    degree_of_saturation_array,
    epa_aqi_pm25,
    epa_aqi_pm25_array,
    flow_pcu_h,
    ispu_category,
    ispu_station,
    ispu_station_array,
    ispu_subindex,
    ispu_subindex_array,
    level_of_service,
    level_of_service_array,
    rain_class,
    rain_class_array,
    siaga_level,
    siaga_level_array,
    siaga_thresholds,
)
from pantau.metrics import SensorKind
from pantau.sensors import load_manifest

FLEETS = Path(__file__).resolve().parents[2] / "simulators" / "fleets"

# -- ISPU sub-indices computed by hand -------------------------------------------------------------
# I = (Ia - Ib) / (Xa - Xb) * (Xx - Xb) + Ib. The midpoint of every band gives the band's middle
# index; worked examples:
#   pm10  250:  band 150-350,   (200 - 100) / (350 - 150)     * (250 - 150)     + 100 = 150
#   pm25  375.2: band 250.4-500, (500 - 300) / (500 - 250.4)   * (375.2 - 250.4) + 300 = 400
#   no2   665:  band 200-1130,  (200 - 100) / (1130 - 200)    * (665 - 200)     + 100 = 150
#   hc    323.5: band 215-432,  (300 - 200) / (432 - 215)     * (323.5 - 215)   + 200 = 250
#   pm25  80:   band 55.4-150.4, 100 / 95 * 24.6 + 100 = 125.89… -> 126
#   co    11000: band 8000-15000, 100 / 7000 * 3000 + 100 = 142.857… -> 143
HAND = [
    ("pm10", 25, 25),
    ("pm10", 100, 75),
    ("pm10", 250, 150),
    ("pm10", 385, 250),
    ("pm10", 460, 400),
    ("pm25", 7.75, 25),
    ("pm25", 35.45, 75),
    ("pm25", 102.9, 150),
    ("pm25", 200.4, 250),
    ("pm25", 375.2, 400),
    ("pm25", 80, 126),
    ("so2", 26, 25),
    ("so2", 116, 75),
    ("so2", 290, 150),
    ("so2", 600, 250),
    ("so2", 1000, 400),
    ("co", 2000, 25),
    ("co", 6000, 75),
    ("co", 11500, 150),
    ("co", 22500, 250),
    ("co", 37500, 400),
    ("co", 11000, 143),
    ("o3", 60, 25),
    ("o3", 177.5, 75),
    ("o3", 317.5, 150),
    ("o3", 600, 250),
    ("o3", 900, 400),
    ("no2", 40, 25),
    ("no2", 140, 75),
    ("no2", 665, 150),
    ("no2", 1695, 250),
    ("no2", 2630, 400),
    ("hc", 22.5, 25),
    ("hc", 72.5, 75),
    ("hc", 157.5, 150),
    ("hc", 323.5, 250),
    ("hc", 540, 400),
]


@pytest.mark.parametrize(("pollutant", "concentration", "expected"), HAND)
def test_ispu_subindex_by_hand(pollutant: str, concentration: float, expected: int) -> None:
    sub = ispu_subindex(pollutant, concentration)
    assert sub.index == expected
    assert not sub.beyond
    assert ispu_subindex_array(pollutant, [concentration]).index[0] == expected


# The table itself: every band edge maps to its index bound exactly.
EDGES = [
    (p, x, i)
    for p in ISPU_POLLUTANTS
    for x, i in zip(ISPU_P14_2020.breakpoints[p], (0, 50, 100, 200, 300, 500), strict=True)
]


@pytest.mark.parametrize(("pollutant", "concentration", "expected"), EDGES)
def test_ispu_exactly_at_band_edges(pollutant: str, concentration: float, expected: int) -> None:
    sub = ispu_subindex(pollutant, concentration)
    assert sub.index == expected
    assert sub.value == pytest.approx(expected, abs=1e-9)
    assert not sub.beyond


@pytest.mark.parametrize(
    ("pollutant", "concentration", "expected"),
    [
        ("pm10", 10.5, 11),  # 10.5 exactly: half up (Python's round() would give 10)
        ("pm10", 12.5, 13),  # round() would give 12
        ("pm10", 12.4, 12),
        ("pm25", 0.155, 1),  # 50 / 15.5 * 0.155 = 0.5, computed as 0.49999…: still rounds up
        ("so2", 2.6, 3),  # 50 / 52 * 2.6 = 2.5
        ("co", 1000, 13),  # 50 / 4000 * 1000 = 12.5
        ("pm10", 51, 51),  # 50.5 -> 51, and 51 is Sedang
    ],
)
def test_ispu_rounds_half_up(pollutant: str, concentration: float, expected: int) -> None:
    assert ispu_subindex(pollutant, concentration).index == expected
    assert ispu_subindex_array(pollutant, [concentration]).index[0] == expected


@pytest.mark.parametrize("pollutant", ISPU_POLLUTANTS)
def test_ispu_beyond_the_table_is_capped_and_flagged(pollutant: str) -> None:
    top = ISPU_P14_2020.breakpoints[pollutant][-1]
    at_top = ispu_subindex(pollutant, top)
    assert (at_top.index, at_top.beyond) == (500, False)
    above = ispu_subindex(pollutant, top + 0.1)
    assert (above.index, above.value, above.beyond) == (500, 500.0, True)
    assert above.category is IspuCategory.BERBAHAYA
    far = ispu_subindex(pollutant, top * 10)
    assert (far.index, far.beyond) == (500, True)
    arr = ispu_subindex_array(pollutant, [top, top + 0.1, math.inf])
    assert arr.index.tolist() == [500, 500, 500]
    assert arr.beyond.tolist() == [False, True, True]


@pytest.mark.parametrize(
    ("index", "category"),
    [
        (0, IspuCategory.BAIK),
        (50, IspuCategory.BAIK),
        (51, IspuCategory.SEDANG),
        (100, IspuCategory.SEDANG),
        (101, IspuCategory.TIDAK_SEHAT),
        (200, IspuCategory.TIDAK_SEHAT),
        (201, IspuCategory.SANGAT_TIDAK_SEHAT),
        (300, IspuCategory.SANGAT_TIDAK_SEHAT),
        (301, IspuCategory.BERBAHAYA),
        (500, IspuCategory.BERBAHAYA),
    ],
)
def test_ispu_categories(index: int, category: IspuCategory) -> None:
    assert ispu_category(index) is category


def test_ispu_category_labels_and_colours() -> None:
    assert [(c.label, c.colour) for c in IspuCategory] == [
        ("Baik", "green"),
        ("Sedang", "blue"),
        ("Tidak Sehat", "yellow"),
        ("Sangat Tidak Sehat", "red"),
        ("Berbahaya", "black"),
    ]


def test_ispu_default_windows() -> None:
    hours = {p: w.total_seconds() / 3600 for p, w in ISPU_P14_2020.windows.items()}
    assert hours == {"pm10": 24, "pm25": 24, "so2": 24, "co": 8, "o3": 1, "no2": 1, "hc": 3}
    from datetime import timedelta

    faster = ISPU_P14_2020.with_windows({"pm25": timedelta(hours=1)})
    assert faster.windows["pm25"] == timedelta(hours=1)
    assert ISPU_P14_2020.windows["pm25"] == timedelta(hours=24)  # the default is untouched


def test_ispu_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="not an ISPU pollutant"):
        ispu_subindex("pm1", 10)
    with pytest.raises(ValueError, match="≥ 0"):
        ispu_subindex("pm25", -1)
    with pytest.raises(ValueError, match="≥ 0"):
        ispu_subindex("pm25", math.nan)
    with pytest.raises(ValueError, match="≥ 0"):
        ispu_subindex_array("pm25", [1.0, -0.1])


def test_station_ispu_and_critical_pollutant() -> None:
    station = ispu_station({"pm25": 80, "pm10": 200, "co": None, "o3": math.nan})
    assert station is not None
    # pm25 80 -> 125.89 -> 126; pm10 200 -> 100/200*50+100 = 125.
    assert (station.index, station.critical, station.category) == (126, "pm25", IspuCategory.TIDAK_SEHAT)
    assert set(station.sub_indices) == {"pm25", "pm10"}
    assert station.sub_indices["pm10"].index == 125


def test_station_ispu_ties() -> None:
    # Both exactly 75: the first in table order (pm10) is critical.
    tie = ispu_station({"pm25": 35.45, "pm10": 100})
    assert tie is not None and (tie.index, tie.critical) == (75, "pm10")
    # pm10 exactly at the top (500, not beyond) and pm25 beyond: the beyond one is critical.
    beyond = ispu_station({"pm10": 500, "pm25": 600})
    assert beyond is not None and (beyond.index, beyond.critical, beyond.beyond) == (500, "pm25", True)
    assert ispu_station({"pm25": None}) is None
    with pytest.raises(ValueError, match="not an ISPU pollutant"):
        ispu_station({"pm2.5": 10})


def test_station_ispu_array() -> None:
    nan = math.nan
    result = ispu_station_array(
        {"pm25": [80, nan, 600, 35.45], "pm10": [200, nan, 500, 100], "co": [nan, nan, nan, nan]}
    )
    assert result.index[[0, 2, 3]].tolist() == [126, 500, 75]
    assert math.isnan(result.index[1])
    assert result.critical.tolist() == ["pm25", "", "pm25", "pm10"]
    assert result.beyond.tolist() == [False, False, True, False]


concentrations = st.floats(min_value=0, max_value=60000, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(pollutant=st.sampled_from(ISPU_POLLUTANTS), a=concentrations, b=concentrations)
def test_ispu_monotone_in_concentration(pollutant: str, a: float, b: float) -> None:
    low, high = sorted((a, b))
    lo, hi = ispu_subindex(pollutant, low), ispu_subindex(pollutant, high)
    assert lo.value <= hi.value
    assert lo.index <= hi.index


@settings(max_examples=200, deadline=None)
@given(
    pollutant=st.sampled_from(ISPU_POLLUTANTS),
    edge=st.integers(min_value=1, max_value=5),
    rel=st.floats(min_value=1e-12, max_value=1e-6),
)
def test_ispu_continuous_at_band_edges(pollutant: str, edge: int, rel: float) -> None:
    x = ISPU_P14_2020.breakpoints[pollutant][edge]
    below, above = ispu_subindex(pollutant, x * (1 - rel)), ispu_subindex(pollutant, x * (1 + rel))
    at = ispu_subindex(pollutant, x)
    # Unrounded: no jump at the edge; the step is no more than the steeper band's slope allows.
    xs, bounds = ISPU_P14_2020.breakpoints[pollutant], ISPU_P14_2020.index_bounds
    slope = max((bounds[k + 1] - bounds[k]) / (xs[k + 1] - xs[k]) for k in range(len(xs) - 1))
    if not above.beyond:
        assert abs(above.value - below.value) <= slope * (above.concentration - below.concentration) + 1e-9
    # Rounded: just below and just above differ by at most the rounding.
    assert abs(above.index - below.index) <= 1
    assert below.index <= at.index <= above.index


@settings(max_examples=200, deadline=None)
@given(
    pollutant=st.sampled_from(ISPU_POLLUTANTS),
    values=st.lists(concentrations | st.sampled_from(EDGES).map(lambda e: float(e[1])), min_size=1, max_size=30),
)
def test_ispu_scalar_equals_vectorised(pollutant: str, values: list[float]) -> None:
    arr = ispu_subindex_array(pollutant, np.array(values))
    for i, x in enumerate(values):
        sub = ispu_subindex(pollutant, x)
        assert (arr.value[i], arr.index[i], bool(arr.beyond[i])) == (sub.value, sub.index, sub.beyond)


CUSTOM_TABLE = IspuTable(
    index_bounds=(0, 40, 90, 180, 310, 450),
    breakpoints={"pm25": (0, 9.3, 35.1, 120.7, 255.5, 400), "so2": (0, 61, 137, 999, 1001, 1500)},
    windows={},
)


@pytest.mark.parametrize("table", [ISPU_P14_2020, CUSTOM_TABLE], ids=["p14-2020", "custom"])
def test_ispu_categories_from_concentrations_equal_the_sub_index_category(table: IspuTable) -> None:
    # The fast path the rule engine takes per reading: exact at every edge, either side of it, at
    # the breakpoints, at zero, beyond the table and at many random concentrations.
    cats = IspuCategories(table)
    rng = np.random.default_rng(11)
    order = list(IspuCategory)
    for p, row in table.breakpoints.items():
        edges = cats.edges[p]
        assert len(edges) == len(order) - 1 and list(edges) == sorted(edges)
        probes = [0.0, row[-1] * 10, 1e300]
        for x in [*edges, *row]:
            probes += [x, math.nextafter(x, 0.0), math.nextafter(x, math.inf)]
        probes += rng.uniform(0, row[-1] * 1.2, 5000).tolist()
        for x in probes:
            assert order[cats.rank(p, x)] is ispu_subindex(p, x, table=table).category, (p, x)


@settings(max_examples=300, deadline=None)
@given(
    row=st.fixed_dictionaries(
        {
            p: st.none() | st.floats(min_value=0, max_value=1200) | st.sampled_from([15.5, 55.4, 500.0])
            for p in ISPU_POLLUTANTS
        }
    )
)
def test_station_category_is_the_worst_pollutant_category(row: dict[str, float | None]) -> None:
    cats = IspuCategories()
    station = ispu_station(row)
    ranks = [cats.rank(p, x) for p, x in row.items() if x is not None]
    if station is None:
        assert ranks == []
    else:
        assert cats.order[max(ranks)] is station.category


@pytest.mark.parametrize("table", [ISPU_P14_2020, CUSTOM_TABLE], ids=["p14-2020", "custom"])
def test_station_category_is_the_worst_pollutant_category_with_ties_and_beyond(table: IspuTable) -> None:
    # What the engine does per reading: the worst of the present pollutants' category ranks (NaN and
    # None left out) must be `ispu_station`'s category. Seeded rows mix random concentrations with
    # ones that tie across pollutants (every pollutant's k-th breakpoint is index_bounds[k]; every
    # pollutant's k-th edge is the first double of category k), the top exactly and beyond it.
    cats = IspuCategories(table)
    rng = np.random.default_rng(2024)
    order = list(IspuCategory)
    pollutants = table.pollutants
    rows: list[dict[str, float | None]] = []
    for k in range(len(table.index_bounds)):  # all pollutants tied at a breakpoint
        rows.append({p: table.breakpoints[p][k] for p in pollutants})
    for k in range(len(order) - 1):  # all tied at an edge, or one just below it
        at_edge: dict[str, float | None] = {p: cats.edges[p][k] for p in pollutants}
        rows.append(at_edge)
        rows += [at_edge | {p: math.nextafter(cats.edges[p][k], 0.0)} for p in pollutants]
    rows.append({p: table.breakpoints[p][-1] for p in pollutants})  # at the top: not beyond
    rows.append({p: table.breakpoints[p][-1] * (1.5 if p == pollutants[-1] else 1.0) for p in pollutants})

    def draw(p: str) -> float | None:
        row, edges, u = table.breakpoints[p], cats.edges[p], rng.random()
        if u < 0.15:
            return None
        if u < 0.2:
            return math.nan
        if u < 0.35:
            return float(rng.choice(row))
        if u < 0.5:
            edge = float(rng.choice(edges))
            return edge if rng.random() < 0.5 else math.nextafter(edge, 0.0)
        if u < 0.6:
            return row[-1] * float(rng.uniform(1.0, 3.0))  # beyond (or exactly the top)
        return float(rng.uniform(0, row[-1]))

    rows += [{p: draw(p) for p in pollutants} for _ in range(3000)]
    for row in rows:
        station = ispu_station(row, table=table)
        ranks = [cats.rank(p, x) for p, x in row.items() if x is not None and not math.isnan(x)]
        if station is None:
            assert ranks == [], row
        else:
            assert order[max(ranks)] is station.category, row


@settings(max_examples=100, deadline=None)
@given(
    rows=st.lists(
        st.fixed_dictionaries({p: st.none() | st.floats(min_value=0, max_value=3000) for p in ISPU_POLLUTANTS}),
        min_size=1,
        max_size=10,
    )
)
def test_station_scalar_equals_vectorised(rows: list[dict[str, float | None]]) -> None:
    arrays = {p: np.array([math.nan if r[p] is None else r[p] for r in rows]) for p in ISPU_POLLUTANTS}
    result = ispu_station_array(arrays)
    for i, row in enumerate(rows):
        station = ispu_station(row)
        if station is None:
            assert math.isnan(result.index[i]) and result.critical[i] == ""
        else:
            assert (result.index[i], result.critical[i], bool(result.beyond[i])) == (
                station.index,
                station.critical,
                station.beyond,
            )


# -- US EPA AQI (PM2.5, May 2024) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("concentration", "expected", "category"),
    [
        (0.0, 0, AqiCategory.GOOD),
        (9.0, 50, AqiCategory.GOOD),
        (9.05, 50, AqiCategory.GOOD),  # truncated to 9.0
        (9.1, 51, AqiCategory.MODERATE),
        (12.0, 56, AqiCategory.MODERATE),  # 49 / 26.3 * 2.9 + 51 = 56.40
        (35.4, 100, AqiCategory.MODERATE),
        (35.45, 100, AqiCategory.MODERATE),
        (35.5, 101, AqiCategory.UNHEALTHY_SENSITIVE),
        (55.4, 150, AqiCategory.UNHEALTHY_SENSITIVE),
        (55.5, 151, AqiCategory.UNHEALTHY),
        (125.4, 200, AqiCategory.UNHEALTHY),
        (125.5, 201, AqiCategory.VERY_UNHEALTHY),
        (225.4, 300, AqiCategory.VERY_UNHEALTHY),
        (225.5, 301, AqiCategory.HAZARDOUS),
        (325.4, 500, AqiCategory.HAZARDOUS),
    ],
)
def test_epa_aqi_pm25(concentration: float, expected: int, category: AqiCategory) -> None:
    aqi = epa_aqi_pm25(concentration)
    assert (aqi.index, aqi.category, aqi.beyond) == (expected, category, False)
    index, beyond = epa_aqi_pm25_array([concentration])
    assert (index[0], bool(beyond[0])) == (expected, False)


def test_epa_aqi_beyond() -> None:
    aqi = epa_aqi_pm25(325.5)
    assert (aqi.index, aqi.beyond, aqi.category.colour) == (500, True, "maroon")


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.floats(min_value=0, max_value=1000), min_size=1, max_size=30))
def test_epa_scalar_equals_vectorised(values: list[float]) -> None:
    index, beyond = epa_aqi_pm25_array(values)
    assert [(int(i), bool(b)) for i, b in zip(index, beyond, strict=True)] == [
        (a.index, a.beyond) for a in map(epa_aqi_pm25, values)
    ]


# -- Siaga levels ----------------------------------------------------------------------------------

GAUGE = SiagaThresholds(120, 170, 230)


@pytest.mark.parametrize(
    ("level", "higher", "lower"),
    [
        (0, 4, 4),
        (119.9, 4, 4),
        (120, 3, 4),  # exactly on the Waspada threshold
        (120.1, 3, 3),
        (169.9, 3, 3),
        (170, 2, 3),
        (229.9, 2, 2),
        (230, 1, 2),
        (230.1, 1, 1),
        (900, 1, 1),
    ],
)
def test_siaga_levels_and_threshold_side(level: float, higher: int, lower: int) -> None:
    assert siaga_level(level, GAUGE) == higher  # default: AtThreshold.HIGHER
    assert siaga_level(level, GAUGE, at_threshold=AtThreshold.LOWER) == lower
    assert siaga_level_array([level], 120, 170, 230)[0] == higher
    assert siaga_level_array([level], 120, 170, 230, at_threshold=AtThreshold.LOWER)[0] == lower


def test_siaga_domain_examples() -> None:
    katulampa = SiagaThresholds(80, 150, 200)  # "≤ 80" Normal, "> 200" Awas: the LOWER reading
    assert siaga_level(80, katulampa, at_threshold=AtThreshold.LOWER) is SiagaLevel.NORMAL
    assert siaga_level(200, katulampa, at_threshold=AtThreshold.LOWER) is SiagaLevel.SIAGA
    manggarai = SiagaThresholds(750, 850, 950)  # "≥ 950" Awas: the HIGHER reading
    assert siaga_level(950, manggarai) is SiagaLevel.AWAS
    assert SiagaLevel.WASPADA.label == "Siaga 3 (Waspada)"
    assert SiagaLevel.from_slug("awas") is SiagaLevel.AWAS


def test_siaga_array_broadcasts_per_gauge() -> None:
    levels = siaga_level_array([100, 100, math.nan], [80, 120, 80], [150, 170, 150], [200, 230, 200])
    assert levels.tolist() == [3, 4, 0]


def _gauge(**metadata: object) -> Sensor:
    return Sensor(id="KTG-RV-01", kind=SensorKind.FLOOD, city="kotamobagu", metadata=dict(metadata))


def test_siaga_thresholds_from_metadata() -> None:
    assert siaga_thresholds(_gauge(siaga3_cm=120, siaga2_cm=170, siaga1_cm=230.5)) == SiagaThresholds(120, 170, 230.5)


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"siaga3_cm": 120, "siaga1_cm": 230}, "sensor 'KTG-RV-01': metadata 'siaga2_cm': missing"),
        (
            {"siaga3_cm": 120, "siaga2_cm": 110, "siaga1_cm": 230},
            "metadata 'siaga2_cm': 110 must be above siaga3_cm=120",
        ),
        (
            {"siaga3_cm": 120, "siaga2_cm": 170, "siaga1_cm": 170},
            "metadata 'siaga1_cm': 170 must be above siaga2_cm=170",
        ),
        (
            {"siaga3_cm": "120", "siaga2_cm": 170, "siaga1_cm": 230},
            "metadata 'siaga3_cm': '120' is not a finite number",
        ),
    ],
)
def test_siaga_threshold_errors_name_sensor_and_key(metadata: dict[str, object], message: str) -> None:
    with pytest.raises(SensorMetadataError) as info:
        siaga_thresholds(_gauge(**metadata))
    assert message in str(info.value)
    assert isinstance(info.value, PantauError)
    assert info.value.sensor_id == "KTG-RV-01"


def test_every_fleet_gauge_has_valid_thresholds() -> None:
    gauges = [s for f in sorted(FLEETS.glob("*.yaml")) for s in load_manifest(f) if s.kind is SensorKind.FLOOD]
    assert gauges
    for gauge in gauges:
        siaga_thresholds(gauge)


# -- BMKG rain classes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mm", "higher", "lower"),
    [
        (0.0, RainClass.NONE, RainClass.NONE),
        (0.9, RainClass.NONE, RainClass.NONE),
        (1.0, RainClass.RINGAN, RainClass.NONE),
        (4.9, RainClass.RINGAN, RainClass.RINGAN),
        (5.0, RainClass.SEDANG, RainClass.RINGAN),
        (10.0, RainClass.LEBAT, RainClass.SEDANG),
        (19.9, RainClass.LEBAT, RainClass.LEBAT),
        (20.0, RainClass.SANGAT_LEBAT, RainClass.LEBAT),
        (20.1, RainClass.SANGAT_LEBAT, RainClass.SANGAT_LEBAT),
        (200.0, RainClass.SANGAT_LEBAT, RainClass.SANGAT_LEBAT),
    ],
)
def test_bmkg_hourly(mm: float, higher: RainClass, lower: RainClass) -> None:
    assert rain_class(mm, "hourly") is higher
    assert rain_class(mm, "hourly", at_threshold=AtThreshold.LOWER) is lower
    assert rain_class_array([mm], "hourly")[0] == higher.value


@pytest.mark.parametrize(
    ("mm", "higher", "lower"),
    [
        (0.4, RainClass.NONE, RainClass.NONE),
        (0.5, RainClass.RINGAN, RainClass.NONE),
        (19.9, RainClass.RINGAN, RainClass.RINGAN),
        (20.0, RainClass.SEDANG, RainClass.RINGAN),
        (50.0, RainClass.LEBAT, RainClass.SEDANG),
        (100.0, RainClass.SANGAT_LEBAT, RainClass.LEBAT),
        (150.0, RainClass.EKSTREM, RainClass.SANGAT_LEBAT),
        (150.1, RainClass.EKSTREM, RainClass.EKSTREM),
    ],
)
def test_bmkg_daily(mm: float, higher: RainClass, lower: RainClass) -> None:
    assert rain_class(mm, "daily") is higher
    assert rain_class(mm, "daily", at_threshold=AtThreshold.LOWER) is lower
    assert rain_class_array([mm], "daily", at_threshold=AtThreshold.LOWER)[0] == lower.value


def test_rain_class_array_marks_missing() -> None:
    assert rain_class_array([math.nan, 12.0], "hourly").tolist() == ["", "lebat"]


# -- Degree of saturation and level of service -----------------------------------------------------


@pytest.mark.parametrize(
    ("ds", "los"),
    [
        (0.0, "A"),
        (0.20, "A"),
        (0.205, "B"),
        (0.21, "B"),
        (0.44, "B"),
        (0.45, "C"),
        (0.74, "C"),
        (0.75, "D"),
        (0.84, "D"),
        (0.85, "E"),
        (1.00, "E"),
        (1.0000001, "F"),
        (1.01, "F"),
        (2.5, "F"),
    ],
)
def test_level_of_service_boundaries(ds: float, los: str) -> None:
    assert level_of_service(ds) is LevelOfService(los)
    assert level_of_service_array([ds])[0] == los


def test_degree_of_saturation_from_counts() -> None:
    # 150 vehicles in 15 min = 600 veh/h; capacity 3000 pcu/h -> DS 0.20 -> A (upper bound inclusive).
    assert flow_pcu_h(150, 900) == 600
    assert level_of_service(degree_of_saturation(flow_pcu_h(150, 900), 3000)) is LevelOfService.A
    # 750 in 15 min = 3000 pcu/h = capacity -> E; one more vehicle -> F.
    assert level_of_service(degree_of_saturation(flow_pcu_h(750, 900), 3000)) is LevelOfService.E
    assert level_of_service(degree_of_saturation(flow_pcu_h(751, 900), 3000)) is LevelOfService.F
    # pcu_factor: 1500 mostly-motorcycle vehicles at 0.5 pcu each = 750 pcu in 15 min.
    assert flow_pcu_h(1500, 900, pcu_factor=0.5) == 3000
    ds = degree_of_saturation_array([150, 750, 1500], 900, 3000, pcu_factor=1.0)
    assert ds.tolist() == [0.2, 1.0, 2.0]
    assert level_of_service_array(ds).tolist() == ["A", "E", "F"]


@settings(max_examples=200, deadline=None)
@given(
    counts=st.lists(st.integers(min_value=0, max_value=5000), min_size=1, max_size=20),
    interval=st.sampled_from([60, 300, 900, 3600]),
    capacity=st.sampled_from([1800, 2200, 2900, 5000]),
    pcu=st.sampled_from([0.5, 1.0, 1.2]),
)
def test_los_scalar_equals_vectorised(counts: list[int], interval: int, capacity: int, pcu: float) -> None:
    ds = degree_of_saturation_array(counts, interval, capacity, pcu_factor=pcu)
    expected = [degree_of_saturation(flow_pcu_h(c, interval, pcu_factor=pcu), capacity) for c in counts]
    assert ds.tolist() == expected
    assert level_of_service_array(ds).tolist() == [level_of_service(d).value for d in expected]


def test_capacity_from_metadata() -> None:
    counter = Sensor(id="KTG-TC-01", kind=SensorKind.TRAFFIC, city="kotamobagu", metadata={"capacity_pcu_h": 3000})
    assert capacity_pcu_h(counter) == 3000.0
    bare = Sensor(id="KTG-TC-09", kind=SensorKind.TRAFFIC, city="kotamobagu")
    with pytest.raises(SensorMetadataError, match="sensor 'KTG-TC-09': metadata 'capacity_pcu_h': missing"):
        capacity_pcu_h(bare)
    zero = Sensor(id="KTG-TC-10", kind=SensorKind.TRAFFIC, city="kotamobagu", metadata={"capacity_pcu_h": 0})
    with pytest.raises(SensorMetadataError, match="must be positive"):
        capacity_pcu_h(zero)


def test_the_days_worst_window_lies_inside_the_day_and_skips_empty_hours() -> None:
    hours: list[tuple[int, float] | None] = [None] * 24
    hours[3] = (2, 20.0)  # mean 10
    hours[5] = (1, 40.0)
    hours[6] = (3, 30.0)  # hours 5-6: 70 over 4 readings
    best = day_window_max(hours, 2)
    assert best is not None and (best.mean, best.start, best.n, best.hours) == (40.0, 4, 1, 1)
    day = day_window_max(hours, 24)
    assert day is not None and (day.mean, day.start, day.n, day.hours) == (15.0, 0, 6, 3)
    assert day_window_max([None] * 24, 8) is None
    with pytest.raises(ValueError, match="does not fit"):
        day_window_max(hours, 25)


def test_trend_lines_are_where_the_categories_begin() -> None:
    from pantau.indices import TrendLine, trend_lines

    air = trend_lines(Sensor(id="A", kind="air", city="sampit"))
    assert [line.value for line in air["pm25"]] == list(ISPU_P14_2020.breakpoints["pm25"][1:5])
    assert [ispu_subindex("pm25", line.value + 1).category.label for line in air["pm25"]] == [
        line.label for line in air["pm25"]
    ]  # above each line (past the index rounding), the band it names
    gauge = Sensor(id="G", kind="flood", city="sampit", metadata={"siaga3_cm": 300, "siaga2_cm": 400, "siaga1_cm": 500})
    assert trend_lines(gauge) == {"water_level_cm": (TrendLine(300.0, "Siaga 3 (Waspada)", "siaga3"),
                                                     TrendLine(400.0, "Siaga 2 (Siaga)", "siaga2"),
                                                     TrendLine(500.0, "Siaga 1 (Awas)", "siaga1"))}  # fmt: skip
    backwards = {"siaga3_cm": 500, "siaga2_cm": 400, "siaga1_cm": 300}
    broken = Sensor(id="H", kind="flood", city="sampit", metadata=backwards)
    assert trend_lines(broken) == {} and trend_lines(Sensor(id="R", kind="rain", city="sampit")) == {}
