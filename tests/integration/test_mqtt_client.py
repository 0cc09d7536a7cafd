"""pantau.mqtt's own receive path (decisions D15) against a real mosquitto: PUBLISH packets are
parsed out of the read buffer whole however TCP splits them, under MQTT 3.1.1 and 5; the batched
PUBACKs are taken by the broker as acknowledgements; what is not a PUBLISH stays paho's."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from contextlib import contextmanager

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from pantau.embedded import EmbeddedMosquitto
from pantau.mqtt import AsyncMqttClient, BrokerAddress
from tests.support import TcpProxy, await_until

Message = tuple[str, bytes, int]  # topic, payload, qos
TOPIC = "t/v1/x/air/S-1"


def remaining_length_edges() -> Iterator[Message]:
    """Payloads around each size where the remaining length takes another byte (127/128,
    16,383/16,384), as QoS 0 and 1 (a packet id moves the edge by two), an empty payload, and one
    larger than the client's 256 KiB read."""
    overhead = 2 + len(TOPIC)
    for qos in (0, 1):
        for edge in (127, 16_383):
            for remaining in range(edge - 3, edge + 4):
                size = remaining - overhead - 2 * qos
                yield TOPIC, bytes(i % 251 for i in range(size)), qos
    yield TOPIC, b"", 1
    yield f"{TOPIC}/long-é", b"x" * 300_000, 1  # and a topic that is not ASCII


class Received:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, int, int]] = []

    def __call__(self, topic: str, payload: bytes, qos: int, mid: int) -> None:
        self.messages.append((topic, payload, qos, mid))

    def plain(self) -> list[Message]:
        return [(t, p, q) for t, p, q, _ in self.messages]


@contextmanager
def publishing(port: int, protocol: int = paho.MQTTv311) -> Iterator[paho.Client]:
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


def publish(client: paho.Client, messages: list[Message], properties: Properties | None = None) -> None:
    infos = [client.publish(t, p, qos=q, properties=properties) for t, p, q in messages]
    for info in infos:
        info.wait_for_publish(10)
        assert info.is_published()


async def deliver(
    pub: paho.Client, messages: list[Message], received: Received, properties: Properties | None = None
) -> None:
    """Publish `messages` and wait until the subscriber has them all (and whatever it had)."""
    want = len(received.messages) + len(messages)
    await asyncio.to_thread(publish, pub, messages, properties)
    await await_until(lambda: len(received.messages) >= want, what=f"{want} messages")


def subscriber(port: int, received: Received, protocol: int, client_id: str, **kw: object) -> AsyncMqttClient:
    return AsyncMqttClient(
        BrokerAddress("127.0.0.1", port),
        client_id=client_id,
        on_message=received,
        subscriptions=(("t/#", 1),),
        manual_ack=True,
        protocol=protocol,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def dribbling(broker: EmbeddedMosquitto) -> Iterator[TcpProxy]:
    proxy = TcpProxy(broker.host, broker.port, dribble=True)
    yield proxy
    proxy.close()


@pytest.mark.parametrize("protocol", [4, 5], ids=["mqtt3.1.1", "mqtt5"])
async def test_publishes_split_at_every_point_arrive_whole_in_order_and_acks_take(
    broker: EmbeddedMosquitto, dribbling: TcpProxy, protocol: int
) -> None:
    sent = list(remaining_length_edges())
    received = Received()
    with publishing(broker.port) as pub:
        async with subscriber(dribbling.port, received, protocol, "fast-edges") as client:
            await client.wait_connected(10)
            await deliver(pub, sent, received)
            assert received.plain() == sent
            mids = [mid for _t, _p, qos, mid in received.messages if qos]
            assert len(mids) == sum(q for _t, _p, q in sent) and all(mids)
            assert client.ack_many(mids, client.generation)
            await asyncio.sleep(0.3)  # the PUBACKs on their way
            assert client.generation == 1  # nothing the parser took made paho drop the connection

        # The same session again, directly: had a PUBACK not taken, the broker would redeliver
        # that message before the sentinel published now.
        again = Received()
        async with subscriber(broker.port, again, protocol, "fast-edges") as client:
            await client.wait_connected(10)
            await deliver(pub, [(TOPIC, b"sentinel", 1)], again)
            await asyncio.sleep(0.3)
            assert again.plain() == [(TOPIC, b"sentinel", 1)]


async def test_mqtt5_properties_are_skipped_and_the_payload_kept(
    broker: EmbeddedMosquitto, dribbling: TcpProxy
) -> None:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.UserProperty = [("station", "SPT-AQ-01"), ("firmware", "2.4.1" * 40)]
    props.ContentType = "application/senml+json"
    props.MessageExpiryInterval = 3600
    props.PayloadFormatIndicator = 1
    sent = [(TOPIC, b'[{"n": "pm25", "v": 12.5}]', 1), (TOPIC, b'{"pm25": 13}', 0)]
    received = Received()
    with publishing(broker.port, paho.MQTTv5) as pub:
        async with subscriber(dribbling.port, received, 5, "fast-props") as client:
            await client.wait_connected(10)
            await deliver(pub, sent, received, props)
            assert received.plain() == sent


@pytest.mark.parametrize("protocol", [4, 5], ids=["mqtt3.1.1", "mqtt5"])
async def test_only_unacknowledged_messages_come_again(broker: EmbeddedMosquitto, protocol: int) -> None:
    sent = [(TOPIC, f"m{i}".encode(), 1) for i in range(60)]
    received = Received()
    with publishing(broker.port) as pub:
        async with subscriber(broker.port, received, protocol, "fast-redeliver") as client:
            await client.wait_connected(10)
            await deliver(pub, sent, received)
            acked = received.messages[::2]  # every other one, out of step with the packet ids
            assert client.ack_many([mid for *_x, mid in acked], client.generation)
            await asyncio.sleep(0.3)
        again = Received()
        async with subscriber(broker.port, again, protocol, "fast-redeliver") as client:
            await client.wait_connected(10)
            await await_until(lambda: len(again.messages) >= 30, what="the unacknowledged half")
            await asyncio.sleep(0.3)
            assert [p for _t, p, _q, _m in again.messages] == [p for _t, p, _q, _m in received.messages[1::2]]


async def test_keepalive_pings_between_publishes_keep_the_connection(
    broker: EmbeddedMosquitto, dribbling: TcpProxy
) -> None:
    # Nothing is acknowledged, so the client sends nothing but PINGREQs (keepalive 1 s); their
    # PINGRESPs arrive between PUBLISHes, split like them, and paho must see every one.
    received = Received()
    counter = itertools.count()
    with publishing(broker.port) as pub:
        async with subscriber(dribbling.port, received, 4, "fast-pings", keepalive_s=1) as client:
            await client.wait_connected(10)
            end = time.monotonic() + 4.0
            sent: list[Message] = []
            while time.monotonic() < end:
                batch = [(TOPIC, f"p{next(counter)}".encode(), 1) for _ in range(5)]
                await asyncio.to_thread(publish, pub, batch)
                sent += batch
                await asyncio.sleep(0.1)
            await await_until(lambda: len(received.messages) >= len(sent), what="every message")
            assert received.plain() == sent
            assert client.connected and client.generation == 1
