"""The operator screen in a real browser (Debian's Chromium driven by Playwright) against the real
stack of `pantau up`, fed by the simulators' flash-flood scenario (issue 14).

Every request the page makes to anything but this machine is blocked and recorded: the screen must
work with the internet cut, and make no such request at all.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import pytest

from pantau.embedded import running_stack_database_url
from tests.support import REPO, pantau_env, wait_until
from tests.support_basemap import area_archive

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PASSWORD = "kata-sandi-operator-1"


def pantau(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "pantau", *args], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=300, input=stdin)  # fmt: skip
    assert proc.returncode == 0, f"pantau {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """`pantau up` with the Sampit fleet and two operators; the screen's address and the env beside it."""
    with running(tmp_path) as up:
        yield up


@pytest.fixture
def basemap_stack(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """The same with a local PMTiles base map over Sampit (zooms 8 to 13)."""
    archive = area_archive(tmp_path / "sampit.pmtiles", (112.0, -3.5, 114.0, -1.5), range(8, 14))
    with running(tmp_path, PANTAU_API_BASEMAP_PMTILES=str(archive), PANTAU_API_BASEMAP_ATTRIBUTION="Peta uji") as up:
        yield up


@contextmanager
def running(tmp_path: Path, **settings: str) -> Iterator[tuple[str, dict[str, str]]]:
    home = tmp_path / "home"
    env = pantau_env(PANTAU_HOME=str(home), PANTAU_INGEST_METRICS_PORT="0", PANTAU_API_PORT="0",
                     PANTAU_ADMIN_PASSWORD="kata-sandi-admin-1", **settings)  # fmt: skip
    log_path = tmp_path / "up.log"
    with log_path.open("wb") as log:
        up = subprocess.Popen([sys.executable, "-m", "pantau", "up"], env=env, cwd=REPO, stdout=log, stderr=log)
    try:
        endpoints_file = home / "endpoints.json"
        wait_until(lambda: endpoints_file.exists() or up.poll() is not None, timeout_s=90, what="endpoints.json")
        assert up.poll() is None, log_path.read_text()
        api = json.loads(endpoints_file.read_text())["api_url"].removesuffix("/api/v1")
        beside = pantau_env(PANTAU_HOME=str(home))
        pantau("sensors", "import", str(REPO / "simulators" / "fleets" / "sampit.yaml"), env=beside)
        for name in ("rina", "budi"):
            pantau("users", "add", name, "--role", "operator", "--city", "sampit", "--password-stdin", env=beside,
                   stdin=PASSWORD + "\n")  # fmt: skip
        assert running_stack_database_url(home)
        yield api, beside
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(60)


def _open(browser: Any, base: str, outside: list[str], *, tiles: list[tuple[str, int]] | None = None) -> Any:
    """A signed-in operator's page; any request off this machine is blocked and recorded, and the
    answers to base-map tile requests too (into `tiles`, as (url, status))."""
    context = browser.new_context(viewport={"width": 1600, "height": 900})

    def route(r: Any) -> None:
        host = urlsplit(r.request.url).hostname
        if host in ("127.0.0.1", "localhost"):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    page = context.new_page()
    if tiles is not None:
        page.on("response", lambda r: "/api/v1/basemap/" in r.url and tiles.append((r.url, r.status)))
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(base + "/")
    page.fill("input[name=username]", "rina" if not getattr(browser, "_signed", False) else "budi")
    browser._signed = True
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("#app:not([hidden])")
    page.wait_for_function("document.querySelector('#conn').dataset.state === 'live'")
    page.errors = errors
    return page


def test_the_wall_shows_the_flash_flood_and_an_operator_acts_on_it(stack: tuple[str, dict[str, str]]) -> None:
    from playwright.sync_api import sync_playwright

    base, beside = stack
    outside: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        first, second = _open(browser, base, outside), _open(browser, base, outside)
        assert "rina" in first.inner_text("#who") and "sampit" in first.inner_text("#who")
        # Bahasa Indonesia first; the zone of the city beside every time.
        assert first.inner_text("[data-tab=flood]") == "Banjir" and first.inner_text("#clock").endswith("WIB")
        assert first.locator("#map circle.marker").count() > 0
        assert first.locator("#map image.tile").count() == 0  # no base map unless an operator sets one

        # Yesterday (WIB) from 06:00 to 21:00: the 13:00 storm's flood is still high at the end,
        # whatever the hour the test runs at.
        yesterday = datetime.now(ZoneInfo("Asia/Jakarta")).date() - timedelta(days=1)
        pantau("simulate", "--fleet", "sampit", "--scenario", "flash-flood", f"--start={yesterday}T06:00+07:00",
               "--duration", "15h", "--speed", "max", env=beside)  # fmt: skip
        first.wait_for_selector("li.alert.critical", timeout=90_000)
        settled, count = time.monotonic(), -1
        while time.monotonic() - settled < 2.0:  # the rule worker has caught up: no event for 2 s
            now = first.evaluate("window.pantauReceived.length")
            if now != count:
                settled, count = time.monotonic(), now
            time.sleep(0.2)
        received = first.evaluate("window.pantauReceived")
        ids = [e["id"] for e in received]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)  # every event once, in commit order
        escalations = [e for e in received if e["kind"] == "escalated"]
        assert escalations, received  # the river rose: an alert's Siaga level went up on the screen
        flashing = first.locator("li.alert.flash").first
        assert flashing.count() == 1  # an open critical alert flashes until someone acknowledges it

        # rina acknowledges it with a note; budi's screen shows it acknowledged, by her.
        alert_id = flashing.get_attribute("data-alert")  # that alert, whatever the list's order later
        first.locator(f"li.alert[data-alert='{alert_id}'] [data-act=ack]").click()
        first.fill("#dialog input[name=note]", "Tim BPBD menuju lokasi")
        first.click("#dialog button[type=submit]")
        started = time.monotonic()
        second.wait_for_selector(f"li.alert[data-alert='{alert_id}'][data-state=acknowledged]", timeout=10_000)
        seen_after = time.monotonic() - started
        assert "rina" in second.inner_text(f"li.alert[data-alert='{alert_id}']")
        assert first.locator(f"li.alert.flash[data-alert='{alert_id}']").count() == 0

        # The language toggle changes every label, and is remembered.
        labels_id = first.eval_on_selector_all("[data-t]", "ns => ns.map(n => n.textContent)")
        first.click("header [data-action=lang]")
        labels_en = first.eval_on_selector_all("[data-t]", "ns => ns.map(n => n.textContent)")
        changed = [a != b for a, b in zip(labels_id, labels_en, strict=True)]
        same = [a for a, c in zip(labels_id, changed, strict=True) if not c]
        assert all(changed), f"labels the toggle did not change: {same}"
        assert first.inner_text("[data-tab=flood]") == "Flood"
        first.reload()
        first.wait_for_selector("#app:not([hidden])")
        assert first.inner_text("[data-tab=flood]") == "Flood"
        assert first.evaluate("document.documentElement.lang") == "en"

        # The panels and the trend work with everything off this machine blocked.
        first.click("[data-tab=air]")
        assert "ISPU now" in first.inner_text("#panel") and "ISPU today" in first.inner_text("#panel")
        first.click("[data-tab=flood]")
        assert "Mentaya" in first.inner_text("#panel")
        first.locator("#map circle.marker[data-sensor='SPT-WL-01']").dispatch_event("click")
        first.wait_for_selector("#dialog[open] h3")
        first.wait_for_selector("#dialog svg.chart .line")  # the gauge's trend, with its three Siaga levels
        assert first.locator("#dialog svg.chart line.threshold").count() == 3
        assert "Level 1 (Danger) · 500 cm" in (first.text_content("#dialog svg.chart") or "")
        assert not first.errors and not second.errors, first.errors + second.errors
        browser.close()
    assert outside == [], f"the screen asked for {outside}"
    print(f"acknowledgement seen on the second screen after {seen_after:.2f} s")



def test_a_local_base_map_is_drawn_under_the_sensors_from_the_api_alone(
    basemap_stack: tuple[str, dict[str, str]],
) -> None:
    from playwright.sync_api import sync_playwright

    base, _beside = basemap_stack
    outside: list[str] = []
    tiles: list[tuple[str, int]] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = _open(browser, base, outside, tiles=tiles)
        page.wait_for_function("document.querySelectorAll('#map image.tile').length > 0")
        hrefs = page.eval_on_selector_all("#map image.tile", "ns => ns.map(n => n.getAttribute('href'))")
        assert all(h.startswith("/api/v1/basemap/") for h in hrefs), hrefs
        zoom = {h.split("/")[4] for h in hrefs}
        assert len(zoom) == 1 and 8 <= int(zoom.pop()) <= 13  # one zoom, one the archive has
        wait_until(lambda: len(tiles) >= len(hrefs), timeout_s=10, what="every tile answered")
        assert [t for t in tiles if t[1] != 200] == [], tiles  # every tile drawn came from the archive
        assert page.text_content("#map .attribution") == "Peta uji"
        assert page.locator("#map circle.marker").count() > 0  # the sensors above it
        assert not page.errors, page.errors
        browser.close()
    assert outside == [], f"the screen asked for {outside}"
