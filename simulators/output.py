"""Where simulated messages go (MQTT or a JSONL file), pacing in event time, progress and replay.

A JSONL recording has one message a line: {"t": event time (epoch s), "topic": ..., "payload":
text} (or "payload_b64" for payloads that are not UTF-8, such as a binary "malformed" fault).
`replay` publishes such a file at its recorded pace times `speed`, or as fast as possible.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Protocol
from urllib.parse import unquote, urlsplit

from pantau.errors import ConfigError
from pantau.settings import Settings
from simulators.fastmqtt import FastPublisher

# Progress is redrawn at most this often: often enough to feel live, rarely enough to cost nothing.
PROGRESS_INTERVAL_S = 0.5


class Sink(Protocol):
    def send(self, t: float, messages: list[tuple[str, bytes]]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class JsonlSink:
    """Messages appended to a JSONL file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f: IO[str] = path.open("w", encoding="utf-8")

    def send(self, t: float, messages: list[tuple[str, bytes]]) -> None:
        lines = []
        for topic, payload in messages:
            try:
                body = {"payload": payload.decode("utf-8")}
            except UnicodeDecodeError:
                body = {"payload_b64": base64.b64encode(payload).decode()}
            lines.append(json.dumps({"t": t, "topic": topic, **body}, ensure_ascii=False) + "\n")
        self._f.writelines(lines)

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class MqttSink:
    """Messages published with the fast pipelined publisher (QoS 0 or 1)."""

    def __init__(self, endpoint: MqttEndpoint, *, qos: int, client_id: str) -> None:
        self.qos = qos
        self.pub = FastPublisher(
            endpoint.host,
            endpoint.port,
            endpoint.client_id or client_id,
            username=endpoint.username,
            password=endpoint.password,
        )
        self.pub.connect()

    def send(self, t: float, messages: list[tuple[str, bytes]]) -> None:
        # No wait for PUBACKs here: at --speed max, waiting per tick would cost a round trip each.
        self.pub.send(messages, self.qos)

    def flush(self) -> None:
        """Wait until the broker has acknowledged everything sent."""
        self.pub.flush()

    def close(self) -> None:
        try:
            self.pub.flush()
        finally:
            self.pub.close()


@dataclass(frozen=True, slots=True)
class MqttEndpoint:
    """Where the simulator publishes, and as whom on a secured broker (its account is bound to
    `client_id`, which then replaces the simulator's own)."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    client_id: str | None = None

    def __repr__(self) -> str:  # never show the password
        return f"MqttEndpoint({self.host!r}, {self.port}, username={self.username!r})"


def mqtt_endpoint(settings: Settings) -> MqttEndpoint:
    """The broker from PANTAU_MQTT_URL (with its account, if any), else the endpoints.json of
    `pantau up` with the simulator account it made (pantau.broker)."""
    from pantau.broker import SIMULATOR, AccountBook, accounts_path
    from pantau.settings import redacted

    url = settings.mqtt_url
    account = None
    if url is None:
        try:
            url = json.loads((settings.home / "endpoints.json").read_text()).get("mqtt_url")
        except (OSError, ValueError):
            url = None
        book = AccountBook.load(accounts_path(settings.home))
        account = book[SIMULATOR] if book is not None else None
    if not url:
        raise ConfigError("PANTAU_MQTT_URL", "not set: set it to your broker or run `pantau up` first")
    parts = urlsplit(url)
    if parts.scheme != "mqtt":
        raise ConfigError("PANTAU_MQTT_URL", f"the simulator speaks plain mqtt:// only, got {redacted(url)!r}")
    host, port = parts.hostname or "127.0.0.1", parts.port or 1883
    if parts.username:
        return MqttEndpoint(host, port, unquote(parts.username), unquote(parts.password or ""), unquote(parts.username))
    if account is not None:
        return MqttEndpoint(host, port, account.username, account.password, account.client_id)
    return MqttEndpoint(host, port)


def parse_speed(text: str) -> float | None:
    """Event seconds per wall second; None for "max" (as fast as possible)."""
    if text.strip().lower() == "max":
        return None
    try:
        value = float(text)
    except ValueError:
        raise ConfigError("--speed", f"expected a number or 'max', got {text!r}") from None
    if not value > 0:
        raise ConfigError("--speed", f"must be positive, got {text!r}")
    return value


def parse_start(text: str, utc_offset_h: float, now: float | None = None) -> float:
    """Epoch seconds from "now", "-2d"/"+1h" (relative to now), a date (local midnight in the
    city) or an RFC 3339 / ISO 8601 instant with a UTC offset."""
    from simulators.scenarios import parse_duration

    now = time.time() if now is None else now
    text = text.strip()
    if text == "now":
        return float(int(now))
    if text[:1] in "+-":
        sign = -1.0 if text[0] == "-" else 1.0
        return float(int(now + sign * parse_duration("--start", text[1:])))
    tz = timezone(timedelta(hours=utc_offset_h))
    try:
        if len(text) == 10:
            day = datetime.fromisoformat(text).replace(tzinfo=tz)
            return day.timestamp()
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError("--start", f"expected now, -2d, 2024-09-01 or 2024-09-01T06:00+07:00, got {text!r}") from None
    if parsed.tzinfo is None:
        raise ConfigError(
            "--start", f"{text!r} needs a UTC offset, e.g. {text}+07:00 (or give a date for local midnight)"
        )
    return parsed.timestamp()


def local_clock(t: float, utc_offset_h: float) -> str:
    tz = timezone(timedelta(hours=utc_offset_h))
    return datetime.fromtimestamp(t, tz).strftime("%Y-%m-%d %H:%M%z")


@dataclass
class Progress:
    """A live status line on stderr: sent, rate, errors and the event-time clock."""

    utc_offset_h: float = 7.0
    stream: IO[str] | None = None  # default: sys.stderr at the time of use
    enabled: bool = True
    sent: int = 0
    readings: int = 0
    errors: int = 0
    faults: int = 0
    clock: float = 0.0

    def __post_init__(self) -> None:
        if self.stream is None:
            self.stream = sys.stderr
        self._started = time.monotonic()
        self._last = 0.0
        self._tty = self.enabled and self.stream.isatty()

    def update(self, *, force: bool = False) -> None:
        now = time.monotonic()
        interval = PROGRESS_INTERVAL_S if self._tty else 5.0
        if not self.enabled or (not force and now - self._last < interval):
            return
        self._last = now
        elapsed = max(now - self._started, 1e-9)
        line = (
            f"sent {self.sent:,} msgs / {self.readings:,} readings  {self.sent / elapsed:,.0f} msg/s  "
            f"errors {self.errors}  faults {self.faults}  event time {local_clock(self.clock, self.utc_offset_h)}"
        )
        self.stream.write(("\r" + line + "\x1b[K") if self._tty else line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled and self._tty:
            self.update(force=True)
            self.stream.write("\n")
            self.stream.flush()


async def wait_for_event_time(t: float, *, t0: float, wall0: float, speed: float | None, stop: asyncio.Event) -> None:
    """Sleep until event time t is due (t0 maps to wall0 at `speed`); returns early on stop."""
    if speed is None:
        await asyncio.sleep(0)  # let Ctrl-C in between ticks
        return
    delay = wall0 + (t - t0) / speed - time.monotonic()
    if delay > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
    else:
        await asyncio.sleep(0)


def read_recording(path: Path) -> Iterator[tuple[float, list[tuple[str, bytes]]]]:
    """Messages of a JSONL recording grouped by event time, in file order; errors name file and line."""
    try:
        f = path.open("rb")  # bytes: a line that is not UTF-8 is reported with its number
    except FileNotFoundError:
        raise ConfigError(str(path), "file not found") from None
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read the recording: {exc.strerror or exc}") from None
    group_t: float | None = None
    group: list[tuple[str, bytes]] = []
    with f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                t, topic, payload = _recording_line(line)
            except ValueError as exc:
                raise ConfigError(
                    f"{path}:{line_no}", f'{exc} (a line is {{"t": <epoch s>, "topic": "...", "payload": "..."}})'
                ) from None
            if group_t is not None and t != group_t:
                yield group_t, group
                group = []
            group_t = t
            group.append((topic, payload))
    if group_t is not None:
        yield group_t, group


def _recording_line(line: bytes) -> tuple[float, str, bytes]:
    try:
        rec = json.loads(line)
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    except ValueError as exc:
        raise ValueError(f"not a JSON object ({exc})") from None
    if not isinstance(rec, dict):
        raise ValueError("not a JSON object")
    t = rec.get("t")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        raise ValueError(f"field 't': expected a number of epoch seconds, got {t!r}")
    topic = rec.get("topic")
    if not isinstance(topic, str) or not topic or "+" in topic or "#" in topic:
        raise ValueError(f"field 'topic': expected an MQTT topic name, got {topic!r}")
    if isinstance(rec.get("payload_b64"), str):
        try:
            return float(t), topic, base64.b64decode(rec["payload_b64"], validate=True)
        except ValueError:
            raise ValueError("field 'payload_b64': not base64") from None
    payload = rec.get("payload")
    if not isinstance(payload, str):
        raise ValueError(f"field 'payload': expected text (or 'payload_b64'), got {payload!r}")
    return float(t), topic, payload.encode("utf-8")
