"""Who may do what on the broker: mosquitto's dynamic-security plugin, driven over its control topic.

pantau's own broker (`pantau up`) runs with the plugin and anonymous access off (docs/decisions.md
D21, docs/security-broker.md). Every account pantau makes is bound to one MQTT client id, so no
account can connect under another's client id, and none can take over ingest's persistent session:

    account               client id              may
    pantau-admin          pantau-admin           drive $CONTROL/dynamic-security only
    pantau-ingest         [ingest] client_id     subscribe to the sensor topics (pantau/v1/+/{kind}/+)
    pantau-rules          [rules] mqtt_client_id publish pantau/v1/+/alerts and the retained …/alerts/open
    pantau-simulator      pantau-simulator       publish pantau/v1/+/+/+, never an alerts topic
    pantau-alerts-reader  pantau-alerts-reader   subscribe to the alerts topics (screens, integrations)
    {sensor id}           {sensor id}            publish its own pantau/v1/{city}/{kind}/{id}; nothing else

`DynsecControl` sends commands on `$CONTROL/dynamic-security/v1` with the admin account and matches
each answer by its correlation data; an error answer is a `BrokerError` naming the command. The
plugin kicks a connected client when its account is deleted, disabled, or its password or roles
change: retiring a sensor (its account disabled) disconnects it at once.

Secrets (the admin's and the services' passwords) live in `accounts.json` beside the broker's
files under the state directory, mode 0600; they are never printed, logged, or written to
`endpoints.json`. Devices' passwords are not kept at all: `issue_credentials` sets a fresh one and
hands it back once, for the credentials file the field team loads into the loggers.
"""

from __future__ import annotations

import asyncio
import base64
import glob
import hashlib
import itertools
import json
import logging
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit

from pantau.domain import Sensor
from pantau.errors import BrokerError, ConfigError, EmbeddedServiceError
from pantau.metrics import SensorKind
from pantau.mqtt import AsyncMqttClient, BrokerAddress
from pantau.topics import TOPIC_ROOT

log = logging.getLogger(__name__)

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = "$CONTROL/dynamic-security/v1/response"

ADMIN = "pantau-admin"
INGEST = "pantau-ingest"
RULES = "pantau-rules"
SIMULATOR = "pantau-simulator"
ALERTS_READER = "pantau-alerts-reader"
SERVICE_ACCOUNTS = (ADMIN, INGEST, RULES, SIMULATOR, ALERTS_READER)
# Sensor ids that would collide with an account or client id of pantau's own: refused.
RESERVED_PREFIX = "pantau-"
SENSOR_ROLE_PREFIX = "pantau-sensor:"

ACCOUNTS_FILE = "accounts.json"
# Every command the plugin carries out rewrites its whole JSON file: commands go in messages of
# this many (one answer each), so 1,000 sensors are a few round trips, not 2,000.
_COMMANDS_PER_MESSAGE = 200
# An answer is due within this: the plugin answers at once, saving its file on the way.
_ANSWER_TIMEOUT_S = 30.0
_CONNECT_TIMEOUT_S = 10.0
# Passwords: 24 random bytes, URL-safe (they travel in mqtt:// URLs of pantau's own services).
_PASSWORD_BYTES = 24
# The plugin's own hash: PBKDF2-HMAC-SHA512, a 12-byte salt, 101 iterations (mosquitto 2.0's
# PW_DEFAULT_ITERATIONS). Only the admin's first hash is made here; the plugin hashes the rest.
_PBKDF2_ITERATIONS = 101
_SALT_BYTES = 12

# Where Debian, Fedora/RHEL and source installs put the plugin.
_PLUGIN_GLOBS = (
    "/usr/lib/*/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/lib64/mosquitto_dynamic_security.so",
    "/usr/lib*/mosquitto/mosquitto_dynamic_security.so",
    "/usr/local/lib*/mosquitto_dynamic_security.so",
    "/usr/local/lib*/*/mosquitto_dynamic_security.so",
)


def dynsec_plugin_path() -> Path:
    """mosquitto's dynamic-security plugin (`PANTAU_MQTT_DYNSEC_PLUGIN` wins over the usual places)."""
    configured = os.environ.get("PANTAU_MQTT_DYNSEC_PLUGIN")
    if configured:
        if not os.path.isfile(configured):
            raise ConfigError("PANTAU_MQTT_DYNSEC_PLUGIN", f"no such file: {configured}")
        return Path(configured)
    for pattern in _PLUGIN_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return Path(found[0])
    raise EmbeddedServiceError(
        "mosquitto's dynamic-security plugin (mosquitto_dynamic_security.so) not found: it ships with "
        "mosquitto 2.0 (Debian: apt-get install mosquitto); or set PANTAU_MQTT_DYNSEC_PLUGIN to its path"
    )


def new_password() -> str:
    return secrets.token_urlsafe(_PASSWORD_BYTES)


# -- accounts and their ACLs ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Account:
    """An MQTT account: its username, password and the one client id it may connect with."""

    username: str
    password: str
    client_id: str

    def url(self, address: BrokerAddress) -> str:
        """`mqtt://user:password@host:port` for a service's PANTAU_MQTT_URL."""
        scheme = "mqtts" if address.tls else "mqtt"
        userinfo = f"{quote(self.username, safe='')}:{quote(self.password, safe='')}"
        return f"{scheme}://{userinfo}@{address.host}:{address.port}"

    def to_json(self) -> dict[str, str]:
        return {"username": self.username, "password": self.password, "client_id": self.client_id}

    def __repr__(self) -> str:  # never show the password
        return f"Account({self.username!r}, client_id={self.client_id!r})"


def _acl(acltype: str, topic: str, *, allow: bool = True, priority: int = 0) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "allow": allow, "priority": priority}


def _alerts_topics() -> list[str]:
    return [f"{TOPIC_ROOT}/+/alerts", f"{TOPIC_ROOT}/+/alerts/open"]


def service_roles() -> dict[str, list[dict[str, Any]]]:
    """The ACLs of each service role (the role is named as its account)."""
    sensor_filters = [f"{TOPIC_ROOT}/+/{kind.value}/+" for kind in SensorKind]
    return {
        ADMIN: [
            _acl("publishClientSend", "$CONTROL/dynamic-security/#"),
            _acl("subscribePattern", "$CONTROL/dynamic-security/#"),
            # The plugin never lets $CONTROL answers through by default: granted explicitly.
            _acl("publishClientReceive", "$CONTROL/dynamic-security/#"),
        ],
        INGEST: [_acl("subscribePattern", f) for f in sensor_filters],
        RULES: [_acl("publishClientSend", t) for t in _alerts_topics()],
        # `pantau/v1/+/+/+` also matches `pantau/v1/{city}/alerts/open`: the denials come first.
        SIMULATOR: [
            *(_acl("publishClientSend", t, allow=False, priority=10) for t in _alerts_topics()),
            _acl("publishClientSend", f"{TOPIC_ROOT}/+/+/+"),
        ],
        # `alerts/#` covers both alerts topics; only the notifier publishes under them.
        ALERTS_READER: [_acl("subscribePattern", f"{TOPIC_ROOT}/+/alerts/#")],
    }


def sensor_role(sensor_id: str) -> str:
    return SENSOR_ROLE_PREFIX + sensor_id


def sensor_acls(sensor: Sensor) -> list[dict[str, Any]]:
    """A device publishes to its own topic and nothing else; it subscribes to nothing (the default)."""
    return [_acl("publishClientSend", sensor.topic)]


def check_sensor_id(sensor_id: str, reserved: Iterable[str] = ()) -> None:
    """Refuse a sensor id that would be, or look like, one of pantau's own accounts or client ids."""
    if sensor_id.lower().startswith(RESERVED_PREFIX) or sensor_id in set(reserved):
        raise BrokerError(
            f"sensor id {sensor_id!r} is reserved: ids starting with {RESERVED_PREFIX!r} name pantau's own "
            "broker accounts and client ids"
        )


# -- the state directory's secrets ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccountBook:
    """The accounts pantau made on its own broker, as kept in `accounts.json` (mode 0600)."""

    accounts: Mapping[str, Account]

    def __getitem__(self, name: str) -> Account:
        return self.accounts[name]

    @classmethod
    def load(cls, path: Path) -> AccountBook | None:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ConfigError(str(path), f"cannot read the broker accounts: {exc}") from None
        return cls({name: Account(a["username"], a["password"], a["client_id"]) for name, a in data.items()})

    @classmethod
    def load_or_create(cls, path: Path, client_ids: Mapping[str, str]) -> AccountBook:
        """The accounts of `path`, with any of `client_ids`' accounts it lacks made up and saved."""
        book = cls.load(path)
        accounts = dict(book.accounts) if book else {}
        changed = False
        for name in SERVICE_ACCOUNTS:
            if name not in accounts:
                accounts[name] = Account(name, new_password(), client_ids.get(name, name))
                changed = True
        if changed:
            write_secret(path, json.dumps({n: a.to_json() for n, a in accounts.items()}, indent=2) + "\n")
        return cls(accounts)


def write_secret(path: Path, text: str) -> None:
    """Write a file readable by its owner only, never (even briefly) by anyone else."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def initial_dynsec_config(admin: Account) -> dict[str, Any]:
    """The plugin's first configuration: the admin account and role, everything else denied."""
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", admin.password.encode(), salt, _PBKDF2_ITERATIONS)
    return {
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": True,  # a client receives what it was allowed to subscribe to
            "subscribe": False,
            "unsubscribe": True,
        },
        "clients": [
            {
                "username": admin.username,
                "textName": "pantau: drives the dynamic-security plugin",
                "clientid": admin.client_id,
                "password": base64.b64encode(digest).decode(),
                "salt": base64.b64encode(salt).decode(),
                "iterations": _PBKDF2_ITERATIONS,
                "roles": [{"rolename": ADMIN}],
            }
        ],
        "groups": [],
        "roles": [{"rolename": ADMIN, "acls": service_roles()[ADMIN]}],
    }


# -- the control topic -------------------------------------------------------------------------


class DynsecControl:
    """The dynamic-security plugin's `$CONTROL` topic, with the admin account. Use as `async with`."""

    def __init__(self, admin_url: str, *, key: str = "PANTAU_MQTT_ADMIN_URL") -> None:
        self.address = BrokerAddress.parse(admin_url, key)
        if not self.address.username:
            raise ConfigError(key, "needs the admin account's user name and password (mqtt://user:password@host:port)")
        self._ids = itertools.count(1)
        self._tag = secrets.token_hex(4)
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._client: AsyncMqttClient | None = None
        self._refused: asyncio.Future[str] | None = None

    async def __aenter__(self) -> DynsecControl:
        loop = asyncio.get_running_loop()
        self._refused = loop.create_future()
        client = AsyncMqttClient(
            self.address,
            client_id=self.address.username or ADMIN,
            on_message=self._on_message,
            subscriptions=((RESPONSE_TOPIC, 1),),
            persistent=False,
            keepalive_s=30,
        )
        client.on_refused = self._on_refused
        self._client = client
        await client.__aenter__()
        subscribed: asyncio.Future[Any] = asyncio.ensure_future(client.wait_connected())
        refused: asyncio.Future[Any] = self._refused
        try:
            done, _ = await asyncio.wait(
                {subscribed, refused}, timeout=_CONNECT_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            subscribed.cancel()
        if self._refused in done:
            await client.close()
            raise BrokerError(f"{self.address.url()} refused the admin account: {self._refused.result()}")
        if subscribed not in done or subscribed.cancelled():
            await client.close()
            raise BrokerError(
                f"no connection to {self.address.url()} as the admin in {_CONNECT_TIMEOUT_S:g} s: is the broker"
                " running (`pantau up` runs pantau's own)?"
            )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._client is not None:
            await self._client.close()
        for future in self._waiting.values():
            future.cancel()

    def _on_refused(self, reason: str) -> None:
        if self._refused is not None and not self._refused.done():
            self._refused.set_result(reason)

    def _on_message(self, topic: str, payload: bytes, _qos: int, _mid: int) -> None:
        if topic != RESPONSE_TOPIC:
            return
        try:
            answers = json.loads(payload)["responses"]
        except (ValueError, KeyError, TypeError):
            log.warning("dynamic security: an unreadable answer (%d bytes) ignored", len(payload))
            return
        for answer in answers:
            future = self._waiting.pop(str(answer.get("correlationData")), None)
            if future is not None and not future.done():
                future.set_result(answer)

    async def run(self, commands: Sequence[dict[str, Any]], *, tolerate: Iterable[str] = ()) -> list[dict[str, Any]]:
        """Carry out the commands in order; their answers, in the same order. An answer with an
        error not in `tolerate` (e.g. "Client already exists") raises BrokerError naming it."""
        assert self._client is not None, "use DynsecControl with async with"
        tolerated = set(tolerate)
        answers: list[dict[str, Any]] = []
        loop = asyncio.get_running_loop()
        for start in range(0, len(commands), _COMMANDS_PER_MESSAGE):
            chunk = commands[start : start + _COMMANDS_PER_MESSAGE]
            futures = []
            tagged = []
            for command in chunk:
                cid = f"{self._tag}-{next(self._ids)}"
                future: asyncio.Future[dict[str, Any]] = loop.create_future()
                self._waiting[cid] = future
                futures.append(future)
                tagged.append({**command, "correlationData": cid})
            self._client.publish(CONTROL_TOPIC, json.dumps({"commands": tagged}), qos=1)
            try:
                got = await asyncio.wait_for(asyncio.gather(*futures), _ANSWER_TIMEOUT_S)
            except TimeoutError:
                raise BrokerError(
                    f"no answer from the dynamic-security plugin of {self.address.url()} in {_ANSWER_TIMEOUT_S:g} s"
                    " (is the plugin loaded, and is the admin account allowed $CONTROL/dynamic-security?)"
                ) from None
            for command, answer in zip(chunk, got, strict=True):
                error = answer.get("error")
                if error and error not in tolerated:
                    raise BrokerError(f"dynamic security: {_describe(command)}: {error}")
            answers.extend(got)
        return answers


def _describe(command: Mapping[str, Any]) -> str:
    """A command for an error message: its name and target, never its password."""
    target = command.get("username") or command.get("rolename") or command.get("groupname") or ""
    return f"{command['command']} {target}".strip()


# -- what pantau does with it ----------------------------------------------------------------


async def ensure_service_accounts(control: DynsecControl, book: AccountBook) -> None:
    """Make the services' roles and accounts that do not exist yet (an existing one is left as is:
    a password or role change would kick the running service)."""
    commands: list[dict[str, Any]] = []
    for role, acls in service_roles().items():
        commands.append({"command": "createRole", "rolename": role, "acls": acls})
    for name in SERVICE_ACCOUNTS:
        account = book[name]
        commands.append(
            {
                "command": "createClient",
                "username": account.username,
                "password": account.password,
                "clientid": account.client_id,
                "textName": f"pantau service account {name}",
                "roles": [{"rolename": name}],
            }
        )
    await control.run(commands, tolerate={"Role already exists", "Client already exists"})


async def ensure_sensor_accounts(
    control: DynsecControl, sensors: Sequence[Sensor], *, reserved: Iterable[str] = ()
) -> int:
    """Give each sensor its account (username and client id = its id) and role; returns how many
    were new. An existing account keeps its password; a role whose topic changed (the sensor moved
    city or kind) gets the new topic, and the device is reconnected by the broker."""
    reserved = set(reserved)
    for sensor in sensors:
        check_sensor_id(sensor.id, reserved)
    roles = [{"command": "createRole", "rolename": sensor_role(s.id), "acls": sensor_acls(s)} for s in sensors]
    answers = await control.run(roles, tolerate={"Role already exists"})
    existing = [s for s, a in zip(sensors, answers, strict=True) if a.get("error")]
    if existing:  # a retired sensor's role stays empty
        gone = await retired(control, [s.id for s in existing])
        existing = [s for s in existing if s.id not in gone]
    if existing:
        got = await control.run([{"command": "getRole", "rolename": sensor_role(s.id)} for s in existing])
        fixes: list[dict[str, Any]] = []
        for sensor, answer in zip(existing, got, strict=True):
            acls = answer.get("data", {}).get("role", {}).get("acls", [])
            topics = {a.get("topic") for a in acls if a.get("acltype") == "publishClientSend"}
            if topics != {sensor.topic}:
                for topic in topics:
                    fixes.append(
                        {"command": "removeRoleACL", "rolename": sensor_role(sensor.id), "acltype": "publishClientSend",
                         "topic": topic}
                    )  # fmt: skip
                fixes.append({"command": "addRoleACL", "rolename": sensor_role(sensor.id), **sensor_acls(sensor)[0]})
        if fixes:
            await control.run(fixes)
    clients = [
        {
            "command": "createClient",
            "username": s.id,
            "clientid": s.id,
            # Nobody knows this one: the field team gets a password from `issue_credentials`.
            "password": new_password(),
            "textName": f"sensor {s.id}",
            "roles": [{"rolename": sensor_role(s.id)}],
        }
        for s in sensors
    ]
    answers = await control.run(clients, tolerate={"Client already exists"})
    return sum(1 for a in answers if not a.get("error"))


async def retired(control: DynsecControl, sensor_ids: Sequence[str]) -> set[str]:
    """The sensors whose accounts are retired (disabled on the broker)."""
    answers = await control.run(
        [{"command": "getClient", "username": i} for i in sensor_ids], tolerate={"Client not found"}
    )
    return {i for i, a in zip(sensor_ids, answers, strict=True) if a.get("data", {}).get("client", {}).get("disabled")}


async def issue_credentials(
    control: DynsecControl, sensors: Sequence[Sensor], *, reserved: Iterable[str] = ()
) -> list[Account]:
    """A fresh password for each sensor's account (made if missing), handed back once. A device
    connected with the old password is disconnected by the broker. A retired sensor gets none."""
    await ensure_sensor_accounts(control, sensors, reserved=reserved)
    gone = await retired(control, [s.id for s in sensors])
    if gone:
        raise BrokerError(f"retired, so no credentials: {', '.join(sorted(gone))}")
    accounts = [Account(s.id, new_password(), s.id) for s in sensors]
    await control.run([{"command": "setClientPassword", "username": a.username, "password": a.password}
                       for a in accounts])  # fmt: skip
    return accounts


async def retire_sensor(control: DynsecControl, sensor_id: str) -> bool:
    """Disable the sensor's account and empty its role: the broker disconnects the device at once
    and refuses it from then on. The disabled account is the record of the retirement (it is never
    made again, and gets no credentials). False when it had no account or was retired already.

    The role stays attached, emptied of its ACL: mosquitto 2.0.11's deleteRole leaves a deleted
    role behind in its clients' lists (getClient then shows garbage from freed memory)."""
    check_sensor_id(sensor_id)
    role = sensor_role(sensor_id)
    client, found = await control.run(
        [{"command": "getClient", "username": sensor_id}, {"command": "getRole", "rolename": role}],
        tolerate={"Client not found", "Role not found"},
    )
    account = client.get("data", {}).get("client")
    if not account or account.get("disabled"):
        return False
    acls = found.get("data", {}).get("role", {}).get("acls", [])
    removals = [
        {"command": "removeRoleACL", "rolename": role, "acltype": acl["acltype"], "topic": acl["topic"]} for acl in acls
    ]
    await control.run([{"command": "disableClient", "username": sensor_id}, *removals])
    return True


# -- where the CLI finds the broker ------------------------------------------------------------


def accounts_path(home: Path) -> Path:
    """`accounts.json` of the embedded broker of `pantau up` under the state directory."""
    return home / "mosquitto" / ACCOUNTS_FILE


def managed_broker(home: Path, admin_url: str | None) -> tuple[str, dict[str, Any]] | None:
    """(admin URL, endpoints) of the broker pantau manages: `PANTAU_MQTT_ADMIN_URL`, else the
    admin account and endpoints `pantau up` wrote under the state directory; None when neither."""
    try:
        endpoints: dict[str, Any] = json.loads((home / "endpoints.json").read_text())
    except (OSError, ValueError):
        endpoints = {}
    if admin_url:
        return admin_url, endpoints
    book = AccountBook.load(accounts_path(home))
    plain = endpoints.get("mqtt_url")
    if book is None or not plain:
        return None
    return book[ADMIN].url(BrokerAddress.parse(plain)), endpoints


def device_broker(admin_url: str, endpoints: Mapping[str, Any]) -> tuple[str, int, bool, str]:
    """(host, port, tls, CA file) devices are told to connect to: the TLS listener when there is one."""
    tls_url = endpoints.get("mqtts_url")
    if tls_url:
        parts = urlsplit(tls_url)
        return parts.hostname or "127.0.0.1", parts.port or 8883, True, str(endpoints.get("mqtts_ca_file") or "")
    address = BrokerAddress.parse(admin_url)
    return address.host, address.port, address.tls, ""
