"""End to end through the real `pantau` command: `up`, the registry commands, `db`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from pantau.embedded import running_stack_database_url
from pantau.store import SCHEMA_VERSION
from pantau.topics import alerts_topic, open_alerts_topic
from tests.support import REPO, pantau_env, run_pantau, wait_until

pytestmark = pytest.mark.slow


def pantau(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = run_pantau(list(args), env)
    if check and proc.returncode != 0:
        raise AssertionError(f"pantau {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_help_lists_every_subcommand() -> None:
    out = pantau("--help", env=pantau_env()).stdout
    commands = ("up", "ingest", "rules", "maintain", "db", "sensors", "alerts", "bench", "simulate", "screens",
                "users", "tokens")  # fmt: skip
    for command in commands:
        assert f"    {command} " in out, f"{command} missing from --help"


def test_bad_setting_fails_at_start_naming_the_key() -> None:
    proc = pantau("db", "info", env=pantau_env(PANTAU_API_PORT="eighty"), check=False)
    assert proc.returncode == 2
    assert "PANTAU_API_PORT" in proc.stderr


def test_missing_database_url_says_what_to_do() -> None:
    proc = pantau("sensors", "list", env=pantau_env(), check=False)
    assert proc.returncode == 2
    assert "PANTAU_DATABASE_URL" in proc.stderr and "pantau up" in proc.stderr


def test_registry_commands(database_url: str, tmp_path: Path) -> None:
    env = pantau_env(PANTAU_DATABASE_URL=database_url)
    out = pantau("db", "migrate", env=env).stdout
    assert "nothing to do" in out  # the fixture database is migrated already: idempotent
    added = pantau(
        "sensors",
        "add",
        "--id",
        "SPT-RV-09",
        "--kind",
        "flood",
        "--city",
        "sampit",
        "--district",
        "Mentawa Baru Ketapang",
        "--lat",
        "-2.53",
        "--lon",
        "112.95",
        "--meta",
        "siaga3_cm=150",
        "--meta",
        "river=Mentaya",
        env=env,
    ).stdout
    assert "added SPT-RV-09" in added and "pantau/v1/sampit/flood/SPT-RV-09" in added
    manifest = tmp_path / "fleet.csv"
    manifest.write_text(
        "id,kind,city,district,name,lat,lon,capacity_pcu_h\n"
        "SPT-TR-01,traffic,sampit,Baamang,Jl. Tjilik Riwut,-2.54,112.94,2400\n"
        "SPT-RV-09,flood,sampit,Mentawa Baru Ketapang,Mentaya at Sampit,-2.53,112.95,\n"
    )
    out = pantau("sensors", "import", str(manifest), env=env).stdout
    assert "1 new, 1 updated" in out
    assert "0 new, 2 updated" in pantau("sensors", "import", str(manifest), env=env).stdout  # upsert
    listed = json.loads(pantau("sensors", "list", "--format", "json", "--city", "sampit", env=env).stdout)
    assert [s["id"] for s in listed] == ["SPT-RV-09", "SPT-TR-01"]
    assert listed[1]["metadata"] == {"capacity_pcu_h": 2400}
    bad = tmp_path / "bad.csv"
    bad.write_text("id,kind,city\nX-1,volcano,sampit\n")
    proc = pantau("sensors", "import", str(bad), env=env, check=False)
    assert proc.returncode == 1 and "bad.csv:2" in proc.stderr and "kind" in proc.stderr
    info = pantau("db", "info", env=env).stdout
    assert f"schema version: {SCHEMA_VERSION}" in info and "sensors:" in info


def _child_running(parent: int, name: bytes) -> int | None:
    """PID of a live child of `parent` running `pantau <name>`."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        state = stat.rsplit(")", 1)[1].split()[0]
        if ppid == parent and state != "Z" and cmdline.split(b"\0")[1:4] == [b"-m", b"pantau", name]:
            return int(entry.name)
    return None


@pytest.fixture
def up_home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "home"
    yield home


def test_up_runs_the_stack_and_lands_readings(up_home: Path) -> None:
    """`pantau up` on embedded defaults: private services, migrations, ingest; a clean stop."""
    env = pantau_env(PANTAU_HOME=str(up_home), PANTAU_INGEST_METRICS_PORT="0", PANTAU_API_PORT="0")
    log = (up_home.parent / "up.log").open("wb")
    up = subprocess.Popen([sys.executable, "-m", "pantau", "up"], env=env, cwd=REPO, stdout=log, stderr=log)
    try:
        endpoints_file = up_home / "endpoints.json"
        wait_until(endpoints_file.exists, timeout_s=90, what="endpoints.json")
        endpoints = json.loads(endpoints_file.read_text())
        assert set(endpoints) >= {"database_url", "mqtt_url", "api_url"}
        assert oct(endpoints_file.stat().st_mode & 0o777) == "0o600"
        db = running_stack_database_url(up_home)  # the password is kept apart, in a file of its own
        assert db is not None and urlsplit(db).password and urlsplit(db).password not in endpoints_file.read_text()

        second = pantau("up", env=env, check=False)
        assert second.returncode == 1 and "already running" in second.stderr

        # The first admin: a generated password in a file for its owner only, never printed.
        password_file = up_home / "first-admin-password"
        assert oct(password_file.stat().st_mode & 0o777) == "0o600"
        password = password_file.read_text().strip()
        assert len(password) >= 16 and password not in (up_home.parent / "up.log").read_text()

        def sign_in() -> str | None:  # the API, supervised by up like the rest
            login = urllib.request.Request(
                f"{endpoints['api_url']}/auth/login", method="POST", headers={"Content-Type": "application/json"},
                data=json.dumps({"username": "admin", "password": password}).encode(),
            )  # fmt: skip
            try:
                with urllib.request.urlopen(login, timeout=5) as answer:
                    return str(answer.headers["Set-Cookie"]).split(";")[0]
            except OSError:
                return None

        cookie = wait_until(sign_in, timeout_s=60, what="the API to let the first admin in")

        def cities() -> list[dict[str, str]]:
            with urllib.request.urlopen(
                urllib.request.Request(f"{endpoints['api_url']}/cities", headers={"Cookie": cookie}), timeout=5
            ) as answer:
                return list(json.loads(answer.read())["cities"])

        assert cities() == []  # nothing registered yet
        with pytest.raises(urllib.error.HTTPError) as anonymous:
            urllib.request.urlopen(f"{endpoints['api_url']}/cities", timeout=5)
        assert anonymous.value.code == 401
        anonymous.value.close()

        beside = pantau_env(PANTAU_HOME=str(up_home))  # beside `up`: its database and broker accounts, no URL to copy
        pantau(
            "sensors",
            "add",
            "--id",
            "KTG-AQ-07",
            "--kind",
            "air",
            "--city",
            "kotamobagu",
            env=beside,
        )
        port = endpoints["mqtt_url"].rsplit(":", 1)[1]
        topic = "pantau/v1/kotamobagu/air/KTG-AQ-07"
        # The broker is pantau's own: no anonymous client gets in; the sensor's credentials do.
        anonymous_pub = ["mosquitto_pub", "-h", "127.0.0.1", "-p", port, "-q", "1", "-t", topic, "-m", "{}"]
        assert subprocess.run(anonymous_pub, capture_output=True, timeout=30).returncode != 0
        credentials_file = up_home.parent / "loggers.json"
        pantau("sensors", "credentials", "KTG-AQ-07", "-o", str(credentials_file), env=beside)
        assert oct(credentials_file.stat().st_mode & 0o777) == "0o600"
        [device] = json.loads(credentials_file.read_text())
        assert device["topic"] == topic and device["client_id"] == device["username"] == "KTG-AQ-07"
        assert (device["host"], str(device["port"]), device["tls"]) == ("127.0.0.1", port, False)
        login = ["-u", device["username"], "-P", device["password"], "-i", device["client_id"]]
        secrets = [a["password"] for a in json.loads((up_home / "mosquitto" / "accounts.json").read_text()).values()]
        reader = json.loads((up_home / "mosquitto" / "accounts.json").read_text())["pantau-alerts-reader"]
        for secret in [*secrets, device["password"]]:
            assert secret not in endpoints_file.read_text()

        def mosquitto_pub(payload: str) -> None:
            subprocess.run(
                ["mosquitto_pub", "-h", "127.0.0.1", "-p", port, *login, "-q", "1", "-t", topic, "-m", payload],
                check=True,
                timeout=30,
            )

        def landed(n: int) -> bool:
            mosquitto_pub(json.dumps({"ts": time.time(), "pm25": 41.5}))
            mosquitto_pub('{"pm25": "x"}')
            with psycopg.connect(db) as conn:
                readings = conn.execute("SELECT count(*) FROM readings WHERE sensor_id = 'KTG-AQ-07'").fetchone()
                rejected = conn.execute("SELECT count(*) FROM rejected_messages WHERE reason = 'wrong_type'").fetchone()
            return bool(readings and rejected and readings[0] >= n and rejected[0] >= n)

        # Ingest may still be starting (it is a supervised child process): retry the publish.
        wait_until(lambda: landed(1), timeout_s=60, interval_s=1.0, what="a reading and a rejection via `up`")

        # The rules component raises an alert from the default pack: haze-level PM2.5 lifts the
        # station's 24 h mean into an ISPU band that alerts.
        mosquitto_pub(json.dumps({"ts": time.time(), "pm25": 1900.0}))

        def ispu_alert() -> bool:
            with psycopg.connect(db) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM alerts WHERE rule_id = 'air-ispu' AND scope = 'KTG-AQ-07' AND state = 'open'"
                ).fetchone()
            return bool(row and row[0] == 1)

        wait_until(ispu_alert, timeout_s=60, interval_s=0.5, what="an ISPU alert raised under `up`")

        # An operator acknowledges it through the API, with a note: the kernel's alert domain
        # records who and why in alert_events, and the notifier publishes the event on MQTT.
        events, snapshot = alerts_topic("kotamobagu"), open_alerts_topic("kotamobagu")
        watch = subprocess.Popen(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", port, "-u", reader["username"], "-P", reader["password"],
             "-i", reader["client_id"], "-q", "1", "-t", events, "-t", snapshot, "-v"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            with psycopg.connect(db) as conn:
                query = "SELECT id FROM alerts WHERE scope = 'KTG-AQ-07' AND rule_id = 'air-ispu'"
                row = conn.execute(query).fetchone()
            assert row is not None and watch.stdout is not None
            # The retained snapshot of open alerts arrives first: mosquitto_sub has subscribed.
            assert watch.stdout.readline().startswith(snapshot + " ")
            token = pantau(
                "tokens", "create", "--name", "rina", "--role", "operator", "--city", "kotamobagu",
                env=pantau_env(PANTAU_DATABASE_URL=db),
            ).stdout.splitlines()[1]  # fmt: skip
            ack = urllib.request.Request(
                f"{endpoints['api_url']}/alerts/{row[0]}/ack", data=json.dumps({"note": "tim DLH ke lokasi"}).encode(),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}, method="POST",
            )  # fmt: skip
            with urllib.request.urlopen(ack, timeout=10) as answer:
                assert json.loads(answer.read())["outcome"] == "acknowledged"
            with psycopg.connect(db) as conn:
                event = conn.execute(
                    "SELECT actor, reason FROM alert_events WHERE alert_id = %s AND kind = 'acknowledged'", (row[0],)
                ).fetchone()
            assert event == ("token:rina", "tim DLH ke lokasi")
            for line in watch.stdout:  # the notifier's events for the city, in commit order
                on, text = line.split(" ", 1)
                message = json.loads(text)
                if on == events and message["event"]["kind"] == "acknowledged":
                    acted = (message["event"]["actor"], message["event"]["reason"])
                    assert acted == ("token:rina", "tim DLH ke lokasi")
                    assert message["alert"]["id"] == row[0] and message["alert"]["state"] == "acknowledged"
                    break
        finally:
            watch.kill()
            watch.communicate()  # reaps it and closes its pipe

        # Ingest, rules and the API log in as their database roles (maintain as the owner); their
        # passwords sit in a file only its owner reads, and nowhere else up writes.
        with psycopg.connect(db) as conn:
            users = conn.execute(
                "SELECT DISTINCT usename FROM pg_stat_activity WHERE datname = current_database()"
            ).fetchall()
        assert {u[0] for u in users} >= {"pantau_ingest", "pantau_rules", "pantau_api", "pantau"}
        passwords_file = up_home / "postgres" / "role-passwords.json"
        assert oct(passwords_file.stat().st_mode & 0o777) == "0o600"
        passwords = json.loads(passwords_file.read_text())
        assert set(passwords) == {"pantau_ingest", "pantau_rules", "pantau_api"}
        log.flush()
        written = endpoints_file.read_text() + (up_home.parent / "up.log").read_text()
        assert not [p for p in passwords.values() if p in written]
        ingest_env = (Path("/proc") / str(_child_running(up.pid, b"ingest")) / "environ").read_bytes().split(b"\0")
        assert not [v for v in ingest_env if v.startswith(b"PANTAU_DATABASE_URL=")]  # never the owner's URL

        # The supervisor restarts a crashed component.
        ingest_pid = _child_running(up.pid, b"ingest")
        os.kill(ingest_pid, signal.SIGKILL)
        wait_until(
            lambda: _child_running(up.pid, b"ingest") not in (None, ingest_pid),
            timeout_s=30,
            what="ingest restarted by the supervisor",
        )
        with psycopg.connect(db) as conn:
            row = conn.execute("SELECT count(*) FROM readings").fetchone()
        stored = int(row[0]) if row else 0
        wait_until(lambda: landed(stored + 1), timeout_s=60, interval_s=1.0, what="readings after the restart")

        # A retired sensor is refused from then on.
        assert "retired KTG-AQ-07" in pantau("sensors", "retire", "KTG-AQ-07", env=beside).stdout
        with pytest.raises(subprocess.CalledProcessError):
            mosquitto_pub(json.dumps({"ts": time.time(), "pm25": 40.0}))

        # Each change made above is in the audit log, once, with who made it and how.
        with psycopg.connect(db) as conn:
            audited = conn.execute(
                "SELECT action, target, via, role FROM audit_log WHERE action <> 'user.add' ORDER BY id"
            ).fetchall()
        deployed = ("rules.deploy", "rule_pack:default", "service", "service")  # the rule worker's first pack
        assert audited.count(deployed) == 1, audited
        changes = [entry for entry in audited if entry != deployed]
        assert changes == [
            ("sensor.register", "sensor:KTG-AQ-07", "cli", "owner"),
            ("sensor.credentials", "sensor:KTG-AQ-07", "cli", "owner"),
            ("token.create", changes[2][1], "cli", "owner"),
            ("alert.acknowledge", changes[3][1], "api", "operator"),
            ("sensor.retire", "sensor:KTG-AQ-07", "cli", "owner"),
        ], audited
    finally:
        up.send_signal(signal.SIGTERM)
        code = up.wait(60)
        log.close()
    output = (up_home.parent / "up.log").read_text()
    assert code == 0, output
    assert "stopped" in output
    for secret in [*secrets, device["password"]]:  # no password in up's output, nor in its services' logs
        assert secret not in output
    # Nothing of ours is left running: the private PostgreSQL and mosquitto stopped with `up`.
    assert not (up_home / "postgres" / "data" / "postmaster.pid").exists()
    assert not (up_home / "mosquitto" / "mosquitto.pid").exists()


def test_a_killed_up_takes_its_components_along_and_up_starts_again(up_home: Path) -> None:
    env = pantau_env(PANTAU_HOME=str(up_home), PANTAU_INGEST_METRICS_PORT="0", PANTAU_API_PORT="0")
    endpoints_file = up_home / "endpoints.json"
    with (up_home.parent / "up.log").open("wb") as log:
        first = subprocess.Popen([sys.executable, "-m", "pantau", "up"], env=env, cwd=REPO, stdout=log, stderr=log)
        wait_until(lambda: _child_running(first.pid, b"ingest"), timeout_s=90, what="ingest under the first up")
        orphan = _child_running(first.pid, b"ingest")
        first.kill()  # kill -9: no chance to stop anything
        first.wait()
        assert orphan is not None
        wait_until(
            lambda: not Path(f"/proc/{orphan}").exists() or _is_zombie(orphan),
            timeout_s=20,
            what="ingest to exit with its supervisor",
        )
        endpoints_file.unlink()
        second = subprocess.Popen([sys.executable, "-m", "pantau", "up"], env=env, cwd=REPO, stdout=log, stderr=log)
        try:
            wait_until(endpoints_file.exists, timeout_s=90, what="the second up")
            wait_until(lambda: _child_running(second.pid, b"ingest"), timeout_s=30, what="ingest under the second up")
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(60) == 0
    assert not (up_home / "postgres" / "data" / "postmaster.pid").exists()


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_bench_ingest_runs_and_reports(tmp_path: Path) -> None:
    """The benchmark command works end to end (figures are not asserted: that is its job)."""
    out_json = tmp_path / "bench.json"
    proc = pantau(
        "bench",
        "ingest",
        "--only",
        "single",
        "--only",
        "naive",
        "--messages",
        "2000",
        "--naive-messages",
        "200",
        "--sensors",
        "50",
        "--json",
        str(out_json),
        env=pantau_env(),
    )
    assert "single " in proc.stdout and "naive " in proc.stdout
    runs = {r["name"]: r for r in json.loads(out_json.read_text())}
    assert runs["single"]["readings"] == 2000 and runs["single"]["rate"] > 0
    assert runs["naive"]["readings"] == 200


def test_a_fleet_import_fills_the_city_with_its_time_zone(database_url: str) -> None:
    env = pantau_env(PANTAU_DATABASE_URL=database_url)
    imported = pantau("sensors", "import", str(REPO / "simulators/fleets/kotamobagu.yaml"), env=env).stdout
    assert "city kotamobagu: Kotamobagu, Sulawesi Utara, Asia/Makassar (WITA)" in imported
    pantau("sensors", "add", "--id", "SPG-AQ-09", "--kind", "air", "--city", "sampang", env=env)
    cities = json.loads(pantau("cities", "list", "--format", "json", env=env).stdout)
    assert [(c["id"], c["timezone"], c["zone"]) for c in cities] == [
        ("kotamobagu", "Asia/Makassar", "WITA"),
        ("sampang", "Asia/Jakarta", "WIB"),  # a sensor's city joins in Jakarta's zone until set
    ]
    changed = pantau("cities", "set", "sampang", "--name", "Sampang", "--province", "Jawa Timur", env=env).stdout
    assert changed.strip() == "city sampang: Sampang, Jawa Timur, Asia/Jakarta (WIB)"
    bad = pantau("cities", "set", "sampang", "--timezone", "Asia/Atlantis", env=env, check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == (
        "pantau: configuration error: --timezone: 'Asia/Atlantis' is not an IANA time zone such as 'Asia/Makassar'"
    )
