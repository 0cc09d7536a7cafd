"""The README's commands, run as written against `pantau up` (issue 10).

Every ```sh block of README.md is what a reader types after `make up`. The test starts `pantau up`
(private PostgreSQL and mosquitto under a temporary PANTAU_HOME), fills in only the placeholders
the README documents (`<port>`: the broker's port; `export PANTAU_DATABASE_URL=…`: the database,
both from endpoints.json), runs each line through bash from the repository root with the
virtualenv's bin on PATH, and checks that it did what the README says. Every line is matched to
its check before the stack starts: a line the test does not know fails it, so a new command in the
README comes with a check here. And every JSON payload the README shows must be one a command
publishes, so that no example goes unrun.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from pantau.embedded import running_stack_database_url
from pantau.metrics import METRICS
from tests.support import REPO, pantau_env, wait_until

README = REPO / "README.md"

# Fenced blocks whose lines a reader runs; untagged fences show output and are not run. A block
# that looks like shell under another tag is an error: it would silently escape the test.
COMMAND_TAG = "sh"
SHELL_LOOKING_TAGS = frozenset({"bash", "shell", "console", "zsh"})
# The placeholders the README documents, filled from endpoints.json (see `Stack.placeholders`).
PORT_PLACEHOLDER = "<port>"
# The broker's passwords: the alerts reader's (accounts.json under PANTAU_HOME), a sensor's (the file
# `pantau sensors credentials` wrote).
READER_PASSWORD = "<reader-password>"
SENSOR_PASSWORD_RE = re.compile(r"<([A-Za-z0-9][\w.:-]*)-password>")
KNOWN_EXPORTS = {"PANTAU_DATABASE_URL": "database_url"}
PLACEHOLDER_RE = re.compile(r"<[A-Za-z_][\w-]*>|…")
FENCE_RE = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE_RE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
# RFC 8428 4.5.3: a SenML time below 2**28 is relative to now.
SENML_RELATIVE_LIMIT = 2**28
# A reader's `mosquitto_sub` runs until Ctrl-C: it gets this long to print the retained messages.
SUBSCRIBE_FOR_S = 5


@dataclass(frozen=True)
class Command:
    """One command line of a README ```sh block, as written."""

    line: str
    lineno: int
    words: tuple[str, ...]  # shlex words, comments dropped, placeholders still in

    def where(self) -> str:
        return f"README.md:{self.lineno}: `{self.line}`"


@dataclass
class Stack:
    """A running `pantau up` and what the README's commands have done to it so far."""

    endpoints: dict[str, Any]
    env: dict[str, str]
    home: Path
    sensors: dict[str, dict[str, Any]] = field(default_factory=dict)  # imported fleets: id → entry
    passwords: dict[str, str] = field(default_factory=dict)  # sensor id → its MQTT password

    @property
    def database_url(self) -> str:
        found = running_stack_database_url(Path(self.env["PANTAU_HOME"]))
        assert found is not None, "pantau up is not running"
        return found

    @property
    def placeholders(self) -> dict[str, str]:
        accounts = json.loads((self.home / "mosquitto" / "accounts.json").read_text())
        return {
            PORT_PLACEHOLDER: str(self.endpoints["mqtt_url"]).rsplit(":", 1)[1],
            READER_PASSWORD: accounts["pantau-alerts-reader"]["password"],
            **{f"<{sensor_id}-password>": password for sensor_id, password in self.passwords.items()},
        }

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url) as conn:
            return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]

    def rejections(self) -> list[tuple[Any, ...]]:
        return self.query("SELECT reason, topic, detail FROM rejected_messages ORDER BY id")

    def readings(self) -> int:
        return int(self.query("SELECT count(*) FROM readings")[0][0])


Check = Callable[[Command, Stack], None]


# -- reading the README ----------------------------------------------------------------------------


def readme_commands(text: str) -> list[Command]:
    """The command lines of every ```sh block, in README order."""
    commands: list[Command] = []
    for fence in FENCE_RE.finditer(text):
        tag = fence.group(1).strip()
        first_line = text.count("\n", 0, fence.start(2)) + 1
        if tag in SHELL_LOOKING_TAGS:
            pytest.fail(
                f"README.md:{first_line - 1}: a ```{tag} block: tag commands ```{COMMAND_TAG} so they are tested"
            )
        if tag != COMMAND_TAG:
            continue
        pending, start = "", 0
        for offset, raw in enumerate(fence.group(2).splitlines()):
            if not pending:
                start = first_line + offset
            if raw.endswith("\\"):
                pending += raw[:-1] + " "
                continue
            line, pending = (pending + raw).strip(), ""
            if not line or line.startswith("#"):
                continue
            words = tuple(shlex.split(line, comments=True))
            for word in words:
                for placeholder in PLACEHOLDER_RE.findall(word):
                    documented = (PORT_PLACEHOLDER, READER_PASSWORD)
                    if placeholder not in documented and not SENSOR_PASSWORD_RE.fullmatch(placeholder):
                        pytest.fail(
                            f"README.md:{start}: `{line}`: placeholder {placeholder} is not one the README documents"
                        )
            commands.append(Command(line, start, words))
    return commands


def readme_exports(text: str) -> dict[str, str]:
    """The `export NAME=…` the README tells the reader to do: NAME → endpoints.json key."""
    exports = {}
    for name in re.findall(r"`export (\w+)=…`", text):
        if name not in KNOWN_EXPORTS:
            pytest.fail(f"README.md: `export {name}=…`: the test does not know where its value comes from")
        exports[name] = KNOWN_EXPORTS[name]
    return exports


def payload_examples(text: str) -> list[str]:
    """Inline code in the README that is a JSON object or array: payload examples."""
    examples = []
    for span in INLINE_CODE_RE.findall(text):
        if span.lstrip()[:1] not in ("{", "["):
            continue
        try:
            if isinstance(json.loads(span), (dict, list)):
                examples.append(span)
        except ValueError:
            continue
    return examples


def option(words: tuple[str, ...] | list[str], flag: str) -> str | None:
    return words[words.index(flag) + 1] if flag in words[:-1] else None


def plan(commands: list[Command]) -> list[tuple[Command, Check]]:
    """Each command with its check; fails on a command the test does not know."""
    planned = []
    for cmd in commands:
        match cmd.words:
            case ("pantau", "sensors", "import", _):
                check = check_sensors_import
            case ("pantau", "sensors", "credentials", *rest) if option(rest, "-o"):
                check = check_sensors_credentials
            case ("pantau", "simulate", *rest) if "replay" not in rest and "load" not in rest:
                check = check_simulate
            case ("pantau", "alerts", "list"):
                check = check_alerts_list
            case ("pantau", "db", "info"):
                check = check_db_info
            case ("pantau", "users", "add", _, *_):
                check = check_users_add
            case ("pantau", "tokens", "create", *rest) if option(rest, "--name") and option(rest, "--role"):
                check = check_tokens_create
            case ("pantau", "tokens", "list"):
                check = check_tokens_list
            case ("mosquitto_pub", *rest) if option(rest, "-t") and option(rest, "-m"):
                check = check_publish
            case ("mosquitto_sub", *rest) if option(rest, "-t") and "-C" not in rest and "-W" not in rest:
                check = check_subscribe
            case _:
                pytest.fail(f"{cmd.where()}: the test does not know what this command should do; add a check for it")
        planned.append((cmd, check))
    return planned


# -- running a command as written -------------------------------------------------------------------


def bash(
    cmd: Command, stack: Stack, *, prefix: tuple[str, ...] = (), timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    line = cmd.line
    for placeholder, value in stack.placeholders.items():
        line = line.replace(placeholder, value)
    return subprocess.run(
        [*prefix, "bash", "-c", line], cwd=REPO, env=stack.env, capture_output=True, text=True, timeout=timeout_s
    )


def run_ok(cmd: Command, stack: Stack, *, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    proc = bash(cmd, stack, timeout_s=timeout_s)
    assert proc.returncode == 0, f"{cmd.where()} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def assert_nothing_rejected(cmd: Command, stack: Stack) -> None:
    rejected = stack.rejections()
    assert rejected == [], f"after {cmd.where()}, pantau rejected messages (reason, topic, detail): {rejected}"


# -- the checks: what each README command should do ---------------------------------------------------


def check_sensors_import(cmd: Command, stack: Stack) -> None:
    out = run_ok(cmd, stack).stdout
    manifest = yaml.safe_load((REPO / cmd.words[3]).read_text())
    fleet = {s["id"]: {**s, "city": s.get("city", manifest.get("city"))} for s in manifest["sensors"]}
    assert f"imported {len(fleet)} sensors" in out, out
    registered = {r[0]: (r[1], r[2]) for r in stack.query("SELECT id, kind, city FROM sensors")}
    assert {sid: (s["kind"], s["city"]) for sid, s in fleet.items()}.items() <= registered.items()
    stack.sensors.update(fleet)


def check_sensors_credentials(cmd: Command, stack: Stack) -> None:
    """The named sensors' credentials land in a file for its owner only; their passwords work from then on."""
    run_ok(cmd, stack)
    path = REPO / str(option(cmd.words, "-o"))
    try:
        assert path.stat().st_mode & 0o777 == 0o600, f"{cmd.where()}: {path} is readable by others"
        rows = json.loads(path.read_text())
    finally:
        path.unlink(missing_ok=True)  # the reader's working directory is the repository
    named = [w for w in cmd.words[3:] if not w.startswith("-") and w != option(cmd.words, "-o")]
    assert [r["sensor_id"] for r in rows] == named, rows
    stack.passwords.update({r["username"]: r["password"] for r in rows})


def check_simulate(cmd: Command, stack: Stack) -> None:
    before = stack.readings()
    started = time.monotonic()
    out = run_ok(cmd, stack, timeout_s=300).stderr  # the progress and the summary
    took = time.monotonic() - started
    assert took < 60, f"{cmd.where()} took {took:.0f} s: make the README's simulation shorter"
    sent = re.search(r"sent ([\d,]+) messages \(([\d,]+) readings\)", out)
    assert sent, f"{cmd.where()} printed no summary:\n{out}"
    n = int(sent.group(2).replace(",", ""))
    assert n > 0
    wait_until(lambda: stack.readings() >= before + n or stack.rejections(), timeout_s=60, what=f"{n} readings stored")
    assert_nothing_rejected(cmd, stack)
    assert stack.readings() == before + n


ALERT_ROW_RE = re.compile(r"^\s*\d+\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s", re.MULTILINE)


def check_alerts_list(cmd: Command, stack: Stack) -> None:
    """The flash flood raises Siaga alerts on the Mentaya's gauges (the README's comment says so)."""
    mentaya = {sid for sid, s in stack.sensors.items() if "Mentaya" in str((s.get("metadata") or {}).get("river"))}
    assert mentaya, "no Mentaya gauges imported before `pantau alerts list`"
    last = ""

    def siaga_on_mentaya() -> bool:
        nonlocal last
        last = run_ok(cmd, stack).stdout
        rows = ALERT_ROW_RE.findall(last)
        return any(rule == "river-siaga" and scope in mentaya and state == "open" for state, _sev, rule, scope in rows)

    # The rule engine works through the simulation's batches after ingest: ask again until it has.
    try:
        wait_until(siaga_on_mentaya, timeout_s=90, interval_s=1.0, what="Siaga alerts on the Mentaya")
    except AssertionError as exc:
        raise AssertionError(f"{cmd.where()}: {exc}; it printed:\n{last}") from None


def check_subscribe(cmd: Command, stack: Stack) -> None:
    """It runs until stopped; meanwhile it prints the retained open alerts."""
    proc = bash(cmd, stack, prefix=("timeout", str(SUBSCRIBE_FOR_S)), timeout_s=SUBSCRIBE_FOR_S + 30)
    assert proc.returncode == 124, f"{cmd.where()} ended by itself ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    retained = [line for line in proc.stdout.splitlines() if line.split(" ", 1)[0].endswith("/alerts/open")]
    assert retained, f"{cmd.where()} printed no open alerts:\n{proc.stdout}"
    open_alerts = json.loads(retained[0].split(" ", 1)[1])["alerts"]
    assert any(a["rule_id"] == "river-siaga" for a in open_alerts), retained[0]


def published_readings(payload: bytes, t0: float, t1: float) -> list[tuple[str, float, float, float]]:
    """(metric, value, earliest ts, latest ts) that a JSON object or SenML pack should store, in the
    metric's canonical unit. The payload was expanded and sent between t0 and t1: so was the receive
    time, and an absolute time from an expansion (`$(date +%s)`) is up to t1 - t0 behind the one sent."""
    data = json.loads(payload)
    if isinstance(data, dict):
        ts = data.pop("ts", None)
        data = {k: v for k, v in data.items() if k not in ("sensor_id", "id", "bn")}
        if ts is None:
            lo, hi = t0, t1
        else:
            lo = float(ts) if isinstance(ts, (int, float)) else datetime.fromisoformat(ts).timestamp()
            hi = lo + t1 - t0
        return [(metric, float(value), lo, hi) for metric, value in data.items()]
    out = []
    bn, bt, bu, bv = "", 0.0, None, 0.0
    for rec in data:
        bn, bt, bu, bv = rec.get("bn", bn), rec.get("bt", bt), rec.get("bu", bu), rec.get("bv", bv)
        name = bn + rec.get("n", "")
        metric = METRICS[name[max(name.rfind(":"), name.rfind("/")) + 1 :]]
        unit = rec.get("u", bu)
        factor, offset = (1.0, 0.0) if unit in (None, metric.unit) else metric.senml_units[unit]
        value = (bv + rec["v"]) * factor + offset
        t = bt + rec.get("t", 0.0)
        lo, hi = (t0 + t, t1 + t) if t < SENML_RELATIVE_LIMIT else (t, t + t1 - t0)
        out.append((metric.name, value, lo, hi))
    return out


def check_publish(cmd: Command, stack: Stack) -> None:
    """Every reading of the payload is stored for the topic's sensor, and nothing is rejected."""
    # The arguments as bash expands them (a `$(date +%s)` in the payload, say): the same line with
    # printf in mosquitto_pub's place.
    t0 = time.time()
    expand = Command("printf '%s\\0'" + cmd.line[len(cmd.words[0]) :], cmd.lineno, cmd.words)
    args = run_ok(expand, stack).stdout.split("\0")
    topic, payload = option(args, "-t"), option(args, "-m")
    assert topic is not None and payload is not None
    sensor_id = topic.rsplit("/", 1)[1]
    assert sensor_id in stack.sensors, f"{cmd.where()} publishes for {sensor_id}, which no command registered"
    run_ok(cmd, stack)
    t1 = time.time()
    # Whole seconds (`date +%s`) and the clocks' resolution: a second's slack either side.
    expected = published_readings(payload.encode(), t0 - 1, t1 + 1)
    assert expected, f"{cmd.where()} publishes no readings"

    def stored() -> bool:
        return all(
            stack.query(
                "SELECT 1 FROM readings WHERE sensor_id = %s AND metric = %s AND abs(value - %s) < 1e-9"
                " AND ts BETWEEN to_timestamp(%s) AND to_timestamp(%s)",
                sensor_id,
                metric,
                value,
                lo,
                hi,
            )
            for metric, value, lo, hi in expected
        )

    wait_until(lambda: stored() or stack.rejections(), timeout_s=30, what=f"the readings of {cmd.where()}")
    assert_nothing_rejected(cmd, stack)


def check_db_info(cmd: Command, stack: Stack) -> None:
    out = run_ok(cmd, stack).stdout
    counts = {m.group(1): int(m.group(2).replace(",", "")) for m in re.finditer(r"^(\w+):\s+([\d,]+)$", out, re.M)}
    assert counts.get("sensors") == len(stack.sensors), out
    assert counts.get("readings") == stack.readings() > 0, out
    assert counts.get("rejected_messages") == 0, out


def check_users_add(cmd: Command, stack: Stack) -> None:
    out = run_ok(cmd, stack).stdout
    name, role, city = cmd.words[3], option(cmd.words, "--role"), option(cmd.words, "--city")
    assert stack.query("SELECT role, cities FROM users WHERE username = %s", name) == [(role, [city])], out
    assert "password: " in out, out  # not at a terminal: generated, and shown this once


def check_tokens_create(cmd: Command, stack: Stack) -> None:
    import urllib.request

    out = run_ok(cmd, stack).stdout
    secret = out.splitlines()[1]
    name, city = option(cmd.words, "--name"), option(cmd.words, "--city")
    stored = stack.query("SELECT role, cities, expires_at IS NOT NULL FROM api_tokens WHERE name = %s", name)
    assert stored == [(option(cmd.words, "--role"), [city], "--expires" in cmd.words)], out
    hashed = hashlib.sha256(secret.split("_", 2)[2].encode()).digest()  # only the hash is kept
    assert stack.query("SELECT count(*) FROM api_tokens WHERE name = %s AND secret_sha256 = %s", name, hashed) == [(1,)]
    bearer = {"Authorization": f"Bearer {secret}"}
    request = urllib.request.Request(f"{stack.endpoints['api_url']}/cities", headers=bearer)
    with urllib.request.urlopen(request, timeout=10) as answer:  # the token works, within its city
        assert [c["id"] for c in json.loads(answer.read())["cities"]] == [city]


def check_tokens_list(cmd: Command, stack: Stack) -> None:
    out = run_ok(cmd, stack).stdout
    for (name,) in stack.query("SELECT name FROM api_tokens"):
        assert name in out, out


# -- the tests ---------------------------------------------------------------------------------------


def test_every_readme_command_has_a_check() -> None:
    commands = readme_commands(README.read_text())
    assert commands, "README.md has no ```sh block"
    plan(commands)


def test_an_unknown_readme_command_fails_the_test() -> None:
    text = "```sh\npantau sensors import simulators/fleets/sampit.yaml\npantau frobnicate --now\n```\n"
    with pytest.raises(
        pytest.fail.Exception, match=re.escape("README.md:3: `pantau frobnicate --now`: the test does not know")
    ):
        plan(readme_commands(text))
    with pytest.raises(pytest.fail.Exception, match="placeholder <sensor_id>"):
        readme_commands("```sh\nmosquitto_pub -p <port> -t pantau/v1/x/air/<sensor_id> -m '{}'\n```\n")


def test_every_payload_example_is_published_by_a_command() -> None:
    """A payload shown only as text would never run: each must be a `mosquitto_pub -m` of a command."""
    text = README.read_text()
    published = {option(c.words, "-m") for c in readme_commands(text) if c.words[0] == "mosquitto_pub"}
    unpublished = [example for example in payload_examples(text) if example not in published]
    assert not unpublished, "README.md: payload examples that no ```sh command publishes, so nothing runs them:\n" + (
        "\n".join(unpublished)
    )


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """`pantau up` as `make up` runs it, under a temporary PANTAU_HOME."""
    home = tmp_path / "home"
    env = pantau_env(PANTAU_HOME=str(home), PANTAU_INGEST_METRICS_PORT="0", PANTAU_API_PORT="0")
    log_path = tmp_path / "up.log"
    with log_path.open("wb") as log:
        up = subprocess.Popen([sys.executable, "-m", "pantau", "up"], env=env, cwd=REPO, stdout=log, stderr=log)
    try:
        endpoints_file = home / "endpoints.json"
        wait_until(
            lambda: endpoints_file.exists() or up.poll() is not None, timeout_s=90, what="endpoints.json from `up`"
        )
        assert up.poll() is None, f"pantau up exited {up.returncode}:\n{log_path.read_text()}"
        endpoints = json.loads(endpoints_file.read_text())
        # The reader's shell: the virtualenv active, and what the README says to export.
        reader_env = dict(env, PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
        for name, key in readme_exports(README.read_text()).items():
            reader_env[name] = endpoints[key]
        yield Stack(endpoints, reader_env, home)
    finally:
        up.send_signal(signal.SIGTERM)
        code = up.wait(60)
    assert code == 0, log_path.read_text()


@pytest.mark.slow
def test_readme_commands_run_as_written(stack: Stack) -> None:
    planned = plan(readme_commands(README.read_text()))
    for cmd, check in planned:
        check(cmd, stack)
    assert_nothing_rejected(planned[-1][0], stack)
