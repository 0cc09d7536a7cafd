"""The retained open-alerts snapshot fits the broker's packet limit, keeping the most severe alerts."""

from __future__ import annotations

import json

from pantau.embedded import MAX_PACKET_BYTES
from rules.sinks import SNAPSHOT_MAX_BYTES, snapshot_payload


def _alert(i: int, severity: str) -> dict[str, object]:
    return {"id": i, "severity": severity, "rule_id": "sensor-offline", "reason": "r" * 500, "scope": f"S-{i:04d}"}


def test_every_open_alert_is_listed_while_they_fit() -> None:
    alerts = [_alert(i, "warning") for i in range(10)]
    snapshot = json.loads(snapshot_payload("sampit", "2031-05-01T08:00:00+00:00", alerts))
    assert snapshot["alerts"] == alerts and snapshot["omitted"] == 0


def test_a_city_wide_outage_keeps_the_snapshot_under_the_packet_limit_most_severe_first() -> None:
    alerts = [_alert(i, "critical" if i % 10 == 0 else "warning") for i in range(2000)]
    payload = snapshot_payload("sampit", "2031-05-01T08:00:00+00:00", alerts)
    # The topic and the packet's header come on top of the payload: a kilobyte is plenty.
    assert len(payload.encode()) <= SNAPSHOT_MAX_BYTES < MAX_PACKET_BYTES - 1024
    snapshot = json.loads(payload)
    listed = snapshot["alerts"]
    assert 0 < len(listed) < 2000 and snapshot["omitted"] == 2000 - len(listed)
    assert [a for a in listed if a["severity"] == "critical"] == [a for a in alerts if a["severity"] == "critical"]
    assert [a["id"] for a in listed] == sorted(a["id"] for a in listed)  # still oldest first
    # The most that fit: one more would not.
    assert len(snapshot_payload("sampit", snapshot["at"], alerts, max_bytes=len(payload.encode()) - 1)) < len(payload)
