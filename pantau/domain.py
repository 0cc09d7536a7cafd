"""Domain value types shared by every service: topics, sensors and rejection reasons."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from pantau.metrics import SensorKind

TOPIC_ROOT = "pantau/v1"
# Sensor ids and city slugs travel in MQTT topics and URLs: keep them to a safe alphabet.
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_CITY_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


def valid_sensor_id(text: str) -> bool:
    """True for 1-64 characters of A-Z a-z 0-9 _ . : - starting with a letter or digit."""
    return bool(_ID_RE.match(text))


def valid_city(text: str) -> bool:
    """True for a lower-case slug such as `kotamobagu` or `sampit`."""
    return bool(_CITY_RE.match(text))


# pantau's own output under the topic root (alerts from the rule engine): not sensor input.
OUTPUT_LEVELS = frozenset({"alerts"})


def sensor_topic(city: str, kind: SensorKind | str, sensor_id: str) -> str:
    """The MQTT topic a sensor publishes on."""
    return f"{TOPIC_ROOT}/{city}/{SensorKind(kind).value}/{sensor_id}"


class Reason(StrEnum):
    """Why a message or a record went to `rejected_messages`; one code per failure."""

    BAD_TOPIC = "bad_topic"
    OVERSIZE = "oversize"
    MALFORMED_JSON = "malformed_json"
    WRONG_TYPE = "wrong_type"
    NON_FINITE = "non_finite"
    INVALID_SENML = "invalid_senml"
    BAD_TIMESTAMP = "bad_timestamp"
    FUTURE_TIMESTAMP = "future_timestamp"
    TOO_OLD = "too_old"
    UNKNOWN_METRIC = "unknown_metric"
    METRIC_NOT_FOR_KIND = "metric_not_for_kind"
    BAD_UNIT = "bad_unit"
    OUT_OF_RANGE = "out_of_range"
    TOPIC_MISMATCH = "topic_mismatch"
    UNKNOWN_SENSOR = "unknown_sensor"
    KIND_MISMATCH = "kind_mismatch"
    CITY_MISMATCH = "city_mismatch"
    EMPTY = "empty"
    STORE_ERROR = "store_error"


@dataclass(frozen=True, slots=True, kw_only=True)
class Sensor:
    """A registered sensor. `metadata` holds per-sensor thresholds (Siaga levels, capacity)."""

    id: str
    kind: SensorKind
    city: str
    district: str = ""
    name: str = ""
    lat: float | None = None
    lon: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    last_seen: datetime | None = None

    def __post_init__(self) -> None:
        if not valid_sensor_id(self.id):
            raise ValueError(f"id: {self.id!r} is not a valid sensor id (A-Z a-z 0-9 _ . : -)")
        object.__setattr__(self, "kind", SensorKind(self.kind))
        if not valid_city(self.city):
            raise ValueError(f"city: {self.city!r} is not a lower-case slug such as 'kotamobagu'")
        if self.lat is not None and not -90.0 <= self.lat <= 90.0:
            raise ValueError(f"lat: {self.lat} is outside -90..90")
        if self.lon is not None and not -180.0 <= self.lon <= 180.0:
            raise ValueError(f"lon: {self.lon} is outside -180..180")

    @property
    def topic(self) -> str:
        """The MQTT topic this sensor publishes on."""
        return sensor_topic(self.city, self.kind, self.id)
