"""The API's own Prometheus metrics at `/metrics`: requests by route, method and status, and their
latency, on a registry of the application's own (several apps, or tests, in one process)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from api.openapi import API

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REGISTRY = web.AppKey("metrics_registry", CollectorRegistry)
_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10)


def instrument(app: web.Application) -> Middleware:
    """A registry for `app` and the middleware that counts and times its requests."""
    registry = CollectorRegistry()
    app[REGISTRY] = registry
    requests = Counter("pantau_api_requests", "HTTP requests answered", ["route", "method", "status"],
                       registry=registry)  # fmt: skip
    seconds = Histogram("pantau_api_request_seconds", "time to answer (to the last byte for streams)",
                        ["route"], buckets=_BUCKETS, registry=registry)  # fmt: skip

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.monotonic()
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        finally:
            requests.labels(route, request.method, str(status)).inc()
            seconds.labels(route).observe(time.monotonic() - started)

    return middleware


@API.get("/metrics", summary="Prometheus metrics of the API process", tag="health", media=("text/plain",),
         roles=None)  # fmt: skip
async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
