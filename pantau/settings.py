"""One frozen settings object, built once at start-up from `pantau.toml` and the environment.

Environment variables win over the file. Core keys are `PANTAU_<KEY>`; sectioned keys are
`PANTAU_<SECTION>_<KEY>` in the environment and `[section] key = ...` in the file, e.g.
`PANTAU_INGEST_BATCH_MAX_ROWS` / `[ingest] batch_max_rows`. A bad value raises `ConfigError`
naming the key.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pantau.errors import ConfigError
from pantau.tiles import open_raster_archive

ENV_PREFIX = "PANTAU_"
# The files of deploy/ that pantau reads at run time (the default rule pack, the private servers'
# configs): `pantau/deploy` links to deploy/ in the source tree, and the wheel ships them there.
SHIPPED_DIR = (Path(__file__).parent / "deploy").resolve()


@dataclass(frozen=True, slots=True, kw_only=True)
class IngestSettings:
    """Tuning of the MQTT → PostgreSQL path."""

    client_id: str = "pantau-ingest"
    # A batch is written when it holds this many readings or is this old, whichever comes first:
    # 5,000 rows keep one COPY well under 50 ms; 50 ms of delay keeps publish→commit p99 under
    # 200 ms at 10k msg/s, leaving room for the rule engine's publish→alert target of 250 ms
    # (docs/performance.md). Under a backlog batches fill by size, so throughput is unchanged.
    batch_max_rows: int = 5000
    batch_max_delay_s: float = 0.05
    # Unacknowledged messages we allow the broker to have in flight to us (MQTT 5 Receive
    # Maximum). This is the backpressure bound: while the database is down at most this many
    # messages sit in memory, the rest waits in the broker's persistent queue.
    max_inflight: int = 20000
    # Readings decoded but not yet written: past this, ingest stops reading until the batch in
    # hand is taken (a SenML pack holds many readings, so messages alone do not bound memory).
    # 50,000 rows are ~10 MB and ten batches.
    max_pending_rows: int = 50000
    # Payloads above this are rejected as `oversize` (a 50-reading SenML pack is about 3 KiB).
    max_payload_bytes: int = 65536
    # Readings stamped further than this ahead of the receive time are rejected (clock skew).
    max_future_s: float = 300.0
    # MQTT 5 session expiry: the broker keeps our subscription and queue this long while we are
    # away (0xFFFFFFFF = never expires), so a stopped ingest loses nothing.
    session_expiry_s: int = 0xFFFFFFFF
    keepalive_s: int = 30
    # 5 (MQTT 5) or 4 (MQTT 3.1.1). Under MQTT 5 the broker itself stops at our Receive Maximum
    # (max_inflight) and the session's expiry is explicit (decisions D2); under 3.1.1 the bound is
    # ingest pausing its socket (TCP backpressure) and the broker's max_inflight_messages. Both
    # drain at the same rate since pantau parses PUBLISH packets itself (D15).
    mqtt_protocol: int = 5
    # Port for Prometheus metrics until the API serves them: 0 (the default) picks a free one and
    # logs it (`pantau up` writes it to endpoints.json), so a second ingest on the machine starts
    # beside the first; set a fixed port for a scrape config; -1 = off.
    metrics_port: int = 0
    # `last_seen` is written for all sensors heard from at most this often.
    last_seen_interval_s: float = 5.0
    # The registry cache is reloaded this often so edits reach a running ingest.
    registry_refresh_s: float = 30.0
    # Ingest's own database URL, as the pantau_ingest role (docs: README, "Database roles"); unset:
    # database_url.
    database_url: str | None = None
    # Hand each committed batch to the rule engine (the `ingest_batches` outbox, docs/decisions.md
    # D10). Off only where no rule worker will ever run: maintenance drops unclaimed batches after
    # [rules] unclaimed_max_age_h anyway.
    outbox: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreSettings:
    """Schema choices made at migrate time, and store maintenance."""

    # "auto" uses TimescaleDB when the extension can be created, "off" forces plain PostgreSQL.
    timescaledb: str = "auto"
    retention_days: int = 365
    rollup_retention_days: int = 3650
    compress_after_days: int = 7
    # Plain PostgreSQL: one partition per day, made this many days ahead.
    partition_ahead_days: int = 3
    # Plain PostgreSQL: how often the maintenance job refreshes rollups and partitions.
    maintenance_interval_s: float = 10.0
    pool_max_size: int = 8
    # Every migrate creates the services' database roles (pantau_ingest, pantau_rules, pantau_api)
    # and grants each what its code does (pantau/store/grants.py). Off where the migrating user may
    # not create roles and nobody will: every service then connects as the owner.
    service_roles: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class RulesSettings:
    """The rule worker (`pantau rules`) and its notifiers."""

    # The rule worker's own database URL, as the pantau_rules role; unset: database_url.
    database_url: str | None = None
    # The rule pack (YAML); empty = the default pack shipped in deploy/rules.yaml.
    file: str = ""
    # Name of this worker's claims and checkpoint. One worker per name runs at a time (a second
    # one waits for the first's lock); partitioned workers will each get their own name.
    worker: str = "default"
    # Batches claimed per evaluation step (each is one ingest commit, up to batch_max_rows readings):
    # a few at a time keeps each step, and the alert latency behind it, short.
    claim_max_batches: int = 16
    # Absence rules (sensor offline) are checked this often, in wall-clock time.
    tick_interval_s: float = 5.0
    # Engine state is checkpointed this often; a restart replays at most this much.
    checkpoint_interval_s: float = 10.0
    # Batches nobody claimed for this long are dropped by maintenance (no rule worker running).
    unclaimed_max_age_h: float = 24.0
    # Flapping: this many opens and resolves of one rule and scope within the window.
    flap_transitions: int = 4
    flap_window_s: float = 1800.0
    # Alert events go out on MQTT pantau/v1/{city}/alerts (and a retained open-alerts snapshot).
    mqtt_notify: bool = True
    mqtt_client_id: str = "pantau-rules"
    # Optional webhook: each alert event is POSTed as JSON with an Idempotency-Key header.
    webhook_url: str = ""
    webhook_timeout_s: float = 5.0
    # Retries back off from 1 s doubling up to this; a 4xx other than 408/429 is not retried.
    webhook_backoff_max_s: float = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything a pantau process needs to know at start-up."""

    database_url: str | None = None
    # The broker, with this process's own account for a secured broker:
    # mqtt://user:password@host:port (`pantau up` hands each service its own; docs/security-broker.md).
    mqtt_url: str | None = None
    # The broker's dynamic-security admin account, for `pantau sensors add|import|credentials|retire`
    # on a broker pantau does not run itself; `pantau up`'s own broker needs none (the state directory
    # holds its accounts).
    mqtt_admin_url: str | None = None
    # `pantau up`'s broker: an mqtts:// listener on mqtt_tls_port (0: a free one) when both PEM files
    # are given; devices' credential files name it, with mqtt_tls_ca_file (default: the certificate)
    # as what they verify the broker against.
    mqtt_tls_cert_file: str = ""
    mqtt_tls_key_file: str = ""
    mqtt_tls_port: int = 0
    mqtt_tls_ca_file: str = ""
    # The API's own database URL, as the pantau_api role; unset: database_url.
    api_database_url: str | None = None
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    # Web origins whose pages may call the API from a browser (CORS), comma-separated, e.g.
    # "https://cc.kotamobagukota.go.id"; "*" for any; empty (the default) for none.
    api_cors_origins: str = ""
    # Every statement of an API request is cancelled past this (the client gets a 422 with a hint).
    api_statement_timeout_ms: int = 5000
    # The live stream replays at most this many alert events to a screen that reconnects; further
    # behind, it is told to reload (a `reset` event).
    api_stream_replay_max: int = 10000
    # A screen's queue of alert events not yet written to it: past it, the screen is sent `reset`
    # and disconnected (it reloads) rather than an event dropped. A write it does not take within
    # the timeout cuts it off: a screen that stopped reading holds nothing up and little memory.
    api_stream_client_queue: int = 1000
    api_stream_write_timeout_s: float = 10.0
    # A base map under the screen's sensors, none by default (then nothing asks for tiles): a raster
    # tile URL template with {z}, {x} and {y} (a tile server on the command centre's network), or a
    # local PMTiles archive of raster tiles that the API serves itself; the text it must credit.
    api_basemap_tiles: str = ""
    api_basemap_pmtiles: str = ""
    api_basemap_attribution: str = ""
    home: Path = Path(".pantau")
    log_level: str = "INFO"
    ingest: IngestSettings = field(default_factory=IngestSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    rules: RulesSettings = field(default_factory=RulesSettings)

    def with_endpoints(self, *, database_url: str, mqtt_url: str) -> Settings:
        """The same settings pointing at the given database and broker."""
        return dataclasses.replace(self, database_url=database_url, mqtt_url=mqtt_url)

    def service_database_url(self, service: str) -> str:
        """The URL `service` (ingest, rules or api) connects with: its own setting (its database
        role), else `database_url`; ConfigError naming both when neither is set."""
        own = {"ingest": self.ingest.database_url, "rules": self.rules.database_url, "api": self.api_database_url}
        if own[service]:
            return str(own[service])
        if not self.database_url:
            key = f"PANTAU_{service.upper()}_DATABASE_URL"
            problem = "not set, nor PANTAU_DATABASE_URL (or run `pantau up`, which starts private services)"
            raise ConfigError(key, problem)
        return self.database_url


_SECTIONS: dict[str, type[Any]] = {"ingest": IngestSettings, "store": StoreSettings, "rules": RulesSettings}
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _convert(key: str, raw: Any, kind: Any) -> Any:
    origin = typing.get_origin(kind)
    if origin in (types.UnionType, typing.Union):  # Optional[...]
        inner = next(a for a in typing.get_args(kind) if a is not type(None))
        if raw is None or raw == "":
            return None
        return _convert(key, raw, inner)
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError
            return int(str(raw).strip(), 0) if isinstance(raw, str) else int(raw)
        if kind is float:
            if isinstance(raw, bool):
                raise ValueError
            value = float(raw)
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError
            return value
        if kind is Path:
            if not isinstance(raw, str) or not raw:
                raise ValueError
            return Path(raw).expanduser()
        if kind is str:
            if not isinstance(raw, str):
                raise ValueError
            return raw
    except (TypeError, ValueError):  # TypeError: a TOML array, table or date where a number belongs
        raise ConfigError(key, f"expected {kind.__name__}, got {raw!r}") from None
    raise ConfigError(key, f"unsupported setting type {kind!r}")


def redacted(url: str) -> str:
    """The URL with the part between `//` and `@` (user and password) shown as `***`: for messages."""
    head, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        return f"{head}://***@{rest.split('@', 1)[1]}"
    return url


def _validate_url(key: str, url: str | None, schemes: tuple[str, ...], *, host_in_query: bool = False) -> None:
    if url is None:
        return
    parts = urlsplit(url)
    shown = redacted(url)  # a URL may carry a password: never in a message
    if parts.scheme not in schemes:
        raise ConfigError(key, f"expected a {' or '.join(s + '://' for s in schemes)} URL, got {shown!r}")
    # libpq also takes the host (e.g. a Unix socket directory) from the query: ?host=/run/postgresql
    if not parts.hostname and not (host_in_query and "host=" in parts.query):
        raise ConfigError(key, f"URL has no host: {shown!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError(key, f"URL has a bad port: {shown!r}") from None


def _check_tile_template(template: str) -> None:
    key, parts = "PANTAU_API_BASEMAP_TILES", urlsplit(template)
    expected = f"a raster tile URL template such as http://tiles.lan/{{z}}/{{x}}/{{y}}.png, got {template!r}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(key, expected)
    missing = [k for k in ("{z}", "{x}", "{y}") if k not in template]
    if missing:
        raise ConfigError(key, f"{' and '.join(missing)} missing: {expected}")
    # The screen fills in {z}, {x} and {y} alone: a {s} (subdomains) or {r} (retina) would be asked for as it is.
    others = sorted(set(re.findall(r"\{[^{}]*\}", template)) - {"{z}", "{x}", "{y}"})
    if others:
        raise ConfigError(key, f"the screen fills in {{z}}, {{x}} and {{y}} only, not {', '.join(others)}: {expected}")


def _check(settings: Settings) -> None:
    _validate_url("PANTAU_DATABASE_URL", settings.database_url, ("postgresql", "postgres"), host_in_query=True)
    for key, url in (
        ("PANTAU_INGEST_DATABASE_URL", settings.ingest.database_url),
        ("PANTAU_RULES_DATABASE_URL", settings.rules.database_url),
        ("PANTAU_API_DATABASE_URL", settings.api_database_url),
    ):
        _validate_url(key, url, ("postgresql", "postgres"), host_in_query=True)
    _validate_url("PANTAU_MQTT_URL", settings.mqtt_url, ("mqtt", "mqtts"))
    _validate_url("PANTAU_MQTT_ADMIN_URL", settings.mqtt_admin_url, ("mqtt", "mqtts"))
    if not 0 <= settings.mqtt_tls_port <= 65535:
        raise ConfigError(
            "PANTAU_MQTT_TLS_PORT", f"expected a port 1-65535, or 0 for a free one, got {settings.mqtt_tls_port}"
        )
    if bool(settings.mqtt_tls_cert_file) != bool(settings.mqtt_tls_key_file):
        raise ConfigError(
            "PANTAU_MQTT_TLS_CERT_FILE", "a TLS listener needs both mqtt_tls_cert_file and mqtt_tls_key_file"
        )
    if not 0 <= settings.api_port <= 65535:
        raise ConfigError("PANTAU_API_PORT", f"expected a port 1-65535, or 0 for a free one, got {settings.api_port}")
    for origin in filter(None, (o.strip() for o in settings.api_cors_origins.split(","))):
        parts = urlsplit(origin)
        web_origin = parts.scheme in ("http", "https") and parts.hostname and parts.path in ("", "/")
        if origin != "*" and not web_origin:
            expected = f"origins such as https://host[:port], or *, got {origin!r}"
            raise ConfigError("PANTAU_API_CORS_ORIGINS", expected)
    if settings.api_basemap_tiles and settings.api_basemap_pmtiles:
        raise ConfigError("PANTAU_API_BASEMAP_TILES", "a base map comes from a tile URL or a PMTiles file, not both")
    if settings.api_basemap_tiles:
        _check_tile_template(settings.api_basemap_tiles)
    if settings.api_basemap_pmtiles:
        if not Path(settings.api_basemap_pmtiles).is_file():
            raise ConfigError("PANTAU_API_BASEMAP_PMTILES", f"no such file: {settings.api_basemap_pmtiles}")
        open_raster_archive(settings.api_basemap_pmtiles).close()  # its header and root directory, checked
    if settings.api_statement_timeout_ms < 1:
        raise ConfigError("PANTAU_API_STATEMENT_TIMEOUT_MS", "expected a positive number of milliseconds")
    if settings.log_level.upper() not in _LOG_LEVELS:
        raise ConfigError("PANTAU_LOG_LEVEL", f"expected one of {', '.join(_LOG_LEVELS)}")
    ing = settings.ingest
    positive = {
        "PANTAU_INGEST_BATCH_MAX_ROWS": ing.batch_max_rows,
        "PANTAU_INGEST_BATCH_MAX_DELAY_S": ing.batch_max_delay_s,
        "PANTAU_INGEST_MAX_INFLIGHT": ing.max_inflight,
        "PANTAU_INGEST_MAX_PENDING_ROWS": ing.max_pending_rows,
        "PANTAU_INGEST_MAX_PAYLOAD_BYTES": ing.max_payload_bytes,
        "PANTAU_INGEST_KEEPALIVE_S": ing.keepalive_s,
        "PANTAU_STORE_RETENTION_DAYS": settings.store.retention_days,
        "PANTAU_STORE_ROLLUP_RETENTION_DAYS": settings.store.rollup_retention_days,
        "PANTAU_STORE_COMPRESS_AFTER_DAYS": settings.store.compress_after_days,
        "PANTAU_STORE_MAINTENANCE_INTERVAL_S": settings.store.maintenance_interval_s,
        "PANTAU_STORE_POOL_MAX_SIZE": settings.store.pool_max_size,
        "PANTAU_RULES_CLAIM_MAX_BATCHES": settings.rules.claim_max_batches,
        "PANTAU_RULES_TICK_INTERVAL_S": settings.rules.tick_interval_s,
        "PANTAU_RULES_CHECKPOINT_INTERVAL_S": settings.rules.checkpoint_interval_s,
        "PANTAU_RULES_UNCLAIMED_MAX_AGE_H": settings.rules.unclaimed_max_age_h,
        "PANTAU_RULES_FLAP_WINDOW_S": settings.rules.flap_window_s,
        "PANTAU_RULES_WEBHOOK_TIMEOUT_S": settings.rules.webhook_timeout_s,
        "PANTAU_RULES_WEBHOOK_BACKOFF_MAX_S": settings.rules.webhook_backoff_max_s,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(key, f"must be positive, got {value}")
    if ing.max_inflight > 65535:
        raise ConfigError("PANTAU_INGEST_MAX_INFLIGHT", "MQTT allows at most 65535 messages in flight")
    if ing.max_future_s < 0:
        raise ConfigError("PANTAU_INGEST_MAX_FUTURE_S", "must not be negative")
    if not -1 <= ing.metrics_port <= 65535:
        raise ConfigError("PANTAU_INGEST_METRICS_PORT", "expected -1 (off), 0 (any free port) or a port")
    if ing.mqtt_protocol not in (4, 5):
        raise ConfigError("PANTAU_INGEST_MQTT_PROTOCOL", "expected 4 (MQTT 3.1.1) or 5 (MQTT 5)")
    if settings.store.timescaledb not in ("auto", "off"):
        raise ConfigError("PANTAU_STORE_TIMESCALEDB", "expected 'auto' or 'off'")
    if settings.rules.flap_transitions < 2:
        raise ConfigError("PANTAU_RULES_FLAP_TRANSITIONS", "must be at least 2 (one open and one resolve)")
    if not settings.rules.worker or not settings.rules.worker.replace("-", "").replace("_", "").isalnum():
        raise ConfigError("PANTAU_RULES_WORKER", "expected a name of letters, digits, '-' and '_'")
    _validate_url("PANTAU_RULES_WEBHOOK_URL", settings.rules.webhook_url or None, ("http", "https"))
    if settings.store.partition_ahead_days < 1:
        raise ConfigError("PANTAU_STORE_PARTITION_AHEAD_DAYS", "must be at least 1")


def _build(cls: type[Any], values: Mapping[str, Any], env: Mapping[str, str], prefix: str) -> Any:
    kwargs: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in _SECTIONS and cls is Settings:
            section = values.get(f.name, {})
            if not isinstance(section, dict):
                raise ConfigError(f.name, "expected a table")
            kwargs[f.name] = _build(_SECTIONS[f.name], section, env, f"{prefix}{f.name.upper()}_")
            continue
        env_key = f"{prefix}{f.name.upper()}"
        if env_key in env:
            kwargs[f.name] = _convert(env_key, env[env_key], hints[f.name])
        elif f.name in values:
            kwargs[f.name] = _convert(env_key, values[f.name], hints[f.name])
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            raise ConfigError(f"{prefix}{key.upper()}", "unknown setting in pantau.toml")
    return cls(**kwargs)


def load_settings(env: Mapping[str, str] | None = None, config_file: Path | None = None) -> Settings:
    """Settings from `pantau.toml` (or `PANTAU_CONFIG`) and the environment, env winning."""
    env = os.environ if env is None else env
    if config_file is None:
        config_file = Path(env.get("PANTAU_CONFIG", "pantau.toml"))
        required = "PANTAU_CONFIG" in env
    else:
        required = True
    values: dict[str, Any] = {}
    if config_file.exists():
        try:
            values = tomllib.loads(config_file.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(config_file), f"not valid TOML: {exc}") from None
    elif required:
        raise ConfigError("PANTAU_CONFIG", f"file not found: {config_file}")
    settings: Settings = _build(Settings, values, env, ENV_PREFIX)
    _check(settings)
    return settings


def require(settings: Settings, key: str) -> str:
    """A connection setting a command cannot run without (`database_url`, `mqtt_url`); ConfigError
    names its variable when it is not set."""
    value = getattr(settings, key)
    if not value:
        raise ConfigError(f"PANTAU_{key.upper()}", "not set (or run `pantau up`, which starts private services)")
    return str(value)
