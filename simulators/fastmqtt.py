"""A fast, pipelined MQTT 3.1.1 publisher over a plain socket, for load generation and benchmarks.

paho-mqtt publishes at QoS 1 at roughly 2-4k messages/s per process, which would make any Python
load generator the bottleneck of the ingest benchmark. This client does only what a publisher
needs: CONNECT, PUBLISH (QoS 0 or 1), PUBACK, DISCONNECT. Packets are built by hand in batches
and written with one `sendall`; up to `max_inflight` QoS 1 messages are in flight at once and
PUBACKs are read in bulk. MQTT 3.1.1 (section 4.6) makes the broker acknowledge QoS 1 messages in
the order it received them, so counting PUBACKs is enough to know which messages are done.

Usage::

    with FastPublisher("127.0.0.1", 1883, "bench-1") as pub:     # connects
        pub.publish_many([(topic, payload), ...])                  # returns once all are PUBACKed

or, to keep the pipe full while producing, `pub.send(batch)` repeatedly and `pub.flush()` at the
end. It is blocking and single-threaded on purpose: one per process (see `simulators.load`).
There is no reconnect: a lost connection raises `BrokerError`, and the caller decides.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Sequence
from types import TracebackType

from pantau.errors import BrokerError

# PUBACKs are 4 bytes; 16,384 in flight is at most 64 KiB of acknowledgements waiting in our
# receive buffer, so the broker can never block on writing them while we block on writing to it.
DEFAULT_MAX_INFLIGHT = 16384
# Packets are encoded and written in chunks of this many: big enough to amortise the syscall,
# small enough that acknowledgements are read often.
_CHUNK = 2048
_PID_BYTES = [i.to_bytes(2, "big") for i in range(65536)]
_CONNACK_CODES = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


class FastPublisher:
    """A blocking MQTT 3.1.1 publisher that keeps many QoS 1 messages in flight."""

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str = "",
        *,
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        keepalive_s: int = 0,
        timeout_s: float = 30.0,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        if not 1 <= max_inflight <= 65535:
            raise ValueError("max_inflight must be 1..65535 (MQTT packet ids are 16 bits)")
        self.host = host
        self.port = port
        self.client_id = client_id
        self.max_inflight = max_inflight
        # 0 disables the broker's keep-alive check: a paced simulator may be idle for minutes.
        self.keepalive_s = keepalive_s
        self.timeout_s = timeout_s
        # A secured broker's account (docs/security-broker.md): it is bound to `client_id`.
        self._login = (username, password)
        self.sent = 0
        self.acked = 0
        self._sock: socket.socket | None = None
        self._pid = 0
        self._rbuf = b""
        self._topics: dict[str, bytes] = {}

    # -- lifecycle ------------------------------------------------------------------------------

    def connect(self) -> None:
        """Open the TCP connection and complete the MQTT handshake."""
        if self._sock is not None:
            raise BrokerError("FastPublisher is already connected")
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
        except OSError as exc:
            raise BrokerError(f"cannot connect to mqtt://{self.host}:{self.port}: {exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
        flags = 0x02  # clean session: a publisher needs no state on the broker
        login = b""
        username, password = self._login
        if username is not None:
            flags |= 0x80
            login += _utf8(username)
            if password is not None:
                flags |= 0x40
                login += _utf8(password)
        body = (
            b"\x00\x04MQTT\x04" + bytes([flags]) + self.keepalive_s.to_bytes(2, "big") + _utf8(self.client_id) + login
        )
        try:
            sock.sendall(b"\x10" + _varint(len(body)) + body)
            ack = b""
            while len(ack) < 4:
                chunk = sock.recv(4 - len(ack))
                if not chunk:
                    raise BrokerError("broker closed the connection during CONNECT")
                ack += chunk
        except OSError as exc:
            sock.close()
            raise BrokerError(f"MQTT handshake with {self.host}:{self.port} failed: {exc}") from exc
        if ack[0] != 0x20 or ack[3] != 0:
            sock.close()
            reason = _CONNACK_CODES.get(ack[3], f"return code {ack[3]}")
            raise BrokerError(f"broker refused the connection: {reason}")
        self._sock = sock

    def close(self) -> None:
        """Send DISCONNECT and close the socket (unacknowledged messages are abandoned)."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        with contextlib.suppress(OSError):
            sock.sendall(b"\xe0\x00")
        sock.close()

    def __enter__(self) -> FastPublisher:
        self.connect()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- publishing -----------------------------------------------------------------------------

    @property
    def inflight(self) -> int:
        """QoS 1 messages sent but not yet acknowledged."""
        return self.sent - self.acked

    def publish_many(self, messages: Sequence[tuple[str, bytes]], qos: int = 1) -> int:
        """Publish all messages and return once every one is acknowledged (QoS 1) or written (QoS 0)."""
        self.send(messages, qos)
        self.flush()
        return len(messages)

    def send(self, messages: Sequence[tuple[str, bytes]], qos: int = 1) -> None:
        """Write the messages, waiting only as needed to keep at most `max_inflight` unacknowledged."""
        sock = self._need()
        if qos not in (0, 1):
            raise ValueError("qos must be 0 or 1")
        i, n = 0, len(messages)
        while i < n:
            if qos:
                room = self.max_inflight - self.inflight
                if room <= 0:
                    self._read_acks(block=True)
                    continue
                take = min(room, _CHUNK, n - i)
            else:
                take = min(_CHUNK, n - i)
            data = self._encode(messages, i, i + take, qos)
            try:
                sock.sendall(data)
            except OSError as exc:
                raise BrokerError(f"connection to the broker lost while publishing: {exc}") from exc
            i += take
            if qos:
                self.sent += take
                self._read_acks(block=False)
            else:
                self.sent += take
                self.acked += take

    def flush(self) -> None:
        """Wait until every QoS 1 message sent so far is acknowledged."""
        while self.inflight > 0:
            self._read_acks(block=True)

    # -- internals ------------------------------------------------------------------------------

    def _need(self) -> socket.socket:
        if self._sock is None:
            raise BrokerError("FastPublisher is not connected (call connect() or use it as a context manager)")
        return self._sock

    def _encode(self, messages: Sequence[tuple[str, bytes]], lo: int, hi: int, qos: int) -> bytes:
        topics = self._topics
        parts: list[bytes] = []
        append = parts.append
        pid = self._pid
        first = b"\x32" if qos else b"\x30"
        extra = 2 if qos else 0
        for k in range(lo, hi):
            topic, payload = messages[k]
            head = topics.get(topic)
            if head is None:
                head = topics[topic] = _utf8(topic)
            size = len(head) + extra + len(payload)
            append(first)
            if size < 128:
                append(bytes((size,)))
            elif size < 16384:
                append(bytes(((size & 0x7F) | 0x80, size >> 7)))
            else:
                append(_varint(size))
            append(head)
            if qos:
                pid = pid + 1 if pid < 65535 else 1
                append(_PID_BYTES[pid])
            append(payload)
        self._pid = pid
        return b"".join(parts)

    def _read_acks(self, *, block: bool) -> None:
        sock = self._need()
        try:
            data = sock.recv(1 << 18) if block else sock.recv(1 << 18, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except TimeoutError:
            raise BrokerError(f"no PUBACK from the broker within {self.timeout_s:g} s") from None
        except OSError as exc:
            raise BrokerError(f"connection to the broker lost: {exc}") from exc
        if not data:
            raise BrokerError("the broker closed the connection")
        buf = self._rbuf + data if self._rbuf else data
        whole = len(buf) - len(buf) % 4
        # Fast path: a run of PUBACKs (0x40 0x02 id id), checked with two slice comparisons in C.
        count = whole // 4
        if buf[0:whole:4] == b"\x40" * count and buf[1:whole:4] == b"\x02" * count:
            self.acked += count
            self._rbuf = buf[whole:]
            return
        self._rbuf = self._parse_slow(buf)

    def _parse_slow(self, buf: bytes) -> bytes:
        i, n = 0, len(buf)
        while i + 2 <= n:
            kind = buf[i] & 0xF0
            size, shift, j = 0, 0, i + 1
            while True:
                if j >= n:
                    return buf[i:]
                byte = buf[j]
                size |= (byte & 0x7F) << shift
                shift += 7
                j += 1
                if not byte & 0x80:
                    break
            if j + size > n:
                return buf[i:]
            if kind == 0x40:
                self.acked += 1
            elif kind != 0xD0:  # PINGRESP is harmless; anything else is a protocol error here
                raise BrokerError(f"unexpected MQTT packet type 0x{buf[i]:02x} from the broker")
            i = j + size
        return buf[i:]


def wait_for_broker(host: str, port: int, timeout_s: float = 10.0) -> None:
    """Block until a TCP connection to the broker succeeds (for scripts that start one)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise BrokerError(f"no broker listening on {host}:{port}") from None
            time.sleep(0.05)
