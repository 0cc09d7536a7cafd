"""`pantau rules` as a service: the notifier beside the worker in one task group."""

from __future__ import annotations

import asyncio

import pytest

import rules.main
from pantau.settings import Settings
from rules.notify import AlertNotifier


async def test_a_notifier_that_crashes_stops_the_rules_service_at_once(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The crash is injected; the worker, the database and the broker are real. Started with
    # ensure_future, the notifier's crash stayed unseen until the worker was stopped.
    async def crash(self: AlertNotifier) -> None:
        await asyncio.sleep(0.2)
        raise RuntimeError("the notifier failed")

    monkeypatch.setattr(AlertNotifier, "run", crash)
    with pytest.raises(RuntimeError, match="the notifier failed"):
        await asyncio.wait_for(rules.main.run(settings), 20)
