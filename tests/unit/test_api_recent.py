"""`api.common.Recent`: an answer computed once per interval per key, shared by the requests
meanwhile, computed afresh after the interval or after a failure."""

from __future__ import annotations

import asyncio

import pytest

from api.common import Recent


async def test_concurrent_askers_share_one_computation_until_it_is_stale() -> None:
    recent, runs = Recent(ttl_s=0.2), []

    async def compute() -> int:
        runs.append(1)
        await asyncio.sleep(0.05)
        return len(runs)

    assert await asyncio.gather(*(recent.get("sampit", compute) for _ in range(20))) == [1] * 20
    assert await recent.get("sampit", compute) == 1 and len(runs) == 1  # still fresh
    assert await recent.get("kotamobagu", compute) == 2  # another key, its own computation
    await asyncio.sleep(0.25)
    assert await recent.get("sampit", compute) == 3  # stale: computed again


async def test_a_failure_is_not_kept() -> None:
    recent, calls = Recent(ttl_s=60), []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("database away")
        return "ok"

    with pytest.raises(RuntimeError):
        await recent.get("sampit", flaky)
    assert await recent.get("sampit", flaky) == "ok" and len(calls) == 2
