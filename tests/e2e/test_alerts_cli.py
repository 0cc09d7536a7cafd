"""`pantau alerts list|ack|resolve|silence` through the real command."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from pantau.alerts import AlertState, AlertStore, Notification
from pantau.store import Store
from tests.e2e.test_cli import pantau
from tests.support import pantau_env

pytestmark = pytest.mark.slow

NOW = datetime.now(UTC)


async def _raise(alerts: AlertStore, rule: str, scope: str, city: str, severity: str, value: float) -> int:
    result = await alerts.raise_alert(
        rule, scope, city=city, sensor_id=scope, severity=severity, value=value, event_ts=NOW, reason=f"{rule} {value}"
    )
    assert result.alert is not None
    return result.alert.id


async def test_list_ack_and_resolve(database_url: str, store: Store) -> None:
    env = pantau_env(PANTAU_DATABASE_URL=database_url)
    alerts = AlertStore(store)
    haze = await _raise(alerts, "ispu-station", "KTG-AQ-07", "kotamobagu", "critical", 320.0)
    flood = await _raise(alerts, "siaga-gauge", "SPT-RV-09", "sampit", "warning", 270.0)
    old = await _raise(alerts, "offline", "KTG-TR-01", "kotamobagu", "info", 0.0)
    await alerts.resolve("offline", "KTG-TR-01")

    table = pantau("alerts", "list", env=env).stdout
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["ID", "STATE", "SEVERITY", "RULE"]
    assert [line.split()[0] for line in lines[1:-1]] == [str(i) for i in (flood, haze)]
    assert "ispu-station" in table and "KTG-AQ-07" in table and "320" in table
    assert lines[-1] == "2 alerts (active)"

    listed = json.loads(
        pantau("alerts", "list", "--state", "all", "--city", "kotamobagu", "--format", "json", env=env).stdout
    )
    assert [(a["id"], a["state"]) for a in listed] == [(old, "resolved"), (haze, "open")]
    assert listed[1]["current_value"] == 320.0 and listed[1]["opened_at"].startswith(str(NOW.year))
    critical = json.loads(pantau("alerts", "list", "--severity", "critical", "--format", "json", env=env).stdout)
    assert [a["id"] for a in critical] == [haze]

    out = pantau("alerts", "ack", str(haze), "--by", "rina", env=env).stdout
    assert out.strip() == f"acknowledged alert {haze} (ispu-station on KTG-AQ-07, critical) by rina"
    again = pantau("alerts", "ack", str(haze), "--by", "budi", env=env)
    assert again.returncode == 0 and f"alert {haze} is already acknowledged (by rina at " in again.stdout
    assert "acked by rina" in pantau("alerts", "list", env=env).stdout

    out = pantau("alerts", "resolve", str(haze), "--by", "budi", "--reason", "fire put out", env=env).stdout
    assert out.strip() == f"resolved alert {haze} (ispu-station on KTG-AQ-07, critical) by budi"
    again = pantau("alerts", "resolve", str(haze), "--by", "budi", env=env)
    assert again.returncode == 0 and f"alert {haze} is already resolved (by budi at " in again.stdout
    late = pantau("alerts", "ack", str(haze), "--by", "rina", env=env, check=False)
    assert late.returncode == 1 and f"alert {haze} is already resolved (by budi at " in late.stderr
    missing = pantau("alerts", "resolve", "99999", "--by", "rina", env=env, check=False)
    assert missing.returncode == 1 and "there is no alert 99999" in missing.stderr

    resolved = await alerts.get(haze)
    assert resolved is not None and resolved.state is AlertState.RESOLVED and resolved.resolved_by == "budi"
    assert [e.reason for e in await alerts.events(haze)][-1] == "fire put out"
    assert "alerts:" in pantau("db", "info", env=env).stdout


async def test_silence(database_url: str, store: Store) -> None:
    env = pantau_env(PANTAU_DATABASE_URL=database_url)
    alerts = AlertStore(store)
    out = pantau(
        "alerts",
        "silence",
        "--sensor",
        "KTG-AQ-07",
        "--for",
        "2h",
        "--by",
        "rina",
        "--comment",
        "filter change",
        env=env,
    ).stdout
    assert out.startswith("silence ") and "sensor KTG-AQ-07 until " in out and "by rina" in out
    out = pantau(
        "alerts",
        "silence",
        "--city",
        "sampit",
        "--district",
        "Baamang",
        "--rule",
        "siaga-gauge",
        "--for",
        "1h30m",
        "--by",
        "budi",
        "--comment",
        "gauge maintenance",
        env=env,
    ).stdout
    assert "city sampit, district Baamang, rule siaga-gauge until " in out
    silences = await alerts.silences(active_at=datetime.now(UTC))
    assert [(s.sensor_id, s.city, s.district, s.rule_id, s.comment) for s in silences] == [
        ("KTG-AQ-07", None, None, None, "filter change"),
        (None, "sampit", "Baamang", "siaga-gauge", "gauge maintenance"),
    ]
    assert timedelta(minutes=119) < silences[0].ends_at - silences[0].starts_at <= timedelta(hours=2, seconds=5)

    result = await alerts.raise_alert(
        "ispu-station",
        "KTG-AQ-07",
        city="kotamobagu",
        sensor_id="KTG-AQ-07",
        severity="critical",
        value=320.0,
        event_ts=NOW,
    )
    assert result.silenced and result.notification is Notification.SILENCED
    assert "KTG-AQ-07" in pantau("alerts", "list", env=env).stdout  # recorded all the same

    bad = pantau(
        "alerts", "silence", "--city", "sampit", "--for", "5x", "--by", "r", "--comment", "c", env=env, check=False
    )
    assert bad.returncode == 2 and "--for" in bad.stderr
    neither = pantau("alerts", "silence", "--for", "1h", "--by", "r", "--comment", "c", env=env, check=False)
    assert neither.returncode == 2 and "--sensor" in neither.stderr
    both = pantau(
        "alerts",
        "silence",
        "--sensor",
        "X",
        "--city",
        "y",
        "--for",
        "1h",
        "--by",
        "r",
        "--comment",
        "c",
        env=env,
        check=False,
    )
    assert both.returncode == 2 and "not allowed with" in both.stderr


async def test_list_and_end_silences(database_url: str, store: Store) -> None:
    env = pantau_env(PANTAU_DATABASE_URL=database_url)
    alerts = AlertStore(store)
    pump = await alerts.add_silence(
        sensor_id="SPT-RV-02", created_by="rina", ends_at=NOW + timedelta(hours=4), comment="pump maintenance"
    )
    past = await alerts.add_silence(
        city="sampit", created_by="budi", starts_at=NOW - timedelta(hours=3), ends_at=NOW - timedelta(hours=2)
    )
    listed = pantau("alerts", "silences", env=env).stdout.splitlines()
    assert listed[-1] == "1 silence (active)"
    assert listed[0].split()[0] == str(pump.id) and "sensor SPT-RV-02" in listed[0] and "pump maintenance" in listed[0]
    assert pantau("alerts", "silences", "--all", env=env).stdout.splitlines()[-1] == "2 silences (all)"

    out = pantau("alerts", "unsilence", str(pump.id), "--by", "rina", env=env).stdout
    assert out.startswith(f"silence {pump.id} ended at ") and "sensor SPT-RV-02" in out
    assert await alerts.silences(active_at=datetime.now(UTC)) == []
    result = await alerts.raise_alert(
        "siaga-gauge", "SPT-RV-02", city="sampit", sensor_id="SPT-RV-02", severity="warning", value=250.0, event_ts=NOW
    )
    assert result.notification is Notification.NOTIFY  # the silence no longer holds it back
    assert "ended by rina - pump maintenance" in pantau("alerts", "silences", "--all", env=env).stdout
    for ended in (pump.id, past.id, 999_999):
        again = pantau("alerts", "unsilence", str(ended), "--by", "rina", env=env, check=False)
        assert again.returncode == 1 and f"no active or future silence {ended}" in again.stderr


async def test_every_action_needs_someone_who_acts(database_url: str, store: Store) -> None:
    env = pantau_env(PANTAU_DATABASE_URL=database_url)
    alerts = AlertStore(store)
    haze = await _raise(alerts, "ispu-station", "KTG-AQ-07", "kotamobagu", "critical", 320.0)
    pump = await alerts.add_silence(sensor_id="SPT-RV-02", created_by="rina", ends_at=NOW + timedelta(hours=4))
    silence = ("silence", "--sensor", "KTG-AQ-07", "--for", "1h", "--comment", "filter change")
    for action, blank in (
        (("ack", str(haze)), ""),
        (("ack", str(haze)), "   "),
        (("resolve", str(haze)), " "),
        (silence, ""),
        (("unsilence", str(pump.id)), "\t"),
    ):
        proc = pantau("alerts", *action, "--by", blank, env=env, check=False)
        assert proc.returncode == 1, (action, proc.stdout, proc.stderr)
        assert proc.stdout == "" and "Traceback" not in proc.stderr
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("pantau: ") and "is blank" in proc.stderr
    alert = await alerts.get(haze)
    assert alert is not None and alert.state is AlertState.OPEN and alert.acked_by is None
    assert await alerts.silences() == [pump]  # none added, none ended
