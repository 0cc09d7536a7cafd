"""The broker of `pantau up` (secure: dynamic security, anonymous off) against a real mosquitto
and a real PostgreSQL: who may connect, publish and subscribe, and what reaches the database.

Each test is named for a guarantee (docs/security-broker.md); the broker is `EmbeddedMosquitto(
secure=True)` with the accounts `pantau up` makes (pantau.broker), ingest runs in-process with its
own account.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from pantau.broker import (
    ADMIN,
    ALERTS_READER,
    INGEST,
    RULES,
    SIMULATOR,
    Account,
    AccountBook,
    DynsecControl,
    ensure_sensor_accounts,
    ensure_service_accounts,
    issue_credentials,
    retire_sensor,
)
from pantau.domain import Sensor
from pantau.embedded import MAX_PACKET_BYTES, EmbeddedMosquitto
from pantau.errors import BrokerError
from pantau.mqtt import BrokerAddress
from pantau.settings import IngestSettings, Settings, StoreSettings
from pantau.store import Backend, Store
from simulators.fastmqtt import FastPublisher
from tests.integration.ingest_harness import running_ingest
from tests.support import await_until

RIVER = Sensor(id="SPT-WL-03", kind="flood", city="sampit", metadata={"siaga3_cm": 150})
OTHER = Sensor(id="SPT-WL-04", kind="flood", city="sampit", metadata={"siaga3_cm": 150})
TRAFFIC = [Sensor(id=f"SPT-TR-{i:02d}", kind="traffic", city="sampit") for i in range(20)]
NOT_AUTHORIZED = 0x87
# A PUBACK of an accepted message: success, or (MQTT 5) "no matching subscribers" when ingest is not there.
ACCEPTED = {0x00, 0x10}


@dataclass
class SecureBroker:
    mq: EmbeddedMosquitto
    book: AccountBook

    @property
    def address(self) -> BrokerAddress:
        return BrokerAddress.parse(self.mq.url)

    def url(self, name: str) -> str:
        return self.book[name].url(self.address)


def _secure_broker(root: Path, **kwargs: Any) -> Iterator[SecureBroker]:
    mq = EmbeddedMosquitto(root, secure=True, client_ids={INGEST: INGEST, RULES: RULES}, **kwargs)
    mq.start()
    try:
        broker = SecureBroker(mq, mq.accounts())

        async def provision() -> None:
            async with DynsecControl(broker.url(ADMIN)) as control:
                await ensure_service_accounts(control, broker.book)

        asyncio.run(provision())
        yield broker
    finally:
        mq.stop()


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[SecureBroker]:
    yield from _secure_broker(tmp_path / "mosquitto")


@pytest.fixture
def secure_settings(database_url: str, secure: SecureBroker, tmp_path: Path) -> Settings:
    return Settings(
        database_url=database_url,
        mqtt_url=secure.url(INGEST),
        home=tmp_path / "home",
        ingest=IngestSettings(client_id=INGEST, metrics_port=-1, last_seen_interval_s=0.2),
        store=StoreSettings(pool_max_size=2),
    )


async def _register(store: Store, secure: SecureBroker, sensors: list[Sensor]) -> list[Account]:
    """Register the sensors and hand out their credentials, as `pantau sensors add` + `credentials` do."""
    await store.upsert_sensors(sensors)
    async with DynsecControl(secure.url(ADMIN)) as control:
        await ensure_sensor_accounts(control, sensors)
        return await issue_credentials(control, sensors)


# -- a device: paho in its own thread, one answer awaited at a time --------------------------------


class Device:
    """An MQTT client as a logger would be; every call waits for the broker's answer."""

    def __init__(
        self,
        port: int,
        account: Account | None,
        *,
        client_id: str | None = None,
        protocol: int = 5,
        tls_ca: str | None = None,
    ) -> None:
        self.protocol = protocol
        cid = client_id if client_id is not None else (account.client_id if account else "anonymous-device")
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cid,
            protocol=paho.MQTTv5 if protocol == 5 else paho.MQTTv311,
            reconnect_on_failure=False,
        )
        if account is not None:
            self.client.username_pw_set(account.username, account.password)
        if tls_ca is not None:
            self.client.tls_set(ca_certs=tls_ca)
        self.port = port
        self.connack: Any = None
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self._answers: dict[int, Any] = {}
        self._cond = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *_a: self.disconnected.set()
        self.client.on_publish = self._on_answer
        self.client.on_subscribe = lambda _c, _u, mid, codes, _p: self._answer(mid, codes)
        self.messages: list[tuple[str, bytes, bool]] = []
        self.client.on_message = lambda _c, _u, m: self.messages.append((m.topic, m.payload, bool(m.retain)))

    def _on_connect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _p: Any) -> None:
        self.connack = reason
        self.connected.set()

    def _on_answer(self, _c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        self._answer(mid, reason)

    def _answer(self, mid: int, value: Any) -> None:
        with self._cond:
            self._answers[mid] = value
            self._cond.notify_all()

    def _wait(self, mid: int, timeout_s: float = 10) -> Any:
        with self._cond:
            assert self._cond.wait_for(lambda: mid in self._answers, timeout_s), "the broker did not answer"
            return self._answers.pop(mid)

    def connect(self, timeout_s: float = 10) -> bool:
        """True when the broker accepted the CONNECT; False when it refused or dropped it."""
        try:
            self.client.connect("127.0.0.1", self.port, keepalive=30)
        except OSError:
            return False
        self.client.loop_start()
        done = threading.Event()

        def either() -> None:
            while not (self.connected.is_set() or self.disconnected.is_set()):
                time.sleep(0.005)
            done.set()

        threading.Thread(target=either, daemon=True).start()
        assert done.wait(timeout_s), "no CONNACK"
        return self.connected.is_set() and not self.connack.is_failure

    def publish(self, topic: str, payload: bytes | str, *, retain: bool = False) -> Any:
        """The PUBACK's reason code (MQTT 5), or 0 under 3.1.1 (which has none to give)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        return self._wait(info.mid)

    def subscribe(self, topic: str) -> list[Any]:
        _rc, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None
        return list(self._wait(mid))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _code(reason: Any) -> int:
    return int(reason.value) if hasattr(reason, "value") else int(reason)


# -- connecting ------------------------------------------------------------------------------------


def test_an_anonymous_client_cannot_connect(secure: SecureBroker) -> None:
    for protocol in (5, 4):
        device = Device(secure.mq.port, None, protocol=protocol)
        try:
            assert not device.connect(), f"an anonymous MQTT {protocol} client was let in"
        finally:
            device.close()
    with pytest.raises(BrokerError, match=r"not authorised|bad user name"):
        FastPublisher("127.0.0.1", secure.mq.port, "anonymous").connect()
    wrong = Account(SIMULATOR, "not-the-password", secure.book[SIMULATOR].client_id)
    device = Device(secure.mq.port, wrong)
    try:
        assert not device.connect(), "a wrong password was let in"
    finally:
        device.close()


def _raw_connect(port: int, client_id: str, account: Account | None, *, mqtt5: bool) -> int:
    """CONNECT asking to resume a persistent session (clean start 0, MQTT 5 session expiry
    "never"); the CONNACK's return or reason code (0 = accepted)."""

    def utf8(text: str) -> bytes:
        raw = text.encode()
        return len(raw).to_bytes(2, "big") + raw

    flags = 0x00  # clean session / clean start off: take over what is there
    login = b""
    if account is not None:
        flags |= 0xC0
        login = utf8(account.username) + utf8(account.password)
    props = b"\x05\x11\xff\xff\xff\xff" if mqtt5 else b""
    body = b"\x00\x04MQTT" + (b"\x05" if mqtt5 else b"\x04") + bytes([flags]) + b"\x00\x1e" + props
    body += utf8(client_id) + login
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"\x10" + _varint(len(body)) + body)
        head = sock.recv(4)
        if len(head) < 4:
            return -1  # dropped without a CONNACK: refused as well
        code = head[3]
        if code == 0:
            sock.sendall(b"\xe0\x00")
        return code


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


async def test_no_other_account_can_take_ingests_session_while_20000_readings_flow(
    secure_settings: Settings, secure: SecureBroker, backend: Backend, store: Store
) -> None:
    [device] = await _register(store, secure, [RIVER])
    await store.upsert_sensors(TRAFFIC)
    impostors = [
        device,  # a sensor's own account
        secure.book[SIMULATOR],
        secure.book[ALERTS_READER],
        secure.book[ADMIN],
        secure.book[RULES],
        None,  # anonymous
    ]
    attempts: list[tuple[str, int]] = []
    stop = threading.Event()

    def impostor() -> None:
        # On a timer, independent of how far the readings have got: every 20 ms, one account in
        # turn, alternately MQTT 5 and 3.1.1, asks for ingest's client id and its session.
        k = 0
        while not stop.wait(0.02):
            account = impostors[k % len(impostors)]
            name = account.username if account else "anonymous"
            attempts.append((name, _raw_connect(secure.mq.port, INGEST, account, mqtt5=k % 2 == 0)))
            k += 1

    now = int(time.time()) - 3600
    messages = [(s.topic, b'{"ts":%d,"vehicle_count":%d}' % (now + i, i % 97)) for i in range(1000) for s in TRAFFIC]
    assert len(messages) == 20_000
    sim = secure.book[SIMULATOR]
    async with running_ingest(secure_settings, backend) as service:
        generation = service.mqtt.generation
        thread = threading.Thread(target=impostor, daemon=True)
        thread.start()
        try:

            def publish() -> None:
                with FastPublisher(
                    "127.0.0.1", secure.mq.port, sim.client_id, username=sim.username, password=sim.password
                ) as pub:
                    for start in range(0, len(messages), 500):
                        pub.send(messages[start : start + 500])
                        time.sleep(0.01)  # spread over a second or two, so the impostors overlap the flow
                    pub.flush()

            await asyncio.to_thread(publish)
            await await_until(lambda: _count_is(store, 20_000), what="20,000 readings", timeout_s=60)
        finally:
            stop.set()
            thread.join(10)
        assert service.mqtt.generation == generation, "ingest lost its connection to an impostor"
    assert await store.count("readings") == 20_000
    assert await store.count("rejected_messages") == 0
    assert len(attempts) >= 20, f"only {len(attempts)} impostor attempts ran"
    accepted = [(name, code) for name, code in attempts if code == 0]
    assert not accepted, f"connected with ingest's client id: {accepted}"
    assert {name for name, _ in attempts} >= {RIVER.id, SIMULATOR, ALERTS_READER, ADMIN, RULES, "anonymous"}


async def _count_is(store: Store, n: int) -> bool:
    return await store.count("readings") == n


# -- publishing ------------------------------------------------------------------------------------


def _refused(port: int, account: Account, topic: str, payload: str, *, retain: bool = False, protocol: int = 5) -> bool:
    """True when the broker refuses this publish: mosquitto 2.0.11 answers a refused QoS 1 publish
    with PUBACK 0x87 (MQTT 5; 3.1.1 has no code to give) and then closes the connection."""
    device = Device(port, account, protocol=protocol)
    try:
        assert device.connect(), f"{account.username} could not connect"
        code = _code(device.publish(topic, payload, retain=retain))
        dropped = device.disconnected.wait(5)
        return dropped and code == (NOT_AUTHORIZED if protocol == 5 else 0)
    finally:
        device.close()


async def test_a_device_publishes_only_its_own_readings_and_never_an_alert(
    secure_settings: Settings, secure: SecureBroker, backend: Backend, store: Store
) -> None:
    river, _other = await _register(store, secure, [RIVER, OTHER])
    ts = int(time.time()) - 60
    forged = json.dumps({"ts": ts, "water_level_cm": 650})
    port = secure.mq.port
    async with running_ingest(secure_settings, backend):
        # As another sensor, on the alerts topic, on the retained snapshot, under MQTT 5 and 3.1.1.
        for protocol in (5, 4):
            assert _refused(port, river, OTHER.topic, forged, protocol=protocol)
            assert _refused(port, river, "pantau/v1/sampit/alerts", '{"forged": true}', protocol=protocol)
            assert _refused(port, river, "pantau/v1/sampit/alerts/open", "[]", retain=True, protocol=protocol)
            assert _refused(port, river, "pantau/v1/sampit/alerts", "{}", retain=True, protocol=protocol)
        # The simulators never publish alerts; the notifier alone does, and never a reading.
        sim, rules = secure.book[SIMULATOR], secure.book[RULES]
        assert _refused(port, sim, "pantau/v1/sampit/alerts/open", "[]", retain=True)
        assert _refused(port, sim, "pantau/v1/sampit/alerts", "{}")
        assert _refused(port, rules, RIVER.topic, forged)
        notifier = Device(port, rules)
        reader = Device(port, secure.book[ALERTS_READER])
        device = Device(port, river)
        try:
            assert notifier.connect()
            assert _code(notifier.publish("pantau/v1/sampit/alerts/open", '{"alerts": []}', retain=True)) in ACCEPTED
            # A device subscribes to nothing; a reader to the alerts topics only.
            assert device.connect()
            assert _code(device.subscribe("pantau/v1/#")[0]) == NOT_AUTHORIZED
            assert _code(device.subscribe("pantau/v1/sampit/alerts")[0]) == NOT_AUTHORIZED
            assert reader.connect()
            assert _code(reader.subscribe("pantau/v1/+/flood/+")[0]) == NOT_AUTHORIZED
            assert _code(reader.subscribe("pantau/v1/+/alerts/open")[0]) == 1  # granted QoS 1
            # A subscriber arriving now gets the notifier's snapshot, not a device's.
            await await_until(lambda: _has_messages(reader), what="the retained snapshot")
            assert reader.messages == [("pantau/v1/sampit/alerts/open", b'{"alerts": []}', True)]
            # Its own topic: accepted and stored.
            assert _code(device.publish(RIVER.topic, json.dumps({"ts": ts, "water_level_cm": 120}))) in ACCEPTED
            await await_until(lambda: _count_is(store, 1), what="the device's own reading")
        finally:
            notifier.close()
            reader.close()
            device.close()
        # A device's account connects with its own client id only.
        assert not Device(port, river, client_id="SPT-WL-03-b").connect()
        await asyncio.sleep(0.5)  # anything wrongly let through would be written by now (batches: 50 ms)
    rows = await store.readings(RIVER.id, "water_level_cm", _dt(ts - 1), _dt(ts + 1))
    assert [r["value"] for r in rows] == [120.0]
    assert await store.readings(OTHER.id, "water_level_cm", _dt(ts - 1), _dt(ts + 1)) == []
    assert await store.count("readings") == 1
    assert await store.count("rejected_messages") == 0


async def _has_messages(device: Device) -> bool:
    return bool(device.messages)


def _dt(epoch: float) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC)


async def test_an_oversized_message_is_refused_and_a_large_one_is_a_visible_rejection(
    secure_settings: Settings, secure: SecureBroker, backend: Backend, store: Store
) -> None:
    [river] = await _register(store, secure, [RIVER])
    async with running_ingest(secure_settings, backend):
        device = Device(secure.mq.port, river)
        try:
            assert device.connect()
            # Over ingest's 64 KiB payload limit, under the broker's packet limit: stored as `oversize`.
            assert _code(device.publish(RIVER.topic, b"x" * 100_000)) in ACCEPTED
            await await_until(lambda: _rejections(store, 1), what="the oversize rejection")
            # Over the broker's packet limit (a 10 MB message included): the broker drops the client.
            device.client.publish(RIVER.topic, b"x" * (MAX_PACKET_BYTES + 1), qos=1)
            assert device.disconnected.wait(10), "the broker kept a client that sent an oversized packet"
        finally:
            device.close()
        big = Device(secure.mq.port, river)
        try:
            assert big.connect()
            big.client.publish(RIVER.topic, b"x" * 10_000_000, qos=1)
            assert big.disconnected.wait(10), "the broker kept a client that sent 10 MB"
        finally:
            big.close()
    assert await _reasons(store) == ["oversize"]
    assert await store.count("readings") == 0


async def _rejections(store: Store, n: int) -> bool:
    return await store.count("rejected_messages") == n


async def _reasons(store: Store) -> list[str]:
    async with store.connection() as conn:
        cur = await conn.execute("SELECT reason FROM rejected_messages")
        return [r[0] for r in await cur.fetchall()]


# -- accounts over time ----------------------------------------------------------------------------


async def test_a_retired_device_is_disconnected_and_cannot_reconnect(
    secure_settings: Settings, secure: SecureBroker, backend: Backend, store: Store
) -> None:
    [river] = await _register(store, secure, [RIVER])
    device = Device(secure.mq.port, river)
    try:
        assert device.connect()
        assert _code(device.publish(RIVER.topic, json.dumps({"water_level_cm": 100}))) in ACCEPTED
        async with DynsecControl(secure.url(ADMIN)) as control:
            assert await retire_sensor(control, RIVER.id)
            assert not await retire_sensor(control, RIVER.id)  # nothing left to revoke
        assert device.disconnected.wait(10), "the retired device stayed connected"
    finally:
        device.close()
    again = Device(secure.mq.port, river)
    try:
        assert not again.connect(), "a retired device connected again"
    finally:
        again.close()
    # Registering it again (an import, `pantau up` at start) gives it no access, nor do credentials.
    async with DynsecControl(secure.url(ADMIN)) as control:
        assert await ensure_sensor_accounts(control, [RIVER]) == 0
        with pytest.raises(BrokerError, match="retired"):
            await issue_credentials(control, [RIVER])
    assert not Device(secure.mq.port, river).connect()


async def test_new_credentials_disconnect_the_old_password_and_accounts_are_made_once(
    secure: SecureBroker, store: Store
) -> None:
    [first] = await _register(store, secure, [RIVER])
    device = Device(secure.mq.port, first)
    try:
        assert device.connect()
        async with DynsecControl(secure.url(ADMIN)) as control:
            assert await ensure_sensor_accounts(control, [RIVER]) == 0  # kept: its password unchanged
            [second] = await issue_credentials(control, [RIVER])
        assert second.password != first.password
        assert device.disconnected.wait(10), "a device on the old password stayed connected"
    finally:
        device.close()
    assert not Device(secure.mq.port, first).connect()
    fresh = Device(secure.mq.port, second)
    assert fresh.connect()
    fresh.close()


async def test_a_sensor_id_naming_a_service_account_gets_no_account(secure: SecureBroker) -> None:
    async with DynsecControl(secure.url(ADMIN)) as control:
        for sensor_id in (INGEST, "pantau-anything", "PANTAU-INGEST"):
            impostor = Sensor(id=sensor_id, kind="flood", city="sampit")
            with pytest.raises(BrokerError, match="reserved"):
                await ensure_sensor_accounts(control, [impostor])
        with pytest.raises(BrokerError, match="reserved"):
            await ensure_sensor_accounts(control, [Sensor(id="ingest-1", kind="air", city="x")], reserved={"ingest-1"})


async def test_a_wrong_admin_password_is_a_clear_error_without_the_secret(secure: SecureBroker) -> None:
    url = f"mqtt://{ADMIN}:not-the-password@127.0.0.1:{secure.mq.port}"
    with pytest.raises(BrokerError) as caught:
        async with DynsecControl(url):
            pass
    assert "refused the admin account" in str(caught.value)
    assert "not-the-password" not in str(caught.value)


def test_secrets_are_files_of_their_owner_only(secure: SecureBroker) -> None:
    assert secure.mq.accounts_file.stat().st_mode & 0o777 == 0o600
    dynsec = secure.mq.root / "data" / "dynamic-security.json"
    assert dynsec.stat().st_mode & 0o077 == 0
    config = secure.mq.conf.read_text()
    assert "allow_anonymous false" in config and "mosquitto_dynamic_security.so" in config
    for account in secure.book.accounts.values():
        assert account.password not in config
        assert account.password not in secure.mq.log_file.read_text()
        assert account.password not in repr(account)


# -- TLS ---------------------------------------------------------------------------------------------


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


@pytest.fixture
def tls_secure(tmp_path: Path, certificate: tuple[str, str]) -> Iterator[SecureBroker]:
    cert, key = certificate
    yield from _secure_broker(tmp_path / "tls-mosquitto", tls_cert_file=cert, tls_key_file=key)


async def test_a_device_verifies_the_tls_listener_and_publishes_over_it(
    tls_secure: SecureBroker, certificate: tuple[str, str], database_url: str, backend: Backend, store: Store
) -> None:
    cert, _key = certificate
    secure = tls_secure
    assert secure.mq.tls_url == f"mqtts://127.0.0.1:{secure.mq.tls_port}"
    [river] = await _register(store, secure, [RIVER])
    settings = Settings(
        database_url=database_url,
        mqtt_url=secure.url(INGEST),
        ingest=IngestSettings(client_id=INGEST, metrics_port=-1),
        store=StoreSettings(pool_max_size=2),
    )
    async with running_ingest(settings, backend):
        device = Device(secure.mq.tls_port, river, tls_ca=cert)
        try:
            assert device.connect()
            assert _code(device.publish(RIVER.topic, json.dumps({"water_level_cm": 90}))) in ACCEPTED
        finally:
            device.close()
        await await_until(lambda: _count_is(store, 1), what="the reading sent over TLS")
    # A device told to verify the broker refuses one whose certificate it cannot verify.
    with pytest.raises(ssl.SSLError):
        ctx = ssl.create_default_context()
        with socket.create_connection(("127.0.0.1", secure.mq.tls_port)) as raw:
            ctx.wrap_socket(raw, server_hostname="127.0.0.1")
