"""The ingest service's two entry points (pantau.service): `register` adds `pantau ingest`, `run`
serves from `Settings` until stopped."""

from __future__ import annotations

import argparse
import logging

from ingest.service import IngestService
from pantau.service import Commands, serve
from pantau.settings import Settings, require
from pantau.store import Store
from pantau.telemetry import serve_metrics

log = logging.getLogger("ingest")


def register(commands: Commands) -> None:
    """`pantau ingest`."""
    p = commands.add_parser("ingest", help="run the MQTT → database ingest service")
    p.set_defaults(handler=_command)


async def _command(_args: argparse.Namespace, settings: Settings) -> int:
    await run(settings)
    return 0


async def run(settings: Settings) -> None:
    """Ingest until SIGINT/SIGTERM (the batch in hand is committed and acknowledged first)."""
    url = settings.service_database_url("ingest")
    require(settings, "mqtt_url")
    async with Store.open(url, settings.store) as store:
        backend = await store.backend()
    service = IngestService(settings, backend=backend)
    if settings.ingest.metrics_port >= 0:
        port = serve_metrics(
            service.metrics.registry, settings.ingest.metrics_port, setting="PANTAU_INGEST_METRICS_PORT"
        )
        log.info("ingest metrics on http://127.0.0.1:%d/metrics", port)
    await serve(service.run(), stop=service.stop)
    log.info("ingest stopped")
