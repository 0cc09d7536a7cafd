"""The topic scheme (pantau.topics): written and read in one place."""

from __future__ import annotations

import pytest

from pantau.metrics import SensorKind
from pantau.topics import (
    alerts_topic,
    open_alerts_topic,
    parse_sensor_topic,
    sensor_subscriptions,
    sensor_topic,
)


def test_a_sensor_topic_round_trips() -> None:
    topic = sensor_topic("sampit", "flood", "SPT-WL-01")
    assert topic == "pantau/v1/sampit/flood/SPT-WL-01"
    assert parse_sensor_topic(topic) == ("sampit", SensorKind.FLOOD, "SPT-WL-01")


@pytest.mark.parametrize(
    "topic",
    [
        "pantau/v1/sampit/alerts",
        "pantau/v1/sampit/alerts/open",
        "pantau/v1/sampit/weather/X",
        "pantau/v1//air/X",
        "pantau/v1/sampit/air/",
        "pantau/v2/sampit/air/X",
        "other/v1/sampit/air/X",
        "pantau/v1/sampit/air/X/extra",
    ],
)
def test_anything_else_is_no_sensor_topic(topic: str) -> None:
    assert parse_sensor_topic(topic) is None


def test_the_subscriptions_take_each_kind_and_not_the_alerts() -> None:
    assert sensor_subscriptions() == [f"pantau/v1/+/{k}/+" for k in ("air", "traffic", "flood", "rain")]
    assert alerts_topic("sampit") == "pantau/v1/sampit/alerts"
    assert open_alerts_topic("sampit") == "pantau/v1/sampit/alerts/open"
