"""A reading and a rejection: one type each, from the MQTT payload to the rule engine.

    Reading    (ts epoch s, sensor id, metric, value): what ingest stores, the outbox carries and
               the rule engine evaluates. A plain tuple: ingest makes one per reading.
    Problem    (reason, detail, metric or None): what the decoder found wrong in a payload, before
               ingest knows when and where it came (a plain tuple, for the same reason).
    Rejection  a message, or a record of one, that was not stored: when, on which topic and for
               which sensor, why, about which metric, and the payload it came in.

Every acknowledged message is stored as readings or recorded as rejections (docs/reliability.md).
"""

from __future__ import annotations

from typing import NamedTuple

from pantau.domain import Reason

Reading = tuple[float, str, str, float]
Problem = tuple[Reason, str, str | None]


class Rejection(NamedTuple):
    """One row of `rejected_messages`, and what the rule engine's out_of_range checks count.

    The first four fields are what the outbox carries to the rule engine (for a topic that names a
    sensor); one read back from it has no topic, detail or payload."""

    received_at: float  # epoch s
    sensor_id: str | None  # the topic's sensor, when the topic names one
    reason: str  # a Reason value
    metric: str | None  # the metric a value's rejection (out_of_range, non_finite) is about
    topic: str = ""
    detail: str = ""
    payload: bytes | None = None  # kept with a message's first rejection only
