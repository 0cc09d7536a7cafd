"""Schemathesis against a running `pantau api`: every operation of /api/v1/openapi.json is called
with generated valid and invalid input, and the run fails on any 5xx and on any response, status
code, content type or header the document does not describe (issue 12).

The database holds a small Sampit fleet with readings, rejections and alerts, so the generated
requests meet real rows, not only empty answers.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from ingest.writer import ReadingWriter
from pantau.access import ROLES
from pantau.embedded import EmbeddedMosquitto
from pantau.mqtt import free_port
from pantau.readings import Reading
from pantau.store import Backend
from tests.e2e.test_cli import pantau
from tests.support import REPO, pantau_env, wait_until
from tests.support_basemap import world_archive

pytestmark = pytest.mark.slow

# Examples per operation: enough to reach every parameter's edges in about a minute on this host.
MAX_EXAMPLES = 40
ST = Path(sys.executable).with_name("st")
# Every check but one: positive_data_acceptance expects each schema-valid request to succeed, and
# some rules JSON Schema cannot say are answered 400 by design ("to" after "from", a cursor from an
# earlier page, a silence for a sensor or else a city). Invalid input must still be refused
# (negative_data_rejection), and nothing may answer 5xx or outside the document.
NOT_CHECKED = "positive_data_acceptance"


def _fill(database_url: str, backend: Backend) -> None:
    now = datetime.now(UTC)
    rows: list[Reading] = [
        ((now - timedelta(minutes=5 * k)).timestamp(), sensor_id, metric, base + k % 7)
        for sensor_id, metric, base in [("SPT-AQ-01", "pm25", 40.0), ("SPT-WL-01", "water_level_cm", 250.0),
                                        ("SPT-RG-01", "rain_mm", 2.0), ("SPT-TC-01", "vehicle_count", 90.0)]
        for k in range(300)
    ]  # fmt: skip

    async def write() -> None:
        async with ReadingWriter(database_url, backend) as writer:  # what ingest does
            await writer.write(rows, [])

    asyncio.run(write())
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE sensors SET last_seen = %s WHERE city = 'sampit'", (now,))
        # As if a rule worker had evaluated them: the stack is ready (/readyz would answer 503 a
        # minute into the run with the batches waiting, and a 5xx fails the run).
        conn.execute("DELETE FROM ingest_batches")
        conn.execute(
            "INSERT INTO rejected_messages (topic, payload, reason, detail)"
            " VALUES ('pantau/v1/sampit/air/SPT-AQ-01', 'x', 'malformed_json', 'not JSON')"
        )
        for i, severity in enumerate(("info", "warning", "critical")):
            conn.execute(
                "INSERT INTO alerts (rule_id, scope, city, sensor_id, severity, opened_at, event_ts, updated_at)"
                " VALUES ('air-ispu', %s, 'sampit', 'SPT-AQ-01', %s, %s, %s, %s)",
                (f"SPT-AQ-0{i}", severity, now - timedelta(hours=i), now, now),
            )


@pytest.fixture
def api_url(database_url: str, backend: Backend, broker: EmbeddedMosquitto, tmp_path: Path) -> Iterator[str]:
    env = pantau_env(PANTAU_DATABASE_URL=database_url)
    pantau("sensors", "import", str(REPO / "simulators" / "fleets" / "sampit.yaml"), env=env)
    _fill(database_url, backend)
    for role in ROLES:  # a token per role, every city: each run reads or acts as one
        made = pantau("tokens", "create", "--name", f"schemathesis-{role}", "--role", role, env=env)
        (tmp_path / f"token-{role}").write_text(made.stdout.splitlines()[1])
    port = free_port()
    basemap = world_archive(tmp_path / "kota.pmtiles")  # its tiles answer 200 with an image, as documented
    env = pantau_env(PANTAU_DATABASE_URL=database_url, PANTAU_MQTT_URL=broker.url, PANTAU_API_PORT=str(port),
                     PANTAU_HOME=str(tmp_path / "home"), PANTAU_API_BASEMAP_PMTILES=str(basemap))  # fmt: skip
    log = (tmp_path / "api.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "pantau", "api"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _up(url), timeout_s=30, what="pantau api to answer /healthz")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def _up(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.mark.parametrize("role", ["operator", "admin"])
def test_every_operation_answers_as_its_document_says_and_never_with_a_5xx(
    api_url: str, tmp_path: Path, role: str
) -> None:
    """As an operator (who reads and acts on alerts) and as an admin (users, tokens, the audit log);
    the routes a role may not use answer their documented 403."""
    token = (tmp_path / f"token-{role}").read_text()
    run = subprocess.run(
        [str(ST), "run", f"{api_url}/api/v1/openapi.json", "--checks", "all", "--exclude-checks", NOT_CHECKED,
         "--max-examples", str(MAX_EXAMPLES), "--header", f"Authorization: Bearer {token}",
         "--exclude-path", "/api/v1/stream",  # never ends: tests/integration/test_api_stream.py holds it
         "--request-timeout", "30", "--seed", os.environ.get("PANTAU_TEST_FAULT_SEED", "20261204"),
         "--no-color"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    (tmp_path / "schemathesis.txt").write_text(run.stdout)
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
    assert "No issues found" in run.stdout or "passed" in run.stdout, run.stdout[-5000:]
