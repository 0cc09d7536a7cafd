"""The one error hierarchy of pantau; adapters convert library failures into it at the edges.

PantauError
 ├── ConfigError            a bad or missing setting; names the key
 ├── InvalidArgument        a value handed to a domain call is unusable (a blank actor); names the
 │                          argument (also a ValueError)
 ├── SensorMetadataError    a sensor lacks metadata an index needs (Siaga levels, capacity); names the
 │                          sensor and the key
 ├── RuleError              anything about rule packs
 │    └── RuleFileError     a rule file cannot be loaded; names the file, the rule and the field
 ├── ManifestError          a bad sensor manifest (CSV/YAML); names the file, row and field
 ├── StoreError             PostgreSQL trouble
 │    ├── StoreUnavailable  the server cannot be reached (retry with backoff)
 │    └── MigrationError    the schema cannot be brought to the expected version
 ├── BrokerError            MQTT trouble (connect refused, protocol error)
 ├── EmbeddedServiceError   a private PostgreSQL or mosquitto failed to start or stop
 ├── PortInUse              a port pantau must listen on is taken; names it, its setting, its holder
 └── AlreadyRunning         a second `pantau up` on the same state directory
"""

from __future__ import annotations


class PantauError(Exception):
    """Base of every error pantau raises on purpose."""


class ConfigError(PantauError):
    """A setting is missing or bad; the message names the key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


class InvalidArgument(PantauError, ValueError):
    """A caller's value is unusable; the message names the argument and what is wrong with it."""

    def __init__(self, argument: str, problem: str) -> None:
        super().__init__(f"{argument}: {problem}")
        self.argument = argument
        self.problem = problem


class ManifestError(PantauError):
    """A sensor manifest cannot be loaded; the message names file, row and field."""


class StoreError(PantauError):
    """PostgreSQL failed in a way the caller should know about."""


class StoreUnavailable(StoreError):
    """The database cannot be reached right now; retry later."""


class MigrationError(StoreError):
    """The schema cannot be migrated."""


class BrokerError(PantauError):
    """The MQTT broker refused us or broke the protocol."""


class EmbeddedServiceError(PantauError):
    """A private PostgreSQL or mosquitto could not be run."""


class PortInUse(PantauError):
    """A port pantau must listen on is taken; the message names the port, the setting and the holder."""


class AlreadyRunning(PantauError):
    """Another `pantau up` holds the state directory."""


class SensorMetadataError(PantauError):
    """A sensor's metadata lacks a key an index needs, or holds a bad value there."""

    def __init__(self, sensor_id: str, key: str, problem: str) -> None:
        super().__init__(f"sensor {sensor_id!r}: metadata {key!r}: {problem}")
        self.sensor_id = sensor_id
        self.key = key
        self.problem = problem


class RuleError(PantauError):
    """Base of the rule pack's errors."""


class RuleFileError(RuleError):
    """A rule file is invalid: `path: rule 'id' (rules[i]): field 'f': problem`."""

    def __init__(self, message: str, *, path: str, rule: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.rule = rule
        self.field = field
