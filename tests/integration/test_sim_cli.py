"""`pantau simulate` as an engineer runs it: Ctrl-C stops promptly and says exactly what was sent."""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from pantau.embedded import EmbeddedMosquitto
from tests.support import REPO, Subscriber, pantau_env

SUMMARY = re.compile(r"^interrupted after sending ([\d,]+) messages \(([\d,]+) readings\) over (\d+) ticks in ")


def test_ctrl_c_stops_promptly_and_says_what_was_sent(broker: EmbeddedMosquitto, tmp_path: Path) -> None:
    subscriber = Subscriber(broker.port)  # subscribed before the first message is sent
    # --step 1m at --speed 60: a tick (21 messages) every wall second, so Ctrl-C lands while one is due.
    argv = ["simulate", "--fleet", "sampang", "--speed", "60", "--step", "1m", "--start=-1h", "--duration", "1h"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pantau", *argv],
        env=pantau_env(PANTAU_HOME=str(tmp_path), PANTAU_MQTT_URL=broker.url),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr or ()], daemon=True)
    reader.start()
    stderr: list[str] = []
    try:
        deadline = time.monotonic() + 20
        while not any(line.startswith("sent ") for line in stderr):  # the progress line after the first tick
            assert proc.poll() is None, "".join(stderr)
            stderr.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
        interrupted = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=10)
        took = time.monotonic() - interrupted
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        subscriber.close()
        reader.join(5)  # it reads to the end of the pipe once the process has exited
        if proc.stderr:
            proc.stderr.close()
    while not lines.empty():
        stderr.append(lines.get())
    text = "".join(stderr)
    assert code == 130, text  # as `pantau` answers any Ctrl-C
    assert took < 2, f"exit took {took:.1f} s after SIGINT"
    assert "Traceback" not in text
    summary = SUMMARY.match(stderr[-1])
    assert summary, text
    messages, readings = (int(g.replace(",", "")) for g in summary.group(1, 2))
    assert messages >= 21 and messages % 21 == 0 and int(summary.group(3)) == messages // 21
    # What it says it sent is what the broker delivered, message for message and reading for reading
    # (everything was acknowledged before exit, so it is all in the subscriber's hands already).
    assert len(subscriber.received) == messages
    got = [payload for _, _, payload in subscriber.received]
    assert sum(payload.count(b":") - 1 for payload in got) == readings  # {"ts":…,"pm25":…,…}
