"""Devices' broker accounts through the real `pantau` command: on `pantau up`'s broker with a TLS
listener, and on an operator's own broker named by PANTAU_MQTT_ADMIN_URL."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pantau.broker import ADMIN, Account
from pantau.embedded import running_stack_database_url
from tests.integration.test_broker_security import (  # the same device and broker as the integration tests
    ACCEPTED,
    Device,
    SecureBroker,
    _code,
    _secure_broker,
)
from tests.support import REPO, pantau_env, run_pantau, wait_until

pytestmark = pytest.mark.slow


def pantau(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = run_pantau(list(args), env)
    if check and proc.returncode != 0:
        raise AssertionError(f"pantau {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[str, str]:
    cert, key = tmp_path / "broker.crt", tmp_path / "broker.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    key.chmod(0o644)  # mosquitto reads it after dropping root for its own user
    return str(cert), str(key)


def _stored(db: str, sensor_id: str) -> int:
    with psycopg.connect(db) as conn:
        row = conn.execute("SELECT count(*) FROM readings WHERE sensor_id = %s", (sensor_id,)).fetchone()
    return int(row[0]) if row else 0


def test_up_with_tls_gives_devices_credentials_for_the_tls_listener(
    tmp_path: Path, certificate: tuple[str, str]
) -> None:
    cert, key = certificate
    home = tmp_path / "home"
    env = pantau_env(
        PANTAU_HOME=str(home),
        PANTAU_INGEST_METRICS_PORT="0",
        PANTAU_API_PORT="0",
        PANTAU_MQTT_TLS_CERT_FILE=cert,
        PANTAU_MQTT_TLS_KEY_FILE=key,
    )
    log_path = tmp_path / "up.log"
    with log_path.open("wb") as log:
        up = subprocess.Popen([sys.executable, "-m", "pantau", "up"], env=env, cwd=REPO, stdout=log, stderr=log)
    try:
        endpoints_file = home / "endpoints.json"
        wait_until(lambda: endpoints_file.exists() or up.poll() is not None, timeout_s=90, what="endpoints.json")
        assert up.poll() is None, log_path.read_text()
        endpoints = json.loads(endpoints_file.read_text())
        assert endpoints["mqtts_url"].startswith("mqtts://127.0.0.1:") and endpoints["mqtts_ca_file"] == cert
        tls_port = int(endpoints["mqtts_url"].rsplit(":", 1)[1])
        db = running_stack_database_url(home)  # its password is not in endpoints.json
        assert db is not None
        beside = pantau_env(PANTAU_HOME=str(home))  # up's database and broker accounts, found beside it

        # A sensor named like a service account gets neither an account nor a place in the registry.
        refused = pantau("sensors", "add", "--id", "pantau-ingest", "--kind", "flood", "--city", "sampit", env=beside,
                         check=False)  # fmt: skip
        assert refused.returncode == 1 and "reserved" in refused.stderr
        added = pantau("sensors", "add", "--id", "SPT-WL-09", "--kind", "flood", "--city", "sampit", env=beside).stdout
        assert "broker accounts: 1 made" in added
        with psycopg.connect(db) as conn:
            assert conn.execute("SELECT id FROM sensors").fetchall() == [("SPT-WL-09",)]

        out = tmp_path / "loggers.csv"
        pantau("sensors", "credentials", "SPT-WL-09", "-o", str(out), env=beside)
        assert out.stat().st_mode & 0o777 == 0o600
        with out.open() as f:
            [row] = list(csv.DictReader(f))
        assert (row["host"], int(row["port"]), row["tls"], row["ca_file"]) == ("127.0.0.1", tls_port, "True", cert)
        assert row["topic"] == "pantau/v1/sampit/flood/SPT-WL-09" and row["client_id"] == row["username"]
        again = pantau("sensors", "credentials", "SPT-WL-09", "-o", str(out), env=beside, check=False)
        assert again.returncode == 2 and "--output" in again.stderr  # never over an existing file

        device = Device(int(row["port"]), Account(row["username"], row["password"], row["client_id"]),
                        tls_ca=row["ca_file"])  # fmt: skip
        try:
            assert device.connect()
            assert (
                _code(device.publish(row["topic"], json.dumps({"ts": time.time(), "water_level_cm": 88}))) in ACCEPTED
            )
        finally:
            device.close()
        wait_until(lambda: _stored(db, "SPT-WL-09") == 1, timeout_s=60, what="the reading sent over TLS")
        assert row["password"] not in log_path.read_text()
    finally:
        up.send_signal(signal.SIGTERM)
        code = up.wait(60)
    assert code == 0, log_path.read_text()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[SecureBroker]:
    """A mosquitto with the plugin that `pantau up` did not start: the operator's own."""
    yield from _secure_broker(tmp_path / "own-mosquitto")


def test_an_operators_broker_named_by_the_admin_url(
    own_broker: SecureBroker, database_url: str, tmp_path: Path
) -> None:
    admin_url = own_broker.url(ADMIN)
    env = pantau_env(PANTAU_DATABASE_URL=database_url, PANTAU_HOME=str(tmp_path / "nothing-here"))
    missing = pantau("sensors", "credentials", "--all", env=env, check=False)
    assert missing.returncode == 2 and "PANTAU_MQTT_ADMIN_URL" in missing.stderr

    wrong = own_broker.book[ADMIN].url(own_broker.address).replace(own_broker.book[ADMIN].password, "WrongSecret1")
    refused = pantau("sensors", "add", "--id", "KTG-AQ-02", "--kind", "air", "--city", "kotamobagu",
                     env=env | {"PANTAU_MQTT_ADMIN_URL": wrong}, check=False)  # fmt: skip
    assert refused.returncode == 1 and "refused the admin account" in refused.stderr
    assert "WrongSecret1" not in refused.stderr + refused.stdout
    with psycopg.connect(database_url) as conn:  # a broker that refuses leaves the registry as it was
        assert conn.execute("SELECT count(*) FROM sensors").fetchone() == (0,)

    env["PANTAU_MQTT_ADMIN_URL"] = admin_url
    manifest = tmp_path / "fleet.csv"
    manifest.write_text("id,kind,city\nKTG-AQ-01,air,kotamobagu\nKTG-AQ-02,air,kotamobagu\n")
    assert "broker accounts: 2 made, 0 kept" in pantau("sensors", "import", str(manifest), env=env).stdout
    assert "broker accounts: 0 made, 2 kept" in pantau("sensors", "import", str(manifest), env=env).stdout
    out = tmp_path / "all.json"
    pantau("sensors", "credentials", "--all", "-o", str(out), env=env)
    rows = {r["sensor_id"]: r for r in json.loads(out.read_text())}
    assert set(rows) == {"KTG-AQ-01", "KTG-AQ-02"}
    assert {r["port"] for r in rows.values()} == {own_broker.mq.port} and not any(r["tls"] for r in rows.values())
    one = rows["KTG-AQ-01"]
    device = Device(own_broker.mq.port, Account(one["username"], one["password"], one["client_id"]))
    try:
        assert device.connect()
        retired = pantau("sensors", "retire", "KTG-AQ-01", env=env).stdout
        assert "retired KTG-AQ-01" in retired
        assert device.disconnected.wait(10), "the retired device stayed connected"
    finally:
        device.close()
    # --all skips the retired sensor; naming it is refused.
    again = tmp_path / "again.json"
    pantau("sensors", "credentials", "--all", "-o", str(again), env=env)
    assert [r["sensor_id"] for r in json.loads(again.read_text())] == ["KTG-AQ-02"]
    named = pantau("sensors", "credentials", "KTG-AQ-01", "-o", str(tmp_path / "x.json"), env=env, check=False)
    assert named.returncode == 1 and "retired" in named.stderr and not (tmp_path / "x.json").exists()
