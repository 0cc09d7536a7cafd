"""The metric registry: every quantity a pantau sensor may report, with unit and plausible range.

This is the one place metric names, canonical units, accepted SenML units (with conversions) and
plausible ranges live. Ingest validates against it, simulators generate within it, rules and the
API label with it. Ranges are deliberately wide: they reject broken sensors, not bad air. PM
limits admit the 2015 Central Kalimantan haze, when PM10 passed 3,000 µg/m³.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class SensorKind(StrEnum):
    """The sensor families pantau knows; the second topic level after the city."""

    AIR = "air"
    TRAFFIC = "traffic"
    FLOOD = "flood"
    RAIN = "rain"


@dataclass(frozen=True, slots=True)
class Metric:
    """One quantity: name, canonical unit, plausible range and the SenML units it accepts."""

    name: str
    unit: str
    low: float
    high: float
    kinds: frozenset[SensorKind]
    description: str
    # SenML unit symbol -> (factor, offset) into the canonical unit: canonical = v * factor + offset.
    senml_units: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(f"metric {self.name}: low must be below high")

    def plausible(self, value: float) -> bool:
        """True when value lies in the plausible range (inclusive)."""
        return self.low <= value <= self.high


_AIR = frozenset({SensorKind.AIR})
_TRAFFIC = frozenset({SensorKind.TRAFFIC})
# Weather values come from air stations and from rain gauges with a thermo-hygrometer.
_WEATHER = frozenset({SensorKind.AIR, SensorKind.RAIN, SensorKind.FLOOD})
# µg/m³ has no registered SenML symbol; accept the common spellings and the registered kg/m3.
_MASS_CONC = {"ug/m3": (1.0, 0.0), "µg/m3": (1.0, 0.0), "ug/m^3": (1.0, 0.0), "kg/m3": (1e9, 0.0)}


def _pollutant(name: str, high: float, description: str) -> Metric:
    return Metric(name, "µg/m³", 0.0, high, _AIR, description, _MASS_CONC)


METRICS: Mapping[str, Metric] = {
    m.name: m
    for m in (
        _pollutant("pm25", 2000.0, "fine particulate matter PM2.5"),
        _pollutant("pm10", 5000.0, "particulate matter PM10"),
        _pollutant("co", 100000.0, "carbon monoxide"),
        _pollutant("no2", 5000.0, "nitrogen dioxide"),
        _pollutant("o3", 2000.0, "ozone"),
        _pollutant("so2", 5000.0, "sulphur dioxide"),
        _pollutant("hc", 5000.0, "hydrocarbons"),
        Metric(
            "temperature_c", "°C", -20.0, 60.0, _WEATHER, "air temperature", {"Cel": (1.0, 0.0), "K": (1.0, -273.15)}
        ),
        Metric("humidity_pct", "%", 0.0, 100.0, _WEATHER, "relative humidity", {"%RH": (1.0, 0.0), "%": (1.0, 0.0)}),
        Metric(
            "vehicle_count",
            "vehicles",
            0.0,
            100000.0,
            _TRAFFIC,
            "vehicles counted in the interval",
            {"count": (1.0, 0.0), "1": (1.0, 0.0)},
        ),
        Metric(
            "interval_s",
            "s",
            1.0,
            86400.0,
            _TRAFFIC,
            "length of the counting interval",
            {"s": (1.0, 0.0), "min": (60.0, 0.0)},
        ),
        Metric(
            "avg_speed_kmh",
            "km/h",
            0.0,
            250.0,
            _TRAFFIC,
            "average vehicle speed",
            {"km/h": (1.0, 0.0), "m/s": (3.6, 0.0)},
        ),
        Metric(
            "occupancy",
            "ratio",
            0.0,
            1.0,
            _TRAFFIC,
            "share of time the detector is occupied",
            {"/": (1.0, 0.0), "%": (0.01, 0.0)},
        ),
        Metric(
            "water_level_cm",
            "cm",
            -1000.0,
            10000.0,
            frozenset({SensorKind.FLOOD}),
            "river water level above the gauge datum",
            {"cm": (1.0, 0.0), "m": (100.0, 0.0), "mm": (0.1, 0.0)},
        ),
        Metric(
            "rain_mm",
            "mm",
            0.0,
            500.0,
            frozenset({SensorKind.RAIN, SensorKind.FLOOD}),
            "rainfall in the reporting interval",
            {"mm": (1.0, 0.0), "m": (1000.0, 0.0)},
        ),
    )
}


def metrics_for(kind: SensorKind) -> list[Metric]:
    """The metrics a sensor of this kind may report."""
    return [m for m in METRICS.values() if kind in m.kinds]
