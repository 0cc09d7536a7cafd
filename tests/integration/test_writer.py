"""The batch writer on its own: rejections with characters PostgreSQL text cannot hold."""

from __future__ import annotations

import time

import psycopg

from ingest.writer import ReadingWriter
from pantau.store import Backend


async def test_nul_characters_in_rejections_are_escaped_not_fatal(database_url: str, backend: Backend) -> None:
    async with ReadingWriter(database_url, backend) as writer:
        result = await writer.write([], [(time.time(), "pantau/v1/x\x00", b"\x00raw", "bad_topic", "detail \x00 here")])
    assert result.rejected == 1
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT topic, payload, detail FROM rejected_messages").fetchone()
    assert row == ("pantau/v1/x\\x00", b"\x00raw", "detail \\x00 here")
