"""The API service's two entry points (pantau.service): `register` adds `pantau api`, `run` serves
from `Settings` until stopped."""

from __future__ import annotations

import argparse
import asyncio
import logging

from aiohttp import web

from api.app import create_app
from pantau.ports import ensure_free
from pantau.service import Commands, serve
from pantau.settings import Settings

log = logging.getLogger("api")


def register(commands: Commands) -> None:
    """`pantau api`."""
    p = commands.add_parser("api", help="serve the HTTP API (PANTAU_API_HOST:PANTAU_API_PORT)")
    p.set_defaults(handler=_command)


async def _command(_args: argparse.Namespace, settings: Settings) -> int:
    await run(settings)
    return 0


async def run(settings: Settings) -> None:
    """Serve the API until SIGINT/SIGTERM."""
    ensure_free(settings.api_port, settings.api_host, "PANTAU_API_PORT")
    runner = web.AppRunner(create_app(settings), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.api_host, settings.api_port)
        await site.start()
        log.info("api on http://%s:%d/api/v1/openapi.json", settings.api_host, site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        stopping = asyncio.Event()
        await serve(stopping.wait(), stop=stopping.set)
    finally:
        await runner.cleanup()
    log.info("api stopped")
