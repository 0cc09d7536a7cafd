"""The MQTT topic scheme, written and read in this one place.

    pantau/v1/{city}/{kind}/{sensor_id}   a sensor's readings (kind: air, traffic, flood, rain)
    pantau/v1/{city}/alerts               one message per alert event (the notifier)
    pantau/v1/{city}/alerts/open          the retained list of the city's open alerts

The topic is a sensor's identity (docs/decisions.md D7): its sensor id, kind and city must match the
registry. Ingest subscribes to the sensor topics of the four kinds only, never to pantau's own output.
"""

from __future__ import annotations

from pantau.metrics import SensorKind

TOPIC_ROOT = "pantau/v1"
# What ingest subscribed to before it took sensor topics only: unsubscribed from a session kept since.
RETIRED_SUBSCRIPTIONS = (f"{TOPIC_ROOT}/#",)
_KINDS = {k.value: k for k in SensorKind}


def sensor_topic(city: str, kind: SensorKind | str, sensor_id: str) -> str:
    """The topic a sensor publishes on."""
    return f"{TOPIC_ROOT}/{city}/{SensorKind(kind).value}/{sensor_id}"


def parse_sensor_topic(topic: str) -> tuple[str, SensorKind, str] | None:
    """(city, kind, sensor id) of `pantau/v1/{city}/{kind}/{sensor_id}`; None for any other topic.

    A plain tuple: ingest calls this for every message."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != "pantau" or parts[1] != "v1" or not parts[2] or not parts[4]:
        return None
    kind = _KINDS.get(parts[3])
    return None if kind is None else (parts[2], kind, parts[4])


def sensor_subscriptions() -> list[str]:
    """The filters that take every sensor's readings and nothing else: one per kind."""
    return [f"{TOPIC_ROOT}/+/{kind.value}/+" for kind in SensorKind]


def alerts_topic(city: str) -> str:
    """`pantau/v1/{city}/alerts`: one message per alert event."""
    return f"{TOPIC_ROOT}/{city}/alerts"


def open_alerts_topic(city: str) -> str:
    """`pantau/v1/{city}/alerts/open`: the retained list of the city's open alerts."""
    return f"{TOPIC_ROOT}/{city}/alerts/open"
