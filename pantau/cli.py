"""The `pantau` command: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import dataclasses
import fcntl
import json
import logging
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pantau import __version__
from pantau.audit import Actor
from pantau.errors import AlreadyRunning, ConfigError, PantauError
from pantau.service import Handler, Service, on_stop_signals, serve
from pantau.settings import Settings, load_settings, require
from pantau.telemetry import setup_logging

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from pantau.broker import DynsecControl
    from pantau.domain import Sensor
    from pantau.embedded import EmbeddedPostgres
    from pantau.store import Store, StoreInfo

log = logging.getLogger("pantau")



# -- db ---------------------------------------------------------------------------------------


async def cmd_db_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from pantau.store import Store

    async with Store.open(require(settings, "database_url"), settings.store) as store:
        backend, applied = await store.migrate()
    for name in applied:
        print(f"applied {name}")
    print(f"schema up to date on {backend.value}" + ("" if applied else " (nothing to do)"))
    return 0


def _span(value: timedelta) -> str:
    """A duration as `2d`, `12h`, `1h30m`, `30s`."""
    seconds = int(value.total_seconds())
    parts = [(seconds // 86400, "d"), (seconds % 86400 // 3600, "h"), (seconds % 3600 // 60, "m"), (seconds % 60, "s")]
    return "".join(f"{n}{unit}" for n, unit in parts if n) or "0s"


def _db_info_lines(info: StoreInfo) -> list[str]:
    """`pantau db info` for people: what is in use, then what an operator checks first."""
    backend = "not migrated yet" if info.backend is None else info.backend.value
    if info.timescaledb_version:
        backend += f" (TimescaleDB {info.timescaledb_version})"
    lines = [
        f"backend:        {backend}",
        f"server:         PostgreSQL {info.server_version}",
        f"schema version: {info.schema_version} (this pantau: {info.expected_schema_version})",
    ]
    if info.partitions is not None:
        p = info.partitions
        newest = f" (newest {p.newest})" if p.newest else ""
        # Not an outage: ingest makes a missing day's partition with the first reading for it.
        today = "" if p.has_today else f"; none for today ({p.today}) yet"
        lines.append(f"partitions:     {p.ahead} days ahead of today{newest}, {len(p.days)} in all{today}")
    if info.timescaledb is not None:
        ts = info.timescaledb
        lines.append(f"chunks:         {_span(ts.chunk_interval) if ts.chunk_interval else '?'} each")
        compression = "off"
        if ts.compression:
            compression = f"on, segmentby {', '.join(ts.segmentby) or '-'}, orderby {', '.join(ts.orderby) or '-'}"
        lines.append(f"compression:    {compression}")
        lines.append(f"jobs:           {len(ts.jobs)} TimescaleDB policies")
        for job in ts.jobs:
            config = ", ".join(
                f"{k} {'none' if v is None else v}" for k, v in sorted(job.config.items()) if not k.endswith("_id")
            )
            paused = "" if job.scheduled else ", paused"
            every = _span(job.schedule_interval)
            lines.append(f"  {job.id:>6} {job.policy} {job.relation} every {every} ({config}){paused}")
            if job.last_run_started_at is None:
                last = "not run yet"
            else:
                last = f"last run {_when(job.last_run_started_at)}: {job.last_run_status or '?'}"
                if job.total_failures:
                    last += f" ({job.total_failures} of {job.total_runs} runs failed)"
            lines.append(f"         {last}; next {_when(job.next_start)}")
            for error in job.errors:
                lines.append(f"         error {_when(error.at)} {error.sqlerrcode or '-'}: {error.message}")
    run = info.maintenance
    if run is None:
        lines.append("maintenance:    never (`pantau maintain` has not run on this database)")
    else:
        r = run.report
        lines.append(
            f"maintenance:    last run {_when(run.at)} ({run.took_s:.2f} s): {r.partitions_created} partitions made,"
            f" {r.partitions_dropped} dropped, {r.minute_buckets_refreshed} minute and {r.hour_buckets_refreshed}"
            f" hour rollups refreshed, {r.rejected_deleted} rejected messages and {r.unclaimed_dropped} unclaimed"
            " batches deleted"
        )
    lines += [f"{table + ':':<16}{count:>12,}" for table, count in info.row_counts.items()]
    return lines


async def cmd_db_info(args: argparse.Namespace, settings: Settings) -> int:
    from pantau.store import Store

    async with Store.open(require(settings, "database_url"), settings.store) as store:
        info = await store.info()
    print(json.dumps(info.to_json(), indent=2) if args.json else "\n".join(_db_info_lines(info)))
    return 0


async def cmd_maintain(args: argparse.Namespace, settings: Settings) -> int:
    from pantau.store import Store
    from pantau.store.maintenance import maintain_once, run_maintenance

    url = require(settings, "database_url")
    unclaimed = timedelta(hours=settings.rules.unclaimed_max_age_h)
    async with Store.open(url, settings.store) as store:
        backend = await store.backend()
        if args.once:
            async with store.connection() as conn:
                report = await maintain_once(conn, backend, settings.store, unclaimed_max_age=unclaimed)
            print(report)
            return 0
    stopping = asyncio.Event()  # upkeep keeps no work in hand: a stop ends it where it is
    await serve(
        stopping.wait(),
        lambda: run_maintenance(url, backend, settings.store, unclaimed_max_age=unclaimed),
        stop=stopping.set,
    )
    return 0


# -- sensors ----------------------------------------------------------------------------------


async def cmd_sensors_add(args: argparse.Namespace, settings: Settings) -> int:
    from pantau.sensors import sensor_from_mapping
    from pantau.store import Store

    metadata: dict[str, Any] = {}
    for item in args.meta or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError("--meta", f"expected KEY=VALUE, got {item!r}")
        try:
            metadata[key] = json.loads(value)
        except json.JSONDecodeError:
            metadata[key] = value
    sensor = sensor_from_mapping(
        {
            "id": args.id,
            "kind": args.kind,
            "city": args.city,
            "district": args.district,
            "name": args.name,
            "lat": args.lat,
            "lon": args.lon,
            "metadata": metadata,
        },
        "sensors add",
    )
    async with _sensor_accounts(settings, [sensor]) as ensure:
        async with Store.open(require(settings, "database_url"), settings.store) as store:
            inserted, _updated = await store.upsert_sensors([sensor], by=Actor.cli())
        verb = "added" if inserted else "updated"
        print(f"{verb} {sensor.id} ({sensor.kind.value}, {sensor.city}); topic {sensor.topic}")
        await ensure()
    return 0


# -- sensors' broker accounts (pantau.broker) ---------------------------------------------------


def _reserved_ids(settings: Settings) -> set[str]:
    """Client ids of pantau's own accounts: no sensor may be named so."""
    from pantau.broker import SERVICE_ACCOUNTS

    return {*SERVICE_ACCOUNTS, settings.ingest.client_id, settings.rules.mqtt_client_id}


def _broker_admin(settings: Settings) -> tuple[str, dict[str, Any]] | None:
    """(admin URL, endpoints) when pantau manages the broker's accounts (pantau.broker.managed_broker)."""
    from pantau.broker import managed_broker

    return managed_broker(settings.home.resolve(), settings.mqtt_admin_url)


def _require_broker_admin(settings: Settings) -> tuple[str, dict[str, Any]]:
    admin = _broker_admin(settings)
    if admin is None:
        raise ConfigError(
            "PANTAU_MQTT_ADMIN_URL",
            f"not set, and no broker of `pantau up` under {settings.home}: pantau manages device accounts on its "
            "own broker, or on a mosquitto with the dynamic-security plugin whose admin account this names",
        )
    return admin


@contextlib.asynccontextmanager
async def _sensor_accounts(settings: Settings, sensors: list[Sensor]) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """Around a registry change: when pantau manages the broker, its admin connection is opened
    and the ids checked first (a broker that refuses, or a reserved id, leaves the registry as it
    was); the function handed out then gives the sensors their accounts."""
    from pantau.broker import DynsecControl, check_sensor_id

    admin = _broker_admin(settings)
    if admin is None:

        async def nothing() -> None:
            return None

        yield nothing
        return
    for sensor in sensors:
        check_sensor_id(sensor.id, _reserved_ids(settings))
    async with DynsecControl(admin[0]) as control:
        yield lambda: _ensure_accounts_on(control, sensors, settings)


async def _ensure_accounts(admin_url: str, sensors: list[Sensor], settings: Settings) -> None:
    from pantau.broker import DynsecControl

    async with DynsecControl(admin_url) as control:
        await _ensure_accounts_on(control, sensors, settings)


async def _ensure_accounts_on(control: DynsecControl, sensors: list[Sensor], settings: Settings) -> None:
    from pantau.broker import ensure_sensor_accounts, retired

    made = await ensure_sensor_accounts(control, sensors, reserved=_reserved_ids(settings))
    gone = await retired(control, [s.id for s in sensors])
    kept = len(sensors) - made
    off = f" ({len(gone)} of them retired: no access)" if gone else ""
    print(f"broker accounts: {made} made, {kept} kept{off}; `pantau sensors credentials ID|--all` writes passwords")


async def cmd_sensors_credentials(args: argparse.Namespace, settings: Settings) -> int:
    from pantau.broker import DynsecControl, device_broker, issue_credentials, retired
    from pantau.store import Store

    if bool(args.ids) == bool(args.all):
        raise ConfigError("ID", "name sensor ids, or --all (not both)")
    admin_url, endpoints = _require_broker_admin(settings)
    async with Store.open(require(settings, "database_url"), settings.store) as store:
        registered = {s.id: s for s in await store.sensors()}
    if args.all:
        sensors = _unreserved(list(registered.values()), settings)
    else:
        unknown = [i for i in args.ids if i not in registered]
        if unknown:
            print(f"pantau: not in the registry: {', '.join(unknown)}", file=sys.stderr)
            return 1
        sensors = [registered[i] for i in dict.fromkeys(args.ids)]
    fmt = args.format or ("csv" if args.output and args.output.lower().endswith(".csv") else "json")
    path = Path(args.output or f"pantau-credentials-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.{fmt}")
    try:  # made before any password changes, readable by its owner only, never over another file
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise ConfigError("--output", f"cannot create {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w", newline="") as out:
        try:
            async with DynsecControl(admin_url) as control:
                if args.all:  # every sensor that still has access; a named retired one is an error
                    gone = await retired(control, [s.id for s in sensors])
                    sensors = [s for s in sensors if s.id not in gone]
                accounts = await issue_credentials(control, sensors, reserved=_reserved_ids(settings))
        except BaseException:
            out.close()
            path.unlink(missing_ok=True)
            raise
        host, port, tls, ca_file = device_broker(admin_url, endpoints)
        rows = [
            {
                "sensor_id": s.id,
                "host": host,
                "port": port,
                "tls": tls,
                "ca_file": ca_file,
                "username": a.username,
                "password": a.password,
                "client_id": a.client_id,
                "topic": s.topic,
            }
            for s, a in zip(sensors, accounts, strict=True)
        ]
        if fmt == "csv":
            writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["sensor_id"])
            writer.writeheader()
            writer.writerows(rows)
        else:
            out.write(json.dumps(rows, indent=2) + "\n")
    async with Store.open(require(settings, "database_url"), settings.store) as store:  # never the passwords
        ids = [s.id for s in sensors]
        target = f"sensor:{ids[0]}" if len(ids) == 1 else f"sensors:{len(ids)}"
        written = {"sensors": ids, "file": str(path.resolve())}
        await store.audit(Actor.cli(), "sensor.credentials", target, after=written)
    print(
        f"wrote the MQTT credentials of {len(rows)} sensor(s) to {path} (readable by you only); "
        "earlier passwords of these sensors no longer work"
    )
    return 0


async def cmd_sensors_retire(args: argparse.Namespace, settings: Settings) -> int:
    from pantau.broker import DynsecControl, retire_sensor
    from pantau.store import Store

    admin_url, _endpoints = _require_broker_admin(settings)
    async with DynsecControl(admin_url) as control:
        had = await retire_sensor(control, args.id)
    async with Store.open(require(settings, "database_url"), settings.store) as store:
        await store.audit(Actor.cli(), "sensor.retire", f"sensor:{args.id}", after={"had_access": had})
    if had:
        print(f"retired {args.id}: account disabled; the broker disconnected it and refuses it from now on")
    else:
        print(f"{args.id} has no broker account, or was retired already: nothing to revoke")
    return 0


async def cmd_sensors_import(args: argparse.Namespace, settings: Settings) -> int:
    from pantau.sensors import load_city, load_manifest
    from pantau.store import Store

    sensors = load_manifest(Path(args.file))
    city = load_city(Path(args.file))
    async with _sensor_accounts(settings, list(sensors)) as ensure:
        async with Store.open(require(settings, "database_url"), settings.store) as store:
            inserted, updated = await store.upsert_sensors(sensors, by=Actor.cli())
            if city is not None:
                await store.upsert_city(city)
        print(f"imported {len(sensors)} sensors from {args.file}: {inserted} new, {updated} updated")
        if city is not None:
            print(f"city {city.id}: {city.name or '-'}, {city.province or '-'}, {city.timezone} ({city.zone_name})")
        await ensure()
    return 0


def _rfc3339(key: str, text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(key, f"expected an RFC 3339 time such as 2026-12-01T00:00:00+07:00, got {text!r}") from None
    if when.tzinfo is None:
        raise ConfigError(key, f"{text!r} has no offset (Z, +07:00, +08:00 or +09:00)")
    return when


async def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from pantau.store import Store
    from pantau.store.export import ExportFilter, export

    f = ExportFilter(
        start=_rfc3339("--from", args.start),
        end=_rfc3339("--to", args.end),
        sensors=args.sensor or (),
        city=args.city,
        kind=args.kind,
        metrics=args.metric or (),
    )
    out = sys.stdout.buffer if args.output in (None, "-") else open(args.output, "wb")  # noqa: SIM115 - closed below
    written, shown = 0, time.monotonic()
    try:
        async with Store.open(require(settings, "database_url"), settings.store) as store, store.connection() as conn:
            async for chunk in export(conn, f, args.format):
                out.write(chunk)
                written += len(chunk)
                if args.output not in (None, "-") and time.monotonic() - shown > 1.0:
                    print(f"\r{written / 1e6:,.1f} MB written ...", end="", file=sys.stderr, flush=True)
                    shown = time.monotonic()
    finally:
        if out is not sys.stdout.buffer:
            out.close()
    if args.output not in (None, "-"):
        print(f"\r{written / 1e6:,.1f} MB of {args.format} written to {args.output}", file=sys.stderr)
    return 0


async def cmd_cities_list(args: argparse.Namespace, settings: Settings) -> int:
    from pantau.store import Store

    async with Store.open(require(settings, "database_url"), settings.store) as store:
        cities = await store.cities()
    if args.format == "json":
        print(json.dumps([{"id": c.id, "name": c.name, "province": c.province, "timezone": c.timezone,
                           "zone": c.zone_name} for c in cities], indent=2))  # fmt: skip
        return 0
    for c in cities:
        print(f"{c.id:<16} {c.timezone:<16} {c.zone_name:<5} {c.name}" + (f", {c.province}" if c.province else ""))
    return 0


async def cmd_cities_set(args: argparse.Namespace, settings: Settings) -> int:
    from pantau.domain import City
    from pantau.store import Store

    async with Store.open(require(settings, "database_url"), settings.store) as store:
        known = {c.id: c for c in await store.cities()}
        old = known.get(args.id)
        try:
            city = City(
                id=args.id,
                name=args.name if args.name is not None else (old.name if old else ""),
                province=args.province if args.province is not None else (old.province if old else ""),
                timezone=args.timezone or (old.timezone if old else "Asia/Jakarta"),
            )
        except ValueError as exc:
            raise ConfigError("--" + str(exc).split(":", 1)[0], str(exc).split(": ", 1)[1]) from None
        await store.upsert_city(city)
    print(f"city {city.id}: {city.name or '-'}, {city.province or '-'}, {city.timezone} ({city.zone_name})")
    return 0


async def cmd_sensors_list(args: argparse.Namespace, settings: Settings) -> int:
    from pantau.store import Store

    async with Store.open(require(settings, "database_url"), settings.store) as store:
        sensors = await store.sensors(city=args.city, kind=args.kind)
    if args.format == "json":
        print(
            json.dumps(
                [
                    {
                        "id": s.id,
                        "kind": s.kind.value,
                        "city": s.city,
                        "district": s.district,
                        "name": s.name,
                        "lat": s.lat,
                        "lon": s.lon,
                        "metadata": s.metadata,
                        "last_seen": s.last_seen.isoformat() if s.last_seen else None,
                    }
                    for s in sensors
                ],
                indent=2,
            )
        )
    elif args.format == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(["id", "kind", "city", "district", "name", "lat", "lon", "last_seen"])
        for s in sensors:
            writer.writerow(
                [
                    s.id,
                    s.kind.value,
                    s.city,
                    s.district,
                    s.name,
                    s.lat,
                    s.lon,
                    s.last_seen.isoformat() if s.last_seen else "",
                ]
            )
    else:
        print(f"{'ID':<24}{'KIND':<9}{'CITY':<14}{'DISTRICT':<18}{'LAST SEEN':<26}NAME")
        for s in sensors:
            seen = s.last_seen.strftime("%Y-%m-%d %H:%M:%S%z") if s.last_seen else "never"
            print(f"{s.id:<24}{s.kind.value:<9}{s.city:<14}{s.district[:17]:<18}{seen:<26}{s.name}")
        print(f"{len(sensors)} sensors")
    return 0


# -- ingest -----------------------------------------------------------------------------------


# -- rules ------------------------------------------------------------------------------------


# -- alerts -----------------------------------------------------------------------------------


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"


async def cmd_alerts_list(args: argparse.Namespace, settings: Settings) -> int:
    from pantau.alerts import AlertStore
    from pantau.store import Store

    async with Store.open(require(settings, "database_url"), settings.store) as store:
        alerts = await AlertStore(store).list_alerts(
            state=args.state, city=args.city, severity=args.severity, rule_id=args.rule, limit=args.limit
        )
    if args.format == "json":
        print(json.dumps([a.to_json() for a in alerts], indent=2))
        return 0
    print(f"{'ID':>6}  {'STATE':<13}{'SEVERITY':<10}{'RULE':<24}{'SCOPE':<34}{'OPENED':<22}{'VALUE':>10}  FLAGS")
    for a in alerts:
        value = "-" if a.current_value is None else f"{a.current_value:g}"
        flags = " ".join(f for f, on in (("flapping", a.flapping), (f"acked by {a.acked_by}", a.acked_by)) if on)
        print(
            f"{a.id:>6}  {a.state.value:<13}{a.severity.value:<10}{a.rule_id[:23]:<24}{a.scope[:33]:<34}"
            f"{_when(a.opened_at):<22}{value:>10}  {flags}"
        )
    print(f"{len(alerts)} alerts ({args.state})")
    return 0


def _done_by(by: str | None, at: datetime | None) -> str:
    return f" (by {by} at {_when(at)})" if by else ""


async def cmd_alerts_ack(args: argparse.Namespace, settings: Settings) -> int:
    from pantau.alerts import AlertStore, Outcome
    from pantau.store import Store

    async with Store.open(require(settings, "database_url"), settings.store) as store:
        result = await AlertStore(store).acknowledge(args.id, Actor.cli(args.by), reason=args.comment)
    alert = result.alert
    if result.outcome is Outcome.NOT_FOUND or alert is None:
        print(f"pantau: there is no alert {args.id}", file=sys.stderr)
        return 1
    if result.outcome is Outcome.ALREADY_RESOLVED:
        print(
            f"pantau: alert {alert.id} is already resolved{_done_by(alert.resolved_by, alert.resolved_at)}",
            file=sys.stderr,
        )
        return 1
    if result.outcome is Outcome.ALREADY_ACKNOWLEDGED:
        print(f"alert {alert.id} is already acknowledged{_done_by(alert.acked_by, alert.acked_at)}")
        return 0
    print(f"acknowledged alert {alert.id} ({alert.rule_id} on {alert.scope}, {alert.severity.value}) by {args.by}")
    return 0


async def cmd_alerts_resolve(args: argparse.Namespace, settings: Settings) -> int:
    from pantau.alerts import AlertStore, Outcome
    from pantau.store import Store

    async with Store.open(require(settings, "database_url"), settings.store) as store:
        result = await AlertStore(store).resolve_by_id(args.id, Actor.cli(args.by), reason=args.reason)
    alert = result.alert
    if result.outcome is Outcome.NOT_FOUND or alert is None:
        print(f"pantau: there is no alert {args.id}", file=sys.stderr)
        return 1
    if result.outcome is Outcome.ALREADY_RESOLVED:
        print(f"alert {alert.id} is already resolved{_done_by(alert.resolved_by, alert.resolved_at)}")
        return 0
    print(f"resolved alert {alert.id} ({alert.rule_id} on {alert.scope}, {alert.severity.value}) by {args.by}")
    return 0


async def cmd_alerts_silence(args: argparse.Namespace, settings: Settings) -> int:
    from pantau.alerts import AlertStore
    from pantau.rulepack.durations import parse_duration
    from pantau.store import Store

    if args.district and not args.city:
        raise ConfigError("--district", "a district silence needs --city")
    try:
        duration = parse_duration(args.duration)
    except ValueError as exc:
        raise ConfigError("--for", str(exc)) from None
    if duration <= timedelta(0):
        raise ConfigError("--for", "must be longer than 0s")
    async with Store.open(require(settings, "database_url"), settings.store) as store:
        silence = await AlertStore(store).add_silence(
            sensor_id=args.sensor,
            city=args.city,
            district=args.district,
            rule_id=args.rule,
            ends_at=datetime.now(UTC) + duration,
            created_by=Actor.cli(args.by),
            comment=args.comment,
        )
    print(f"silence {silence.id}: {silence.describe()} until {_when(silence.ends_at)} by {silence.created_by}")
    return 0


async def cmd_alerts_silences(args: argparse.Namespace, settings: Settings) -> int:
    from pantau.alerts import AlertStore
    from pantau.store import Store

    async with Store.open(require(settings, "database_url"), settings.store) as store:
        silences = await AlertStore(store).silences(active_at=None if args.all else datetime.now(UTC))
    for s in silences:
        comment = f" - {s.comment}" if s.comment else ""
        ended = f", ended by {s.ended_by}" if s.ended_by else ""
        print(
            f"{s.id:>5}  {_when(s.starts_at)} → {_when(s.ends_at)}  {s.describe()}  by {s.created_by}{ended}{comment}"
        )
    print(f"{len(silences)} silence{'s' if len(silences) != 1 else ''} ({'all' if args.all else 'active'})")
    return 0


async def cmd_alerts_unsilence(args: argparse.Namespace, settings: Settings) -> int:
    from pantau.alerts import AlertStore
    from pantau.store import Store

    async with Store.open(require(settings, "database_url"), settings.store) as store:
        ended = await AlertStore(store).end_silence(args.id, Actor.cli(args.by))
    if ended is None:
        print(f"no active or future silence {args.id}", file=sys.stderr)
        return 1
    print(f"silence {ended.id} ended at {_when(ended.ends_at)}: {ended.describe()} (by {ended.ended_by})")
    return 0


# -- up ---------------------------------------------------------------------------------------


# What `pantau up` supervises, each a `pantau <name>` process (docs/decisions.md D9); each can move
# to a machine of its own for scale-out.
UP_SERVICES = ("ingest", "maintain", "rules", "api")


def _lock_home(home: Path) -> Any:
    home.mkdir(parents=True, exist_ok=True)
    lock = open(home / "up.lock", "a+")  # noqa: SIM115 - held for the life of `up`
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise AlreadyRunning(
            f"pantau up is already running on {home} (pid {holder}); stop it first or use another PANTAU_HOME"
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


def _unreserved(sensors: list[Sensor], settings: Settings) -> list[Sensor]:
    """The sensors whose ids may have a broker account; the others are named on stderr."""
    from pantau.broker import RESERVED_PREFIX

    reserved = _reserved_ids(settings)
    refused = [s.id for s in sensors if s.id in reserved or s.id.lower().startswith(RESERVED_PREFIX)]
    if refused:
        print(f"pantau: no broker account for reserved sensor ids: {', '.join(refused)}", file=sys.stderr)
    return [s for s in sensors if s.id not in refused]


def _previous_endpoints(home: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((home / "endpoints.json").read_text()))
    except (OSError, ValueError):
        return {}


# The first admin of a new installation: PANTAU_ADMIN_USER (default admin) with PANTAU_ADMIN_PASSWORD
# when set, else a generated password written to this file under PANTAU_HOME for its owner only.
# There is never a default password.
FIRST_ADMIN_FILE = "first-admin-password"


async def _first_admin(store: Any, home: Path) -> str:
    """Create the first admin when there are no users; how to sign in as them ("" when users exist)."""
    from pantau.access import Access, generate_password

    access = Access(store)
    if await access.count_users() > 0:
        return ""
    username = os.environ.get("PANTAU_ADMIN_USER", "admin")
    password = os.environ.get("PANTAU_ADMIN_PASSWORD", "")
    where = "the password in PANTAU_ADMIN_PASSWORD"
    if not password:
        password = generate_password()
        path = home / FIRST_ADMIN_FILE
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text(password + "\n")
        where = f"the password in {path} (readable by you only; change it: pantau users password {username})"
    await access.add_user(Actor.cli("pantau up"), username, password, "admin", full_name="first admin")
    return f"as {username!r}, {where}"


async def _database_env(store: Store, owner_url: str, pg: EmbeddedPostgres | None) -> dict[str, dict[str, str]]:
    """Each supervised service's database URL. On the private PostgreSQL, ingest, rules and api
    log in as their roles (pantau.store.grants) with passwords kept in its state directory, and
    are never handed the owner's URL; maintain runs as the owner. On an operator's database every
    service gets PANTAU_DATABASE_URL, and the operator's PANTAU_<SERVICE>_DATABASE_URL, if set,
    reaches it from the environment."""
    from pantau.store.grants import Service, role_url, set_login_passwords

    env = {name: {"PANTAU_DATABASE_URL": owner_url} for name in UP_SERVICES}
    if pg is None:
        return env
    passwords = {service: pg.login_password(service.role) for service in Service}
    async with store.connection() as conn:
        await set_login_passwords(conn, passwords)
    for service, password in passwords.items():
        env[service.value] = {f"PANTAU_{service.value.upper()}_DATABASE_URL": role_url(owner_url, service, password)}
    return env


async def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from urllib.parse import urlsplit

    from pantau.broker import ADMIN, INGEST, RULES, DynsecControl, ensure_service_accounts
    from pantau.embedded import EmbeddedMosquitto, EmbeddedPostgres
    from pantau.mqtt import BrokerAddress, free_port
    from pantau.ports import ensure_free
    from pantau.store import Store, redact_url
    from pantau.supervisor import Component, Supervisor

    home = settings.home.resolve()
    lock = _lock_home(home)
    previous = _previous_endpoints(home)
    pg: EmbeddedPostgres | None = None
    mq: EmbeddedMosquitto | None = None
    try:
        # The ports pantau's own services listen on, before starting anything (a second `up` on
        # the same home is told so by the lock first).
        ensure_free(settings.ingest.metrics_port, "127.0.0.1", "PANTAU_INGEST_METRICS_PORT")
        ensure_free(settings.api_port, settings.api_host, "PANTAU_API_PORT")
        db_url = settings.database_url
        if db_url is None:
            old_port = urlsplit(previous.get("database_url", "")).port or 0
            pg = EmbeddedPostgres(home / "postgres", port=old_port)
            print("starting private PostgreSQL" + (" with TimescaleDB" if pg.timescaledb else "") + " ...", flush=True)
            pg.start()  # blocking is fine: nothing else runs yet
            db_url = pg.url
        mqtt_url = settings.mqtt_url
        # Each service's own broker account on pantau's broker (pantau.broker); the URLs hold secrets.
        service_mqtt: dict[str, str] = {}
        admin_url: str | None = None
        if mqtt_url is None:
            old_port = urlsplit(previous.get("mqtt_url", "")).port or 0
            mq = EmbeddedMosquitto(
                home / "mosquitto",
                port=old_port,
                secure=True,
                client_ids={INGEST: settings.ingest.client_id, RULES: settings.rules.mqtt_client_id},
                tls_cert_file=settings.mqtt_tls_cert_file,
                tls_key_file=settings.mqtt_tls_key_file,
                tls_port=settings.mqtt_tls_port or urlsplit(previous.get("mqtts_url", "")).port or 0,
            )
            print("starting private mosquitto (accounts and ACLs: dynamic security) ...", flush=True)
            # On this (main) thread: the broker is told to exit when the thread that started it
            # dies (die_with_parent), and a worker thread may end before `up` does.
            mq.start()
            mqtt_url = mq.url
            book = mq.accounts()
            address = BrokerAddress.parse(mqtt_url)
            admin_url = book[ADMIN].url(address)
            async with DynsecControl(admin_url) as control:
                await ensure_service_accounts(control, book)
            service_mqtt = {"ingest": book[INGEST].url(address), "rules": book[RULES].url(address)}
        settings = settings.with_endpoints(database_url=db_url, mqtt_url=mqtt_url)
        async with Store.open(db_url, settings.store) as store:
            backend, applied = await store.migrate()
            sign_in = await _first_admin(store, home)
            registered = await store.sensors() if admin_url else []
            database_env = await _database_env(store, db_url, pg if settings.store.service_roles else None)
        for name in applied:
            print(f"applied migration {name}")
        if admin_url and registered:  # sensors registered before pantau ran its broker: each gets its account
            await _ensure_accounts(admin_url, _unreserved(registered, settings), settings)
        metrics_port = settings.ingest.metrics_port
        if metrics_port == 0:
            metrics_port = free_port()
        api_port = settings.api_port or free_port()
        endpoints = {
            # Never a secret here: the embedded database's password stays in its own 0600 file, and
            # commands beside `up` find it there (pantau.embedded.running_stack_database_url).
            "database_url": redact_url(db_url).replace(":***@", "@") if pg is not None else redact_url(db_url),
            "mqtt_url": redact_url(mqtt_url),
            "api_url": f"http://{settings.api_host}:{api_port}/api/v1",
            "ingest_metrics_url": f"http://127.0.0.1:{metrics_port}/metrics" if metrics_port > 0 else None,
            "backend": backend.value,
            "pid": os.getpid(),
        }
        if mq is not None and mq.tls_url:  # no secrets here: endpoints.json is for scripts
            endpoints["mqtts_url"] = mq.tls_url
            endpoints["mqtts_ca_file"] = str(Path(settings.mqtt_tls_ca_file or settings.mqtt_tls_cert_file).resolve())
        path = home / "endpoints.json"
        path.write_text(json.dumps(endpoints, indent=2) + "\n")
        path.chmod(0o600)
        print(f"database  {redact_url(db_url)} ({backend.value})")
        print(f"mqtt      {redact_url(mqtt_url)}  (sensors publish to pantau/v1/{{city}}/{{kind}}/{{sensor_id}})")
        if mq is not None:
            tls = f"; TLS on {mq.tls_url}" if mq.tls_url else ""
            print(f"          anonymous access off{tls}; device accounts: pantau sensors credentials ID|--all")
        print(f"api       {endpoints['api_url']}  (its reference: {endpoints['api_url']}/openapi.json)")
        if endpoints["ingest_metrics_url"]:
            print(f"metrics   {endpoints['ingest_metrics_url']}")
        if sign_in:
            print(f"sign in   {sign_in}")
        print(f"endpoints written to {path}; Ctrl-C stops everything", flush=True)
        env = {
            "PANTAU_MQTT_URL": mqtt_url,
            "PANTAU_INGEST_METRICS_PORT": str(metrics_port),
            "PANTAU_API_PORT": str(api_port),
            "PANTAU_HOME": str(home),
        }
        mqtt_env = {name: {"PANTAU_MQTT_URL": service_mqtt.get(name, mqtt_url)} for name in UP_SERVICES}
        supervisor = Supervisor(
            [Component(name, [name], env | mqtt_env[name] | database_env[name]) for name in UP_SERVICES]
        )
        on_stop_signals(supervisor.stop)
        await supervisor.run()
        print("stopped", flush=True)
        return 0
    finally:
        if mq is not None:
            await asyncio.to_thread(mq.stop)
        if pg is not None:
            await asyncio.to_thread(pg.stop)
        lock.close()


# -- parser -----------------------------------------------------------------------------------


def _services() -> list[Service]:
    """The services' main modules, each with `register` and `run` (pantau.service)."""
    import api.main
    import ingest.main
    import rules.main
    import simulators.main

    return [ingest.main, rules.main, api.main, simulators.main]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pantau", description="Telemetry backend for smart-city command centres.")
    parser.add_argument("--version", action="version", version=f"pantau {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("up", help="run the whole stack (private PostgreSQL and mosquitto unless URLs are set)")
    p.set_defaults(handler=cmd_up)

    for service in _services():
        service.register(sub)

    p = sub.add_parser("maintain", help="run store upkeep: partitions, rollups, retention")
    p.add_argument("--once", action="store_true", help="one round, then exit")
    p.set_defaults(handler=cmd_maintain)

    db = sub.add_parser("db", help="database schema: migrate, info")
    dbsub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    p = dbsub.add_parser("migrate", help="apply pending migrations (idempotent)")
    p.set_defaults(handler=cmd_db_migrate)
    p = dbsub.add_parser("info", help="backend, schema version and row counts")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_db_info)

    p = sub.add_parser("export", help="readings for a filter and range as CSV, NDJSON or Parquet (streamed, no cap)")
    p.add_argument("--from", dest="start", required=True, help="start, RFC 3339 with an offset")
    p.add_argument("--to", dest="end", required=True, help="end (excluded), RFC 3339 with an offset")
    p.add_argument("--city")
    p.add_argument("--kind", choices=["air", "traffic", "flood", "rain"])
    p.add_argument("--sensor", action="append", help="sensor id; repeatable")
    p.add_argument("--metric", action="append", help="metric; repeatable")
    p.add_argument("--format", choices=["csv", "ndjson", "parquet"], default="csv")
    p.add_argument("-o", "--output", help="file (default: standard output)")
    p.set_defaults(handler=cmd_export)

    cities = sub.add_parser("cities", help="the cities of the registry: list, set (name, province, time zone)")
    csub = cities.add_subparsers(dest="cities_command", metavar="ACTION", required=True)
    p = csub.add_parser("list", help="list the cities with their time zones")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(handler=cmd_cities_list)
    p = csub.add_parser("set", help="add or change a city (a fleet import sets it from the manifest)")
    p.add_argument("id", help="city slug, e.g. kotamobagu")
    p.add_argument("--name")
    p.add_argument("--province")
    p.add_argument("--timezone", help="IANA zone: Asia/Jakarta (WIB), Asia/Makassar (WITA), Asia/Jayapura (WIT)")
    p.set_defaults(handler=cmd_cities_set)

    sensors = sub.add_parser("sensors", help="sensor registry: add, list, import, credentials, retire")
    ssub = sensors.add_subparsers(dest="sensors_command", metavar="ACTION", required=True)
    p = ssub.add_parser("add", help="register (or update) one sensor")
    p.add_argument("--id", required=True)
    p.add_argument("--kind", required=True, choices=["air", "traffic", "flood", "rain"])
    p.add_argument("--city", required=True, help="city slug, e.g. kotamobagu")
    p.add_argument("--district", default="")
    p.add_argument("--name", default="")
    p.add_argument("--lat", type=float)
    p.add_argument("--lon", type=float)
    p.add_argument(
        "--meta",
        action="append",
        metavar="KEY=VALUE",
        help="metadata entry (JSON values allowed), e.g. siaga1_cm=200; repeatable",
    )
    p.set_defaults(handler=cmd_sensors_add)
    p = ssub.add_parser("list", help="list registered sensors")
    p.add_argument("--city")
    p.add_argument("--kind", choices=["air", "traffic", "flood", "rain"])
    p.add_argument("--format", choices=["table", "json", "csv"], default="table")
    p.set_defaults(handler=cmd_sensors_list)
    p = ssub.add_parser("import", help="import a CSV or YAML fleet manifest (upsert by id)")
    p.add_argument("file")
    p.set_defaults(handler=cmd_sensors_import)
    p = ssub.add_parser(
        "credentials",
        help="new MQTT passwords for sensors, written once to a file (mode 0600) for the loggers",
        description="Sets a fresh password on each named sensor's broker account (made if missing) and writes "
        "host, port, tls, CA file, username, password, client id and topic to FILE. The old passwords stop working.",
    )
    p.add_argument("ids", nargs="*", metavar="ID", help="sensor id; several may be named")
    p.add_argument("--all", action="store_true", help="every registered sensor")
    p.add_argument("-o", "--output", metavar="FILE", help="new file (default pantau-credentials-<time>.json)")
    p.add_argument("--format", choices=["json", "csv"], help="default: csv for a .csv FILE, else json")
    p.set_defaults(handler=cmd_sensors_credentials)
    p = ssub.add_parser("retire", help="revoke a sensor's MQTT account at once (the broker disconnects it)")
    p.add_argument("id")
    p.set_defaults(handler=cmd_sensors_retire)

    alerts = sub.add_parser("alerts", help="alerts: list, ack, resolve, silence, silences, unsilence")
    asub = alerts.add_subparsers(dest="alerts_command", metavar="ACTION", required=True)
    p = asub.add_parser("list", help="list alerts, newest first")
    p.add_argument(
        "--state",
        choices=["active", "open", "acknowledged", "resolved", "all"],
        default="active",
        help="active (the default) is open or acknowledged",
    )
    p.add_argument("--city")
    p.add_argument("--severity", choices=["info", "warning", "critical"])
    p.add_argument("--rule", help="only this rule id")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(handler=cmd_alerts_list)
    p = asub.add_parser("ack", help="acknowledge an alert: someone is on it")
    p.add_argument("id", type=int)
    p.add_argument("--by", required=True, help="who acknowledges")
    p.add_argument("--comment", default="")
    p.set_defaults(handler=cmd_alerts_ack)
    p = asub.add_parser("resolve", help="resolve an alert by hand")
    p.add_argument("id", type=int)
    p.add_argument("--by", required=True, help="who resolves")
    p.add_argument("--reason", default="")
    p.set_defaults(handler=cmd_alerts_resolve)
    p = asub.add_parser("silence", help="hold back notifications for a sensor or a city/district (still recorded)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--sensor", help="sensor id")
    target.add_argument("--city", help="city slug")
    p.add_argument("--district", help="only this district of --city")
    p.add_argument("--rule", help="only this rule id (default: every rule)")
    p.add_argument("--for", dest="duration", required=True, metavar="DURATION", help="e.g. 30m, 2h, 1d")
    p.add_argument("--by", required=True, help="who silences")
    p.add_argument("--comment", required=True, help="why (maintenance, known fault, ...)")
    p.set_defaults(handler=cmd_alerts_silence)
    p = asub.add_parser("silences", help="list active silences (--all: every silence)")
    p.add_argument("--all", action="store_true", help="include ended and future silences")
    p.set_defaults(handler=cmd_alerts_silences)
    p = asub.add_parser("unsilence", help="end a silence now (maintenance finished early)")
    p.add_argument("id", type=int)
    p.add_argument("--by", required=True, help="who ends it")
    p.set_defaults(handler=cmd_alerts_unsilence)

    from pantau import access_cli

    access_cli.register(sub)

    from benchmarks.screens import add_arguments as add_screens_arguments

    add_screens_arguments(
        sub.add_parser("screens", help="the operator screen's pictures in docs/screens/ from a simulated flood")
    )

    bench = sub.add_parser("bench", help="benchmarks that print figures")
    bsub = bench.add_subparsers(dest="bench_command", metavar="WHAT", required=True)
    from benchmarks.bench_ingest import add_arguments as add_bench_arguments

    add_bench_arguments(bsub.add_parser("ingest", help="ingest throughput, latency and memory vs a naive baseline"))
    from benchmarks.bench_rules import add_arguments as add_rules_bench_arguments

    add_rules_bench_arguments(bsub.add_parser("rules", help="publish→alert latency with the whole stack under load"))
    from benchmarks.bench_api import add_arguments as add_api_bench_arguments

    add_api_bench_arguments(bsub.add_parser("api", help="API latency, export rate and memory on a year of a city"))
    from benchmarks.bench_stream import add_arguments as add_stream_bench_arguments

    add_stream_bench_arguments(bsub.add_parser("stream", help="commit→screen latency of alert events, 200 screens"))

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"pantau: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    if settings.database_url is None and args.command != "up":
        from pantau.embedded import running_stack_database_url

        found = running_stack_database_url(settings.home.resolve())
        if found is not None:  # beside a running `pantau up`: its database
            settings = dataclasses.replace(settings, database_url=found)
    handler: Handler = args.handler
    try:
        result = handler(args, settings)
        return asyncio.run(result) if asyncio.iscoroutine(result) else int(result)
    except KeyboardInterrupt:
        return 130
    except ConfigError as exc:
        print(f"pantau: configuration error: {exc}", file=sys.stderr)
        return 2
    except PantauError as exc:
        print(f"pantau: {exc}", file=sys.stderr)
        return 1
