"""CORS for the origins `Settings.api_cors_origins` names, so a command centre's own web pages can
read the API from a browser: the allowed origin echoed (with `Vary: Origin`), preflights answered,
the ETag readable. Requests from other origins get no CORS headers (the browser then refuses them);
requests with no Origin (curl, scripts, the screen served by pantau itself) are untouched."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
METHODS = "GET, POST"
HEADERS = "Content-Type, If-None-Match, Authorization, X-CSRF-Token"
MAX_AGE_S = 600


def cors(origins: str) -> Middleware:
    """The CORS middleware for a comma-separated list of origins ("*": any)."""
    allowed = frozenset(o.strip().rstrip("/") for o in origins.split(",") if o.strip())

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is None or not ("*" in allowed or origin in allowed):
            return await handler(request)
        headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin", "Access-Control-Expose-Headers": "ETag"}
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            headers |= {"Access-Control-Allow-Methods": METHODS, "Access-Control-Allow-Headers": HEADERS,
                        "Access-Control-Max-Age": str(MAX_AGE_S)}  # fmt: skip
            return web.Response(status=204, headers=headers)
        response = await handler(request)
        response.headers.update(headers)
        return response

    return middleware
