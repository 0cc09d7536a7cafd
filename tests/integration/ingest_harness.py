"""Run the ingest service in-process for integration tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ingest.service import IngestService
from pantau.settings import Settings
from pantau.store import Backend


@asynccontextmanager
async def running_ingest(settings: Settings, backend: Backend, **kwargs: object) -> AsyncIterator[IngestService]:
    """An IngestService running in a task; stopped gracefully (and awaited) on exit."""
    service = IngestService(settings, backend=backend, **kwargs)  # type: ignore[arg-type]
    task = asyncio.create_task(service.run())
    try:
        await asyncio.wait_for(service.ready.wait(), 15)
        await asyncio.wait_for(service.mqtt.wait_connected(), 15)
        yield service
    finally:
        service.stop()
        await asyncio.wait_for(task, 30)
