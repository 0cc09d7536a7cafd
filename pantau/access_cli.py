"""`pantau users` and `pantau tokens`: the people and machines that may use the API, from the
command line (the database owner's access; every change goes to the audit log as `cli`)."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

from pantau.access import ROLES, Access, AccessError, generate_password
from pantau.audit import Actor
from pantau.settings import Settings, require
from pantau.store import Store


def _cities(values: list[str] | None) -> list[str] | None:
    """--city a --city b, or a,b; none means every city."""
    if not values:
        return None
    return [c.strip() for v in values for c in v.split(",") if c.strip()]


def _password(args: argparse.Namespace) -> tuple[str, bool]:
    """The password to set and whether it was generated (to be shown once)."""
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n"), False
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if first != getpass.getpass("again: "):
            raise AccessError("the two passwords differ")
        return first, False
    return generate_password(), True


def _expiry(text: str | None) -> datetime | None:
    """--expires 90d / 12h / an RFC 3339 time; none: never."""
    if not text:
        return None
    units = {"d": timedelta(days=1), "h": timedelta(hours=1), "m": timedelta(minutes=1)}
    if text[:-1].isdigit() and text[-1] in units:
        return datetime.now(UTC) + int(text[:-1]) * units[text[-1]]
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise AccessError(f"--expires {text!r}: a duration such as 90d or 12h, or an RFC 3339 time") from None
    if when.tzinfo is None:
        raise AccessError(f"--expires {text!r}: give the time with its offset (Z or +07:00)")
    return when


def _open(settings: Settings) -> AbstractAsyncContextManager[Store]:
    return Store.open(require(settings, "database_url"), settings.store)


async def cmd_users_add(args: argparse.Namespace, settings: Settings) -> int:
    password, generated = _password(args)
    async with _open(settings) as store:
        user = await Access(store).add_user(
            Actor.cli(args.by), args.username, password, args.role, cities=_cities(args.city), full_name=args.name
        )
    scope = ", ".join(user.cities) if user.cities else "every city"
    print(f"added {user.username} ({user.role.value}; {scope})")
    if generated:  # shown once, on the terminal of who made it; never logged or stored
        print(f"password: {password}")
    return 0


async def cmd_users_list(args: argparse.Namespace, settings: Settings) -> int:
    async with _open(settings) as store:
        users = await Access(store).users()
    if args.format == "json":
        print(json.dumps([u.to_json() for u in users], default=str, indent=2))
        return 0
    print(f"{'USER':<24}{'ROLE':<10}{'CITIES':<30}STATE")
    for u in users:
        cities = ",".join(u.cities) if u.cities else "*"
        print(f"{u.username:<24}{u.role.value:<10}{cities[:29]:<30}{'disabled' if u.disabled_at else 'active'}")
    return 0


async def cmd_users_disable(args: argparse.Namespace, settings: Settings) -> int:
    async with _open(settings) as store:
        await Access(store).disable_user(Actor.cli(args.by), args.username)
    print(f"disabled {args.username}; their sessions have ended")
    return 0


async def cmd_users_password(args: argparse.Namespace, settings: Settings) -> int:
    password, generated = _password(args)
    async with _open(settings) as store:
        await Access(store).set_password(Actor.cli(args.by), args.username, password)
    print(f"new password for {args.username}; their sessions have ended")
    if generated:
        print(f"password: {password}")
    return 0


async def cmd_tokens_create(args: argparse.Namespace, settings: Settings) -> int:
    async with _open(settings) as store:
        token, secret = await Access(store).create_token(
            Actor.cli(args.by), args.name, args.role, cities=_cities(args.city), expires_at=_expiry(args.expires)
        )
    if args.format == "json":
        print(json.dumps(token.to_json() | {"token": secret}, default=str))
        return 0
    scope = ", ".join(token.cities) if token.cities else "every city"
    expiry = token.expires_at.isoformat() if token.expires_at else "never"
    print(f"token {token.id} for {token.name} ({token.role.value}; {scope}; expires {expiry})")
    print(f"{secret}")
    print("it is shown this once: only its hash is kept", file=sys.stderr)
    return 0


async def cmd_tokens_list(args: argparse.Namespace, settings: Settings) -> int:
    async with _open(settings) as store:
        tokens = await Access(store).tokens()
    if args.format == "json":
        print(json.dumps([t.to_json() for t in tokens], default=str, indent=2))
        return 0
    print(f"{'ID':<14}{'NAME':<24}{'ROLE':<10}{'CITIES':<24}{'EXPIRES':<22}STATE")
    now = datetime.now(UTC)
    for t in tokens:
        state = "revoked" if t.revoked_at else "expired" if t.expires_at and t.expires_at <= now else "active"
        expires = t.expires_at.strftime("%Y-%m-%d %H:%MZ") if t.expires_at else "never"
        cities = ",".join(t.cities) if t.cities else "*"
        print(f"{t.id:<14}{t.name[:23]:<24}{t.role.value:<10}{cities[:23]:<24}{expires:<22}{state}")
    return 0


async def cmd_tokens_revoke(args: argparse.Namespace, settings: Settings) -> int:
    async with _open(settings) as store:
        await Access(store).revoke_token(Actor.cli(args.by), args.id)
    print(f"revoked token {args.id}")
    return 0


def register(sub: Any) -> None:
    """`pantau users ...` and `pantau tokens ...`."""
    by = {"help": "who makes the change, for the audit log (default: your login name)"}
    users = sub.add_parser("users", help="people who sign in: add, list, disable, password")
    usub = users.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    p = usub.add_parser("add", help="add a user (password asked, read from stdin, or generated and shown once)")
    p.add_argument("username")
    p.add_argument("--role", required=True, choices=ROLES)
    p.add_argument("--city", action="append", help="a city the user may see; repeatable; none: every city")
    p.add_argument("--name", default="", help="full name")
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    p.add_argument("--by", **by)
    p.set_defaults(handler=cmd_users_add)
    p = usub.add_parser("list", help="list users")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(handler=cmd_users_list)
    p = usub.add_parser("disable", help="disable a user: their sessions end at once")
    p.add_argument("username")
    p.add_argument("--by", **by)
    p.set_defaults(handler=cmd_users_disable)
    p = usub.add_parser("password", help="set a user's password (asked, from stdin, or generated and shown once)")
    p.add_argument("username")
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    p.add_argument("--by", **by)
    p.set_defaults(handler=cmd_users_password)

    tokens = sub.add_parser("tokens", help="API tokens for machines and scripts: create, list, revoke")
    tsub = tokens.add_subparsers(dest="tokens_command", metavar="ACTION", required=True)
    p = tsub.add_parser("create", help="create a token (printed once; only its hash is kept)")
    p.add_argument("--name", required=True, help="the machine or script it is for")
    p.add_argument("--role", required=True, choices=ROLES)
    p.add_argument("--city", action="append", help="a city it may see; repeatable; none: every city")
    p.add_argument("--expires", help="90d, 12h, or an RFC 3339 time (default: never)")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.add_argument("--by", **by)
    p.set_defaults(handler=cmd_tokens_create)
    p = tsub.add_parser("list", help="list tokens (never their secrets)")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(handler=cmd_tokens_list)
    p = tsub.add_parser("revoke", help="revoke a token: refused from now on")
    p.add_argument("id")
    p.add_argument("--by", **by)
    p.set_defaults(handler=cmd_tokens_revoke)
