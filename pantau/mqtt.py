"""paho-mqtt 2.x driven by asyncio's own loop: no thread, no queue hop, callbacks on the loop.

paho's socket is registered with the event loop (add_reader / add_writer) as in paho's
loop_asyncio example; `on_message` runs synchronously inside the read callback, so the caller's
per-message work is the only per-message work. The session is persistent under either protocol:
MQTT 5 (ingest's default, decisions D2) with clean_start=False, a Session Expiry Interval and an
optional Receive Maximum, which is how an MQTT 5 subscriber bounds the unacknowledged QoS 1
messages the broker sends it; or MQTT 3.1.1 with clean_session=False.

Reconnects with backoff. Every (re)connect bumps `generation`: a packet id is only meaningful
on the connection that delivered it, so acknowledgements for an older generation are dropped
(the broker redelivers those messages, and the store de-duplicates them).

The receive hot path does not go through paho (decisions D15): on a plain TCP connection every
complete QoS 0/1 PUBLISH in the read buffer is parsed here and handed to `on_message` directly,
and acknowledgements go out as one write of all a batch's PUBACKs. Everything else (CONNACK,
SUBACK, PINGRESP, QoS 2, outgoing publishes, keepalive, the session) stays paho's: a packet
that is not such a PUBLISH is left to paho's own reader once it is wholly in the buffer.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from pantau.errors import BrokerError, ConfigError
from pantau.settings import redacted

log = logging.getLogger(__name__)

# (topic, payload, qos, packet id): one received PUBLISH; the packet id is 0 for QoS 0.
MessageHandler = Callable[[str, bytes, int, int], None]

# Reconnect backoff: start fast (a broker restart takes about a second), cap so that a long
# outage costs one attempt every 5 s.
_BACKOFF_START_S = 0.2
_BACKOFF_MAX_S = 5.0
# paho's loop_misc handles keepalive pings and retries; once a second is what paho's own loop does.
_MISC_INTERVAL_S = 1.0


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where the broker is, parsed from mqtt://[user:pass@]host:port or mqtts://."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str, key: str = "PANTAU_MQTT_URL") -> BrokerAddress:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ConfigError(key, f"expected mqtt://host:port or mqtts://host:port, got {redacted(url)!r}")
        tls = parts.scheme == "mqtts"
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise ConfigError(key, f"bad port in {redacted(url)!r}") from None
        return cls(
            parts.hostname,
            port,
            tls,
            unquote(parts.username) if parts.username else None,
            unquote(parts.password) if parts.password else None,
        )

    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


# One recv into this much buffer serves hundreds of small PUBLISH packets.
_READ_CHUNK = 256 * 1024


class _BufferedSocket:
    """paho reads each packet a few bytes at a time (recv(1) for the header): serve those reads
    from one large recv, turning ~3 syscalls per message into one per 256 KiB. The client's own
    PUBLISH parser reads the same buffer (`buf`, `pos`, `fill`). Everything else is the socket's own."""

    __slots__ = ("_sock", "buf", "limit", "pos")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self.buf = b""
        self.pos = 0
        # While paho reads one packet the client handed it: where that packet ends. paho finds
        # nothing beyond it (BlockingIOError), so it never holds half of the next packet.
        self.limit: int | None = None

    @property
    def buffered(self) -> int:
        return len(self.buf) - self.pos

    def fill(self) -> bool:
        """One recv, appended to what is still unread; False at end of stream. Raises
        BlockingIOError when nothing has arrived, or the socket's error."""
        data = self._sock.recv(_READ_CHUNK)
        if not data:
            return False
        self.buf = self.buf[self.pos :] + data if self.pos < len(self.buf) else bytes(data)
        self.pos = 0
        return True

    def recv(self, n: int) -> bytes:
        buf, pos, limit = self.buf, self.pos, self.limit
        if limit is not None:
            if pos >= limit:
                raise BlockingIOError
            n = min(n, limit - pos)
        if pos >= len(buf):
            buf = bytes(self._sock.recv(max(n, _READ_CHUNK)))  # may raise BlockingIOError, as paho expects
            if not buf:
                return buf
            self.buf, pos = buf, 0
        chunk = buf[pos : pos + n]
        self.pos = pos + len(chunk)
        return chunk

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


# What `_parse_publishes` found at the head of the buffer when it stopped.
_NEED_MORE = 0  # the buffer is empty or ends inside a packet
_FOR_PAHO = 1  # a whole packet that is not a QoS 0/1 PUBLISH (or one paho must judge)
_PAUSED = 2  # the handler paused reading

_PUBLISH = 0x30
_PUBACK = 0x40


def _frame(buf: bytes, pos: int, end: int) -> tuple[int, int] | None:
    """Where the packet at `pos` has its variable header and where it ends; None when the buffer
    ends first. A remaining length of more than four bytes is malformed: it is framed as ending at
    once, so that paho reads it and drops the connection as it would."""
    i, length, shift = pos + 1, 0, 0
    while i < end:
        b = buf[i]
        i += 1
        length |= (b & 0x7F) << shift
        if b < 0x80:
            return (i, i + length) if i + length <= end else None
        shift += 7
        if shift > 21:
            return i, i
    return None


class AsyncMqttClient:
    """An MQTT 3.1.1 or 5 client on the running asyncio loop. Use as `async with`.

    `subscriptions` are (re)made on every connect; with a persistent session the broker keeps
    them and the queue while we are away. A graceful close disconnects without unsubscribing.
    `retired` filters are unsubscribed whenever the broker resumed a session (one an earlier
    version subscribed with).
    """

    def __init__(
        self,
        address: BrokerAddress,
        *,
        client_id: str,
        on_message: MessageHandler | None = None,
        subscriptions: tuple[tuple[str, int], ...] = (),
        retired: tuple[str, ...] = (),
        persistent: bool = True,
        session_expiry_s: int = 0xFFFFFFFF,
        receive_maximum: int | None = None,
        manual_ack: bool = False,
        keepalive_s: int = 30,
        protocol: int = 5,
    ) -> None:
        self.address = address
        self.client_id = client_id
        self.subscriptions = subscriptions
        self.retired = retired
        self.persistent = persistent
        self.session_expiry_s = session_expiry_s
        self.receive_maximum = receive_maximum
        self.keepalive_s = keepalive_s
        self.generation = 0
        self.on_connected: Callable[[bool], None] | None = None
        # Told why the broker refused a CONNECT (bad user name or password, not authorised).
        self.on_refused: Callable[[str], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._pending_subs: set[int] = set()
        self._closing = False
        self._misc_task: asyncio.Task[None] | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        self._reading = True
        self._sock: Any = None
        self._on_message = on_message
        # Our own PUBLISH parser and batched PUBACKs (D15) need manual acks (paho would ack itself
        # otherwise) and paho's output queue, which is not public API: without it, paho does all.
        self._fast = on_message is not None and manual_ack and hasattr(paho.Client, "_packet_queue")
        if protocol not in (4, 5):
            raise ConfigError("protocol", "expected 5 (MQTT 5) or 4 (MQTT 3.1.1)")
        self.protocol = protocol
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5 if protocol == 5 else paho.MQTTv311,
            clean_session=None if protocol == 5 else not persistent,
            manual_ack=manual_ack,
        )
        self._client.max_queued_messages_set(0)  # our own publishes are never dropped by paho
        if address.username is not None:
            self._client.username_pw_set(address.username, address.password)
        if address.tls:
            self._client.tls_set_context(ssl.create_default_context())
        if on_message is not None:  # what paho reads itself: over TLS, and what the parser leaves it
            self._client.on_message = lambda _c, _u, m: on_message(m.topic, m.payload, m.qos, m.mid)  # type: ignore[arg-type]
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_disconnect = self._on_disconnect
        self._client.on_socket_open = self._on_socket_open
        self._client.on_socket_close = self._on_socket_close
        self._client.on_socket_register_write = self._on_register_write
        self._client.on_socket_unregister_write = self._on_unregister_write

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout_s: float | None = None) -> None:
        """Wait until the broker has accepted us and confirmed our subscriptions (SUBACK)."""
        await asyncio.wait_for(self._subscribed.wait(), timeout_s)

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> AsyncMqttClient:
        self._loop = asyncio.get_running_loop()
        self._closing = False
        try:
            self._connect()
        except (OSError, BrokerError) as exc:
            log.warning("MQTT connect to %s failed (%s); retrying", self.address.url(), exc)
            self._schedule_reconnect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Disconnect cleanly; the persistent session (and subscription) stays on the broker."""
        self._closing = True
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
        if self._connected.is_set():
            self._client.disconnect()
            # Let the DISCONNECT packet go out before the socket closes.
            for _ in range(20):
                if self._sock is None:
                    break
                await asyncio.sleep(0.01)
        if self._sock is not None:
            self._drop_socket(self._sock)
        if self._misc_task is not None:
            self._misc_task.cancel()

    def _connect(self) -> None:
        if self.protocol == 4:
            # MQTT 3.1.1: the session persists by clean_session=False; the broker's own
            # in-flight limit (max_inflight_messages) bounds what it sends us.
            rc = self._client.connect(self.address.host, self.address.port, keepalive=self.keepalive_s)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise BrokerError(f"connect to {self.address.url()} failed: {paho.error_string(rc)}")
            return
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if self.persistent:
            props.SessionExpiryInterval = self.session_expiry_s
        if self.receive_maximum is not None:
            props.ReceiveMaximum = self.receive_maximum
        rc = self._client.connect(
            self.address.host,
            self.address.port,
            keepalive=self.keepalive_s,
            clean_start=not self.persistent,
            properties=props,
        )
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise BrokerError(f"connect to {self.address.url()} failed: {paho.error_string(rc)}")

    def _schedule_reconnect(self) -> None:
        if self._closing or (self._reconnect_task is not None and not self._reconnect_task.done()):
            return
        assert self._loop is not None
        self._reconnect_task = self._loop.create_task(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        delay = _BACKOFF_START_S
        while not self._closing and not self._connected.is_set():
            await asyncio.sleep(delay)
            if self._sock is not None:  # a connect is under way; wait for its CONNACK
                await asyncio.sleep(delay)
                if self._connected.is_set():
                    return
                self._drop_socket(self._sock)
            try:
                self._connect()
                return
            except (OSError, BrokerError) as exc:
                log.info("MQTT reconnect to %s failed (%s); next try in %.1f s", self.address.url(), exc, delay)
                delay = min(delay * 2, _BACKOFF_MAX_S)

    # -- paho callbacks ------------------------------------------------------------------------

    def _on_connect(self, client: paho.Client, _u: Any, flags: paho.ConnectFlags, reason: ReasonCode, _p: Any) -> None:
        if reason.is_failure:
            log.error("broker %s refused the connection: %s", self.address.url(), reason)
            if self.on_refused is not None:
                self.on_refused(str(reason))
            return
        self.generation += 1
        self._pending_subs.clear()
        for topic, qos in self.subscriptions:
            _rc, mid = client.subscribe(topic, qos=qos)
            if mid is not None:
                self._pending_subs.add(mid)
        if flags.session_present:
            for topic in self.retired:
                client.unsubscribe(topic)
        if not self._pending_subs:
            self._subscribed.set()
        log.info(
            "connected to %s (session %s, generation %d)",
            self.address.url(),
            "resumed" if flags.session_present else "new",
            self.generation,
        )
        self._connected.set()
        if self.on_connected is not None:
            self.on_connected(flags.session_present)

    def _on_subscribe(self, _c: paho.Client, _u: Any, mid: int, reasons: list[ReasonCode], _p: Any) -> None:
        failed = [r for r in reasons if r.is_failure]
        if failed:
            log.error("broker %s refused a subscription: %s", self.address.url(), failed)
            return
        self._pending_subs.discard(mid)
        if not self._pending_subs:
            self._subscribed.set()

    def _on_disconnect(
        self, _c: paho.Client, _u: Any, _flags: paho.DisconnectFlags, reason: ReasonCode, _p: Any
    ) -> None:
        self._connected.clear()
        self._subscribed.clear()
        if not self._closing:
            log.warning("disconnected from %s (%s); reconnecting", self.address.url(), reason)
            self._schedule_reconnect()

    def _on_socket_open(self, client: paho.Client, _u: Any, sock: Any) -> None:
        assert self._loop is not None
        if not isinstance(sock, ssl.SSLSocket):
            # paho keeps the socket in `_sock` and reads through it; the wrapper must be what it
            # reads from. (TLS sockets buffer on their own; paho checks their `pending()`.)
            sock = _BufferedSocket(sock)
            client._sock = sock  # no public hook to wrap paho's socket
        self._sock = sock
        self._reading = True
        self._loop.add_reader(sock, self._on_readable)
        if self._misc_task is None or self._misc_task.done():
            self._misc_task = self._loop.create_task(self._misc_loop())

    def _on_socket_close(self, _c: paho.Client, _u: Any, sock: Any) -> None:
        self._drop_socket(sock)

    def _drop_socket(self, sock: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
        except (ValueError, OSError):  # already closed
            pass
        if sock is self._sock:
            self._sock = None
        self._subscribed.clear()
        if self._connected.is_set() and not self._closing:
            self._connected.clear()
            self._schedule_reconnect()

    def _on_readable(self) -> None:
        """Read every packet that has arrived, not one per event-loop turn."""
        client = self._client
        sock = self._sock
        if not isinstance(sock, _BufferedSocket):  # TLS: paho reads (the SSL socket buffers itself)
            client.loop_read()
            return
        if not self._fast:
            client.loop_read()
            while self._reading and sock.buffered and sock is self._sock:
                client.loop_read()
            return
        while self._reading and sock is self._sock:
            found = self._parse_publishes(sock)
            if found == _PAUSED:
                return
            if found == _FOR_PAHO:
                frame = _frame(sock.buf, sock.pos, len(sock.buf))
                assert frame is not None
                before, sock.limit = sock.pos, frame[1]
                try:
                    client.loop_read()  # exactly that one packet
                finally:
                    sock.limit = None
                if sock.pos == before:  # paho took nothing (it has no connection): do not spin
                    return
                continue
            try:
                more = sock.fill()
            except BlockingIOError:
                return
            except OSError:
                more = False
            if not more:  # end of stream or an error: paho reads what is left, finds it and disconnects
                client.loop_read()
                return

    def _parse_publishes(self, sock: _BufferedSocket) -> int:
        """Hand each whole QoS 0/1 PUBLISH at the head of the buffer to `on_message`; say what stopped it.

        MQTT 3.1.1 and 5 (whose properties are skipped: pantau sets no Topic Alias Maximum, so the
        broker sends none). Anything this parser does not take (another packet type, QoS 2, an
        empty topic, a malformed packet) is left to paho, which has the protocol's answer for it.
        """
        handler = self._on_message
        assert handler is not None
        mqtt5 = self.protocol == 5
        buf, pos = sock.buf, sock.pos
        end = len(buf)
        while pos < end:
            frame = _frame(buf, pos, end)
            if frame is None:
                break
            first = buf[pos]
            start, stop = frame
            qos = (first >> 1) & 3
            if first & 0xF0 != _PUBLISH or qos > 1 or stop - start < 2:
                sock.pos = pos
                return _FOR_PAHO
            j = start + 2 + ((buf[start] << 8) | buf[start + 1])
            topic = buf[start + 2 : j]
            mid = 0
            if qos:
                mid = (buf[j] << 8) | buf[j + 1] if j + 2 <= stop else 0
                j += 2
            if mqtt5:
                j = _skip_properties(buf, j, stop)
            if not topic or j > stop or (qos and not mid):
                sock.pos = pos
                return _FOR_PAHO
            pos = sock.pos = stop  # before the handler, which may pause reading
            handler(topic.decode("utf-8", "replace"), buf[j:stop], qos, mid)
            if not self._reading or sock is not self._sock:
                return _PAUSED
        sock.pos = pos
        return _NEED_MORE

    def _on_register_write(self, client: paho.Client, _u: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.add_writer(sock, client.loop_write)

    def _on_unregister_write(self, _c: paho.Client, _u: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.remove_writer(sock)

    async def _misc_loop(self) -> None:
        while not self._closing:
            lost = self._client.loop_misc() == MQTTErrorCode.MQTT_ERR_NO_CONN
            if lost and not self._closing and self._sock is None and not self._connected.is_set():
                self._schedule_reconnect()
            await asyncio.sleep(_MISC_INTERVAL_S)

    # -- use ---------------------------------------------------------------------------------

    def pause_reading(self) -> None:
        """Stop reading from the broker (backpressure); keepalive continues on writes."""
        if self._reading and self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock)
        self._reading = False

    def resume_reading(self) -> None:
        if not self._reading and self._sock is not None and self._loop is not None:
            self._loop.add_reader(self._sock, self._on_readable)
            # Packets already in our buffer will not wake the selector: read them now.
            self._loop.call_soon(self._on_readable)
        self._reading = True

    def ack(self, mid: int, generation: int) -> bool:
        """Acknowledge a QoS 1 message received on connection `generation`; False if stale."""
        return self.ack_many((mid,), generation)

    def ack_many(self, mids: Sequence[int], generation: int) -> bool:
        """Acknowledge QoS 1 messages received on connection `generation`, in order, as one write
        of their PUBACKs (through paho's output queue, so they keep their place among its
        packets); False if the connection is not that one any more."""
        if generation != self.generation or not self._connected.is_set():
            return False
        if not mids:
            return True
        if not self._fast:
            for mid in mids:
                self._client.ack(mid, 1)
            return True
        # A PUBACK is 0x40, remaining length 2, the packet id (MQTT 5: no reason code = success).
        blob = struct.pack(f">{len(mids)}I", *[0x40020000 | mid for mid in mids])
        self._client._packet_queue(_PUBACK, blob, 0, 0)
        return True

    def publish(self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False) -> None:
        """Queue a publish; paho sends it (and retries QoS 1 across reconnects)."""
        self._client.publish(topic, payload, qos=qos, retain=retain)


def _skip_properties(buf: bytes, j: int, stop: int) -> int:
    """Past an MQTT 5 property block at `j`; beyond `stop` if it is malformed."""
    length, shift = 0, 0
    while j < stop:
        b = buf[j]
        j += 1
        length |= (b & 0x7F) << shift
        if b < 0x80:
            return j + length
        shift += 7
        if shift > 21:
            break
    return stop + 1


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
