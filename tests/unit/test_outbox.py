"""The outbox payload (pantau.outbox): what ingest hands the rule engine, read back exactly."""

from __future__ import annotations

import msgspec

from pantau.outbox import decode_outbox, outbox_payload
from pantau.readings import Reading, Rejection


def test_outbox_payload_round_trip() -> None:
    rows: list[Reading] = [(1.5, "A", "pm25", 3.0), (2.0, "B", "co", 4.25)]
    rejections = [
        Rejection(9.0, "A", "out_of_range", "pm25", "pantau/v1/sampit/air/A", "pm25=-3 µg/m³ outside 0..2000", b"{}"),
        Rejection(9.2, "A", "malformed_json", None, "pantau/v1/sampit/air/A", "expected '}'", b"{"),
        Rejection(9.5, None, "bad_topic", None, "pantau/v1//air/A", "", b""),  # names no sensor: not handed over
    ]
    named = [Rejection(9.0, "A", "out_of_range", "pm25"), Rejection(9.2, "A", "malformed_json", None)]
    assert decode_outbox(outbox_payload(rows, rejections)) == (rows, named)
    # A payload written before rejections carried their metric reads as one without.
    old = msgspec.msgpack.encode({"r": rows, "x": [[9.0, "A", "out_of_range"]]})
    assert decode_outbox(old) == (rows, [Rejection(9.0, "A", "out_of_range", None)])
