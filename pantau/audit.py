"""The audit log: one append-only entry for every change made through the API or the CLI (who, in
which role, from where, what, and the thing before and after).

Entries are written in the transaction of the change they record, so a change and its entry
land together or not at all. The table refuses UPDATE, DELETE and TRUNCATE to everyone, its owner
included (a trigger, migration 8); the services' database roles may only insert or read it.
"""

from __future__ import annotations

import getpass
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from psycopg import AsyncConnection, AsyncCursor
from psycopg.types.json import Jsonb

Via = Literal["api", "cli", "service"]  # service: a change a service makes itself (a rule pack loaded)


@dataclass(frozen=True, slots=True)
class Actor:
    """Who makes a change: a signed-in user or a token ("token:<name>") through the API, or
    someone at the command line; with the role they act in and where from."""

    name: str
    role: str
    via: Via
    address: str = ""

    @classmethod
    def cli(cls, name: str | None = None) -> Actor:
        """Someone at the command line (the database owner's access): `name` when they gave one
        (`--by`), else their login name; the address is this host."""
        login = getpass.getuser()
        who = login if name is None else name.strip()  # a blank --by stays blank: refused where one is needed
        return cls(name=who, role="owner", via="cli", address=f"{login}@{socket.gethostname()}")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    role: str
    via: str
    address: str
    action: str
    target: str
    before: Any
    after: Any

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at,
            "actor": self.actor,
            "role": self.role,
            "via": self.via,
            "address": self.address,
            "action": self.action,
            "target": self.target,
            "before": self.before,
            "after": self.after,
        }


_COLUMNS = "id, at, actor, role, via, address, action, target, before, after"


async def record(
    cur: AsyncCursor[Any] | AsyncConnection[Any],
    actor: Actor,
    action: str,
    target: str,
    *,
    before: Any = None,
    after: Any = None,
) -> None:
    """Append one entry (inside the caller's transaction). `before` and `after` are JSON values
    (datetimes as ISO text); secrets never go in them."""
    await cur.execute(
        "INSERT INTO audit_log (actor, role, via, address, action, target, before, after)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (
            actor.name,
            actor.role,
            actor.via,
            actor.address,
            action,
            target,
            None if before is None else Jsonb(before, dumps=_dumps),
            None if after is None else Jsonb(after, dumps=_dumps),
        ),
    )


def _dumps(value: Any) -> str:
    import json

    return json.dumps(value, default=lambda v: v.isoformat() if isinstance(v, datetime) else str(v))


async def entries(
    conn: AsyncConnection[Any],
    *,
    after_id: int = 0,
    limit: int = 100,
    actor: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[AuditEntry]:
    """Entries in the order they were written, from after `after_id` (the cursor)."""
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM audit_log WHERE id > %(after)s"  # noqa: S608 - fixed column list
        " AND (%(actor)s::text IS NULL OR actor = %(actor)s)"
        " AND (%(action)s::text IS NULL OR action = %(action)s)"
        " AND (%(since)s::timestamptz IS NULL OR at >= %(since)s)"
        " AND (%(until)s::timestamptz IS NULL OR at < %(until)s)"
        " ORDER BY id LIMIT %(limit)s",
        {"after": after_id, "actor": actor, "action": action, "since": since, "until": until, "limit": limit},
    )
    return [AuditEntry(*row) for row in await cur.fetchall()]
