"""Unit tests of `pantau.settings.load_settings`: file and environment, precedence and errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pantau.errors import ConfigError, PantauError
from pantau.settings import IngestSettings, Settings, StoreSettings, load_settings


def write(tmp_path: Path, text: str, name: str = "pantau.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(env: dict[str, str], config_file: Path | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_settings(env, config_file)
    return info.value


# -- sources and precedence ----------------------------------------------------------------------


def test_defaults_without_file_or_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no pantau.toml here
    settings = load_settings({})
    assert settings == Settings()
    assert settings.database_url is None
    assert settings.mqtt_url is None
    assert settings.api_port == 8080
    assert settings.home == Path(".pantau")
    assert settings.ingest == IngestSettings()
    assert settings.ingest.batch_max_rows == 5000
    assert settings.ingest.batch_max_delay_s == 0.05
    assert settings.store == StoreSettings()
    assert settings.store.retention_days == 365


def test_file_values_are_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
database_url = "postgresql://pantau@db.example:5433/pantau"
mqtt_url = "mqtts://broker.example:8883"
api_host = "0.0.0.0"
api_port = 9000
home = "/var/lib/pantau"
log_level = "DEBUG"

[ingest]
batch_max_rows = 2000
batch_max_delay_s = 0.5
max_future_s = 60
client_id = "ingest-2"

[store]
timescaledb = "off"
retention_days = 90
""",
    )
    settings = load_settings({}, path)
    assert settings.database_url == "postgresql://pantau@db.example:5433/pantau"
    assert settings.mqtt_url == "mqtts://broker.example:8883"
    assert settings.api_host == "0.0.0.0"
    assert settings.api_port == 9000
    assert settings.home == Path("/var/lib/pantau")
    assert settings.log_level == "DEBUG"
    assert settings.ingest.batch_max_rows == 2000
    assert settings.ingest.batch_max_delay_s == 0.5
    assert settings.ingest.max_future_s == 60.0
    assert type(settings.ingest.max_future_s) is float
    assert settings.ingest.client_id == "ingest-2"
    assert settings.ingest.max_inflight == IngestSettings().max_inflight
    assert settings.store.timescaledb == "off"
    assert settings.store.retention_days == 90
    assert settings.store.compress_after_days == StoreSettings().compress_after_days


def test_env_values_are_read_and_converted(tmp_path: Path) -> None:
    env = {
        "PANTAU_DATABASE_URL": "postgres://localhost/pantau",
        "PANTAU_MQTT_URL": "mqtt://localhost:1883",
        "PANTAU_API_PORT": " 8081 ",
        "PANTAU_HOME": "/srv/pantau",
        "PANTAU_INGEST_BATCH_MAX_ROWS": "250",
        "PANTAU_INGEST_BATCH_MAX_DELAY_S": "0.05",
        "PANTAU_INGEST_MAX_INFLIGHT": "0x100",
        "PANTAU_STORE_POOL_MAX_SIZE": "4",
    }
    settings = load_settings(env, write(tmp_path, ""))
    assert settings.database_url == "postgres://localhost/pantau"
    assert settings.mqtt_url == "mqtt://localhost:1883"
    assert settings.api_port == 8081
    assert settings.home == Path("/srv/pantau")
    assert settings.ingest.batch_max_rows == 250
    assert settings.ingest.batch_max_delay_s == 0.05
    assert settings.ingest.max_inflight == 256
    assert settings.store.pool_max_size == 4


def test_env_wins_over_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
api_port = 9000
log_level = "WARNING"
[ingest]
batch_max_rows = 2000
batch_max_delay_s = 0.5
[store]
retention_days = 90
""",
    )
    env = {"PANTAU_API_PORT": "9100", "PANTAU_INGEST_BATCH_MAX_ROWS": "100", "PANTAU_STORE_RETENTION_DAYS": "30"}
    settings = load_settings(env, path)
    assert settings.api_port == 9100
    assert settings.ingest.batch_max_rows == 100
    assert settings.store.retention_days == 30
    # Keys the environment does not set still come from the file.
    assert settings.log_level == "WARNING"
    assert settings.ingest.batch_max_delay_s == 0.5


def test_empty_env_value_clears_an_optional_url(tmp_path: Path) -> None:
    path = write(tmp_path, 'database_url = "postgresql://db.example/pantau"\n')
    assert load_settings({}, path).database_url == "postgresql://db.example/pantau"
    assert load_settings({"PANTAU_DATABASE_URL": ""}, path).database_url is None


def test_unrelated_env_variables_are_ignored(tmp_path: Path) -> None:
    env = {"HOME": "/root", "PANTAU_TEST_DATABASE_URL": "postgresql://x/y", "PANTAU_SOMETHING_ELSE": "1"}
    assert load_settings(env, write(tmp_path, "")) == Settings()


def test_pantau_config_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "api_port = 1111\n")  # ./pantau.toml, which PANTAU_CONFIG overrides
    other = write(tmp_path, "api_port = 2222\n", name="other.toml")
    assert load_settings({}).api_port == 1111
    assert load_settings({"PANTAU_CONFIG": str(other)}).api_port == 2222


def test_explicit_config_file_wins_over_pantau_config(tmp_path: Path) -> None:
    path = write(tmp_path, "api_port = 3333\n")
    settings = load_settings({"PANTAU_CONFIG": str(tmp_path / "missing.toml")}, path)
    assert settings.api_port == 3333


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings = load_settings({}, write(tmp_path, ""))
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.api_port = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.ingest.batch_max_rows = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.store.retention_days = 1  # type: ignore[misc]


def test_with_endpoints_returns_a_copy(tmp_path: Path) -> None:
    settings = load_settings({"PANTAU_API_PORT": "9000"}, write(tmp_path, ""))
    moved = settings.with_endpoints(database_url="postgresql://h/db", mqtt_url="mqtt://h:1")
    assert (moved.database_url, moved.mqtt_url, moved.api_port) == ("postgresql://h/db", "mqtt://h:1", 9000)
    assert settings.database_url is None


# -- errors name the key ---------------------------------------------------------------------------


def test_config_error_is_a_pantau_error_with_the_key() -> None:
    error = ConfigError("PANTAU_API_PORT", "bad")
    assert isinstance(error, PantauError)
    assert error.key == "PANTAU_API_PORT"
    assert str(error) == "PANTAU_API_PORT: bad"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("PANTAU_API_PORT", "65536"),
        ("PANTAU_API_PORT", "-1"),
        ("PANTAU_API_PORT", "http"),
        ("PANTAU_API_PORT", "80.5"),
    ],
)
def test_bad_api_port(tmp_path: Path, key: str, value: str) -> None:
    error = config_error({key: value}, write(tmp_path, ""))
    assert error.key == key
    assert str(error).startswith(f"{key}: ")


def test_bad_port_in_the_file_names_the_key(tmp_path: Path) -> None:
    error = config_error({}, write(tmp_path, "api_port = 70000\n"))
    assert str(error) == "PANTAU_API_PORT: expected a port 1-65535, or 0 for a free one, got 70000"


def test_api_port_0_asks_for_a_free_one(tmp_path: Path) -> None:
    # Every listening port is either chosen free (0) or fails with one clear line (issue 11).
    assert load_settings({"PANTAU_API_PORT": "0"}, write(tmp_path, "")).api_port == 0


@pytest.mark.parametrize(
    ("key", "url", "problem"),
    [
        ("PANTAU_DATABASE_URL", "mysql://db/pantau", "expected a postgresql:// or postgres:// URL"),
        ("PANTAU_DATABASE_URL", "db.example:5432/pantau", "expected a postgresql:// or postgres:// URL"),
        ("PANTAU_DATABASE_URL", "mqtt://db/pantau", "expected a postgresql:// or postgres:// URL"),
        ("PANTAU_DATABASE_URL", "postgresql://db:99999/pantau", "URL has a bad port"),
        ("PANTAU_DATABASE_URL", "postgresql://db:port/pantau", "URL has a bad port"),
        ("PANTAU_MQTT_URL", "http://broker:1883", "expected a mqtt:// or mqtts:// URL"),
        ("PANTAU_MQTT_URL", "tcp://broker:1883", "expected a mqtt:// or mqtts:// URL"),
        ("PANTAU_MQTT_URL", "mqtt://", "URL has no host"),
        ("PANTAU_MQTT_URL", "mqtt://broker:65536", "URL has a bad port"),
    ],
)
def test_bad_urls(tmp_path: Path, key: str, url: str, problem: str) -> None:
    error = config_error({key: url}, write(tmp_path, ""))
    assert error.key == key
    assert str(error).startswith(f"{key}: {problem}")


def test_bad_url_in_the_file_names_the_env_key(tmp_path: Path) -> None:
    error = config_error({}, write(tmp_path, 'mqtt_url = "amqp://broker"\n'))
    assert error.key == "PANTAU_MQTT_URL"


@pytest.mark.parametrize(
    ("key", "value", "type_name"),
    [
        ("PANTAU_INGEST_BATCH_MAX_ROWS", "many", "int"),
        ("PANTAU_INGEST_BATCH_MAX_ROWS", "1.5", "int"),
        ("PANTAU_INGEST_BATCH_MAX_ROWS", "", "int"),
        ("PANTAU_INGEST_KEEPALIVE_S", "30s", "int"),
        ("PANTAU_STORE_RETENTION_DAYS", "1y", "int"),
        ("PANTAU_INGEST_BATCH_MAX_DELAY_S", "fast", "float"),
        ("PANTAU_INGEST_BATCH_MAX_DELAY_S", "nan", "float"),
        ("PANTAU_INGEST_MAX_FUTURE_S", "inf", "float"),
    ],
)
def test_value_of_the_wrong_type_in_env(tmp_path: Path, key: str, value: str, type_name: str) -> None:
    error = config_error({key: value}, write(tmp_path, ""))
    assert error.key == key
    assert str(error) == f"{key}: expected {type_name}, got {value!r}"


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[ingest]\nbatch_max_rows = 1.5\n", "PANTAU_INGEST_BATCH_MAX_ROWS"),
        ('[ingest]\nbatch_max_rows = "lots"\n', "PANTAU_INGEST_BATCH_MAX_ROWS"),
        ("[ingest]\nbatch_max_rows = true\n", "PANTAU_INGEST_BATCH_MAX_ROWS"),
        ("[ingest]\nbatch_max_delay_s = false\n", "PANTAU_INGEST_BATCH_MAX_DELAY_S"),
        ("api_host = 8080\n", "PANTAU_API_HOST"),
        ('[ingest]\nclient_id = ["a"]\n', "PANTAU_INGEST_CLIENT_ID"),
        ("[store]\nretention_days = [1]\n", "PANTAU_STORE_RETENTION_DAYS"),
        ("[store]\nretention_days = 2024-01-01\n", "PANTAU_STORE_RETENTION_DAYS"),
        ("[ingest]\nbatch_max_delay_s = [0.2]\n", "PANTAU_INGEST_BATCH_MAX_DELAY_S"),
        ("[ingest]\nmax_future_s = {s = 1}\n", "PANTAU_INGEST_MAX_FUTURE_S"),
    ],
)
def test_value_of_the_wrong_type_in_the_file(tmp_path: Path, toml: str, key: str) -> None:
    error = config_error({}, write(tmp_path, toml))
    assert error.key == key
    assert "expected " in str(error)


def test_integral_float_in_the_file_is_an_int(tmp_path: Path) -> None:
    settings = load_settings({}, write(tmp_path, "[ingest]\nbatch_max_rows = 100.0\n"))
    assert settings.ingest.batch_max_rows == 100
    assert type(settings.ingest.batch_max_rows) is int


@pytest.mark.parametrize(
    "key",
    [
        "PANTAU_INGEST_BATCH_MAX_ROWS",
        "PANTAU_INGEST_BATCH_MAX_DELAY_S",
        "PANTAU_INGEST_MAX_INFLIGHT",
        "PANTAU_INGEST_MAX_PAYLOAD_BYTES",
        "PANTAU_INGEST_KEEPALIVE_S",
        "PANTAU_STORE_RETENTION_DAYS",
        "PANTAU_STORE_ROLLUP_RETENTION_DAYS",
        "PANTAU_STORE_COMPRESS_AFTER_DAYS",
        "PANTAU_STORE_MAINTENANCE_INTERVAL_S",
        "PANTAU_STORE_POOL_MAX_SIZE",
    ],
)
@pytest.mark.parametrize("value", ["0", "-1"])
def test_values_that_must_be_positive(tmp_path: Path, key: str, value: str) -> None:
    error = config_error({key: value}, write(tmp_path, ""))
    assert error.key == key
    assert str(error).startswith(f"{key}: must be positive, got ")


def test_negative_value_in_a_file_section_names_the_key(tmp_path: Path) -> None:
    error = config_error({}, write(tmp_path, "[store]\npool_max_size = -3\n"))
    assert str(error) == "PANTAU_STORE_POOL_MAX_SIZE: must be positive, got -3"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("PANTAU_INGEST_MAX_INFLIGHT", "65536", "MQTT allows at most 65535 messages in flight"),
        ("PANTAU_INGEST_MAX_FUTURE_S", "-1", "must not be negative"),
        ("PANTAU_INGEST_METRICS_PORT", "-2", "expected -1 (off), 0 (any free port) or a port"),
        ("PANTAU_INGEST_METRICS_PORT", "65536", "expected -1 (off), 0 (any free port) or a port"),
        ("PANTAU_STORE_TIMESCALEDB", "on", "expected 'auto' or 'off'"),
        ("PANTAU_STORE_PARTITION_AHEAD_DAYS", "0", "must be at least 1"),
        ("PANTAU_LOG_LEVEL", "LOUD", "expected one of DEBUG, INFO, WARNING, ERROR"),
    ],
)
def test_other_range_checks(tmp_path: Path, key: str, value: str, message: str) -> None:
    error = config_error({key: value}, write(tmp_path, ""))
    assert str(error) == f"{key}: {message}"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("PANTAU_INGEST_MAX_INFLIGHT", "65535"),
        ("PANTAU_INGEST_MAX_FUTURE_S", "0"),
        ("PANTAU_INGEST_METRICS_PORT", "-1"),
        ("PANTAU_INGEST_METRICS_PORT", "0"),
        ("PANTAU_API_PORT", "1"),
        ("PANTAU_API_PORT", "65535"),
        ("PANTAU_STORE_PARTITION_AHEAD_DAYS", "1"),
        ("PANTAU_LOG_LEVEL", "debug"),
    ],
)
def test_values_at_the_edge_are_accepted(tmp_path: Path, key: str, value: str) -> None:
    load_settings({key: value}, write(tmp_path, ""))


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("api_prot = 8080\n", "PANTAU_API_PROT"),
        ("[ingest]\nbatch_rows = 10\n", "PANTAU_INGEST_BATCH_ROWS"),
        ("[store]\nretention = 10\n", "PANTAU_STORE_RETENTION"),
        ("[rules]\nenabled = 1\n", "PANTAU_RULES_ENABLED"),
        ("[alerting]\nenabled = 1\n", "PANTAU_ALERTING"),
    ],
)
def test_unknown_key_in_the_file(tmp_path: Path, toml: str, key: str) -> None:
    error = config_error({}, write(tmp_path, toml))
    assert str(error) == f"{key}: unknown setting in pantau.toml"


def test_section_that_is_not_a_table(tmp_path: Path) -> None:
    error = config_error({}, write(tmp_path, "ingest = 5\n"))
    assert str(error) == "ingest: expected a table"


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "api_port = \n[ingest\n")
    error = config_error({}, path)
    assert error.key == str(path)
    assert str(error).startswith(f"{path}: not valid TOML: ")


def test_pantau_config_pointing_at_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "pantau.toml"
    error = config_error({"PANTAU_CONFIG": str(missing)})
    assert str(error) == f"PANTAU_CONFIG: file not found: {missing}"


def test_explicit_missing_config_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    error = config_error({}, missing)
    assert error.key == "PANTAU_CONFIG"
    assert str(missing) in str(error)


def test_database_url_may_name_a_unix_socket_directory(tmp_path: Path) -> None:
    url = "postgresql:///pantau?host=/run/postgresql"
    settings = load_settings({"PANTAU_DATABASE_URL": url}, write(tmp_path, ""))
    assert settings.database_url == url
    error = config_error({"PANTAU_DATABASE_URL": "postgresql:///pantau"}, write(tmp_path, ""))
    assert str(error).startswith("PANTAU_DATABASE_URL: URL has no host")


def test_home_in_the_file_must_be_a_path_string(tmp_path: Path) -> None:
    error = config_error({}, write(tmp_path, "home = 5\n"))
    assert error.key == "PANTAU_HOME"


def test_cors_origins_are_web_origins_or_any() -> None:
    settings = load_settings({"PANTAU_API_CORS_ORIGINS": "https://cc.kotamobagukota.go.id, http://10.0.0.5:3000"})
    assert settings.api_cors_origins == "https://cc.kotamobagukota.go.id, http://10.0.0.5:3000"
    assert load_settings({"PANTAU_API_CORS_ORIGINS": "*"}).api_cors_origins == "*"
    assert load_settings({}).api_cors_origins == ""  # none by default
    for bad in ("cc.kotamobagukota.go.id", "https://cc.example/path", "ftp://cc.example"):
        error = config_error({"PANTAU_API_CORS_ORIGINS": bad})
        assert error.key == "PANTAU_API_CORS_ORIGINS" and repr(bad) in str(error)


def test_the_api_statement_budget_is_positive() -> None:
    assert load_settings({}).api_statement_timeout_ms == 5000
    assert load_settings({"PANTAU_API_STATEMENT_TIMEOUT_MS": "250"}).api_statement_timeout_ms == 250
    assert config_error({"PANTAU_API_STATEMENT_TIMEOUT_MS": "0"}).key == "PANTAU_API_STATEMENT_TIMEOUT_MS"


def test_each_service_has_a_database_url_of_its_own_falling_back_to_database_url(tmp_path: Path) -> None:
    owner = "postgresql://pantau:secret@db/pantau"
    path = write(tmp_path, '[rules]\ndatabase_url = "postgresql://pantau_rules:r@db/pantau"\n')
    env = {"PANTAU_DATABASE_URL": owner, "PANTAU_INGEST_DATABASE_URL": "postgresql://pantau_ingest:i@db/pantau"}
    s = load_settings(env, path)
    assert s.service_database_url("ingest") == "postgresql://pantau_ingest:i@db/pantau"
    assert s.service_database_url("rules") == "postgresql://pantau_rules:r@db/pantau"
    assert s.service_database_url("api") == owner  # not set: the owner's
    s = load_settings({"PANTAU_API_DATABASE_URL": "postgresql://pantau_api:a@db/pantau"}, write(tmp_path, ""))
    assert s.service_database_url("api") == "postgresql://pantau_api:a@db/pantau"
    with pytest.raises(ConfigError, match="PANTAU_INGEST_DATABASE_URL: not set, nor PANTAU_DATABASE_URL"):
        s.service_database_url("ingest")
    bad = config_error({"PANTAU_RULES_DATABASE_URL": "mysql://db/pantau"}, write(tmp_path, ""))
    assert bad.key == "PANTAU_RULES_DATABASE_URL"
