"""Fleets: the sensors of a city, with the districts and rivers the models need; scaling to N sensors.

A fleet file is a sensor manifest (`pantau sensors import` loads the same file) with extra
top-level keys that the registry ignores:

    city: sampit
    utc_offset_h: 7                      # local time drives traffic peaks and the day/night cycle
    districts: [{name, lat, lon, radius_km}, ...]
    rivers: [{name, headwater_lat, headwater_lon}, ...]
    sensors: [...]                       # as in any manifest

Metadata the models read (defaults in brackets): traffic `corridor`, `capacity_pcu_h`, `lanes`,
`free_speed_kmh` [50], `peak_ratio` [0.8]; flood `river`, `order` (1 = most upstream),
`siaga3_cm`, `siaga2_cm`, `siaga1_cm`, `base_cm` [half of siaga3], `catchment_km2` [100],
`lag_h` [2] (travel time from the next gauge upstream), `recession_h` [3]; rain `river`, `order`;
air `traffic_weight` [0.6] (0 background .. 1 roadside).
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pantau.domain import Sensor
from pantau.errors import ManifestError
from pantau.metrics import SensorKind
from pantau.sensors import CSV_COLUMNS, load_manifest
from pantau.yamlfile import read_yaml

FLEET_DIR = Path(__file__).resolve().parent / "fleets"
CITIES = ("kotamobagu", "mojokerto", "sampang", "sampit")
KM_PER_DEG = 111.32


@dataclass(frozen=True, slots=True)
class District:
    """A kecamatan: a centre and a radius that scaled sensors are spread within."""

    name: str
    lat: float
    lon: float
    radius_km: float = 2.0


@dataclass(frozen=True, slots=True)
class River:
    """A river with its headwater, where upstream rain falls before it reaches the first gauge."""

    name: str
    headwater_lat: float
    headwater_lon: float


@dataclass(frozen=True, slots=True)
class Fleet:
    """A city's sensors plus what the simulator needs to know about the city."""

    city: str
    name: str
    utc_offset_h: float
    districts: tuple[District, ...]
    rivers: tuple[River, ...]
    sensors: tuple[Sensor, ...]
    source: str = ""

    def of_kind(self, kind: SensorKind) -> list[Sensor]:
        """The fleet's sensors of one kind, in fleet order."""
        return [s for s in self.sensors if s.kind is kind]

    def to_manifest(self) -> dict[str, Any]:
        """The fleet as a YAML-ready manifest document (what `pantau sensors import` reads)."""
        return {
            "city": self.city,
            "name": self.name,
            "utc_offset_h": self.utc_offset_h,
            "districts": [dataclasses.asdict(d) for d in self.districts],
            "rivers": [dataclasses.asdict(r) for r in self.rivers],
            "sensors": [
                {
                    "id": s.id,
                    "kind": s.kind.value,
                    "district": s.district,
                    "name": s.name,
                    "lat": s.lat,
                    "lon": s.lon,
                    "metadata": s.metadata,
                }
                for s in self.sensors
            ],
        }

    def write_manifest(self, path: Path) -> None:
        """Write the fleet (for example a scaled one) as a YAML or CSV manifest, by the file's suffix.

        CSV loses the districts and rivers but imports much faster: use it for big scaled fleets.
        """
        if path.suffix.lower() == ".csv":
            keys = sorted({k for s in self.sensors for k in s.metadata})
            with path.open("w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow([*CSV_COLUMNS, *keys])
                for s in self.sensors:
                    base = [s.id, s.kind.value, s.city, s.district, s.name, s.lat, s.lon]
                    writer.writerow([*base, *(s.metadata.get(k, "") for k in keys)])
            return
        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml when present: 10x faster
        text = yaml.dump(self.to_manifest(), Dumper=dumper, sort_keys=False, allow_unicode=True)
        path.write_text(text, encoding="utf-8")


def _number(where: str, field: str, value: Any, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ManifestError(f"{where}: field {field!r}: expected a number, got {value!r}")
    if positive and value <= 0:
        raise ManifestError(f"{where}: field {field!r}: must be positive, got {value!r}")
    return float(value)


def resolve_fleet_path(spec: str) -> Path:
    """A city name from simulators/fleets, or a path to a fleet file."""
    if spec in CITIES:
        return FLEET_DIR / f"{spec}.yaml"
    path = Path(spec)
    if not path.exists():
        raise ManifestError(f"--fleet: {spec!r} is neither a reference city ({', '.join(CITIES)}) nor a file")
    return path


def load_fleet(spec: str) -> Fleet:
    """Load a fleet by city name or file; errors name the file, sensor and field."""
    path = resolve_fleet_path(spec)
    sensors = load_manifest(path)  # the registry's own checks first: the same file must import
    if path.suffix.lower() == ".csv":
        doc: dict[str, Any] = {}
    else:
        doc = read_yaml(path)  # load_manifest has read it already
    if not sensors:
        raise ManifestError(f"{path}: field 'sensors': the fleet has no sensors")
    cities = {s.city for s in sensors}
    if len(cities) != 1:
        raise ManifestError(f"{path}: field 'city': a fleet is one city, found {', '.join(sorted(cities))}")
    city = cities.pop()
    offset = _number(str(path), "utc_offset_h", doc.get("utc_offset_h", 7))
    if not -12 <= offset <= 14:
        raise ManifestError(f"{path}: field 'utc_offset_h': {offset} is not a UTC offset")
    districts = _districts(path, doc.get("districts"), sensors)
    rivers = _rivers(path, doc.get("rivers"), sensors)
    for i, s in enumerate(sensors):
        _check_sensor(f"{path}: sensors[{i}] ({s.id})", s, {r.name for r in rivers})
    return Fleet(
        city=city,
        name=str(doc.get("name") or city),
        utc_offset_h=offset,
        districts=districts,
        rivers=rivers,
        sensors=tuple(sensors),
        source=str(path),
    )


def _districts(path: Path, raw: Any, sensors: Sequence[Sensor]) -> tuple[District, ...]:
    if raw is None:
        # No district list: make one per district named by the sensors, centred on them.
        names = sorted({s.district or "kota" for s in sensors})
        out = []
        for name in names:
            members = [s for s in sensors if (s.district or "kota") == name and s.lat is not None]
            if not members:
                raise ManifestError(f"{path}: field 'districts': needed because sensors in {name!r} have no lat/lon")
            lat = float(np.mean([s.lat for s in members]))
            lon = float(np.mean([s.lon for s in members]))
            out.append(District(name, lat, lon, 2.0))
        return tuple(out)
    if not isinstance(raw, list) or not raw:
        raise ManifestError(f"{path}: field 'districts': expected a non-empty list")
    out = []
    for i, item in enumerate(raw):
        where = f"{path}: districts[{i}]"
        if not isinstance(item, dict) or not item.get("name"):
            raise ManifestError(f"{where}: field 'name' is required")
        out.append(
            District(
                str(item["name"]),
                _number(where, "lat", item.get("lat")),
                _number(where, "lon", item.get("lon")),
                _number(where, "radius_km", item.get("radius_km", 2.0), positive=True),
            )
        )
    names = {d.name for d in out}
    for i, s in enumerate(sensors):
        if s.district and s.district not in names:
            raise ManifestError(
                f"{path}: sensors[{i}] ({s.id}): field 'district': {s.district!r} is not in 'districts'"
            )
    return tuple(out)


def _rivers(path: Path, raw: Any, sensors: Sequence[Sensor]) -> tuple[River, ...]:
    out: list[River] = []
    if raw is not None:
        if not isinstance(raw, list):
            raise ManifestError(f"{path}: field 'rivers': expected a list")
        for i, item in enumerate(raw):
            where = f"{path}: rivers[{i}]"
            if not isinstance(item, dict) or not item.get("name"):
                raise ManifestError(f"{where}: field 'name' is required")
            out.append(
                River(
                    str(item["name"]),
                    _number(where, "headwater_lat", item.get("headwater_lat")),
                    _number(where, "headwater_lon", item.get("headwater_lon")),
                )
            )
        return tuple(out)
    # No river list: put each river's headwater 10 km north of its most upstream gauge.
    gauges = [s for s in sensors if s.kind is SensorKind.FLOOD and s.lat is not None]
    for name in sorted({str(s.metadata.get("river")) for s in gauges if s.metadata.get("river")}):
        first = min((s for s in gauges if s.metadata.get("river") == name), key=lambda s: s.metadata.get("order", 1))
        assert first.lat is not None and first.lon is not None
        out.append(River(name, first.lat + 10 / KM_PER_DEG, first.lon))
    return tuple(out)


def _check_sensor(where: str, s: Sensor, rivers: set[str]) -> None:
    if s.lat is None or s.lon is None:
        raise ManifestError(f"{where}: field 'lat': the simulator needs lat and lon for every sensor")
    md = s.metadata
    if s.kind is SensorKind.TRAFFIC:
        _number(where, "metadata.capacity_pcu_h", md.get("capacity_pcu_h"), positive=True)
        _number(where, "metadata.lanes", md.get("lanes", 2), positive=True)
        _number(where, "metadata.free_speed_kmh", md.get("free_speed_kmh", 50), positive=True)
    elif s.kind is SensorKind.FLOOD:
        if md.get("river") not in rivers:
            raise ManifestError(f"{where}: field 'metadata.river': {md.get('river')!r} is not in 'rivers'")
        order = md.get("order")
        if not isinstance(order, int) or isinstance(order, bool) or order < 1:
            raise ManifestError(f"{where}: field 'metadata.order': expected an integer from 1 (most upstream)")
        levels = [_number(where, f"metadata.{k}", md.get(k)) for k in ("siaga3_cm", "siaga2_cm", "siaga1_cm")]
        if not levels[0] < levels[1] < levels[2]:
            raise ManifestError(f"{where}: field 'metadata.siaga2_cm': need siaga3_cm < siaga2_cm < siaga1_cm")
        base = _number(where, "metadata.base_cm", md.get("base_cm", levels[0] / 2))
        if base >= levels[0]:
            raise ManifestError(f"{where}: field 'metadata.base_cm': must lie below siaga3_cm")
        _number(where, "metadata.catchment_km2", md.get("catchment_km2", 100), positive=True)
        _number(where, "metadata.lag_h", md.get("lag_h", 2), positive=True)
    elif s.kind is SensorKind.AIR:
        weight = _number(where, "metadata.traffic_weight", md.get("traffic_weight", 0.6))
        if not 0 <= weight <= 1:
            raise ManifestError(f"{where}: field 'metadata.traffic_weight': expected 0..1")


def scale_fleet(fleet: Fleet, n: int, *, seed: int = 0) -> Fleet:
    """The fleet grown (or trimmed) to `n` sensors, spread over its districts.

    Copies of a sensor get the id suffix `-0001`, `-0002`, …, keep its kind and metadata, and sit
    at a random spot in a district taken in turn. River gauges stay on their river (within a few
    hundred metres of the original) since a river does not move; they share its hydrology.
    """
    if n < 1:
        raise ManifestError(f"--sensors: expected at least 1, got {n}")
    base = list(fleet.sensors)
    if n <= len(base):
        # Keep every kind represented: take sensors kind by kind in turn.
        queues = {k: [s for s in base if s.kind is k] for k in SensorKind}
        chosen: list[Sensor] = []
        while len(chosen) < n:
            for k in SensorKind:
                if queues[k] and len(chosen) < n:
                    chosen.append(queues[k].pop(0))
        keep = {s.id for s in chosen}
        return dataclasses.replace(fleet, sensors=tuple(s for s in base if s.id in keep))
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5CA1E]))
    out = list(base)
    districts = fleet.districts
    for k in range(len(base), n):
        src = base[k % len(base)]
        copy = k // len(base)
        if src.kind is SensorKind.FLOOD:
            assert src.lat is not None and src.lon is not None
            lat = src.lat + rng.normal(0, 0.3) / KM_PER_DEG
            lon = src.lon + rng.normal(0, 0.3) / KM_PER_DEG
            district = src.district
        else:
            d = districts[k % len(districts)]
            r = d.radius_km * math.sqrt(rng.random())
            a = 2 * math.pi * rng.random()
            lat = d.lat + r * math.sin(a) / KM_PER_DEG
            lon = d.lon + r * math.cos(a) / (KM_PER_DEG * math.cos(math.radians(d.lat)))
            district = d.name
        metadata = dict(src.metadata)
        if "corridor" in metadata:
            metadata["corridor"] = f"{metadata['corridor']} #{copy}"
        out.append(
            dataclasses.replace(
                src,
                id=f"{src.id}-{copy:04d}",
                district=district,
                name=f"{src.name} #{copy}",
                lat=round(lat, 6),
                lon=round(lon, 6),
                metadata=metadata,
            )
        )
    return dataclasses.replace(fleet, sensors=tuple(out))
