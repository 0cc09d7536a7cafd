"""The outbox between ingest and the rule engine (docs/decisions.md D10): its rows, payload,
channel and claim.

Ingest writes one `ingest_batches` row per committed batch, in the batch's own transaction, and
sends `NOTIFY pantau_batches`; a rule worker claims waiting batches oldest first, under a claim
number, in the transaction that applies what they cause.

`ingest_batches.payload` is msgpack:

    {"r": [[ts, sensor_id, metric, value], ...],                    the batch's readings
     "x": [[received_at, sensor_id, reason, metric or nil], ...]}   its rejections that name a sensor

(a rejection written before rejections carried their metric reads back as one without).
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
from psycopg import AsyncCursor
from psycopg.rows import DictRow

from pantau.readings import Reading, Rejection

# Channel the rule workers LISTEN on: a batch is waiting in `ingest_batches`.
BATCHES_CHANNEL = "pantau_batches"

# One decoded payload: the batch's readings and its rejections that name a sensor.
OutboxBatch = tuple[list[Reading], list[Rejection]]

_CLAIM = """
UPDATE ingest_batches SET claim = %(claim)s
WHERE id IN (SELECT id FROM ingest_batches WHERE claim IS NULL ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
RETURNING id, payload, extract(epoch FROM created_at)::float8 AS created
"""

_encode = msgspec.msgpack.Encoder().encode


def outbox_payload(rows: Sequence[Reading], rejections: Sequence[Rejection]) -> bytes:
    """The `ingest_batches.payload` of one batch."""
    named = [x[:4] for x in rejections if x.sensor_id]
    return _encode({"r": rows, "x": named})


def decode_outbox(payload: bytes) -> OutboxBatch:
    """The readings and named rejections of an `ingest_batches.payload`."""
    doc = msgspec.msgpack.decode(payload)
    return [tuple(r) for r in doc["r"]], [Rejection(x[0], x[1], x[2], x[3] if len(x) > 3 else None) for x in doc["x"]]


async def claim(cur: AsyncCursor[DictRow], number: int, limit: int) -> list[DictRow]:
    """Mark up to `limit` unclaimed batches, oldest first, as claim `number` (skipping rows another
    worker holds); the claimed rows (id, payload, created: epoch s) in id order."""
    await cur.execute(_CLAIM, {"claim": number, "limit": limit})
    return sorted(await cur.fetchall(), key=lambda b: int(b["id"]))
