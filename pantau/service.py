"""One shape for every service (ingest, rules, simulators, api, and the kernel's own `maintain`).

Each service package has a module `<service>/main.py` with two entry points:

    register(commands)   add the service's subcommands to the `pantau` parser (`pantau/cli.py`
                         assembles them)
    run(settings)        serve from `Settings` until stopped (SIGINT/SIGTERM) or until one of its
                         tasks fails: ingest and rules (and the api, when it comes); `pantau up`
                         runs each as a supervised process. The simulators are tools that end on
                         their own, and have `register` only.

`serve` is how `run` keeps its tasks: one `asyncio.TaskGroup`, so a task that crashes stops the
service at once with its own error (a notifier started with `ensure_future` once crashed unseen
until shutdown), and a stop signal asks the lead task to finish its work in hand.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeAlias

from pantau.settings import Settings

# A subcommand handler: async (run on a fresh event loop) or, for tools that drive processes and
# event loops of their own (the benchmarks), plain.
Handler = Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int] | int]
# What `register` adds its subcommands to: the `pantau` parser's subparsers.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class Service(Protocol):
    """What `pantau/cli.py` needs of a service's main module."""

    def register(self, commands: Commands) -> None:
        """Add the service's subcommands (each with `handler` set to a `Handler`)."""


def on_stop_signals(callback: Callable[[], None]) -> None:
    """Call `callback` on SIGINT and SIGTERM (the running loop's handlers)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, callback)


async def serve(lead: Awaitable[object], *beside: Callable[[], Awaitable[None]], stop: Callable[[], None]) -> None:
    """Run `lead` until it returns, the `beside` tasks with it in one task group.

    SIGINT/SIGTERM call `stop`, which asks `lead` to finish; when it returns the `beside` tasks are
    cancelled. A task that fails stops the others at once, and its error is raised as itself (not
    wrapped in an ExceptionGroup), so `pantau` can print a PantauError in one line."""
    on_stop_signals(stop)

    async def _lead(others: list[asyncio.Task[None]]) -> None:
        try:
            await lead
        finally:
            for task in others:
                task.cancel()

    async with task_group() as group:
        others = [group.create_task(_coroutine(make)) for make in beside]
        group.create_task(_lead(others))


@contextlib.asynccontextmanager
async def task_group() -> AsyncIterator[asyncio.TaskGroup]:
    """An `asyncio.TaskGroup` whose first failure is raised as itself, not in an ExceptionGroup."""
    try:
        async with asyncio.TaskGroup() as group:
            yield group
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None


async def _coroutine(make: Callable[[], Awaitable[None]]) -> None:
    await make()
