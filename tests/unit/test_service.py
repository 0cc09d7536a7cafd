"""One service shape (pantau.service): tasks in one group, a crash stops the service at once."""

from __future__ import annotations

import asyncio

import pytest

from pantau.errors import BrokerError
from pantau.service import serve


async def test_a_task_that_fails_stops_the_service_at_once_with_its_own_error() -> None:
    stopping = asyncio.Event()
    lead_cancelled = asyncio.Event()

    async def lead() -> None:
        try:
            await stopping.wait()
        except asyncio.CancelledError:
            lead_cancelled.set()
            raise

    async def notifier() -> None:
        await asyncio.sleep(0.05)
        raise BrokerError("broker refused the notifier")

    with pytest.raises(BrokerError, match="broker refused the notifier"):  # itself, not an ExceptionGroup
        await asyncio.wait_for(serve(lead(), notifier, stop=stopping.set), 5)
    assert lead_cancelled.is_set()


async def test_the_tasks_beside_the_lead_end_with_it() -> None:
    ended = asyncio.Event()

    async def beside() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            ended.set()

    await asyncio.wait_for(serve(asyncio.sleep(0.05), beside, stop=lambda: None), 5)
    assert ended.is_set()
