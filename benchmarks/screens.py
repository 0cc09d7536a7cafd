"""`pantau screens`: the operator screen's pictures in docs/screens/, made from a simulated
scenario on a private `pantau up` (Debian's Chromium through Playwright, as the browser tests).

The stack runs under a temporary PANTAU_HOME with the Sampit fleet; the flash-flood scenario plays
yesterday's storm at full speed; an operator signs in and the map with its alerts, the flood panel,
the air panel and a gauge's trend are taken at a wall screen's size.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

REPO = Path(__file__).resolve().parent.parent
SHOTS = ("map-and-alerts", "flood-panel", "air-panel", "trend")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", default="docs/screens", help="directory for the PNG files (default docs/screens)")
    p.add_argument("--lang", choices=["id", "en"], default="id", help="the screen's language (default id)")
    p.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium", help="the browser")
    p.set_defaults(handler=run)


def _pantau(args: list[str], env: dict[str, str], stdin: str | None = None) -> str:
    proc = subprocess.run([sys.executable, "-m", "pantau", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, input=stdin, timeout=600)  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"pantau {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return proc.stdout


def run(args: argparse.Namespace, settings: Any) -> int:
    import os

    from playwright.sync_api import sync_playwright

    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pantau-screens-"))
    password = secrets.token_urlsafe(12)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PANTAU_")}
    env |= {"PANTAU_HOME": str(work / "home"), "PANTAU_API_PORT": "0", "PANTAU_INGEST_METRICS_PORT": "0",
            "PANTAU_ADMIN_PASSWORD": secrets.token_urlsafe(12)}  # fmt: skip
    with (work / "up.log").open("wb") as log:
        up = subprocess.Popen([sys.executable, "-m", "pantau", "up"], env=env, cwd=REPO, stdout=log, stderr=log)
    try:
        endpoints = work / "home" / "endpoints.json"
        for _ in range(900):
            if endpoints.exists() or up.poll() is not None:
                break
            time.sleep(0.1)
        if up.poll() is not None or not endpoints.exists():
            raise SystemExit(f"pantau up did not start; see {work / 'up.log'}")
        base = json.loads(endpoints.read_text())["api_url"].removesuffix("/api/v1")
        print("stack up; importing the Sampit fleet and playing the flash-flood scenario ...", flush=True)
        _pantau(["sensors", "import", str(REPO / "simulators" / "fleets" / "sampit.yaml")], env)
        _pantau(["users", "add", "rina", "--role", "operator", "--city", "sampit", "--password-stdin"], env,
                stdin=password + "\n")  # fmt: skip
        # Yesterday (WIB) from 06:00 to 21:00: the 13:00 storm's flood is high at the end, whatever the hour.
        yesterday = datetime.now(ZoneInfo("Asia/Jakarta")).date() - timedelta(days=1)
        _pantau(["simulate", "--fleet", "sampit", "--scenario", "flash-flood+haze-episode",
                 f"--start={yesterday}T06:00+07:00", "--duration", "15h", "--speed", "max"], env)  # fmt: skip
        # Today so far, the air stations only (the haze goes on): each station has an ISPU of today.
        now = datetime.now(ZoneInfo("Asia/Jakarta"))
        minutes = int((now - now.replace(hour=0, minute=0, second=0, microsecond=0)).total_seconds() // 60) - 5
        fleet = yaml.safe_load((REPO / "simulators" / "fleets" / "sampit.yaml").read_text())
        fleet["sensors"] = [s for s in fleet["sensors"] if s["kind"] == "air"]
        (work / "air.yaml").write_text(yaml.safe_dump(fleet))
        if minutes >= 10:  # not in the first minutes of the day: nothing of today to show yet
            _pantau(["simulate", "--fleet", str(work / "air.yaml"), "--scenario", "haze-episode",
                     f"--start={now.date()}T00:00+07:00", "--duration", f"{minutes}m", "--speed", "max"],
                    env)  # fmt: skip
        time.sleep(5)  # the rule worker catches up with the last batches
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1920, "height": 1080})
            page.goto(base + "/")
            page.evaluate(f"localStorage.setItem('pantau.lang', '{args.lang}')")
            page.reload()
            page.fill("input[name=username]", "rina")
            page.fill("input[name=password]", password)
            page.click("button[type=submit]")
            page.wait_for_selector("#app:not([hidden])")
            page.wait_for_function("document.querySelector('#conn').dataset.state === 'live'")
            page.wait_for_selector("li.alert")
            page.wait_for_timeout(1500)  # the panels' second load after the first values
            page.screenshot(path=str(out / "map-and-alerts.png"))
            page.click("[data-tab=flood]")
            page.screenshot(path=str(out / "flood-panel.png"))
            page.click("[data-tab=air]")
            page.screenshot(path=str(out / "air-panel.png"))
            page.locator("#map circle.marker[data-sensor='SPT-WL-03']").dispatch_event("click")
            page.wait_for_selector("#dialog[open] svg.chart")
            page.screenshot(path=str(out / "trend.png"))
            browser.close()
        for name in SHOTS:
            print(f"wrote {out / (name + '.png')}")
        return 0
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(60)
        shutil.rmtree(work, ignore_errors=True)
