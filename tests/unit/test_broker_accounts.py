"""pantau.broker without a broker: the plugin's first file, the ACLs, secrets kept out of sight."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from pantau.broker import (
    ADMIN,
    ALERTS_READER,
    INGEST,
    RULES,
    SERVICE_ACCOUNTS,
    SIMULATOR,
    Account,
    AccountBook,
    check_sensor_id,
    initial_dynsec_config,
    sensor_acls,
    service_roles,
)
from pantau.domain import Sensor
from pantau.errors import BrokerError, ConfigError
from pantau.mqtt import BrokerAddress
from pantau.settings import load_settings, redacted


def test_the_admins_first_hash_is_the_plugins_pbkdf2_sha512() -> None:
    admin = Account(ADMIN, "s3cret-admin", ADMIN)
    config = initial_dynsec_config(admin)
    [client] = config["clients"]
    salt = base64.b64decode(client["salt"])
    assert len(salt) == 12 and client["iterations"] == 101 and client["clientid"] == ADMIN
    expected = hashlib.pbkdf2_hmac("sha512", b"s3cret-admin", salt, 101)
    assert base64.b64decode(client["password"]) == expected
    assert "s3cret-admin" not in json.dumps(config)
    assert config["defaultACLAccess"] == {
        "publishClientSend": False,
        "publishClientReceive": True,
        "subscribe": False,
        "unsubscribe": True,
    }


def test_each_role_grants_only_its_job() -> None:
    roles = service_roles()
    assert {a["acltype"] for a in roles[INGEST]} == {"subscribePattern"}
    assert {a["topic"] for a in roles[RULES]} == {"pantau/v1/+/alerts", "pantau/v1/+/alerts/open"}
    denied = [a for a in roles[SIMULATOR] if not a["allow"]]
    allowed = [a for a in roles[SIMULATOR] if a["allow"]]
    assert {a["topic"] for a in denied} == {"pantau/v1/+/alerts", "pantau/v1/+/alerts/open"}
    assert all(d["priority"] > a["priority"] for d in denied for a in allowed)  # the denials are read first
    assert roles[ALERTS_READER] == [
        {"acltype": "subscribePattern", "topic": "pantau/v1/+/alerts/#", "allow": True, "priority": 0}
    ]
    river = Sensor(id="SPT-WL-03", kind="flood", city="sampit")
    assert sensor_acls(river) == [
        {"acltype": "publishClientSend", "topic": "pantau/v1/sampit/flood/SPT-WL-03", "allow": True, "priority": 0}
    ]


def test_sensor_ids_that_name_pantaus_accounts_are_refused() -> None:
    for sensor_id in SERVICE_ACCOUNTS:
        with pytest.raises(BrokerError, match="reserved"):
            check_sensor_id(sensor_id)
    with pytest.raises(BrokerError, match="reserved"):
        check_sensor_id("ingest-a", reserved={"ingest-a"})
    check_sensor_id("SPT-WL-03")


def test_the_account_book_is_a_file_of_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "mosquitto" / "accounts.json"
    book = AccountBook.load_or_create(path, {INGEST: "ingest-7"})
    assert path.stat().st_mode & 0o777 == 0o600
    assert book[INGEST].client_id == "ingest-7" and book[RULES].client_id == RULES
    assert AccountBook.load_or_create(path, {}).accounts == book.accounts  # made once
    assert book[INGEST].password not in repr(book[INGEST])


def test_a_password_never_shows_in_a_message() -> None:
    account = Account(INGEST, "p@ss:w/rd", INGEST)
    url = account.url(BrokerAddress("127.0.0.1", 1883))
    assert BrokerAddress.parse(url).password == "p@ss:w/rd"
    assert "p@ss" not in redacted(url) and redacted(url) == "mqtt://***@127.0.0.1:1883"
    for key in ("PANTAU_MQTT_URL", "PANTAU_MQTT_ADMIN_URL"):
        with pytest.raises(ConfigError) as caught:
            load_settings({key: "mqtt://pantau-admin:Secret99@host:99999", "PANTAU_CONFIG": "/dev/null"})
        assert "Secret99" not in str(caught.value) and key in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        BrokerAddress.parse("http://user:Secret99@host:1")
    assert "Secret99" not in str(caught.value)


def test_a_tls_listener_needs_both_files() -> None:
    with pytest.raises(ConfigError, match="PANTAU_MQTT_TLS_CERT_FILE"):
        load_settings({"PANTAU_MQTT_TLS_CERT_FILE": "/etc/pantau/broker.crt", "PANTAU_CONFIG": "/dev/null"})
