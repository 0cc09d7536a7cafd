"""The live stream against real PostgreSQL (issue 14): resumable across a killed API process with
no alert event missing or doubled, `reset` when the replay point is older than what is kept, and
a client that stopped reading holds up nobody else.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from api.stream import HUB
from pantau.alerts import AlertStore
from pantau.domain import City, Sensor
from pantau.embedded import EmbeddedMosquitto
from pantau.mqtt import free_port
from pantau.settings import Settings
from pantau.store import Store
from tests.support import bearer, pantau_env, wait_until

CITY = "sampit"
GAUGE = Sensor(id="SPT-WL-01", kind="flood", city=CITY, metadata={"river": "Mentaya"})
OTHER = Sensor(id="SPG-WL-01", kind="flood", city="sampang", metadata={"river": "Kemuning"})


@dataclasses.dataclass
class Event:
    event: str
    data: dict[str, Any]
    id: str | None


async def events(response: aiohttp.ClientResponse) -> AsyncIterator[Event]:
    """The SSE events of a response, as a browser's EventSource parses them."""
    name, data, event_id = "message", [], None
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if not line:
            if data:
                yield Event(name, json.loads("\n".join(data)), event_id)
            name, data, event_id = "message", [], None
        elif line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
        elif line.startswith("id: "):
            event_id = line[4:]


async def _registry(store: Store) -> None:
    await store.upsert_city(City(id=CITY, name="Sampit", timezone="Asia/Jakarta"))
    await store.upsert_sensors([GAUGE, OTHER])


async def _transitions(alerts: AlertStore, n: int, pace_s: float) -> None:
    """n alert transitions in Sampit (and some in Sampang the stream must not carry), paced."""
    for i in range(n):
        scope = f"gauge-{i % 7}"
        if i % 3 == 2:
            await alerts.resolve("flood-siaga", scope, reason="surut")
        else:
            await alerts.raise_alert(
                "flood-siaga", scope, city=CITY, sensor_id=GAUGE.id, severity="critical" if i % 2 else "warning",
                value=600.0 + i, event_ts=datetime.now(UTC), reason=f"naik {i}",
            )  # fmt: skip
        if i % 10 == 0:
            await alerts.raise_alert(
                "flood-siaga", f"other-{i}", city="sampang", sensor_id=OTHER.id, severity="warning", value=1.0,
                event_ts=datetime.now(UTC), reason="elsewhere",
            )  # fmt: skip
        await asyncio.sleep(pace_s)


def _sampit_events(database_url: str) -> list[int]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT e.id FROM alert_events e JOIN alerts a ON a.id = e.alert_id WHERE a.city = %s ORDER BY e.id",
            (CITY,),
        ).fetchall()
    return [r[0] for r in rows]


class Api:
    """A real `pantau api` process on a fixed port, killed and started again by the test."""

    def __init__(self, database_url: str, broker: EmbeddedMosquitto, log: Path) -> None:
        self.port = free_port()
        self.env = pantau_env(PANTAU_DATABASE_URL=database_url, PANTAU_MQTT_URL=broker.url,
                              PANTAU_API_PORT=str(self.port))  # fmt: skip
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "pantau", "api"], env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT)  # fmt: skip
        wait_until(self._up, timeout_s=30, what="pantau api")

    def _up(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


@pytest.mark.slow
async def test_a_killed_api_is_resumed_with_no_alert_event_missing_or_doubled(
    store: Store, database_url: str, broker: EmbeddedMosquitto, tmp_path: Path
) -> None:
    await _registry(store)
    headers = await bearer(store, "operator", cities=[CITY])
    api = Api(database_url, broker, tmp_path / "api.log")
    api.start()
    seed = int(os.environ.get("PANTAU_TEST_FAULT_SEED", "20261204"))
    kills = sorted(random.Random(seed).uniform(0.5, 5.5) for _ in range(2))  # seconds into the run
    received: list[int] = []
    last_id: str | None = None
    done = asyncio.Event()

    async def listen() -> None:
        nonlocal last_id
        async with aiohttp.ClientSession(headers=headers) as http:
            while not done.is_set():
                resume = {"Last-Event-ID": last_id} if last_id is not None else {}
                try:
                    async with http.get(f"http://127.0.0.1:{api.port}/api/v1/stream", params={"city": CITY},
                                        headers=resume) as response:  # fmt: skip
                        assert response.status == 200
                        async for ev in events(response):
                            assert ev.event != "reset", ev.data
                            if ev.id is not None:
                                last_id = ev.id  # as EventSource keeps it
                            if ev.event == "alert":
                                received.append(int(ev.data["event"]["id"]))
                except (aiohttp.ClientError, ConnectionError):
                    await asyncio.sleep(0.2)  # EventSource retries the same way

    async def killer() -> None:
        start = time.monotonic()
        for at in kills:  # at moments of the wall clock, whatever the stream is doing
            await asyncio.sleep(max(0.0, at - (time.monotonic() - start)))
            await asyncio.to_thread(api.kill)
            await asyncio.to_thread(api.start)

    listener = asyncio.create_task(listen())
    try:
        await asyncio.sleep(0.5)
        await asyncio.gather(_transitions(AlertStore(store), 300, 0.02), killer())
        expected = _sampit_events(database_url)
        deadline = time.monotonic() + 30
        while len(received) < len(expected) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    finally:
        done.set()
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        api.stop()
    assert len(expected) > 250
    assert len(received) == len(set(received)), "an alert event came twice"
    assert received == expected, f"missing: {sorted(set(expected) - set(received))[:20]}"


@pytest.fixture
async def stream_app(settings: Settings, store: Store) -> AsyncIterator[TestClient]:
    await _registry(store)
    tight = dataclasses.replace(
        settings, api_stream_replay_max=5, api_stream_client_queue=20, api_stream_write_timeout_s=2.0
    )
    async with TestClient(TestServer(create_app(tight)), headers=await bearer(store, cities=[CITY])) as client:
        await asyncio.wait_for(client.app[HUB].listening.wait(), 10)
        yield client


async def _first_events(client: TestClient, n: int, **headers: str) -> list[Event]:
    out: list[Event] = []
    async with client.get("/api/v1/stream", params={"city": CITY}, headers=headers) as response:
        assert response.status == 200 and response.headers["Content-Type"] == "text/event-stream"
        async for ev in events(response):
            out.append(ev)
            if len(out) == n or ev.event == "reset":
                break
    return out


async def test_a_replay_point_older_than_what_is_kept_is_a_reset(stream_app: TestClient, store: Store,
                                                                  database_url: str) -> None:  # fmt: skip
    await _transitions(AlertStore(store), 12, 0)
    ids = _sampit_events(database_url)
    behind = await _first_events(stream_app, 1, **{"Last-Event-ID": "0"})
    assert [e.event for e in behind] == ["reset"] and "reload" in behind[0].data["reason"]
    strange = await _first_events(stream_app, 1, **{"Last-Event-ID": "pagi"})
    assert [e.event for e in strange] == ["reset"]
    future = await _first_events(stream_app, 1, **{"Last-Event-ID": str(ids[-1] + 1000)})
    assert [e.event for e in future] == ["reset"]
    near = await _first_events(stream_app, 4, **{"Last-Event-ID": str(ids[-4])})
    assert [(e.event, e.id) for e in near] == [("alert", str(i)) for i in ids[-3:]] + [("hello", None)]
    fresh = await _first_events(stream_app, 1)  # a new screen: its resume point is the newest event of all
    with psycopg.connect(database_url) as conn:
        newest = (conn.execute("SELECT max(id) FROM alert_events").fetchone() or (0,))[0]
    assert (fresh[0].event, fresh[0].id) == ("hello", str(newest))


async def test_a_client_that_stopped_reading_holds_up_nobody(stream_app: TestClient, store: Store,
                                                            database_url: str) -> None:  # fmt: skip
    hub = stream_app.app[HUB]
    token = stream_app.session.headers["Authorization"]
    stalled = socket.create_connection((stream_app.host, stream_app.port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(f"GET /api/v1/stream?city={CITY} HTTP/1.1\r\nHost: x\r\nAuthorization: {token}\r\n\r\n".encode())
    await asyncio.sleep(0.3)  # it is connected, and never reads again
    received: list[int] = []
    most_waiting = 0

    async def reader() -> None:
        async with stream_app.get("/api/v1/stream", params={"city": CITY}) as response:
            async for ev in events(response):
                if ev.event == "alert":
                    received.append(int(ev.data["event"]["id"]))

    task = asyncio.create_task(reader())
    try:
        await asyncio.sleep(0.3)
        assert len(hub.clients) == 2
        producing = asyncio.create_task(_transitions(AlertStore(store), 400, 0.005))
        while not producing.done():
            most_waiting = max([most_waiting, *(c.alerts.qsize() for c in hub.clients)])
            await asyncio.sleep(0.01)
        expected = _sampit_events(database_url)
        deadline = time.monotonic() + 20
        while (len(received) < len(expected) or len(hub.clients) > 1) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        remaining = len(hub.clients)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        stalled.close()
    assert received == expected  # the reading screen got every event, in order
    assert remaining == 1  # the stalled one was cut off, the reading one stays
    assert most_waiting <= 20  # memory bounded: the stalled screen's queue never grew past its bound
