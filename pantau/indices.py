"""Domain indices: ISPU and US EPA AQI (air), Siaga levels (river gauges), BMKG rain classes and
traffic degree of saturation / level of service. Pure functions over numbers; no I/O.

Each index has a scalar function (one reading, returns a value type) and, where the engine scores a
whole batch, an array function over numpy arrays that gives exactly the scalar results (the tests
check this). Sources are in `../shared/DOMAIN.md`; the choices where sources disagree are stated
here and in `docs/rules.md`, and each is a parameter:

- ISPU (Permen LHK P.14/2020): continuous bands (a band's lower concentration is the previous
  band's upper one; index bounds 0, 50, 100, 200, 300, 500); linear interpolation in the band;
  integer result rounded half up; above the table top capped at 500 with `beyond=True`. A
  concentration exactly on a band edge gives the same index from either band, so which band owns
  the edge does not matter; the category follows the integer index (50 is Baik, 51 Sedang).
- Station ISPU: the highest sub-index; its pollutant is the critical pollutant ("parameter
  kritis"). Ties go to a pollutant beyond the table, then to the larger unrounded value, then to the
  first in `ISPU_POLLUTANTS` order.
- Siaga levels and BMKG rain classes: by default a value exactly on a threshold takes the higher
  (more alarming) level: `AtThreshold.HIGHER`, i.e. each threshold is the inclusive lower bound of
  the level above it. `AtThreshold.LOWER` gives the other reading (the threshold still belongs to
  the level below).
- Level of service (PM 96/2015): each upper bound is inclusive (A: DS ≤ 0.20, B: 0.20 < DS ≤ 0.44,
  …, F: DS > 1.00), which closes the gaps of the two-decimal table (0.20 → 0.21) without rounding.

About 800 lines, a section per index, in one module because they share the threshold conventions
above and the scalar/array pairs that the tests hold to the same results.
"""

from __future__ import annotations

import math
import struct
import sys
from bisect import bisect_left, bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from enum import IntEnum, StrEnum
from itertools import pairwise
from types import MappingProxyType
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from pantau.domain import Sensor
from pantau.errors import SensorMetadataError

__all__ = [
    "BMKG_DAILY_MM",
    "BMKG_HOURLY_MM",
    "EPA_PM25_2024",
    "ISPU_P14_2020",
    "ISPU_POLLUTANTS",
    "LOS_DS_UPPER",
    "SIAGA_KEYS",
    "AqiCategory",
    "AtThreshold",
    "DayWindow",
    "EpaAqi",
    "IspuCategories",
    "IspuCategory",
    "IspuSubIndex",
    "IspuSubIndexArray",
    "IspuTable",
    "LevelOfService",
    "RainClass",
    "RainPeriod",
    "SiagaLevel",
    "SiagaThresholds",
    "StationIspu",
    "StationIspuArray",
    "capacity_pcu_h",
    "day_window_max",
    "degree_of_saturation",
    "degree_of_saturation_array",
    "epa_aqi_pm25",
    "epa_aqi_pm25_array",
    "flow_pcu_h",
    "ispu_category",
    "ispu_station",
    "ispu_station_array",
    "ispu_subindex",
    "ispu_subindex_array",
    "level_of_service",
    "level_of_service_array",
    "rain_class",
    "rain_class_array",
    "siaga_level",
    "siaga_level_array",
    "siaga_thresholds",
]

FloatArray = NDArray[np.float64]

# Interpolated indices carry float noise (a true 50.5 can come out as 50.49999999999999); this
# tolerance, far below any meaningful index difference, lets such values round half up as they
# should. Scalar and array code add it in the same order, so both round identically.
_ROUND_EPS = 1e-9
# Degree of saturation is compared with two-decimal bounds; the same tolerance keeps a DS that is
# "exactly" 0.20 up to float noise (e.g. 0.20000000000000004) in the lower class.
_DS_EPS = 1e-9


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5 + _ROUND_EPS)


def _round_half_up_array(values: FloatArray) -> FloatArray:
    return np.floor(values + 0.5 + _ROUND_EPS)


class AtThreshold(StrEnum):
    """Which level a value exactly on a threshold takes (Siaga, BMKG rain)."""

    HIGHER = "higher"  # threshold is the inclusive lower bound of the level above: value >= t
    LOWER = "lower"  # threshold still belongs to the level below: only value > t goes up


def _passed(value: float, thresholds: tuple[float, ...], at_threshold: AtThreshold) -> int:
    """How many of the increasing thresholds the value has reached."""
    if at_threshold is AtThreshold.HIGHER:
        return bisect_right(thresholds, value)
    return bisect_left(thresholds, value)


def _passed_array(values: FloatArray, thresholds: FloatArray, at_threshold: AtThreshold) -> NDArray[np.intp]:
    if at_threshold is AtThreshold.HIGHER:
        return np.searchsorted(thresholds, values, side="right")
    return np.searchsorted(thresholds, values, side="left")


# -- ISPU ------------------------------------------------------------------------------------------

# The seven ISPU parameters by their metric names (pantau.metrics), in the regulation table's order;
# this order also breaks ties for the critical pollutant.
ISPU_POLLUTANTS: tuple[str, ...] = ("pm10", "pm25", "so2", "co", "o3", "no2", "hc")


class IspuCategory(StrEnum):
    """ISPU categories; the value is the slug rule files use."""

    BAIK = "baik"
    SEDANG = "sedang"
    TIDAK_SEHAT = "tidak_sehat"
    SANGAT_TIDAK_SEHAT = "sangat_tidak_sehat"
    BERBAHAYA = "berbahaya"

    @property
    def label(self) -> str:
        """The category as KLHK writes it, e.g. "Tidak Sehat"."""
        return _ISPU_LABELS[self]

    @property
    def colour(self) -> str:
        """The category's colour in the regulation (green, blue, yellow, red, black)."""
        return _ISPU_COLOURS[self]


_ISPU_LABELS = {
    IspuCategory.BAIK: "Baik",
    IspuCategory.SEDANG: "Sedang",
    IspuCategory.TIDAK_SEHAT: "Tidak Sehat",
    IspuCategory.SANGAT_TIDAK_SEHAT: "Sangat Tidak Sehat",
    IspuCategory.BERBAHAYA: "Berbahaya",
}
_ISPU_COLOURS = {
    IspuCategory.BAIK: "green",
    IspuCategory.SEDANG: "blue",
    IspuCategory.TIDAK_SEHAT: "yellow",
    IspuCategory.SANGAT_TIDAK_SEHAT: "red",
    IspuCategory.BERBAHAYA: "black",
}
_ISPU_CATEGORIES = tuple(IspuCategory)


@dataclass(frozen=True, slots=True)
class IspuTable:
    """An ISPU band table: index bounds, per-pollutant concentration bounds (µg/m³), windows.

    `breakpoints[p][k]` is the concentration at index `index_bounds[k]`; both start at 0 and
    increase strictly, so band k runs from `breakpoints[p][k]` to `breakpoints[p][k + 1]`
    (continuous bands). `windows` are the averaging periods the engine feeds in; use
    `with_windows` to change them.
    """

    index_bounds: tuple[float, ...]
    breakpoints: Mapping[str, tuple[float, ...]]
    windows: Mapping[str, timedelta]
    # Arrays for the vectorised path, built once.
    _arrays: Mapping[str, FloatArray] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        bounds = tuple(float(b) for b in self.index_bounds)
        if len(bounds) != len(_ISPU_CATEGORIES) + 1:
            raise ValueError(f"index_bounds: need {len(_ISPU_CATEGORIES) + 1} bounds, one per category edge")
        _check_increasing("index_bounds", bounds)
        points: dict[str, tuple[float, ...]] = {}
        for pollutant, row in self.breakpoints.items():
            values = tuple(float(v) for v in row)
            if len(values) != len(bounds):
                raise ValueError(f"breakpoints[{pollutant}]: need {len(bounds)} values, got {len(values)}")
            _check_increasing(f"breakpoints[{pollutant}]", values)
            points[pollutant] = values
        for pollutant, window in self.windows.items():
            if pollutant not in points:
                raise ValueError(f"windows[{pollutant}]: not a pollutant of this table")
            if window <= timedelta(0):
                raise ValueError(f"windows[{pollutant}]: must be positive")
        object.__setattr__(self, "index_bounds", bounds)
        object.__setattr__(self, "breakpoints", MappingProxyType(points))
        object.__setattr__(self, "windows", MappingProxyType(dict(self.windows)))
        object.__setattr__(
            self, "_arrays", MappingProxyType({p: np.array(v, dtype=np.float64) for p, v in points.items()})
        )

    @property
    def pollutants(self) -> tuple[str, ...]:
        """The pollutants this table covers, in table order."""
        return tuple(self.breakpoints)

    @property
    def top_index(self) -> float:
        """The index at the top of the table (500): the cap."""
        return self.index_bounds[-1]

    def with_windows(self, windows: Mapping[str, timedelta]) -> IspuTable:
        """A copy whose averaging windows are updated from `windows`."""
        return replace(self, windows={**self.windows, **windows})


def _check_increasing(name: str, values: tuple[float, ...]) -> None:
    if values[0] != 0.0:
        raise ValueError(f"{name}: must start at 0")
    if any(not b > a for a, b in pairwise(values)):
        raise ValueError(f"{name}: must increase strictly, got {values}")


ISPU_P14_2020 = IspuTable(
    index_bounds=(0, 50, 100, 200, 300, 500),
    # Upper concentration of each band, µg/m³ (CO too), Permen LHK P.14/MENLHK/SETJEN/KUM.1/7/2020.
    breakpoints={
        "pm10": (0, 50, 150, 350, 420, 500),
        "pm25": (0, 15.5, 55.4, 150.4, 250.4, 500),
        "so2": (0, 52, 180, 400, 800, 1200),
        "co": (0, 4000, 8000, 15000, 30000, 45000),
        "o3": (0, 120, 235, 400, 800, 1000),
        "no2": (0, 80, 200, 1130, 2260, 3000),
        "hc": (0, 45, 100, 215, 432, 648),
    },
    # The older regulation's averaging periods (the 2020 annex was not checked): DOMAIN.md.
    windows={
        "pm10": timedelta(hours=24),
        "pm25": timedelta(hours=24),
        "so2": timedelta(hours=24),
        "co": timedelta(hours=8),
        "o3": timedelta(hours=1),
        "no2": timedelta(hours=1),
        "hc": timedelta(hours=3),
    },
)


def ispu_category(index: float, *, table: IspuTable = ISPU_P14_2020) -> IspuCategory:
    """The category of an (integer) ISPU: 0–50 Baik, 51–100 Sedang, …, above 300 Berbahaya."""
    if math.isnan(index) or index < 0:
        raise ValueError(f"ISPU {index!r} has no category")
    # Band k holds (bound[k], bound[k + 1]]; 0 is Baik.
    return _ISPU_CATEGORIES[max(0, min(bisect_left(table.index_bounds, index) - 1, len(_ISPU_CATEGORIES) - 1))]


@dataclass(frozen=True, slots=True)
class IspuSubIndex:
    """One pollutant's ISPU sub-index."""

    pollutant: str
    concentration: float  # µg/m³, averaged over the pollutant's window
    value: float  # interpolated, unrounded, capped at the table top
    index: int  # `value` rounded half up: the reported ISPU
    beyond: bool  # the concentration is above the table top ("beyond index"); `index` is the cap
    category: IspuCategory


def _breakpoints(pollutant: str, table: IspuTable) -> tuple[float, ...]:
    try:
        return table.breakpoints[pollutant]
    except KeyError:
        raise ValueError(f"{pollutant!r} is not an ISPU pollutant ({', '.join(table.pollutants)})") from None


def ispu_subindex(pollutant: str, concentration: float, *, table: IspuTable = ISPU_P14_2020) -> IspuSubIndex:
    """The ISPU sub-index of one pollutant's averaged concentration (µg/m³, not negative)."""
    xs = _breakpoints(pollutant, table)
    x = float(concentration)
    if math.isnan(x) or x < 0:
        raise ValueError(f"{pollutant}: concentration {concentration!r} must be a number ≥ 0")
    bands = len(xs) - 1
    beyond = x > xs[-1]
    if beyond:
        value = table.top_index
    else:
        band = max(0, min(bisect_left(xs, x) - 1, bands - 1))
        xb, xa = xs[band], xs[band + 1]
        ib, ia = table.index_bounds[band], table.index_bounds[band + 1]
        value = min((ia - ib) / (xa - xb) * (x - xb) + ib, table.top_index)
    index = _round_half_up(value)
    return IspuSubIndex(pollutant, x, value, index, beyond, ispu_category(index, table=table))


@dataclass(frozen=True, slots=True)
class IspuSubIndexArray:
    """Sub-indices of many concentrations of one pollutant; NaN marks a missing concentration."""

    pollutant: str
    value: FloatArray  # unrounded, capped; NaN where the concentration is NaN
    index: FloatArray  # whole numbers (float so NaN can mark missing)
    beyond: NDArray[np.bool_]


def ispu_subindex_array(
    pollutant: str, concentrations: ArrayLike, *, table: IspuTable = ISPU_P14_2020
) -> IspuSubIndexArray:
    """`ispu_subindex` over an array (same results); NaN in, NaN out; negative values are an error."""
    _breakpoints(pollutant, table)
    xs = table._arrays[pollutant]
    x = np.asarray(concentrations, dtype=np.float64)
    if np.any(x < 0):
        raise ValueError(f"{pollutant}: concentrations must be ≥ 0")
    bounds = np.asarray(table.index_bounds, dtype=np.float64)
    bands = len(xs) - 1
    band = np.clip(np.searchsorted(xs, x, side="left") - 1, 0, bands - 1)
    xb, xa = xs[band], xs[band + 1]
    ib, ia = bounds[band], bounds[band + 1]
    with np.errstate(invalid="ignore"):  # inf - xb etc. for beyond values; replaced below
        value = np.minimum((ia - ib) / (xa - xb) * (x - xb) + ib, table.top_index)
    beyond = x > xs[-1]  # NaN compares False
    value = np.where(beyond, table.top_index, value)
    return IspuSubIndexArray(pollutant, value, _round_half_up_array(value), beyond)


class IspuCategories:
    """A table's categories straight from averaged concentrations, for the per-reading path.

    The rule engine needs a station's *category* at every reading and its index and critical
    pollutant only when an alert moves. A sub-index's category is a non-decreasing function of the
    concentration (the interpolation is monotone, and so are rounding and banding: the property
    tests in tests/unit/test_indices.py), so for each pollutant it steps up at fixed
    concentrations: `edges[pollutant][k - 1]` is the smallest double whose category is the k-th
    or worse. They are found once per table by bisecting over the doubles themselves (ordered
    like their bit patterns when not negative) with `ispu_subindex` as the oracle, so
    `rank(pollutant, c)` agrees with `ispu_subindex(pollutant, c).category` for every c ≥ 0 by
    construction, not to within a tolerance. A station's category is the worst of its pollutants'
    (`ispu_station` takes the highest sub-index, and the category is monotone in it).
    """

    __slots__ = ("edges", "order")

    def __init__(self, table: IspuTable = ISPU_P14_2020) -> None:
        self.order: tuple[IspuCategory, ...] = _ISPU_CATEGORIES
        self.edges: Mapping[str, tuple[float, ...]] = MappingProxyType(
            {p: tuple(_lowest_at(p, k, table) for k in range(1, len(self.order))) for p in table.pollutants}
        )

    def rank(self, pollutant: str, concentration: float) -> int:
        """The index in `order` of the pollutant's sub-index category at this concentration (≥ 0).

        A negative concentration ranks as 0 would (Baik). NaN is not checked (a bisection puts it
        at the top): leave it out first, as `ispu_station` does.
        """
        return bisect_right(self.edges[pollutant], concentration)


def _bits(x: float) -> int:
    return int.from_bytes(struct.pack("<d", x), "little")


def _double(bits: int) -> float:
    return float(struct.unpack("<d", bits.to_bytes(8, "little"))[0])


def _lowest_at(pollutant: str, k: int, table: IspuTable) -> float:
    """The smallest double ≥ 0 whose sub-index category is the k-th or worse (inf if none is)."""

    def reaches(x: float) -> bool:
        return _ISPU_CATEGORIES.index(ispu_subindex(pollutant, x, table=table).category) >= k

    lo, hi = _bits(0.0), _bits(sys.float_info.max)  # reaches(lo) is False for k ≥ 1 (0 is Baik)
    if not reaches(_double(hi)):
        return math.inf
    while hi - lo > 1:  # invariant: not reaches(lo), reaches(hi)
        mid = (lo + hi) // 2
        if reaches(_double(mid)):
            hi = mid
        else:
            lo = mid
    return _double(hi)


@dataclass(frozen=True, slots=True)
class StationIspu:
    """A station's ISPU: the highest sub-index and its pollutant ("parameter kritis")."""

    index: int
    category: IspuCategory
    critical: str
    beyond: bool
    sub_indices: Mapping[str, IspuSubIndex]


def _critical_key(sub: IspuSubIndex) -> tuple[bool, float]:
    return (sub.beyond, sub.value)


def ispu_station(concentrations: Mapping[str, float | None], *, table: IspuTable = ISPU_P14_2020) -> StationIspu | None:
    """The station ISPU from its pollutants' averaged concentrations; None or NaN values are skipped.

    Returns None when no pollutant has a value. Unknown pollutant names are an error (a typo must
    not drop a pollutant silently).
    """
    subs: dict[str, IspuSubIndex] = {}
    for pollutant in concentrations:
        _breakpoints(pollutant, table)
    for pollutant in table.pollutants:  # table order, so ties go to the earlier pollutant
        value = concentrations.get(pollutant)
        if value is None or math.isnan(value):
            continue
        subs[pollutant] = ispu_subindex(pollutant, value, table=table)
    if not subs:
        return None
    top = max(subs.values(), key=_critical_key)  # max keeps the first of equal keys
    return StationIspu(top.index, top.category, top.pollutant, top.beyond, MappingProxyType(subs))


@dataclass(frozen=True, slots=True)
class DayWindow:
    """The day's highest window mean of one pollutant: over hours [start, start + width) of the day."""

    mean: float
    start: int  # the window's first hour of the day (0-23)
    width: int  # hours
    n: int  # readings in the window
    hours: int  # hours of the window with at least one reading


def day_window_max(hours: Sequence[tuple[int, float] | None], width: int) -> DayWindow | None:
    """The highest mean over `width` consecutive whole hours lying within one day.

    `hours` holds the day's 24 hours in order, each (readings, sum) or None when it has none. The
    daily ISPU takes, per pollutant, the worst window of its averaging period inside the local day
    (for a 24 h period, the day's mean), so a day's report depends on that day's readings only. A
    window's mean is the mean of its readings; a window with none is skipped. None: no reading at all.
    """
    if not 1 <= width <= len(hours):
        raise ValueError(f"window of {width} h does not fit in a day of {len(hours)} h")
    best: DayWindow | None = None
    for start in range(len(hours) - width + 1):
        span = [h for h in hours[start : start + width] if h is not None and h[0] > 0]
        n = sum(h[0] for h in span)
        if n == 0:
            continue
        mean = sum(h[1] for h in span) / n
        if best is None or mean > best.mean:
            best = DayWindow(mean, start, width, n, len(span))
    return best


@dataclass(frozen=True, slots=True)
class StationIspuArray:
    """Station ISPU for many stations (or many times of one station)."""

    index: FloatArray  # whole numbers; NaN where no pollutant had a value
    critical: NDArray[np.str_]  # pollutant name; "" where no pollutant had a value
    beyond: NDArray[np.bool_]
    sub_indices: Mapping[str, IspuSubIndexArray]


def ispu_station_array(
    concentrations: Mapping[str, ArrayLike], *, table: IspuTable = ISPU_P14_2020
) -> StationIspuArray:
    """`ispu_station` over arrays of equal shape, one per pollutant (NaN = missing)."""
    for pollutant in concentrations:
        _breakpoints(pollutant, table)
    names = [p for p in table.pollutants if p in concentrations]
    if not names:
        raise ValueError("no ISPU pollutant given")
    subs = {p: ispu_subindex_array(p, concentrations[p], table=table) for p in names}
    # Rank key: beyond first (a beyond pollutant outranks one exactly at the cap), then the value.
    keys = np.stack([np.where(s.beyond, s.value + 1.0, s.value) for s in subs.values()])
    keys = np.where(np.isnan(keys), -np.inf, keys)
    best = np.argmax(keys, axis=0)  # the first maximum: table order breaks ties
    missing = np.all(np.isinf(keys), axis=0)
    values = np.stack([s.value for s in subs.values()])
    beyond = np.stack([s.beyond for s in subs.values()])
    chosen = np.take_along_axis(values, best[np.newaxis], axis=0)[0]
    index = np.where(missing, np.nan, _round_half_up_array(chosen))
    critical = np.where(missing, "", np.asarray(names)[best])
    chosen_beyond = np.take_along_axis(beyond, best[np.newaxis], axis=0)[0] & ~missing
    return StationIspuArray(index, critical, chosen_beyond, MappingProxyType(subs))


# -- US EPA AQI (PM2.5), a secondary index --------------------------------------------------------


class AqiCategory(StrEnum):
    """US EPA AQI categories."""

    GOOD = "good"
    MODERATE = "moderate"
    UNHEALTHY_SENSITIVE = "unhealthy_for_sensitive_groups"
    UNHEALTHY = "unhealthy"
    VERY_UNHEALTHY = "very_unhealthy"
    HAZARDOUS = "hazardous"

    @property
    def colour(self) -> str:
        """The EPA colour."""
        return _AQI_COLOURS[self]


_AQI_COLOURS = dict(zip(AqiCategory, ("green", "yellow", "orange", "red", "purple", "maroon"), strict=True))

# (C_low, C_high, I_low, I_high) µg/m³ 24 h, from May 2024. The bands leave 0.1 gaps because EPA
# truncates PM2.5 to one decimal before looking up the band.
EPA_PM25_2024: tuple[tuple[float, float, int, int], ...] = (
    (0.0, 9.0, 0, 50),
    (9.1, 35.4, 51, 100),
    (35.5, 55.4, 101, 150),
    (55.5, 125.4, 151, 200),
    (125.5, 225.4, 201, 300),
    (225.5, 325.4, 301, 500),
)
_EPA_LOW = np.array([b[0] for b in EPA_PM25_2024])
_EPA_HIGH = np.array([b[1] for b in EPA_PM25_2024])
_EPA_ILOW = np.array([b[2] for b in EPA_PM25_2024], dtype=np.float64)
_EPA_IHIGH = np.array([b[3] for b in EPA_PM25_2024], dtype=np.float64)
_AQI_CATEGORIES = tuple(AqiCategory)


@dataclass(frozen=True, slots=True)
class EpaAqi:
    """US EPA AQI for PM2.5."""

    concentration: float  # as given, µg/m³ (24 h)
    index: int
    beyond: bool  # above 325.4 µg/m³: capped at 500
    category: AqiCategory


def _truncate_1dp(x: float) -> float:
    # EPA truncates, not rounds; the tolerance stops 9.3 (stored as 9.2999…) becoming 9.2.
    return math.floor(x * 10 + _ROUND_EPS) / 10


def epa_aqi_pm25(concentration: float) -> EpaAqi:
    """The US EPA AQI (May 2024 breakpoints) of a 24 h PM2.5 concentration (µg/m³)."""
    x = float(concentration)
    if math.isnan(x) or x < 0:
        raise ValueError(f"pm25: concentration {concentration!r} must be a number ≥ 0")
    c = _truncate_1dp(x)
    top = EPA_PM25_2024[-1]
    if c > top[1]:
        return EpaAqi(x, top[3], True, AqiCategory.HAZARDOUS)
    band = bisect_right([b[0] for b in EPA_PM25_2024], c) - 1
    c_lo, c_hi, i_lo, i_hi = EPA_PM25_2024[band]
    index = _round_half_up((i_hi - i_lo) / (c_hi - c_lo) * (c - c_lo) + i_lo)
    return EpaAqi(x, index, False, _AQI_CATEGORIES[band])


def epa_aqi_pm25_array(concentrations: ArrayLike) -> tuple[FloatArray, NDArray[np.bool_]]:
    """`epa_aqi_pm25` over an array: (index as whole-number floats, NaN where missing; beyond)."""
    x = np.asarray(concentrations, dtype=np.float64)
    if np.any(x < 0):
        raise ValueError("pm25: concentrations must be ≥ 0")
    c = np.floor(x * 10 + _ROUND_EPS) / 10
    band = np.clip(np.searchsorted(_EPA_LOW, c, side="right") - 1, 0, len(EPA_PM25_2024) - 1)
    c_lo, c_hi = _EPA_LOW[band], _EPA_HIGH[band]
    i_lo, i_hi = _EPA_ILOW[band], _EPA_IHIGH[band]
    with np.errstate(invalid="ignore"):
        raw = (i_hi - i_lo) / (c_hi - c_lo) * (c - c_lo) + i_lo
    beyond = c > _EPA_HIGH[-1]
    index = np.where(beyond, _EPA_IHIGH[-1], _round_half_up_array(raw))
    return index, beyond


# -- Flood: Siaga levels ---------------------------------------------------------------------------


class SiagaLevel(IntEnum):
    """Jakarta water agency / BPBD status levels; the number is the Siaga number (1 = worst)."""

    AWAS = 1
    SIAGA = 2
    WASPADA = 3
    NORMAL = 4

    @property
    def slug(self) -> str:
        """The name rule files use: normal, waspada, siaga, awas."""
        return self.name.lower()

    @property
    def label(self) -> str:
        """E.g. "Siaga 3 (Waspada)"."""
        return f"Siaga {self.value} ({self.name.capitalize()})"

    @classmethod
    def from_slug(cls, slug: str) -> SiagaLevel:
        """The level named by a slug (normal, waspada, siaga, awas)."""
        try:
            return cls[slug.upper()]
        except KeyError:
            raise ValueError(f"{slug!r} is not a Siaga level (normal, waspada, siaga, awas)") from None


# Metadata keys of a gauge's thresholds: the lower bounds (cm above gauge datum) of Waspada, Siaga
# and Awas, the convention of simulators/fleets/*.yaml.
SIAGA_KEYS = ("siaga3_cm", "siaga2_cm", "siaga1_cm")


@dataclass(frozen=True, slots=True)
class SiagaThresholds:
    """One gauge's thresholds (cm): where Waspada, Siaga and Awas begin; strictly increasing."""

    waspada_cm: float
    siaga_cm: float
    awas_cm: float

    def __post_init__(self) -> None:
        if not self.waspada_cm < self.siaga_cm < self.awas_cm:
            raise ValueError(
                f"thresholds must increase: siaga3_cm={self.waspada_cm} < siaga2_cm={self.siaga_cm}"
                f" < siaga1_cm={self.awas_cm}"
            )

    def as_tuple(self) -> tuple[float, float, float]:
        """(waspada, siaga, awas) in cm."""
        return (self.waspada_cm, self.siaga_cm, self.awas_cm)


def _metadata_number(sensor: Sensor, key: str, need: str) -> float:
    if key not in sensor.metadata:
        raise SensorMetadataError(sensor.id, key, f"missing (needed for {need})")
    raw: Any = sensor.metadata[key]
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise SensorMetadataError(sensor.id, key, f"{raw!r} is not a finite number")
    return float(raw)


def siaga_thresholds(sensor: Sensor) -> SiagaThresholds:
    """A gauge's thresholds from its metadata (`siaga3_cm`, `siaga2_cm`, `siaga1_cm`)."""
    values = [_metadata_number(sensor, key, "Siaga levels") for key in SIAGA_KEYS]
    for (previous, low), (key, high) in pairwise(zip(SIAGA_KEYS, values, strict=True)):
        if not high > low:
            raise SensorMetadataError(
                sensor.id, key, f"{high:g} must be above {previous}={low:g} (thresholds must increase)"
            )
    return SiagaThresholds(*values)


def siaga_level(
    level_cm: float, thresholds: SiagaThresholds, *, at_threshold: AtThreshold = AtThreshold.HIGHER
) -> SiagaLevel:
    """The Siaga level of a water level; see `AtThreshold` for a level exactly on a threshold."""
    if math.isnan(level_cm):
        raise ValueError("a missing water level has no Siaga level")
    return SiagaLevel(4 - _passed(level_cm, thresholds.as_tuple(), at_threshold))


def siaga_level_array(
    levels_cm: ArrayLike,
    waspada_cm: ArrayLike,
    siaga_cm: ArrayLike,
    awas_cm: ArrayLike,
    *,
    at_threshold: AtThreshold = AtThreshold.HIGHER,
) -> NDArray[np.int8]:
    """`siaga_level` over arrays (thresholds broadcast per gauge); 0 where the level is NaN."""
    x = np.asarray(levels_cm, dtype=np.float64)
    cmp = np.greater_equal if at_threshold is AtThreshold.HIGHER else np.greater
    passed = (
        cmp(x, np.asarray(waspada_cm, dtype=np.float64)).astype(np.int8)
        + cmp(x, np.asarray(siaga_cm, dtype=np.float64))
        + cmp(x, np.asarray(awas_cm, dtype=np.float64))
    )
    return np.where(np.isnan(x), 0, 4 - passed).astype(np.int8)


# -- Rain: BMKG intensity classes ------------------------------------------------------------------


class RainPeriod(StrEnum):
    """The accumulation period a BMKG class table is for."""

    HOURLY = "hourly"  # mm in one hour
    DAILY = "daily"  # mm in one day


class RainClass(StrEnum):
    """BMKG rain intensity classes; NONE is below the lowest (dry, or traces)."""

    NONE = "none"
    RINGAN = "ringan"
    SEDANG = "sedang"
    LEBAT = "lebat"
    SANGAT_LEBAT = "sangat_lebat"
    EKSTREM = "ekstrem"  # daily table only


# Lower bound (mm) of each class, BMKG.
BMKG_HOURLY_MM: tuple[tuple[float, RainClass], ...] = (
    (1.0, RainClass.RINGAN),
    (5.0, RainClass.SEDANG),
    (10.0, RainClass.LEBAT),
    (20.0, RainClass.SANGAT_LEBAT),
)
BMKG_DAILY_MM: tuple[tuple[float, RainClass], ...] = (
    (0.5, RainClass.RINGAN),
    (20.0, RainClass.SEDANG),
    (50.0, RainClass.LEBAT),
    (100.0, RainClass.SANGAT_LEBAT),
    (150.0, RainClass.EKSTREM),
)
_RAIN_TABLES = {RainPeriod.HOURLY: BMKG_HOURLY_MM, RainPeriod.DAILY: BMKG_DAILY_MM}


def rain_class(
    amount_mm: float, period: RainPeriod | str, *, at_threshold: AtThreshold = AtThreshold.HIGHER
) -> RainClass:
    """The BMKG class of rain accumulated over one hour or one day (mm)."""
    table = _RAIN_TABLES[RainPeriod(period)]
    if math.isnan(amount_mm) or amount_mm < 0:
        raise ValueError(f"rain amount {amount_mm!r} must be a number ≥ 0")
    passed = _passed(amount_mm, tuple(t for t, _ in table), at_threshold)
    return RainClass.NONE if passed == 0 else table[passed - 1][1]


def rain_class_array(
    amounts_mm: ArrayLike, period: RainPeriod | str, *, at_threshold: AtThreshold = AtThreshold.HIGHER
) -> NDArray[np.str_]:
    """`rain_class` over an array: class slugs ("" where the amount is NaN)."""
    table = _RAIN_TABLES[RainPeriod(period)]
    x = np.asarray(amounts_mm, dtype=np.float64)
    passed = _passed_array(x, np.array([t for t, _ in table]), at_threshold)
    names = np.array([RainClass.NONE.value, *(c.value for _, c in table)])
    return np.where(np.isnan(x), "", names[passed])


# -- Traffic: degree of saturation and level of service --------------------------------------------


class LevelOfService(StrEnum):
    """Level of service by degree of saturation (Permenhub PM 96/2015)."""

    A = "A"
    B = "B"
    C = "C"
    D = "D"
    E = "E"
    F = "F"


# Inclusive upper DS bound of A, B, C, D, E; above the last is F.
LOS_DS_UPPER: tuple[float, ...] = (0.20, 0.44, 0.74, 0.84, 1.00)
_LOS = tuple(LevelOfService)


def capacity_pcu_h(sensor: Sensor) -> float:
    """A traffic counter's corridor capacity (pcu/h) from its metadata `capacity_pcu_h`."""
    value = _metadata_number(sensor, "capacity_pcu_h", "degree of saturation")
    if value <= 0:
        raise SensorMetadataError(sensor.id, "capacity_pcu_h", f"{value:g} must be positive")
    return value


def flow_pcu_h(vehicle_count: float, interval_s: float, *, pcu_factor: float = 1.0) -> float:
    """Flow in passenger-car units per hour from a count over an interval.

    `pcu_factor` is the mean pcu per counted vehicle. 1.0 counts every vehicle as a car, which
    overstates flow where motorcycles dominate (PKJI weighs a motorcycle well below one car); set
    it per rule for the local mix.
    """
    if interval_s <= 0:
        raise ValueError(f"interval_s {interval_s!r} must be positive")
    return vehicle_count * pcu_factor * 3600.0 / interval_s


def degree_of_saturation(flow: float, capacity: float) -> float:
    """DS = flow / capacity, both in pcu/h (PKJI 2023)."""
    if capacity <= 0:
        raise ValueError(f"capacity {capacity!r} must be positive")
    return flow / capacity


def degree_of_saturation_array(
    vehicle_count: ArrayLike, interval_s: ArrayLike, capacity: ArrayLike, *, pcu_factor: float = 1.0
) -> FloatArray:
    """DS for arrays of counts, intervals (s) and capacities (pcu/h), broadcast together."""
    count = np.asarray(vehicle_count, dtype=np.float64)
    interval = np.asarray(interval_s, dtype=np.float64)
    cap = np.asarray(capacity, dtype=np.float64)
    if np.any(interval <= 0) or np.any(cap <= 0):
        raise ValueError("intervals and capacities must be positive")
    # Same operation order as flow_pcu_h then degree_of_saturation, so results match exactly.
    return count * pcu_factor * 3600.0 / interval / cap


def _check_los_bounds(upper_bounds: tuple[float, ...]) -> None:
    if len(upper_bounds) != len(_LOS) - 1 or any(not b > a for a, b in pairwise(upper_bounds)):
        raise ValueError(f"upper_bounds: need {len(_LOS) - 1} increasing bounds (A to E), got {upper_bounds}")


def level_of_service(ds: float, *, upper_bounds: tuple[float, ...] = LOS_DS_UPPER) -> LevelOfService:
    """The level of service of a degree of saturation; each upper bound is inclusive."""
    if math.isnan(ds) or ds < 0:
        raise ValueError(f"degree of saturation {ds!r} must be a number ≥ 0")
    _check_los_bounds(upper_bounds)
    return _LOS[bisect_left(upper_bounds, ds - _DS_EPS)]


def level_of_service_array(ds: ArrayLike, *, upper_bounds: tuple[float, ...] = LOS_DS_UPPER) -> NDArray[np.str_]:
    """`level_of_service` over an array: letters ("" where DS is NaN)."""
    _check_los_bounds(upper_bounds)
    x = np.asarray(ds, dtype=np.float64)
    passed = np.searchsorted(np.asarray(upper_bounds), x - _DS_EPS, side="left")
    letters = np.array([los.value for los in _LOS])
    return np.where(np.isnan(x), "", letters[np.minimum(passed, len(_LOS) - 1)])


# -- what a sensor's trend chart draws -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrendLine:
    """Where a category begins on a sensor's trend: the value (an ISPU band's values lie above its
    line, a Siaga level's from its line up), the category's label, and its colour key (an ISPU
    colour name, or `siaga1`..`siaga3`)."""

    value: float
    label: str
    colour: str


def trend_lines(sensor: Sensor, *, table: IspuTable = ISPU_P14_2020) -> dict[str, tuple[TrendLine, ...]]:
    """Per metric, the category bounds a sensor's trend is read against: an air station's PM2.5 at
    the ISPU bands' lower bounds (the bands of its 24 h mean), a gauge's water level where Waspada,
    Siaga and Awas begin (none when its metadata has no valid thresholds)."""
    if sensor.kind == "air":
        bounds = table.breakpoints["pm25"]
        return {"pm25": tuple(TrendLine(bounds[k], c.label, c.colour) for k, c in enumerate(_ISPU_CATEGORIES) if k)}
    if sensor.kind == "flood":
        try:
            levels = siaga_thresholds(sensor)
        except SensorMetadataError:
            return {}
        starts = zip((SiagaLevel.WASPADA, SiagaLevel.SIAGA, SiagaLevel.AWAS), levels.as_tuple(), strict=True)
        return {"water_level_cm": tuple(TrendLine(cm, level.label, f"siaga{level.value}") for level, cm in starts)}
    return {}
