"""Who may see and do what: four roles, each scoped to some cities or all; users who sign in with
a password (argon2id, docs/decisions.md), API tokens for machines, the screen's sessions, and
throttled logins. The API and the CLI both go through `Access`; every change it makes is written
to the audit log in the same transaction.

Secrets are never stored: a token's secret and a session's cookie are kept as SHA-256 hashes (they
are 256-bit random values, so a fast hash is enough), a password as an argon2id hash.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import psycopg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from psycopg.rows import dict_row

from pantau.audit import Actor, record
from pantau.errors import PantauError
from pantau.store import Store


class Role(StrEnum):
    OPERATOR = "operator"  # the screen: watch, acknowledge, resolve, silence
    AGENCY = "agency"  # read and export readings and reports; no alert actions
    ENGINEER = "engineer"  # sensors, rules, simulators
    ADMIN = "admin"  # users, tokens, the audit log


ROLES = tuple(r.value for r in Role)

# A shift is 12 hours: a session lasts one, then the operator signs in again.
SESSION_HOURS = 12
# Failed logins: past these within the window, further attempts wait (even with the right password).
FAILURES_PER_USER = 5
FAILURES_PER_ADDRESS = 20
FAILURE_WINDOW = timedelta(minutes=15)
MIN_PASSWORD_LENGTH = 10
TOKEN_PREFIX = "pantau"  # noqa: S105 - the tokens' visible prefix, not a secret

_USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_HASHER = PasswordHasher()  # argon2id with the library's current defaults (RFC 9106's second choice)


class AccessError(PantauError):
    """A request of the access domain that cannot be granted (the text says why)."""


class LoginRefused(AccessError):
    """Wrong user or password, or the user is disabled: the same answer for all three."""


class LoginThrottled(AccessError):
    """Too many failed logins for this user or this address: try again after `retry_after_s`."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"too many failed logins: try again in {retry_after_s} s")
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class Principal:
    """Whoever a request or a command acts as."""

    name: str  # the actor recorded: a username, or "token:<name>"
    role: Role
    cities: frozenset[str] | None  # None: every city
    session: bool = False  # signed in on the screen (its changes must carry the CSRF token)
    csrf_token: str = ""

    def sees(self, city: str | None) -> bool:
        return self.cities is None or (city is not None and city in self.cities)

    def actor(self, address: str = "") -> Actor:
        return Actor(name=self.name, role=self.role.value, via="api", address=address)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role.value,
            "cities": None if self.cities is None else sorted(self.cities),
        }


@dataclass(frozen=True, slots=True)
class User:
    username: str
    full_name: str
    role: Role
    cities: tuple[str, ...] | None
    created_at: datetime
    created_by: str
    disabled_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {
            "username": self.username,
            "full_name": self.full_name,
            "role": self.role.value,
            "cities": None if self.cities is None else list(self.cities),
            "created_at": self.created_at,
            "created_by": self.created_by,
            "disabled_at": self.disabled_at,
        }


@dataclass(frozen=True, slots=True)
class Token:
    id: str
    name: str
    role: Role
    cities: tuple[str, ...] | None
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "role": self.role.value,
            "cities": None if self.cities is None else list(self.cities),
            "created_at": self.created_at,
            "created_by": self.created_by,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "last_used_at": self.last_used_at,
        }


@dataclass(frozen=True, slots=True)
class Session:
    cookie: str  # give to the browser; never stored
    csrf_token: str
    principal: Principal
    expires_at: datetime


_USER_COLUMNS = "username, full_name, role, cities, created_at, created_by, disabled_at"
_TOKEN_COLUMNS = "id, name, role, cities, created_at, created_by, expires_at, revoked_at, last_used_at"  # noqa: S105


def _user(row: dict[str, Any]) -> User:
    cities = row["cities"]
    return User(
        row["username"], row["full_name"], Role(row["role"]), None if cities is None else tuple(cities),
        row["created_at"], row["created_by"], row["disabled_at"],
    )  # fmt: skip


def _token(row: dict[str, Any]) -> Token:
    cities = row["cities"]
    return Token(
        row["id"], row["name"], Role(row["role"]), None if cities is None else tuple(cities), row["created_at"],
        row["created_by"], row["expires_at"], row["revoked_at"], row["last_used_at"],
    )  # fmt: skip


def _sha256(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def check_username(username: str) -> str:
    if not _USERNAME.match(username):
        raise AccessError(
            f"user name {username!r}: lower-case letters, digits, '.', '_' or '-', starting with a letter or digit"
            " (at most 64)"
        )
    return username


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccessError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    if "\x00" in password:
        raise AccessError("a password cannot hold a NUL character")
    return password


def check_role(role: str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise AccessError(f"role {role!r}: one of {', '.join(ROLES)}") from None


def generate_password() -> str:
    """A password for a first admin or a reset: 20 characters from an alphabet without look-alikes."""
    alphabet = "abcdefghjkmnpqrstuvwxyzABCDEFGHJKMNPQRSTUVWXYZ23456789"
    return "".join(secrets.choice(alphabet) for _ in range(20))


def _cities(cities: Sequence[str] | None) -> list[str] | None:
    if cities is None:
        return None
    chosen = sorted({c.strip() for c in cities if c.strip()})
    if not chosen:
        raise AccessError("name at least one city, or none for every city")
    return chosen


class Access:
    """Users, tokens, sessions and logins on `Store`'s pool."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def _known_cities(self, conn: psycopg.AsyncConnection[Any], cities: list[str] | None) -> None:
        if cities is None:
            return
        cur = await conn.execute("SELECT id FROM cities WHERE id = ANY(%s)", (cities,))
        known = {row[0] for row in await cur.fetchall()}
        unknown = [c for c in cities if c not in known]
        if unknown:
            raise AccessError(f"unknown city {unknown[0]!r} (`pantau cities list` shows them)")

    # -- users -----------------------------------------------------------------------------------

    async def add_user(
        self, by: Actor, username: str, password: str, role: str, *, cities: Sequence[str] | None = None,
        full_name: str = "",
    ) -> User:  # fmt: skip
        check_username(username)
        check_password(password)
        chosen_role, chosen = check_role(role), _cities(cities)
        hashed = await asyncio.to_thread(_HASHER.hash, password)
        async with self._store.connection() as conn, conn.transaction():
            await self._known_cities(conn, chosen)
            try:
                cur = await conn.cursor(row_factory=dict_row).execute(
                    "INSERT INTO users (username, full_name, role, cities, password_hash, created_by)"  # noqa: S608
                    f" VALUES (%s, %s, %s, %s, %s, %s) RETURNING {_USER_COLUMNS}",
                    (username, full_name, chosen_role.value, chosen, hashed, by.name),
                )
            except psycopg.errors.UniqueViolation:
                raise AccessError(f"user {username!r} exists already") from None
            row = await cur.fetchone()
            assert row is not None
            user = _user(row)
            await record(conn, by, "user.add", f"user:{username}", after=user.to_json())
        return user

    async def users(self) -> list[User]:
        async with self._store.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                f"SELECT {_USER_COLUMNS} FROM users ORDER BY username"  # noqa: S608 - fixed columns
            )
            return [_user(r) for r in await cur.fetchall()]

    async def count_users(self) -> int:
        async with self._store.connection() as conn:
            cur = await conn.execute("SELECT count(*) FROM users")
            row = await cur.fetchone()
            return int(row[0]) if row else 0

    async def disable_user(self, by: Actor, username: str) -> User:
        """Disable a user: their sessions end at once; the user stays for the record."""
        return _user(await self._end(by, "user", username, "disabled", "user.disable"))

    async def _end(self, by: Actor, what: str, key: str, stamp: str, action: str) -> dict[str, Any]:
        """Stamp a user disabled or a token revoked (once: a second time keeps the first stamp),
        with the audit entry of before and after; the row as it is now."""
        table, key_column, columns = {
            "user": ("users", "username", _USER_COLUMNS),
            "token": ("api_tokens", "id", _TOKEN_COLUMNS),
        }[what]

        def shown(row: dict[str, Any]) -> dict[str, Any]:
            return _user(row).to_json() if what == "user" else _token(row).to_json()

        async with self._store.connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(f"SELECT {columns} FROM {table} WHERE {key_column} = %s FOR UPDATE", (key,))  # noqa: S608
            before = await cur.fetchone()
            if before is None:
                raise AccessError(f"no {what} {key!r}")
            await cur.execute(
                f"UPDATE {table} SET {stamp}_at = coalesce({stamp}_at, now()), {stamp}_by = coalesce({stamp}_by, %s)"  # noqa: S608
                f" WHERE {key_column} = %s RETURNING {columns}",
                (by.name, key),
            )
            after = await cur.fetchone()
            assert after is not None
            if what == "user":
                await cur.execute("DELETE FROM web_sessions WHERE username = %s", (key,))
            await record(
                conn, by, action, f"{what}:{key}", before=shown(before), after=shown(after)
            )
        return after

    async def set_password(self, by: Actor, username: str, password: str) -> None:
        """A new password: the user's sessions end (the hash never goes in the audit log)."""
        check_password(password)
        hashed = await asyncio.to_thread(_HASHER.hash, password)
        async with self._store.connection() as conn, conn.transaction():
            cur = await conn.execute("UPDATE users SET password_hash = %s WHERE username = %s", (hashed, username))
            if cur.rowcount == 0:
                raise AccessError(f"no user {username!r}")
            await conn.execute("DELETE FROM web_sessions WHERE username = %s", (username,))
            await record(conn, by, "user.password", f"user:{username}")

    # -- tokens ----------------------------------------------------------------------------------

    async def create_token(
        self, by: Actor, name: str, role: str, *, cities: Sequence[str] | None = None,
        expires_at: datetime | None = None,
    ) -> tuple[Token, str]:  # fmt: skip
        """A new token and its secret (shown once: only its hash is kept)."""
        name = name.strip()
        if not name or "\x00" in name or len(name) > 100:
            raise AccessError("a token needs a name: the machine or script it is for (at most 100 characters)")
        chosen_role, chosen = check_role(role), _cities(cities)
        if expires_at is not None and expires_at <= datetime.now(UTC):
            raise AccessError(f"expiry {expires_at.isoformat()} is in the past")
        token_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        async with self._store.connection() as conn, conn.transaction():
            await self._known_cities(conn, chosen)
            cur = await conn.cursor(row_factory=dict_row).execute(
                "INSERT INTO api_tokens (id, secret_sha256, name, role, cities, created_by, expires_at)"  # noqa: S608
                f" VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING {_TOKEN_COLUMNS}",
                (token_id, _sha256(secret), name, chosen_role.value, chosen, by.name, expires_at),
            )
            row = await cur.fetchone()
            assert row is not None
            token = _token(row)
            await record(conn, by, "token.create", f"token:{token_id}", after=token.to_json())
        return token, f"{TOKEN_PREFIX}_{token_id}_{secret}"

    async def tokens(self) -> list[Token]:
        async with self._store.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                f"SELECT {_TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at, id"  # noqa: S608 - fixed columns
            )
            return [_token(r) for r in await cur.fetchall()]

    async def revoke_token(self, by: Actor, token_id: str) -> Token:
        """Revoke a token: refused from the next request on."""
        return _token(await self._end(by, "token", token_id, "revoked", "token.revoke"))

    async def principal_for_token(self, bearer: str) -> Principal | None:
        """The token's principal, or None for a token that is unknown, wrong, revoked or expired."""
        parts = bearer.split("_", 2)
        if len(parts) != 3 or parts[0] != TOKEN_PREFIX or not parts[1] or not parts[2] or "\x00" in bearer:
            return None
        token_id, secret = parts[1], parts[2]
        async with self._store.connection() as conn:
            cur = await conn.execute(
                "SELECT secret_sha256, name, role, cities, expires_at, revoked_at,"
                " last_used_at IS NULL OR last_used_at < now() - interval '1 minute'"
                " FROM api_tokens WHERE id = %s",
                (token_id,),
            )
            row = await cur.fetchone()
            if row is None or not hmac.compare_digest(bytes(row[0]), _sha256(secret)):
                return None
            _hash, name, role, cities, expires_at, revoked_at, stale = row
            if revoked_at is not None or (expires_at is not None and expires_at <= datetime.now(UTC)):
                return None
            if stale:  # when it was last used, at most once a minute: not a write per request
                await conn.execute("UPDATE api_tokens SET last_used_at = now() WHERE id = %s", (token_id,))
        return Principal(f"token:{name}", Role(role), None if cities is None else frozenset(cities))

    # -- sign-in ---------------------------------------------------------------------------------

    async def login(self, username: str, password: str, address: str) -> Session:
        """A session for the right password; LoginRefused for anything else, LoginThrottled past
        the failures allowed for this user or this address (checked before the password)."""
        async with self._store.connection() as conn:
            cur = await conn.execute(
                "SELECT (SELECT count(*) FROM login_failures WHERE username = %(u)s AND at > now() - %(w)s),"
                " (SELECT count(*) FROM login_failures WHERE address = %(a)s AND at > now() - %(w)s),"
                " (SELECT min(at) FROM (SELECT at FROM login_failures WHERE (username = %(u)s OR address = %(a)s)"
                "   AND at > now() - %(w)s ORDER BY at DESC LIMIT %(n)s) recent)",
                {"u": username, "a": address, "w": FAILURE_WINDOW, "n": FAILURES_PER_USER},
            )
            row = await cur.fetchone()
            assert row is not None
            by_user, by_address, oldest = row
            if by_user >= FAILURES_PER_USER or by_address >= FAILURES_PER_ADDRESS:
                wait = FAILURE_WINDOW - (datetime.now(UTC) - oldest) if oldest else FAILURE_WINDOW
                raise LoginThrottled(max(1, int(wait.total_seconds()) + 1))
            users = await conn.cursor(row_factory=dict_row).execute(
                f"SELECT {_USER_COLUMNS}, password_hash FROM users WHERE username = %s",  # noqa: S608
                (username,),
            )
            found = await users.fetchone()
        ok = False
        if found is not None:
            try:
                ok = await asyncio.to_thread(_HASHER.verify, found["password_hash"], password)
            except (VerificationError, InvalidHashError):
                ok = False
        else:  # the same work for an unknown name: no telling which names exist by the time taken
            await asyncio.to_thread(_dummy_verify, password)
        if not ok or found is None or found["disabled_at"] is not None:
            async with self._store.connection() as conn:
                await conn.execute(
                    "INSERT INTO login_failures (username, address) VALUES (%s, %s)", (username, address)
                )
                await conn.execute("DELETE FROM login_failures WHERE at < now() - interval '1 day'")
            raise LoginRefused("wrong user name or password")
        user = _user(found)
        cookie, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
        expires_at = datetime.now(UTC) + timedelta(hours=SESSION_HOURS)
        async with self._store.connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO web_sessions (id_sha256, username, csrf_token, address, expires_at)"
                " VALUES (%s, %s, %s, %s, %s)",
                (_sha256(cookie), username, csrf, address, expires_at),
            )
            await conn.execute("DELETE FROM login_failures WHERE username = %s", (username,))
            await conn.execute("DELETE FROM web_sessions WHERE expires_at < now()")
        principal = Principal(
            username, user.role, None if user.cities is None else frozenset(user.cities), True, csrf
        )
        return Session(cookie, csrf, principal, expires_at)

    async def principal_for_session(self, cookie: str) -> Principal | None:
        if not cookie or "\x00" in cookie:
            return None
        async with self._store.connection() as conn:
            cur = await conn.execute(
                "SELECT u.username, u.role, u.cities, s.csrf_token FROM web_sessions s"
                " JOIN users u USING (username)"
                " WHERE s.id_sha256 = %s AND s.expires_at > now() AND u.disabled_at IS NULL",
                (_sha256(cookie),),
            )
            row = await cur.fetchone()
        if row is None:
            return None
        username, role, cities, csrf = row
        return Principal(username, Role(role), None if cities is None else frozenset(cities), True, csrf)

    async def logout(self, cookie: str) -> None:
        async with self._store.connection() as conn:
            await conn.execute("DELETE FROM web_sessions WHERE id_sha256 = %s", (_sha256(cookie),))


@functools.cache
def _dummy_hash() -> str:
    return _HASHER.hash("not anybody's password")


def _dummy_verify(password: str) -> None:
    with contextlib.suppress(VerificationError):
        _HASHER.verify(_dummy_hash(), password)
