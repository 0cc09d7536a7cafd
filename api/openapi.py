"""Routes declared once, with what the OpenAPI 3.1 document says of them.

Handlers are registered with `API.get/post(path, ...)`, naming their parameters and answers; the
router and `/api/v1/openapi.json` are both made from that one list, and a test holds the running
app's routes to the document. Query parameters are read through `Param.read`, so the document's
types and the parsing agree.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from aiohttp import web

from api.problems import bad_param
from pantau.access import Role

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Who each route admits (issue 13). Reading what the screens show is every role's; exporting is for
# those who file reports and tune sensors; acting on alerts is the operators'. None: no credentials
# needed (health, the document and its reference page, signing in).
EVERYONE = frozenset(Role)
READ = EVERYONE
EXPORT = frozenset({Role.AGENCY, Role.ENGINEER, Role.ADMIN})
OPERATE = frozenset({Role.OPERATOR})
ENGINEER = frozenset({Role.ENGINEER})
ADMIN = frozenset({Role.ADMIN})
# Times a request may name: real zones lie within ±14:00, and pantau's data within these years.
MAX_OFFSET = timedelta(hours=14)
MIN_YEAR, MAX_YEAR = 1970, 2200


@dataclass(frozen=True)
class Param:
    """A query or path parameter: its name, JSON Schema and what it means."""

    name: str
    schema: dict[str, Any]
    description: str
    where: str = "query"
    required: bool = False

    def __post_init__(self) -> None:
        if self.schema.get("type") == "string":  # an empty value is a mistake, not "absent"
            self.schema.setdefault("minLength", 1)

    def read(self, request: web.Request) -> Any:
        """The parameter's value, checked against its schema (None when absent and optional)."""
        raw = request.match_info.get(self.name) if self.where == "path" else request.query.get(self.name)
        if raw is None:
            if self.required:
                raise bad_param(self.name, "required")
            return self.schema.get("default")
        return self._parse(raw)

    def read_all(self, request: web.Request) -> list[Any]:
        """Every value of a repeatable query parameter, each checked as `read` checks one."""
        values = request.query.getall(self.name, [])
        if not values and self.required:
            raise bad_param(self.name, "required")
        return [self._parse(raw) for raw in values]

    def _parse(self, raw: str) -> Any:
        if raw == "":
            raise bad_param(self.name, "a value (leave the parameter out for its default)")
        if "\x00" in raw:
            raise bad_param(self.name, "text without NUL characters")
        kind = self.schema.get("type")
        if "enum" in self.schema and raw not in self.schema["enum"]:
            raise bad_param(self.name, f"one of {', '.join(self.schema['enum'])}, got {raw!r}")
        if kind == "integer":
            try:
                value: Any = int(raw)
            except ValueError:
                raise bad_param(self.name, f"an integer, got {raw!r}") from None
            low, high = self.schema.get("minimum"), self.schema.get("maximum")
            if (low is not None and value < low) or (high is not None and value > high):
                raise bad_param(self.name, f"an integer from {low} to {high}, got {value}")
            return value
        if self.schema.get("format") == "date":
            try:
                return date.fromisoformat(raw)
            except ValueError:
                raise bad_param(self.name, f"a date YYYY-MM-DD, got {raw!r}") from None
        if self.schema.get("format") == "date-time":
            if len(raw) > 6 and raw[-6] == " " and "T" in raw:  # a "+07:00" typed into a URL arrives as " 07:00"
                raw = raw[:-6] + "+" + raw[-5:]
            try:
                when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
            except ValueError:
                raise bad_param(self.name, f"an RFC 3339 time with an offset, got {raw!r}") from None
            if when.tzinfo is None:
                raise bad_param(self.name, f"an RFC 3339 time with an offset (Z or +07:00), got {raw!r}")
            offset = when.utcoffset()
            if offset is None or abs(offset) > MAX_OFFSET or not MIN_YEAR <= when.year <= MAX_YEAR:
                expected = f"a time from {MIN_YEAR} to {MAX_YEAR} with an offset within ±14:00, got {raw!r}"
                raise bad_param(self.name, expected)
            return when
        return raw


@dataclass
class Operation:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    params: Sequence[Param] = ()
    body: dict[str, Any] | None = None
    responses: dict[int, str] = field(default_factory=dict)
    media: Sequence[str] = ("application/json",)  # what a 2xx answer can be
    route: str | None = None  # the router's pattern where it differs from the documented path
    plain_errors: bool = False  # its declared error answers are its own documents, not problem+json
    roles: frozenset[Role] | None = READ  # who it admits; None: anyone, no credentials
    # What it addresses, for the callers' city scope: "city" (a city, or a sensor, alert, silence,
    # user or token of one: outside the caller's cities it is a 404), "every-city" (the whole
    # registry: callers scoped to all cities only), "none" (nothing of a city's). None: "city" when
    # a parameter names one of those things, else "none".
    scope: str | None = None

    @property
    def city_scope(self) -> str:
        if self.scope is not None:
            return self.scope
        addressing = {"city", "sensor", "alert", "silence", "username", "token"}
        return "city" if any(p.name in addressing for p in self.params) else "none"


def _response(code: int, text: str, media: Sequence[str], plain_errors: bool) -> dict[str, Any]:
    if code == 304:  # no body
        return {"description": text}
    kinds = media if code < 300 or plain_errors else ("application/problem+json",)
    return {"description": text, "content": {m: {"schema": {}} for m in kinds}}


class Api:
    """The operations of the API, in declaration order."""

    def __init__(self) -> None:
        self.operations: list[Operation] = []
        self._index: dict[Any, Operation] = {}

    def _add(self, method: str, path: str, **meta: Any) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.operations.append(Operation(method, path, handler, **meta))
            return handler

        return register

    def get(self, path: str, *, summary: str, tag: str, params: Sequence[Param] = (),
            responses: dict[int, str] | None = None, media: Sequence[str] = ("application/json",),
            route: str | None = None, plain_errors: bool = False, roles: frozenset[Role] | None = READ,
            scope: str | None = None) -> Callable[[Handler], Handler]:  # fmt: skip
        return self._add("GET", path, summary=summary, tag=tag, params=params, responses=responses or {200: "OK"},
                         media=media, route=route, plain_errors=plain_errors, roles=roles, scope=scope)  # fmt: skip

    def post(self, path: str, *, summary: str, tag: str, roles: frozenset[Role] | None,
             params: Sequence[Param] = (), body: dict[str, Any],
             responses: dict[int, str] | None = None, scope: str | None = None,
             ) -> Callable[[Handler], Handler]:  # fmt: skip
        return self._add(
            "POST", path, summary=summary, tag=tag, params=params, body=body, responses=responses or {200: "OK"},
            roles=roles, scope=scope,
        )  # fmt: skip

    def install(self, app: web.Application) -> None:
        for op in self.operations:
            app.router.add_route(op.method, op.route or op.path, op.handler)

    def operation_of(self, handler: Any) -> Operation | None:
        """The operation a matched route's handler serves (None for aiohttp's own 404/405)."""
        return self._by_handler().get(handler)

    def _by_handler(self) -> dict[Any, Operation]:
        if len(self._index) != len(self.operations):
            self._index = {op.handler: op for op in self.operations}
        return self._index

    def document(self, *, version: str) -> dict[str, Any]:
        """The OpenAPI 3.1 document of every operation."""
        paths: dict[str, dict[str, Any]] = {}
        problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
        for op in self.operations:
            entry: dict[str, Any] = {
                "summary": op.summary,
                "tags": [op.tag],
                "operationId": op.handler.__name__,
                "parameters": [
                    {
                        "name": p.name,
                        "in": p.where,
                        "required": p.required or p.where == "path",
                        "description": p.description,
                        "schema": p.schema,
                    }
                    for p in op.params
                ],
                "responses": {
                    **{
                        str(code): _response(code, text, op.media, op.plain_errors)
                        for code, text in op.responses.items()
                    },
                    "400": {"description": "A parameter is not what was expected", "content": problem},
                    **(
                        {
                            "401": {"description": "No credentials, or they are not valid", "content": problem},
                            "403": {
                                "description": "The caller's role may not do this (or a change lacks its CSRF token)",
                                "content": problem,
                            },
                        }
                        if op.roles is not None
                        else {}
                    ),
                    "404": {"description": "No such resource", "content": problem},
                    "405": {"description": "Not a method of this path (Allow names them)", "content": problem},
                    "422": {"description": "Over the query budget: narrow the range or the filter", "content": problem},
                    "503": {"description": "The database is unavailable", "content": problem},
                },
            }
            entry["security"] = [] if op.roles is None else [{"bearer": []}, {"session": []}]
            entry["x-pantau-roles"] = None if op.roles is None else sorted(r.value for r in op.roles)
            entry["x-pantau-scope"] = op.city_scope
            if op.roles is not None:
                entry["description"] = "Admits: " + ", ".join(sorted(r.value for r in op.roles)) + "."
            if op.body is not None:
                entry["requestBody"] = {"required": True, "content": {"application/json": {"schema": op.body}}}
            paths.setdefault(op.path, {})[op.method.lower()] = entry
        return {
            "openapi": "3.1.0",
            "info": {"title": "pantau", "version": version, "description": "Telemetry of a city's sensors and alerts."},
            "paths": paths,
            "components": {
                "securitySchemes": {
                    "bearer": {"type": "http", "scheme": "bearer", "description": "an API token"},
                    "session": {
                        "type": "apiKey",
                        "in": "cookie",
                        "name": "pantau_session",
                        "description": "the screen's session (POST /api/v1/auth/login); changes send X-CSRF-Token",
                    },
                },
                "schemas": {
                    "Problem": {
                        "type": "object",
                        "properties": {
                            "type": {"type": "string"},
                            "title": {"type": "string"},
                            "status": {"type": "integer"},
                            "detail": {"type": "string"},
                            "instance": {"type": "string"},
                            "invalid-params": {"type": "array", "items": {"type": "object"}},
                        },
                        "required": ["title", "status"],
                    }
                }
            },
        }


API = Api()
