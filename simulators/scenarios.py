"""Scenarios: named, composable bundles of events (storms, incidents, haze, outages) and fault rates.

A scenario is data. The named ones are `normal-day`, `rush-hour-jam`, `haze-episode`,
`flash-flood` and `sensor-outage`; `a+b` composes them (factors multiply, events add up, later
fault rates win). A YAML file can define one:

    name: banjir-dan-macet
    include: [flash-flood, rush-hour-jam]
    traffic_factor: 1.1
    storms: [{at: "14:00", duration_h: 3, peak_mmh: 70, over: upstream}]
    faults: {dropout: 0.002, malformed: 0.001}

Event times (`at`) are either "HH:MM" (the first such local time at or after the start) or "+D"
with a duration such as "+2h" or "+90m" (after the start). Incidents with `daily: true` repeat
every day at the same local time.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pantau.errors import ConfigError
from pantau.yamlfile import YamlFileError, read_yaml

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, None: 1.0}
_CLOCK_RE = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


def parse_duration(key: str, text: str | float) -> float:
    """Seconds from "90s", "15m", "2h", "3d" or a bare number of seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    m = _DURATION_RE.match(str(text))
    if not m:
        raise ConfigError(key, f"expected a duration such as 90s, 15m, 2h or 3d, got {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass(frozen=True, slots=True)
class At:
    """When an event happens: a local clock time ("07:00") or an offset from the start ("+2h")."""

    clock_s: float | None = None
    offset_s: float | None = None

    @classmethod
    def parse(cls, key: str, raw: Any) -> At:
        text = str(raw).strip()
        if text.startswith("+"):
            return cls(offset_s=parse_duration(key, text[1:]))
        m = _CLOCK_RE.match(text)
        if m:
            return cls(clock_s=int(m.group(1)) * 3600.0 + int(m.group(2)) * 60.0)
        raise ConfigError(key, f'expected a local time "HH:MM" or an offset "+2h", got {raw!r}')

    def resolve(self, start: float, utc_offset_h: float) -> float:
        """The event's epoch time for a simulation starting at `start` in a city at that offset."""
        if self.offset_s is not None:
            return start + self.offset_s
        assert self.clock_s is not None
        local = start + utc_offset_h * 3600.0
        midnight = local - local % 86400.0
        t = midnight + self.clock_s
        if t < local:
            t += 86400.0
        return t - utc_offset_h * 3600.0


@dataclass(frozen=True, slots=True)
class Incident:
    """A crash or breakdown cutting a corridor's capacity to `capacity_factor` for a while."""

    at: At
    duration_h: float = 1.0
    capacity_factor: float = 0.5
    # Substring of the corridor name or sensor id; empty = the busiest corridors (`count` of them).
    corridor: str = ""
    count: int = 1
    daily: bool = False


@dataclass(frozen=True, slots=True)
class Storm:
    """A storm cell placed on purpose: `over` is "upstream" (each river's upper catchment),
    "city" (the city centre) or a river name."""

    at: At
    duration_h: float = 3.0
    peak_mmh: float = 50.0
    over: str = "upstream"
    radius_km: float | None = None


@dataclass(frozen=True, slots=True)
class Haze:
    """Smoke from land and forest fires: extra PM2.5 (µg/m³) at the plateau, with ramps."""

    at: At
    duration_h: float = 72.0
    peak_pm25: float = 250.0
    ramp_h: float = 8.0


@dataclass(frozen=True, slots=True)
class Outage:
    """Sensors going silent together (a power cut in a district, a gateway failure)."""

    at: At
    duration_h: float = 3.0
    district: str = ""  # empty = the fleet's first district
    kind: str = ""  # empty = every kind
    fraction: float = 1.0


@dataclass(frozen=True, slots=True)
class Scenario:
    """Everything that makes one simulated period differ from another."""

    name: str = "normal-day"
    traffic_factor: float = 1.0
    rain_factor: float = 1.0
    # Random incidents per corridor per hour (a crash a week or so on each corridor).
    incident_rate_per_h: float = 0.005
    incidents: tuple[Incident, ...] = ()
    storms: tuple[Storm, ...] = ()
    haze: tuple[Haze, ...] = ()
    outages: tuple[Outage, ...] = ()
    faults: Mapping[str, float] = field(default_factory=dict)

    def __add__(self, other: Scenario) -> Scenario:
        return Scenario(
            name=f"{self.name}+{other.name}",
            traffic_factor=self.traffic_factor * other.traffic_factor,
            rain_factor=self.rain_factor * other.rain_factor,
            incident_rate_per_h=max(self.incident_rate_per_h, other.incident_rate_per_h),
            incidents=self.incidents + other.incidents,
            storms=self.storms + other.storms,
            haze=self.haze + other.haze,
            outages=self.outages + other.outages,
            faults={**self.faults, **other.faults},
        )


NAMED: dict[str, Scenario] = {
    "normal-day": Scenario(),
    # Weekday demand a little above normal and a crash on the two busiest corridors in each peak.
    "rush-hour-jam": Scenario(
        name="rush-hour-jam",
        traffic_factor=1.15,
        incidents=(
            Incident(At.parse("at", "06:45"), duration_h=1.5, capacity_factor=0.45, count=2, daily=True),
            Incident(At.parse("at", "16:45"), duration_h=2.0, capacity_factor=0.5, count=2, daily=True),
        ),
    ),
    # Peat and forest fire smoke as over Central Kalimantan in 2015 and 2019: dry, days long.
    "haze-episode": Scenario(
        name="haze-episode",
        rain_factor=0.2,
        haze=(Haze(At.parse("at", "+0h"), duration_h=96.0, peak_pm25=260.0, ramp_h=6.0),),
    ),
    # A stationary afternoon downpour (BMKG "sangat lebat", > 20 mm/h) over the upper catchments.
    "flash-flood": Scenario(
        name="flash-flood",
        rain_factor=1.5,
        storms=(Storm(At.parse("at", "13:00"), duration_h=3.0, peak_mmh=60.0, over="upstream"),),
    ),
    # A power cut takes a district's sensors off the air for three hours; a few more drop out.
    "sensor-outage": Scenario(
        name="sensor-outage",
        outages=(Outage(At.parse("at", "+2h"), duration_h=3.0),),
        faults={"dropout": 0.002},
    ),
}


def load_scenario(spec: str) -> Scenario:
    """A named scenario, a YAML file, or several joined with "+" (e.g. "flash-flood+rush-hour-jam")."""
    parts = [p.strip() for p in spec.split("+") if p.strip()]
    if not parts:
        raise ConfigError("--scenario", "no scenario given")
    result: Scenario | None = None
    for part in parts:
        one = _one(part, depth=0)
        result = one if result is None else result + one
    assert result is not None
    return result


def _one(part: str, depth: int) -> Scenario:
    if part in NAMED:
        return NAMED[part]
    path = Path(part)
    if path.suffix.lower() in (".yaml", ".yml") and path.exists():
        return scenario_from_file(path, depth)
    raise ConfigError("--scenario", f"{part!r} is neither a named scenario ({', '.join(NAMED)}) nor a YAML file")


def scenario_from_file(path: Path, depth: int = 0) -> Scenario:
    """A scenario defined in a YAML file; errors name the file and the field."""
    if depth > 5:
        raise ConfigError(str(path), "includes nest too deeply")
    try:
        doc = read_yaml(path)
    except YamlFileError as exc:
        raise ConfigError(str(path), f"cannot read scenario: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(str(path), "expected a mapping")
    known = {f.name for f in dataclasses.fields(Scenario)} | {"include"}
    unknown = set(doc) - known
    if unknown:
        raise ConfigError(f"{path}: {sorted(unknown)[0]}", f"unknown field (known: {', '.join(sorted(known))})")
    base = Scenario(name="")
    for name in _list(path, "include", doc.get("include", [])):
        base = base + _one(str(name), depth + 1)
    own = Scenario(
        name=str(doc.get("name") or path.stem),
        traffic_factor=_positive(path, "traffic_factor", doc.get("traffic_factor", 1.0)),
        rain_factor=_positive(path, "rain_factor", doc.get("rain_factor", 1.0), zero=True),
        incident_rate_per_h=_positive(path, "incident_rate_per_h", doc.get("incident_rate_per_h", 0.0), zero=True),
        incidents=tuple(_event(path, "incidents", i, item, Incident) for i, item in _items(path, "incidents", doc)),
        storms=tuple(_event(path, "storms", i, item, Storm) for i, item in _items(path, "storms", doc)),
        haze=tuple(_event(path, "haze", i, item, Haze) for i, item in _items(path, "haze", doc)),
        outages=tuple(_event(path, "outages", i, item, Outage) for i, item in _items(path, "outages", doc)),
        faults=_faults(path, doc.get("faults", {})),
    )
    combined = base + own
    return dataclasses.replace(combined, name=own.name)


def _list(path: Path, key: str, raw: Any) -> list[Any]:
    if isinstance(raw, str):
        return [raw]
    if not isinstance(raw, list):
        raise ConfigError(f"{path}: {key}", "expected a list")
    return raw


def _items(path: Path, key: str, doc: dict[str, Any]) -> list[tuple[int, Any]]:
    return list(enumerate(_list(path, key, doc.get(key, []))))


def _positive(path: Path, key: str, raw: Any, zero: bool = False) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw < 0 or (raw == 0 and not zero):
        raise ConfigError(f"{path}: {key}", f"expected a {'non-negative' if zero else 'positive'} number, got {raw!r}")
    return float(raw)


def _faults(path: Path, raw: Any) -> dict[str, float]:
    from simulators.faults import FAULTS

    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: faults", "expected a mapping of fault name to rate")
    out = {}
    for name, rate in raw.items():
        if name not in FAULTS:
            raise ConfigError(f"{path}: faults.{name}", f"unknown fault (known: {', '.join(FAULTS)})")
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
            raise ConfigError(f"{path}: faults.{name}", f"expected a rate between 0 and 1, got {rate!r}")
        out[name] = float(rate)
    return out


def _event(path: Path, key: str, i: int, item: Any, cls: type[Any]) -> Any:
    where = f"{path}: {key}[{i}]"
    if not isinstance(item, dict):
        raise ConfigError(where, "expected a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(item) - set(fields)
    if unknown:
        raise ConfigError(f"{where}.{sorted(unknown)[0]}", f"unknown field (known: {', '.join(fields)})")
    if "at" not in item:
        raise ConfigError(f"{where}.at", "is required")
    kwargs: dict[str, Any] = {"at": At.parse(f"{where}.at", item["at"])}
    for name, value in item.items():
        if name == "at":
            continue
        default = fields[name].default
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{where}.{name}", f"expected true or false, got {value!r}")
        elif isinstance(default, str):
            value = str(value)
        elif isinstance(default, int) and not isinstance(default, bool) and name == "count":
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{where}.{name}", f"expected a positive integer, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"{where}.{name}", f"expected a positive number, got {value!r}")
        kwargs[name] = value
    if "capacity_factor" in kwargs and not 0 < kwargs["capacity_factor"] <= 1:
        raise ConfigError(f"{where}.capacity_factor", "expected a factor in (0, 1]")
    if "fraction" in kwargs and not 0 < kwargs["fraction"] <= 1:
        raise ConfigError(f"{where}.fraction", "expected a fraction in (0, 1]")
    return cls(**kwargs)
