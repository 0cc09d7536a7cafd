"""The SensorThings API subset read by a real SensorThings client (frost_sta_client from PyPI, which
speaks to FROST servers), against a real PostgreSQL: Things with their Locations, Datastreams with
their ObservedProperty and unit, Observations with a time filter, paging by @iot.nextLink, $count,
and the 1-hour rollup as a derived Datastream; all matching the same data through /api/v1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import frost_sta_client as fsc
import psycopg
import pytest
import requests
from aiohttp.test_utils import TestClient, TestServer
from frost_sta_client.service.auth_handler import AuthHandler

from api.app import create_app
from ingest.writer import ReadingWriter
from pantau.domain import City, Sensor
from pantau.readings import Reading
from pantau.settings import Settings
from pantau.store import Backend, Store
from pantau.store.maintenance import refresh_rollups
from tests.support import bearer

AIR = Sensor(id="KTG-AQ-01", kind="air", city="kotamobagu", name="AQMS Boki Hontinimbang", lat=0.7345, lon=124.315)
GAUGE = Sensor(id="KTG-WL-01", kind="flood", city="kotamobagu", lat=0.71, lon=124.32)
START = (datetime.now(UTC) - timedelta(hours=5)).replace(minute=0, second=0, microsecond=0)
END = START + timedelta(hours=3)


def _z(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


@pytest.fixture
async def server(settings: Settings, store: Store, database_url: str, backend: Backend) -> AsyncIterator[TestClient]:
    await store.upsert_sensors([AIR, GAUGE])
    await store.upsert_city(City(id="kotamobagu", timezone="Asia/Makassar"))
    rows: list[Reading] = [((START + timedelta(minutes=k)).timestamp(), AIR.id, "pm25", 20.0 + (k * 7) % 31)
                           for k in range(240)]  # fmt: skip
    rows += [((START + timedelta(minutes=10 * k)).timestamp(), GAUGE.id, "water_level_cm", 150.0 + k) for k in range(6)]
    async with ReadingWriter(database_url, backend) as writer:
        await writer.write(rows, [])
    async with store.connection() as conn:
        if backend is Backend.POSTGRES:
            await refresh_rollups(conn)
        else:  # the hourly aggregate reads the minute one: minutes first
            await conn.execute("CALL refresh_continuous_aggregate('readings_1m', NULL, NULL)")
            await conn.execute("CALL refresh_continuous_aggregate('readings_1h', NULL, NULL)")
    async with TestClient(TestServer(create_app(settings)), headers=await bearer(store, "operator")) as c:
        yield c


def _service(client: TestClient) -> Any:
    """The PyPI client, signed in as GIS tools are: HTTP Basic with the API token as password."""
    token = client.session.headers["Authorization"].removeprefix("Bearer ")
    auth = AuthHandler(username="qgis", password=token)
    return fsc.SensorThingsService(str(client.make_url("/sta/v1.1")), auth_handler=auth)


async def test_things_locations_and_datastreams_through_a_sensorthings_client(server: TestClient) -> None:
    def read() -> tuple[list[Any], list[Any]]:
        service = _service(server)
        things = list(service.things().query().expand("Locations,Datastreams($expand=ObservedProperty)").list())
        streams = list(service.things().find(AIR.id).get_datastreams().query().list())
        return things, streams

    things, streams = await asyncio.to_thread(read)
    assert sorted(t.id for t in things) == [AIR.id, GAUGE.id]
    air = next(t for t in things if t.id == AIR.id)
    assert air.name == AIR.name and air.properties["kind"] == "air" and air.properties["city"] == "kotamobagu"
    [place] = air.locations.entities
    assert place.location["coordinates"] == [AIR.lon, AIR.lat]
    streams_of_air = sorted(d.id for d in air.datastreams.entities)
    assert streams_of_air == ["KTG-AQ-01:pm25", "KTG-AQ-01:pm25:1h", "KTG-AQ-01:pm25:1m"]
    raw = next(d for d in air.datastreams.entities if d.id == "KTG-AQ-01:pm25")
    assert raw.observed_property.id == "pm25" and raw.unit_of_measurement.symbol == "µg/m³"
    assert sorted(d.id for d in streams) == sorted(d.id for d in air.datastreams.entities)


async def test_observations_with_a_time_filter_paged_by_next_link_match_the_api(
    server: TestClient, database_url: str
) -> None:
    lo, hi = START + timedelta(minutes=30), START + timedelta(minutes=200)

    def read() -> tuple[list[Any], int | None, list[Any]]:
        service = _service(server)
        stream = service.datastreams().find("KTG-AQ-01:pm25")
        query = stream.get_observations().query().filter(
            f"phenomenonTime ge {_z(lo)} and phenomenonTime lt {_z(hi)}").orderby("phenomenonTime", "ASC")  # fmt: skip
        pages = query.top(37).count().list()
        observations = list(pages)  # the client follows @iot.nextLink to the end
        hourly = list(service.datastreams().find("KTG-AQ-01:pm25:1h").get_observations().query().top(2).list())
        one = service.observations().find(observations[5].id)  # an Observation by its id
        assert (one.phenomenon_time, one.result) == (observations[5].phenomenon_time, observations[5].result)
        return observations, pages.count, hourly

    observations, count, hourly = await asyncio.to_thread(read)
    series = await (await server.get("/api/v1/series", params={
        "sensor": AIR.id, "metric": "pm25", "from": _z(lo), "to": _z(hi), "step": "raw"})).json()  # fmt: skip
    points = series["series"][0]["points"]
    assert len(observations) == len(points) == 170 == count
    assert [(o.phenomenon_time, o.result) for o in observations] == [(p["ts"], p["value"]) for p in points]
    assert len({o.id for o in observations}) == 170  # every one once across the pages
    with psycopg.connect(database_url) as conn:
        sql = conn.execute(
            "SELECT count(*) FROM readings WHERE sensor_id = %s AND metric = 'pm25' AND ts >= %s AND ts < %s",
            (AIR.id, lo, hi),
        ).fetchone()
    assert sql is not None and sql[0] == 170
    by_hour = await (await server.get("/api/v1/series", params={
        "sensor": AIR.id, "metric": "pm25", "from": _z(START), "to": _z(START + timedelta(hours=4)), "step": "1h",
        "agg": "avg,count"})).json()  # fmt: skip
    expected = [(p["ts"], p["avg"], p["count"]) for p in by_hour["series"][0]["points"]]
    got = [(o.phenomenon_time.split("/")[0], o.result, o.parameters["n"]) for o in hourly]
    assert len(got) == 4 and got == [(ts, pytest.approx(avg), n) for ts, avg, n in expected[: len(got)]]


async def test_options_the_subset_does_not_offer_are_named(server: TestClient) -> None:
    base = str(server.make_url("/sta/v1.1"))

    def get(path: str, **params: str) -> tuple[int, dict[str, Any]]:
        headers = dict(server.session.headers)
        response = requests.get(f"{base}/{path}", params=params, headers=headers, timeout=10)
        return response.status_code, response.json()

    status, body = await asyncio.to_thread(get, "Things", **{"$filter": "substringof('AQ', name)"})
    assert status == 400 and body["invalid-params"][0]["name"] == "$filter"
    status, body = await asyncio.to_thread(get, "Datastreams('KTG-AQ-01:pm25')/Observations", **{"$skip": "50000"})
    assert status == 400 and "@iot.nextLink" in body["detail"]
    status, body = await asyncio.to_thread(get, "Things('NOPE')")
    assert status == 404
    status, body = await asyncio.to_thread(get, "Things", **{"$select": "name", "$filter": "properties/kind eq 'flood'",
                                                             "$count": "true"})  # fmt: skip
    assert status == 200 and body == {"@iot.count": 1, "value": [{"name": GAUGE.id}]}
