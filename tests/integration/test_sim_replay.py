"""`pantau simulate replay`: a recording reaches a real broker exactly as recorded, at its own pace
times --speed or as fast as possible; a bad file is refused, naming the file and line, before
anything is published."""

from __future__ import annotations

import base64
import json
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from pantau.embedded import EmbeddedMosquitto
from tests.support import Subscriber, pantau_env, run_pantau

# A simulated Sampang day with the faults that change what is on the wire: binary and text
# payloads (malformed), repeats (duplicate), late messages (out_of_order) and extra topics.
RECORD = ["simulate", "--fleet", "sampang", "--start", "2024-03-04", "--duration", "24h", "--speed", "max",
          "--seed", "3", "--faults", "malformed=0.02,duplicate=0.02,out_of_order=0.02,unregistered=0.01",
          "--quiet"]  # fmt: skip
DAY_SPAN_S = 86_400 - 300  # first tick at start + 5 min, last at start + 24 h


def pantau_env_for(home: Path, broker: EmbeddedMosquitto | None = None) -> dict[str, str]:
    extra = {"PANTAU_HOME": str(home)}
    if broker is not None:
        extra["PANTAU_MQTT_URL"] = broker.url
    return pantau_env(**extra)


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A day of Sampang recorded to JSONL by the real CLI."""
    tmp = tmp_path_factory.mktemp("recording")
    path = tmp / "day.jsonl"
    done = run_pantau([*RECORD, "--out", str(path)], pantau_env_for(tmp / "home"))
    assert done.returncode == 0, done.stderr
    return path


def recorded(path: Path) -> list[tuple[float, str, bytes]]:
    """(event time, topic, payload) of every line, read here independently of the CLI."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        payload = base64.b64decode(rec["payload_b64"]) if "payload_b64" in rec else rec["payload"].encode()
        out.append((rec["t"], rec["topic"], payload))
    return out


def per_topic(messages: list[tuple[str, bytes]]) -> dict[str, list[bytes]]:
    topics: dict[str, list[bytes]] = defaultdict(list)
    for topic, payload in messages:
        topics[topic].append(payload)
    return dict(topics)


@pytest.fixture
def subscriber(broker: EmbeddedMosquitto) -> Iterator[Subscriber]:
    sub = Subscriber(broker.port)
    try:
        yield sub
    finally:
        sub.close()


def test_replay_at_max_speed_delivers_every_message_as_recorded(
    recording: Path, broker: EmbeddedMosquitto, subscriber: Subscriber, tmp_path: Path
) -> None:
    expected = recorded(recording)
    assert len(expected) > 6000 and any(b"\xff" in p for _, _, p in expected)  # binary payloads too
    began = time.monotonic()
    done = run_pantau(["simulate", "replay", str(recording), "--speed", "max"], pantau_env_for(tmp_path, broker))
    elapsed = time.monotonic() - began
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[-1].startswith(f"replayed {len(expected):,} messages from {recording} in ")
    subscriber.wait_for(len(expected))
    assert per_topic(subscriber.messages()) == per_topic([(topic, p) for _, topic, p in expected])
    # A day of event time in seconds (interpreter start included); at --speed 1 it would take a day.
    assert elapsed < 5, f"--speed max took {elapsed:.1f} s"


def test_replay_follows_the_recorded_pace_times_speed(
    recording: Path, broker: EmbeddedMosquitto, subscriber: Subscriber, tmp_path: Path
) -> None:
    expected = recorded(recording)
    t0 = expected[0][0]
    assert expected[-1][0] - t0 == DAY_SPAN_S
    speed = 43_200  # the day's 86,100 s of event time in 1.99 s of wall time
    began = time.monotonic()
    done = run_pantau(["simulate", "replay", str(recording), "--speed", str(speed)], pantau_env_for(tmp_path, broker))
    elapsed = time.monotonic() - began
    assert done.returncode == 0, done.stderr
    subscriber.wait_for(len(expected))
    assert per_topic(subscriber.messages()) == per_topic([(topic, p) for _, topic, p in expected])
    # No message arrives before it is due: the replay starts after `began`, so message i is due at
    # began + (t_i - t0) / speed at the earliest, and nothing can arrive before it is sent. (How late
    # a message arrives on a busy 2-core machine is the machine's, not the replay's: not asserted.)
    early = [
        (round(began + (t - t0) / speed - arrived, 3), topic)
        for (t, topic, _p), (arrived, _topic, _payload) in zip(expected, subscriber.received, strict=True)
        if arrived < began + (t - t0) / speed
    ]
    assert early == [], f"{len(early)} messages arrived before they were due, the first {early[:3]}"
    for (_t, topic, payload), (_arrived, got_topic, got_payload) in zip(expected, subscriber.received, strict=True):
        assert (got_topic, got_payload) == (topic, payload)  # one connection: the file's order overall
    # The command took at least the span it paced, then returned (the last message is due then).
    assert elapsed >= DAY_SPAN_S / speed, f"took {elapsed:.2f} s for {DAY_SPAN_S / speed:.2f} s of paced replay"


def _good_lines(recording: Path, n: int) -> list[str]:
    """The first line of each of the first n event times: a replay would publish each before the next."""
    by_time: dict[float, str] = {}
    for line in recording.read_text(encoding="utf-8").splitlines():
        by_time.setdefault(json.loads(line)["t"], line)
        if len(by_time) == n:
            break
    return list(by_time.values())


@pytest.mark.parametrize(
    ("case", "where", "problem"),
    [
        ("missing", "", "file not found"),
        ("truncated", ":4", "not a JSON object"),  # line 2 is blank: lines are counted as in an editor
        ("no_payload", ":3", "field 'payload'"),
        ("bad_time", ":1", "field 't'"),
        ("wildcard", ":2", "field 'topic'"),
        ("not_utf8", ":3", "not UTF-8 text"),
    ],
)
def test_a_bad_recording_is_refused_naming_file_and_line_and_nothing_is_published(
    recording: Path, broker: EmbeddedMosquitto, subscriber: Subscriber, tmp_path: Path, case: str, where: str,
    problem: str,
) -> None:  # fmt: skip
    path = tmp_path / f"{case}.jsonl"
    good = _good_lines(recording, 3)
    lines: list[str | bytes] = {
        "missing": [],
        "truncated": [good[0], "", good[1], good[2][: len(good[2]) // 2]],
        "no_payload": [*good[:2], good[2].split(', "payload"')[0] + "}"],
        "bad_time": ['{"t": "noon", "topic": "pantau/v1/sampang/air/SPG-AQ-01", "payload": "{}"}', *good],
        "wildcard": [good[0], '{"t": 1709485500, "topic": "pantau/v1/#", "payload": "{}"}', good[1]],
        "not_utf8": [*good[:2], b'{"t": 1709485500, "topic": "pantau/v1/x", "payload": "\xff"}', good[2]],
    }[case]
    if lines:
        path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))
    done = run_pantau(["simulate", "replay", str(path), "--speed", "max"], pantau_env_for(tmp_path, broker))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith(f"pantau: configuration error: {path}{where}: {problem}"), done.stderr
    subscriber.settle()  # whatever the replay published before it exited has arrived by now
    assert subscriber.received == []  # the file is checked whole before the first publish
