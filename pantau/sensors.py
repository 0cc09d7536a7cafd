"""Sensor manifests: CSV and YAML fleet files → `Sensor` values, with errors that name the spot.

CSV: header `id,kind,city,district,name,lat,lon`; any further column goes into `metadata`
(numbers become numbers; empty cells are left out).

YAML fleet manifest: a mapping with an optional top-level `city` (the default for every sensor)
and a `sensors` list; each sensor has the CSV fields plus an optional `metadata` mapping. Other
top-level keys (districts, rivers, scenario hints) are for the simulators and ignored here.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from pantau.domain import ZONE_OF_OFFSET, City, Sensor
from pantau.errors import ManifestError
from pantau.yamlfile import YamlFileError, read_yaml

CSV_COLUMNS = ("id", "kind", "city", "district", "name", "lat", "lon")
_SENSOR_FIELDS = {"id", "kind", "city", "district", "name", "lat", "lon", "metadata"}


def _number(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return text
    # "nan" and "inf" stay text: metadata is stored as jsonb, which has no NaN or Infinity.
    return value if math.isfinite(value) else text


def _coord(value: Any, where: str, name: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ManifestError(f"{where}: field {name!r}: {value!r} is not a number") from None


def sensor_from_mapping(data: dict[str, Any], where: str, default_city: str | None = None) -> Sensor:
    """One sensor from a manifest mapping; `where` names the file and row for errors."""
    unknown = set(data) - _SENSOR_FIELDS
    if unknown:
        raise ManifestError(f"{where}: unknown field(s) {', '.join(sorted(unknown))} (use 'metadata')")
    for required in ("id", "kind"):
        if not data.get(required):
            raise ManifestError(f"{where}: field {required!r} is required")
    city = data.get("city") or default_city
    if not city:
        raise ManifestError(f"{where}: field 'city' is required (or a top-level 'city')")
    metadata = data.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ManifestError(f"{where}: field 'metadata' must be a mapping")
    try:
        return Sensor(
            id=str(data["id"]),
            kind=str(data["kind"]),  # type: ignore[arg-type]
            city=str(city),
            district=str(data.get("district") or ""),
            name=str(data.get("name") or ""),
            lat=_coord(data.get("lat"), where, "lat"),
            lon=_coord(data.get("lon"), where, "lon"),
            metadata=metadata,
        )
    except ValueError as exc:
        # Sensor's own checks say "field: problem"; the SensorKind check does not (and its
        # message quotes the bad kind, which may itself hold a colon).
        field = str(exc).split(":", 1)[0]
        if field not in _SENSOR_FIELDS:
            field = "kind"
        raise ManifestError(f"{where}: field {field!r}: {exc}") from None


def load_csv(path: Path) -> list[Sensor]:
    # utf-8-sig: spreadsheet programs put a byte order mark before the header.
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in ("id", "kind", "city") if c not in header]
        if missing:
            raise ManifestError(f"{path}: header lacks column(s) {', '.join(missing)}")
        sensors = []
        for row in reader:
            # The physical line the row ends on: DictReader skips blank lines, so counting rows would not do.
            line = reader.line_num
            base = {k: (row.get(k) or "").strip() for k in CSV_COLUMNS if k in header}
            extra = {
                k: _number(v.strip())
                for k, v in row.items()
                if k not in CSV_COLUMNS and k is not None and v not in (None, "")
            }
            sensors.append(sensor_from_mapping({**base, "metadata": extra}, f"{path}:{line}"))
        return sensors


def load_yaml(path: Path) -> list[Sensor]:
    try:
        doc = read_yaml(path)
    except YamlFileError as exc:
        raise ManifestError(f"{path}: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("sensors"), list):
        raise ManifestError(f"{path}: expected a mapping with a 'sensors' list")
    city = doc.get("city")
    sensors = []
    for i, item in enumerate(doc["sensors"]):
        if not isinstance(item, dict):
            raise ManifestError(f"{path}: sensors[{i}]: expected a mapping")
        sensors.append(sensor_from_mapping(item, f"{path}: sensors[{i}] ({item.get('id', '?')})", city))
    return sensors


def load_city(path: Path) -> City | None:
    """The city a YAML fleet manifest describes at its top (`city`, `name`, `province`, and
    `timezone` or a whole-hour `utc_offset_h`); None for a CSV manifest or one without `city`."""
    if path.suffix.lower() not in (".yaml", ".yml"):
        return None
    try:
        doc = read_yaml(path)
    except YamlFileError as exc:
        raise ManifestError(f"{path}: {exc}") from None
    if not isinstance(doc, dict) or not doc.get("city"):
        return None
    zone = doc.get("timezone")
    if zone is None and "utc_offset_h" in doc:
        zone = ZONE_OF_OFFSET.get(doc["utc_offset_h"])
        if zone is None:
            raise ManifestError(
                f"{path}: field 'utc_offset_h': {doc['utc_offset_h']!r} is not 7, 8 or 9 (give 'timezone')"
            )
    try:
        return City(
            id=str(doc["city"]),
            name=str(doc.get("name") or ""),
            province=str(doc.get("province") or ""),
            timezone=str(zone or "Asia/Jakarta"),
        )
    except ValueError as exc:
        raise ManifestError(f"{path}: field {exc}") from None


def load_manifest(path: Path) -> list[Sensor]:
    """Sensors from a .csv or .yaml/.yml manifest; duplicate ids are an error."""
    if not path.exists():
        raise ManifestError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".yaml", ".yml"):
        raise ManifestError(f"{path}: expected a .csv, .yaml or .yml file")
    try:
        sensors = load_csv(path) if suffix == ".csv" else load_yaml(path)
    except UnicodeDecodeError as exc:  # e.g. a spreadsheet exported as Latin-1
        raise ManifestError(f"{path}: not UTF-8 text: {exc}") from None
    seen: set[str] = set()
    for s in sensors:
        if s.id in seen:
            raise ManifestError(f"{path}: sensor id {s.id!r} appears more than once")
        seen.add(s.id)
    return sensors
