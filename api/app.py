"""The aiohttp application: `create_app(settings)`, as aiohttp's own examples have it (typed
`web.AppKey`s for shared state, a `cleanup_ctx` that owns the database pool)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

import api.access
import api.air
import api.alerts
import api.basemap
import api.common
import api.export
import api.flood
import api.health
import api.overview
import api.reference
import api.registry
import api.rules
import api.screen
import api.series
import api.sta
import api.stream
import api.telemetry
import api.traffic
from api.common import answer
from api.cors import cors
from api.keys import ACCESS, ALERTS, SETTINGS, STORE
from api.openapi import API
from api.problems import problems
from api.telemetry import instrument
from pantau import __version__
from pantau.access import Access
from pantau.alerts import AlertStore
from pantau.settings import Settings
from pantau.store import Store

# The modules whose routes join API as they are imported.
ROUTES = (
    api.access, api.air, api.alerts, api.basemap, api.export, api.flood, api.health, api.overview, api.reference,
    api.registry, api.rules, api.screen, api.series, api.sta, api.stream, api.telemetry, api.traffic,
)  # fmt: skip


@API.get("/api/v1/openapi.json", summary="This document", tag="meta", roles=None)
async def openapi(request: web.Request) -> web.Response:
    return answer(request, API.document(version=__version__))


async def _store(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    # Every statement of a request under the budget (a 422 with a hint past it, never a hang); an
    # export sets its own (none: it streams for as long as the rows take).
    url = settings.service_database_url("api")  # as the pantau_api role, when configured
    async with Store.open(url, settings.store, statement_timeout_ms=settings.api_statement_timeout_ms) as store:
        app[STORE] = store
        app[ALERTS] = AlertStore(store)
        app[ACCESS] = Access(store)
        yield


def create_app(settings: Settings) -> web.Application:
    """The API for `settings`: routes, the problem+json middleware, and the database pool for the
    application's life."""
    app = web.Application()
    app.middlewares.append(instrument(app))  # outermost: times every answer, problems too
    if settings.api_cors_origins:  # outside problems: a browser may read an error's document too
        app.middlewares.append(cors(settings.api_cors_origins))
    app.middlewares.append(problems)
    app.middlewares.append(api.access.access_control)  # inside problems: a 401/403/404 is a problem document
    app[SETTINGS] = settings
    app[api.overview.RECENT] = api.common.Recent(api.overview.FRESH_S)
    app[api.air.RECENT] = api.common.Recent(api.overview.FRESH_S)
    app.cleanup_ctx.append(api.basemap.archive_ctx)  # first: an archive gone bad stops it before it connects
    app.cleanup_ctx.append(_store)
    app.cleanup_ctx.append(api.stream.hub_ctx)  # after the store: the hub reads through its pool
    API.install(app)
    return app
