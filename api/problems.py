"""Errors as RFC 9457 `application/problem+json`, naming the parameter and what was expected.

Handlers raise `Problem`; the middleware turns it, aiohttp's own HTTP errors (404, 405, ...) and
the pantau errors a request can cause into problem documents. Anything else is a bug: logged with
its traceback and answered 500 without the details.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from aiohttp import web

from pantau.errors import InvalidArgument, StoreUnavailable

log = logging.getLogger(__name__)

PROBLEM_TYPE = "application/problem+json"


class Problem(Exception):
    """An answer other than success: status, title, detail and (for bad input) the parameter."""

    def __init__(
        self, status: int, title: str, detail: str = "", *, param: str | None = None,
        headers: dict[str, str] | None = None, **extra: Any,
    ) -> None:  # fmt: skip
        super().__init__(detail or title)
        self.status, self.title, self.detail, self.param, self.extra = status, title, detail, param, extra
        self.headers = headers or {}

    def document(self, instance: str) -> dict[str, Any]:
        doc: dict[str, Any] = {"type": "about:blank", "title": self.title, "status": self.status, "instance": instance}
        if self.detail:
            doc["detail"] = self.detail
        if self.param is not None:
            doc["invalid-params"] = [{"name": self.param, "reason": self.detail}]
        return doc | self.extra


def bad_param(name: str, expected: str) -> Problem:
    """400 for one query or body parameter: `expected` says what would be accepted."""
    return Problem(400, "Bad request", f"{name}: {expected}", param=name)


def not_found(what: str) -> Problem:
    return Problem(404, "Not found", f"{what} does not exist")


def problem_response(problem: Problem, request: web.Request, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=problem.status,
        text=json.dumps(problem.document(request.path), ensure_ascii=False),
        content_type=PROBLEM_TYPE,
        headers=headers,
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error a request meets, as a problem document."""
    try:
        return await handler(request)
    except Problem as problem:
        return problem_response(problem, request, problem.headers or None)
    except InvalidArgument as exc:
        return problem_response(Problem(400, "Bad request", str(exc), param=exc.argument), request)
    except StoreUnavailable:
        log.warning("database unavailable for %s %s", request.method, request.path)
        return problem_response(
            Problem(503, "Database unavailable", "try again shortly"), request, {"Retry-After": "5"}
        )
    except psycopg.errors.QueryCanceled:
        return problem_response(
            Problem(422, "Over the query budget", "the query took too long: narrow the range or the filter"), request
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None  # a 405 names the methods
        return problem_response(Problem(exc.status, exc.reason, exc.text or ""), request, allow)
    except Exception:  # the last resort of a server: a bug, logged, never shown to the client
        log.exception("%s %s failed", request.method, request.path)
        return problem_response(Problem(500, "Internal server error", "the error is in pantau's log"), request)
