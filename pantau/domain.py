"""Domain value types shared by every service: sensors and rejection reasons (topics: pantau.topics)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pantau.metrics import SensorKind
from pantau.topics import sensor_topic

# Sensor ids and city slugs travel in MQTT topics and URLs: keep them to a safe alphabet.
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_CITY_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


def valid_sensor_id(text: str) -> bool:
    """True for 1-64 characters of A-Z a-z 0-9 _ . : - starting with a letter or digit."""
    return bool(_ID_RE.match(text))


def valid_city(text: str) -> bool:
    """True for a lower-case slug such as `kotamobagu` or `sampit`."""
    return bool(_CITY_RE.match(text))


class Reason(StrEnum):
    """Why a message or a record went to `rejected_messages`; one code per failure."""

    BAD_TOPIC = "bad_topic"  # not pantau/v1/{city}/{kind}/{sensor_id}
    OVERSIZE = "oversize"  # payload over `[ingest] max_payload_bytes`
    MALFORMED_JSON = "malformed_json"  # not JSON (or not UTF-8, or an unpaired surrogate)
    WRONG_TYPE = "wrong_type"  # a value of the wrong JSON type (a string reading, a boolean)
    NON_FINITE = "non_finite"  # NaN, Infinity, or a number too large for a double
    INVALID_SENML = "invalid_senml"  # breaks RFC 8428 (a bad name, two value fields, a "_" field)
    BAD_TIMESTAMP = "bad_timestamp"  # a time that is not RFC 3339 with an offset, or epoch seconds
    FUTURE_TIMESTAMP = "future_timestamp"  # further ahead of the receive time than `max_future_s`
    TOO_OLD = "too_old"  # older than the store's retention
    UNKNOWN_METRIC = "unknown_metric"  # not in pantau.metrics
    METRIC_NOT_FOR_KIND = "metric_not_for_kind"  # a metric of another kind of sensor
    BAD_UNIT = "bad_unit"  # a SenML unit pantau cannot convert to the metric's
    OUT_OF_RANGE = "out_of_range"  # outside the metric's plausible range
    TOPIC_MISMATCH = "topic_mismatch"  # the payload names another sensor than its topic
    UNKNOWN_SENSOR = "unknown_sensor"  # the topic's sensor is not registered
    KIND_MISMATCH = "kind_mismatch"  # registered as another kind than the topic says
    CITY_MISMATCH = "city_mismatch"  # registered in another city than the topic says
    EMPTY = "empty"  # no payload, or no readings in it
    STORE_ERROR = "store_error"  # the database refused the reading itself
    TOO_DEEP = "too_deep"  # JSON nested deeper than the decoder follows
    DUPLICATE_KEY = "duplicate_key"  # a JSON object names one key twice: which value was meant?
    CONFLICTING_VALUE = "conflicting_value"  # another value is stored for that sensor, metric and time
    INTERNAL_ERROR = "internal_error"  # pantau failed on the message (a bug); the payload is kept


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


# Indonesia's three zones (no daylight saving): the IANA zone a fleet's whole-hour UTC offset means,
# and what the screen calls each zone.
ZONE_OF_OFFSET = {7: "Asia/Jakarta", 8: "Asia/Makassar", 9: "Asia/Jayapura"}
ZONE_NAMES = {"Asia/Jakarta": "WIB", "Asia/Pontianak": "WIB", "Asia/Makassar": "WITA", "Asia/Jayapura": "WIT"}


@dataclass(frozen=True, slots=True, kw_only=True)
class City:
    """A city of the registry: its slug (as in topics), name, province and IANA time zone. Every
    "day" pantau speaks of (daily ISPU, daily rain) is the city's local day."""

    id: str
    name: str = ""
    province: str = ""
    timezone: str = "Asia/Jakarta"

    def __post_init__(self) -> None:
        if not valid_city(self.id):
            raise ValueError(f"city: {self.id!r} is not a lower-case slug such as 'kotamobagu'")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone: {self.timezone!r} is not an IANA time zone such as 'Asia/Makassar'") from None

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def zone_name(self) -> str:
        """WIB, WITA or WIT (the zone's own abbreviation elsewhere)."""
        return ZONE_NAMES.get(self.timezone) or (self.zone.tzname(datetime.now(self.zone)) or self.timezone)
