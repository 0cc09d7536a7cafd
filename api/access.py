"""Access control of the API: who the caller is (a bearer token, or the screen's session cookie),
whether their role may use the route (each route declares the roles it admits, and the OpenAPI
document says so), and which cities they see.

- No credentials, or credentials that are unknown, revoked or expired: 401.
- A role the route does not admit: 403. A change made with a session cookie without its CSRF
  token (the `X-CSRF-Token` header): 403.
- A city outside the caller's scope, or a sensor, alert or silence in one: 404, the same answer
  as for one that does not exist, so nobody probes which exist elsewhere.
A caller scoped to one city who names none gets that city; one scoped to several names one.

Also here: signing in and out, and the admins' routes for users, tokens and the audit log.
"""

from __future__ import annotations

import base64
import csv
import hmac
import io
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from aiohttp import web

from api.common import answer, json_body
from api.keys import ACCESS, STORE
from api.openapi import ADMIN, API, EVERYONE, Handler, Param
from api.problems import Problem, bad_param, not_found
from pantau.access import (
    SESSION_HOURS,
    AccessError,
    LoginRefused,
    LoginThrottled,
    Principal,
    Role,
    Token,
    User,
)
from pantau.audit import Actor, entries

COOKIE = "pantau_session"
CSRF_HEADER = "X-CSRF-Token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_PRINCIPAL = web.RequestKey("principal", Principal)


def principal(request: web.Request) -> Principal:
    """Who makes this request (set by the middleware on every route that admits roles)."""
    found: Principal | None = request.get(_PRINCIPAL)
    if found is None:
        raise Problem(401, "Unauthorized", "sign in, or send Authorization: Bearer <token>")
    return found


def acting(request: web.Request) -> Actor:
    """The caller as the audit log and the alert history record them."""
    return principal(request).actor(request.remote or "")


def visible_city(request: web.Request, city: str | None) -> None:
    """404 for a city the caller may not see (as for one that does not exist)."""
    if city is not None and not principal(request).sees(city):
        raise not_found(f"city {city!r}")


async def visible_sensor(request: web.Request, sensor_id: str, *, what: str = "sensor") -> str:
    """The city of a sensor the caller may see; 404 for one they may not, as for an unknown one."""
    async with request.app[STORE].connection() as conn:
        cur = await conn.execute("SELECT city FROM sensors WHERE id = %s", (sensor_id,))
        row = await cur.fetchone()
    if row is None or not principal(request).sees(row[0]):
        raise not_found(f"{what} {sensor_id!r}")
    return str(row[0])


def unauthorized(detail: str) -> Problem:
    return Problem(401, "Unauthorized", detail, headers={"WWW-Authenticate": 'Bearer realm="pantau"'})


async def _authenticate(request: web.Request) -> Principal | None:
    access = request.app[ACCESS]
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, credential = header.partition(" ")
        if scheme.lower() == "basic":  # GIS tools and SensorThings clients know Basic: the token is the password
            credential = _basic_password(credential)
        elif scheme.lower() != "bearer":
            raise unauthorized("Authorization: expected 'Bearer <token>' (or Basic with the token as password)")
        if not credential.strip():
            raise unauthorized("Authorization: the token is missing")
        found = await access.principal_for_token(credential.strip())
        if found is None:
            raise unauthorized("the token is not valid (unknown, revoked or expired)")
        return found
    cookie = request.cookies.get(COOKIE)
    if cookie:
        found = await access.principal_for_session(cookie)
        if found is None:
            raise unauthorized("the session has ended: sign in again")
        return found
    return None


def _basic_password(credential: str) -> str:
    try:
        decoded = base64.b64decode(credential.strip(), validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        raise unauthorized("Authorization: Basic credentials are base64 of user:token") from None
    return decoded.partition(":")[2]


@web.middleware
async def access_control(request: web.Request, handler: Handler) -> web.StreamResponse:
    op = API.operation_of(request.match_info.handler)
    if op is None or op.roles is None:
        return await handler(request)
    who = await _authenticate(request)
    if who is None:
        raise unauthorized("sign in, or send Authorization: Bearer <token>")
    if who.role not in op.roles:
        admitted = ", ".join(sorted(r.value for r in op.roles))
        raise Problem(403, "Forbidden", f"the role {who.role.value} may not do this: it is for {admitted}")
    if who.session and request.method not in _SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        if not sent or not hmac.compare_digest(sent, who.csrf_token):
            raise Problem(403, "Forbidden", f"{CSRF_HEADER}: a change made from the screen carries its CSRF token")
    if op.city_scope == "every-city" and who.cities is not None:
        raise Problem(403, "Forbidden", "this serves every city: it needs a role scoped to all cities")
    city = request.match_info.get("city") or request.query.get("city")
    if city is not None and not who.sees(city):
        raise not_found(f"city {city!r}")
    if city is None and who.cities is not None and any(p.name == "city" and p.where == "query" for p in op.params):
        if len(who.cities) != 1:
            raise bad_param("city", f"one of your cities: {', '.join(sorted(who.cities))}")
        (only,) = who.cities
        request = request.clone(rel_url=request.rel_url.update_query(city=only))
    request[_PRINCIPAL] = who
    return await handler(request)


# -- signing in ---------------------------------------------------------------------------------

LOGIN_BODY = {
    "type": "object",
    "properties": {"username": {"type": "string"}, "password": {"type": "string"}},
    "required": ["username", "password"],
    "additionalProperties": False,
}


@API.post(
    "/api/v1/auth/login",
    summary="Sign in to the screen: a session cookie (HttpOnly) and the CSRF token its changes carry",
    tag="access",
    roles=None,
    body=LOGIN_BODY,
    responses={200: "Signed in", 401: "Wrong user name or password", 429: "Too many failed logins: wait"},
)
async def login(request: web.Request) -> web.Response:
    body = await json_body(request, LOGIN_BODY)
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not username:
        raise bad_param("username", "a user name")
    if not isinstance(password, str) or not password:
        raise bad_param("password", "the password")
    try:
        session = await request.app[ACCESS].login(username, password, request.remote or "")
    except LoginThrottled as exc:
        raise Problem(
            429, "Too many failed logins", str(exc), headers={"Retry-After": str(exc.retry_after_s)}
        ) from None
    except LoginRefused as exc:
        raise Problem(401, "Unauthorized", str(exc)) from None
    response = answer(
        request,
        {"user": session.principal.to_json(), "csrf_token": session.csrf_token, "expires_at": session.expires_at},
    )
    response.set_cookie(
        COOKIE, session.cookie, max_age=SESSION_HOURS * 3600, httponly=True, samesite="Strict",
        secure=request.secure, path="/",
    )  # fmt: skip
    return response


@API.post(
    "/api/v1/auth/logout", summary="Sign out: the session ends", tag="access", roles=EVERYONE, body={"type": "object"}
)
async def logout(request: web.Request) -> web.Response:
    await json_body(request)
    cookie = request.cookies.get(COOKIE)
    if cookie and principal(request).session:
        await request.app[ACCESS].logout(cookie)
    response = answer(request, {"signed_out": True})
    response.del_cookie(COOKIE, path="/")
    return response


@API.get("/api/v1/auth/me", summary="Who the caller is: name, role, cities (and the CSRF token of a session)",
         tag="access", roles=EVERYONE)  # fmt: skip
async def me(request: web.Request) -> web.Response:
    who = principal(request)
    return answer(request, who.to_json() | ({"csrf_token": who.csrf_token} if who.session else {}))


# -- users and tokens (admins) ------------------------------------------------------------------

ROLE_SCHEMA = {"type": "string", "enum": [r.value for r in Role]}
CITIES_SCHEMA = {"type": ["array", "null"], "items": {"type": "string", "minLength": 1}}


def _refused(exc: AccessError) -> Problem:
    return Problem(400, "Bad request", str(exc))


def _cities_of(body: dict[str, Any]) -> list[str] | None:
    cities = body.get("cities")
    if cities is None:
        return None
    if not isinstance(cities, list) or not cities or not all(isinstance(c, str) and c for c in cities):
        raise bad_param("cities", "a list of city slugs, or null for every city")
    return cities


def _within(who: Principal, cities: Sequence[str] | None) -> bool:
    """Whether a user or token for `cities` lies within the caller's own scope."""
    return who.cities is None or (cities is not None and set(cities) <= who.cities)


def _grantable(request: web.Request, cities: list[str] | None) -> None:
    """An admin scoped to some cities grants those only: never every city, never another's."""
    who = principal(request)
    if who.cities is None:
        return
    if cities is None:
        raise Problem(403, "Forbidden", "an admin of some cities grants those only: name them in cities")
    for city in cities:
        visible_city(request, city)


@API.get("/api/v1/users", summary="Users, their roles and cities", tag="access", roles=ADMIN)
async def list_users(request: web.Request) -> web.Response:
    who = principal(request)
    users = [u for u in await request.app[ACCESS].users() if _within(who, u.cities)]
    return answer(request, {"users": [u.to_json() for u in users]})


USER_BODY = {
    "type": "object",
    "properties": {
        "username": {"type": "string"},
        "password": {"type": "string"},
        "role": ROLE_SCHEMA,
        "cities": CITIES_SCHEMA,
        "full_name": {"type": "string"},
    },
    "required": ["username", "password", "role"],
    "additionalProperties": False,
}


@API.post("/api/v1/users", summary="Add a user", tag="access", roles=ADMIN, body=USER_BODY,
          responses={201: "Created"}, scope="city")  # fmt: skip
async def add_user(request: web.Request) -> web.Response:
    body = await json_body(request, USER_BODY)
    for field in ("username", "password", "role"):
        if not isinstance(body.get(field), str):
            raise bad_param(field, "a string")
    full_name = body.get("full_name", "")
    if not isinstance(full_name, str):
        raise bad_param("full_name", "a string")
    cities = _cities_of(body)
    _grantable(request, cities)
    try:
        user = await request.app[ACCESS].add_user(
            acting(request), body["username"], body["password"], body["role"], cities=cities, full_name=full_name,
        )  # fmt: skip
    except AccessError as exc:
        raise _refused(exc) from None
    return answer(request, user.to_json(), status=201)


USERNAME = Param("username", {"type": "string"}, "user name", where="path")


@API.post("/api/v1/users/{username}/disable", summary="Disable a user: their sessions end at once", tag="access",
          roles=ADMIN, params=[USERNAME], body={"type": "object"})  # fmt: skip
async def disable_user(request: web.Request) -> web.Response:
    access = request.app[ACCESS]
    scopes = {u.username: u.cities for u in await access.users()}
    return await _end(request, "user", USERNAME.read(request), scopes, access.disable_user)


async def _end(
    request: web.Request, what: str, key: str, scopes: dict[str, tuple[str, ...] | None],
    act: Callable[[Actor, str], Awaitable[User | Token]],
) -> web.Response:  # fmt: skip
    """Disable a user or revoke a token within the caller's cities (else a 404, as for none)."""
    await json_body(request)
    if key not in scopes or not _within(principal(request), scopes[key]):
        raise not_found(f"{what} {key!r}")
    try:
        done = await act(acting(request), key)
    except AccessError:  # gone meanwhile
        raise not_found(f"{what} {key!r}") from None
    return answer(request, done.to_json())


@API.get("/api/v1/tokens", summary="API tokens (never their secrets)", tag="access", roles=ADMIN)
async def list_tokens(request: web.Request) -> web.Response:
    who = principal(request)
    tokens = [t for t in await request.app[ACCESS].tokens() if _within(who, t.cities)]
    return answer(request, {"tokens": [t.to_json() for t in tokens]})


TOKEN_BODY = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "role": ROLE_SCHEMA,
        "cities": CITIES_SCHEMA,
        "expires_at": {"type": ["string", "null"], "format": "date-time"},
    },
    "required": ["name", "role"],
    "additionalProperties": False,
}


@API.post("/api/v1/tokens", summary="Create an API token: its secret is in this answer only", tag="access",
          roles=ADMIN, body=TOKEN_BODY, responses={201: "Created"}, scope="city")  # fmt: skip
async def create_token(request: web.Request) -> web.Response:
    body = await json_body(request, TOKEN_BODY)
    for field in ("name", "role"):
        if not isinstance(body.get(field), str):
            raise bad_param(field, "a string")
    expires_at = body.get("expires_at")
    if expires_at is not None:
        if not isinstance(expires_at, str):
            raise bad_param("expires_at", "an RFC 3339 time with an offset")
        expires_at = Param("expires_at", {"type": "string", "format": "date-time"}, "")._parse(expires_at)
    cities = _cities_of(body)
    _grantable(request, cities)
    try:
        token, secret = await request.app[ACCESS].create_token(
            acting(request), body["name"], body["role"], cities=cities, expires_at=expires_at
        )
    except AccessError as exc:
        raise _refused(exc) from None
    return answer(request, token.to_json() | {"token": secret}, status=201)


TOKEN_ID = Param("token", {"type": "string"}, "token id", where="path")


@API.post("/api/v1/tokens/{token}/revoke", summary="Revoke a token: refused from now on", tag="access",
          roles=ADMIN, params=[TOKEN_ID], body={"type": "object"})  # fmt: skip
async def revoke_token(request: web.Request) -> web.Response:
    access = request.app[ACCESS]
    scopes = {t.id: t.cities for t in await access.tokens()}
    return await _end(request, "token", TOKEN_ID.read(request), scopes, access.revoke_token)


# -- the audit log ------------------------------------------------------------------------------

AUDIT_PARAMS = [
    Param("after", {"type": "integer", "minimum": 0, "default": 0}, "entries after this id (the next_after of a page)"),
    Param("limit", {"type": "integer", "minimum": 1, "maximum": 10000, "default": 500}, "entries per page"),
    Param("actor", {"type": "string"}, "only this actor"),
    Param("action", {"type": "string"}, "only this action, e.g. alert.acknowledge, token.revoke"),
    Param("from", {"type": "string", "format": "date-time"}, "entries at or after"),
    Param("to", {"type": "string", "format": "date-time"}, "entries before"),
    Param("format", {"type": "string", "enum": ["json", "csv"], "default": "json"}, "json pages, or CSV to file"),
]


@API.get("/api/v1/audit", summary="The audit log: every change, oldest first; paged by id; CSV to export",
         tag="access", roles=ADMIN, params=AUDIT_PARAMS, media=("application/json", "text/csv"),
         scope="every-city")  # fmt: skip
async def audit_log(request: web.Request) -> web.Response:
    q = {p.name: p.read(request) for p in AUDIT_PARAMS}
    start: datetime | None = q["from"]
    async with request.app[STORE].connection() as conn:
        found = await entries(
            conn, after_id=q["after"], limit=q["limit"], actor=q["actor"], action=q["action"], since=start,
            until=q["to"],
        )  # fmt: skip
    if q["format"] == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["id", "at", "actor", "role", "via", "address", "action", "target", "before", "after"])
        for e in found:
            row = e.to_json()
            writer.writerow([row[k] if k not in ("before", "after") else _json(row[k]) for k in row])
        return web.Response(text=out.getvalue(), content_type="text/csv", charset="utf-8")
    next_after = found[-1].id if len(found) == q["limit"] else None
    return answer(request, {"entries": [e.to_json() for e in found], "next_after": next_after})


def _json(value: Any) -> str:
    import json

    return "" if value is None else json.dumps(value, ensure_ascii=False)
