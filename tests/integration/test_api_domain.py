"""The API's domain views against a real PostgreSQL: ISPU now and the daily ISPU report (JSON and
CSV) split at each city's local midnight, rain by BMKG class per hour and local day, rivers upstream
to downstream with Siaga levels and rates, traffic LOS, sensor status and the city overview.
Expected figures come from the kernel's indices over direct SQL of the raw rows, or by hand."""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from ingest.writer import ReadingWriter
from pantau.alerts import AlertStore
from pantau.domain import City, Sensor
from pantau.indices import ispu_station, ispu_subindex
from pantau.readings import Reading
from pantau.settings import Settings
from pantau.store import Backend, Store
from pantau.store.maintenance import refresh_rollups
from tests.support import bearer

WIB, WITA = ZoneInfo("Asia/Jakarta"), ZoneInfo("Asia/Makassar")
SAMPIT = City(id="sampit", name="Sampit", province="Kalimantan Tengah", timezone="Asia/Jakarta")
KOTAMOBAGU = City(id="kotamobagu", name="Kotamobagu", province="Sulawesi Utara", timezone="Asia/Makassar")
SPT_AIR = Sensor(id="SPT-AQ-01", kind="air", city="sampit", name="AQMS Sampit")
KTG_AIR = Sensor(id="KTG-AQ-01", kind="air", city="kotamobagu", name="AQMS Boki Hontinimbang")
KTG_AIR2 = Sensor(id="KTG-AQ-02", kind="air", city="kotamobagu", name="AQMS Pasar Serasi")
SPT_RAIN = Sensor(id="SPT-RG-01", kind="rain", city="sampit")
KTG_RAIN = Sensor(id="KTG-RG-01", kind="rain", city="kotamobagu")
_SIAGA = {"river": "Sungai Mentaya", "siaga3_cm": 300, "siaga2_cm": 400, "siaga1_cm": 500}
GAUGES = [  # registered out of river order: the API orders them upstream to downstream
    Sensor(id="SPT-WL-03", kind="flood", city="sampit", metadata=_SIAGA | {"order": 3}),
    Sensor(id="SPT-WL-01", kind="flood", city="sampit", metadata=_SIAGA | {"order": 1}),
    Sensor(id="SPT-WL-02", kind="flood", city="sampit", metadata=_SIAGA | {"order": 2}),
]
ROAD = Sensor(
    id="SPT-TC-01", kind="traffic", city="sampit", metadata={"corridor": "Jl. MT Haryono", "capacity_pcu_h": 2000}
)
ROAD_NO_CAPACITY = Sensor(id="SPT-TC-02", kind="traffic", city="sampit", metadata={"corridor": "Jl. Baamang"})
ALL = [SPT_AIR, KTG_AIR, KTG_AIR2, SPT_RAIN, KTG_RAIN, *GAUGES, ROAD, ROAD_NO_CAPACITY]


async def _write(database_url: str, backend: Backend, rows: list[Reading]) -> None:
    async with ReadingWriter(database_url, backend) as writer:  # what ingest does
        await writer.write(rows, [])


async def _refresh(store: Store, backend: Backend) -> None:
    async with store.connection() as conn:
        if backend is Backend.POSTGRES:
            await refresh_rollups(conn)
        else:
            await conn.execute("CALL refresh_continuous_aggregate('readings_1m', NULL, NULL)")
            await conn.execute("CALL refresh_continuous_aggregate('readings_1h', NULL, NULL)")


@pytest.fixture
async def client(settings: Settings, store: Store) -> AsyncIterator[TestClient]:
    await store.upsert_sensors(ALL)
    await store.upsert_city(SAMPIT)
    await store.upsert_city(KOTAMOBAGU)
    async with TestClient(TestServer(create_app(settings)), headers=await bearer(store, "operator")) as c:
        yield c


def _day_start(zone: ZoneInfo, days_back: int) -> datetime:
    return (datetime.now(zone) - timedelta(days=days_back)).replace(hour=0, minute=0, second=0, microsecond=0)


async def test_ispu_now_is_the_kernel_index_of_each_window_mean(
    client: TestClient, database_url: str, backend: Backend
) -> None:
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    rows: list[Reading] = []
    for k in range(48):  # PM2.5 every 30 min over 24 h, O3 every 10 min over the last 2 h
        rows.append(((at - timedelta(minutes=30 * k)).timestamp(), KTG_AIR.id, "pm25", 20.0 + k))
    for k in range(12):
        rows.append(((at - timedelta(minutes=10 * k)).timestamp(), KTG_AIR.id, "o3", 100.0 + 20 * k))
    rows.append(((at - timedelta(hours=25)).timestamp(), KTG_AIR.id, "pm25", 900.0))  # outside its 24 h window
    await _write(database_url, backend, rows)
    body = await (await client.get("/api/v1/air/ispu", params={"city": "kotamobagu", "at": at.isoformat()})).json()
    with psycopg.connect(database_url) as conn:
        pm25 = conn.execute(
            "SELECT avg(value), count(*) FROM readings WHERE sensor_id = %s AND metric = 'pm25'"
            " AND ts > %s AND ts <= %s", (KTG_AIR.id, at - timedelta(hours=24), at)).fetchone()  # fmt: skip
        o3 = conn.execute(
            "SELECT avg(value), count(*) FROM readings WHERE sensor_id = %s AND metric = 'o3'"
            " AND ts > %s AND ts <= %s", (KTG_AIR.id, at - timedelta(hours=1), at)).fetchone()  # fmt: skip
    assert pm25 is not None and o3 is not None and pm25[1] == 48 and o3[1] == 6
    expected = ispu_station({"pm25": pm25[0], "o3": o3[0]})
    assert expected is not None
    stations = {s["sensor"]: s for s in body["stations"]}
    assert set(stations) == {KTG_AIR.id, KTG_AIR2.id}
    one = stations[KTG_AIR.id]
    assert (one["ispu"], one["critical"]) == (expected.index, expected.critical)
    assert one["category"] == {"id": expected.category.value, "label": expected.category.label,
                               "colour": expected.category.colour}  # fmt: skip
    assert one["sub_indices"]["pm25"]["concentration"] == pytest.approx(pm25[0])
    assert one["sub_indices"]["pm25"]["window"] == "24h" and one["sub_indices"]["pm25"]["readings"] == 48
    assert one["sub_indices"]["o3"]["window"] == "1h" and one["sub_indices"]["o3"]["readings"] == 6
    assert one["sub_indices"]["o3"]["ispu"] == ispu_subindex("o3", o3[0]).index
    assert stations[KTG_AIR2.id]["ispu"] is None and stations[KTG_AIR2.id]["sub_indices"] == {}
    bad = await client.get("/api/v1/air/ispu", params={"at": "2026-12-01T10:00:00"})  # naive: refused
    assert bad.status == 400 and (await bad.json())["invalid-params"][0]["name"] == "at"
    assert (await client.get("/api/v1/air/ispu", params={"city": "atlantis"})).status == 404


async def test_ispu_now_is_computed_once_a_second_for_every_screen_of_a_city(
    client: TestClient, database_url: str, backend: Backend
) -> None:
    await _write(database_url, backend, [(time.time() - 60, KTG_AIR.id, "pm25", 30.0)])
    answers = await asyncio.gather(*(client.get("/api/v1/air/ispu", params={"city": "kotamobagu"}) for _ in range(20)))
    bodies = [await a.json() for a in answers]
    assert len({b["at"] for b in bodies}) == 1  # twenty screens, one computation
    first = {s["sensor"]: s for s in bodies[0]["stations"]}[KTG_AIR.id]
    await _write(database_url, backend, [(time.time() - 30, KTG_AIR.id, "pm25", 300.0)])
    await asyncio.sleep(1.1)  # no older than a second: the next answer has the new reading
    later = await (await client.get("/api/v1/air/ispu", params={"city": "kotamobagu"})).json()
    assert later["at"] != bodies[0]["at"]
    now = {s["sensor"]: s for s in later["stations"]}[KTG_AIR.id]
    assert now["sub_indices"]["pm25"]["readings"] == first["sub_indices"]["pm25"]["readings"] + 1
    other = await (await client.get("/api/v1/air/ispu", params={"city": "sampit"})).json()
    assert {s["sensor"] for s in other["stations"]} == {SPT_AIR.id}  # another city, its own answer


@pytest.mark.parametrize("city, sensor, zone", [(SAMPIT, SPT_AIR, WIB), (KOTAMOBAGU, KTG_AIR, WITA)])
async def test_daily_ispu_splits_at_the_citys_local_midnight(
    client: TestClient, store: Store, database_url: str, backend: Backend, city: City, sensor: Sensor, zone: ZoneInfo
) -> None:
    day = _day_start(zone, 2)  # the day before yesterday, local
    rows: list[Reading] = [
        ((day + timedelta(hours=23, minutes=30)).timestamp(), sensor.id, "pm25", 100.0),  # 23:30 local
        ((day + timedelta(hours=24, minutes=30)).timestamp(), sensor.id, "pm25", 10.0),  # 00:30 the next day
    ]
    # CO every 10 minutes, 10,000 µg/m³ from 09:00 to 17:00 and 1,000 outside: the worst 8 h window is 09-17.
    rows += [((day + timedelta(minutes=10 * k)).timestamp(), sensor.id, "co", 10000.0 if 54 <= k < 102 else 1000.0)
             for k in range(144)]  # fmt: skip
    await _write(database_url, backend, rows)
    for refreshed in (False, True):  # hours waiting for the rollup refresh, then rolled up
        if refreshed:
            await _refresh(store, backend)
        first = await (await client.get("/api/v1/air/ispu/daily",
                                        params={"city": city.id, "date": day.date().isoformat()})).json()  # fmt: skip
        second = await (await client.get("/api/v1/air/ispu/daily", params={
            "city": city.id, "date": (day + timedelta(days=1)).date().isoformat()})).json()  # fmt: skip
        one = {s["sensor"]: s for s in first["stations"]}[sensor.id]
        two = {s["sensor"]: s for s in second["stations"]}[sensor.id]
        assert one["sub_indices"]["pm25"]["concentration"] == 100.0, refreshed
        assert two["sub_indices"]["pm25"]["concentration"] == 10.0, refreshed
        assert one["sub_indices"]["co"]["concentration"] == 10000.0
        assert one["sub_indices"]["co"]["from"] == (day + timedelta(hours=9)).isoformat()
        expected = ispu_station({"pm25": 100.0, "co": 10000.0})
        assert expected is not None and (one["ispu"], one["critical"]) == (expected.index, expected.critical)
        assert first["from"] == day.isoformat() and first["zone"] == city.zone_name
    report = await client.get("/api/v1/air/ispu/daily",
                              params={"city": city.id, "date": day.date().isoformat(), "format": "csv"})  # fmt: skip
    assert report.content_type == "text/csv"
    assert f"ispu-{city.id}-{day.date().isoformat()}.csv" in report.headers["Content-Disposition"]
    table = list(csv.DictReader(io.StringIO(await report.text())))
    row = {r["stasiun"]: r for r in table}[sensor.id]
    assert row["tanggal"] == day.date().isoformat() and row["zona"] == city.zone_name
    assert (row["ispu"], row["kategori"], row["parameter_kritis"]) == (
        str(expected.index), expected.category.label, expected.critical)  # fmt: skip
    assert row["pm25_ug_m3"] == "100.0" and row["ispu_pm25"] == str(ispu_subindex("pm25", 100.0).index)
    assert row["so2_ug_m3"] == ""  # not measured: blank, never 0
    bad = await client.get("/api/v1/air/ispu/daily", params={"city": city.id, "date": "31-12-2026"})
    assert bad.status == 400 and (await bad.json())["invalid-params"][0]["name"] == "date"
    assert (await client.get("/api/v1/air/ispu/daily")).status == 400  # the city is required


@pytest.mark.parametrize("city, gauge, zone", [(SAMPIT, SPT_RAIN, WIB), (KOTAMOBAGU, KTG_RAIN, WITA)])
async def test_daily_rain_splits_at_the_citys_local_midnight(
    client: TestClient, database_url: str, backend: Backend, city: City, gauge: Sensor, zone: ZoneInfo
) -> None:
    day = _day_start(zone, 2)
    rows: list[Reading] = [((day + timedelta(hours=h)).timestamp(), gauge.id, "rain_mm", 6.0) for h in range(20, 24)]
    rows.append(((day + timedelta(hours=23, minutes=30)).timestamp(), gauge.id, "rain_mm", 2.0))  # 23:30 local
    rows.append(((day + timedelta(hours=24, minutes=30)).timestamp(), gauge.id, "rain_mm", 0.4))  # 00:30 next day
    await _write(database_url, backend, rows)
    first = await (await client.get("/api/v1/rain", params={"city": city.id, "date": day.date().isoformat()})).json()
    second = await (await client.get("/api/v1/rain", params={
        "city": city.id, "date": (day + timedelta(days=1)).date().isoformat()})).json()  # fmt: skip
    [one] = first["gauges"]
    [two] = second["gauges"]
    assert one["day"]["mm"] == 26.0 and one["day"]["class"] == "sedang"  # 20-50 mm a day
    assert two["day"]["mm"] == pytest.approx(0.4) and two["day"]["class"] == "none"  # below 0.5 mm
    assert one["day"]["from"] == day.astimezone(UTC).isoformat().replace("+00:00", "Z")
    # The last hour before 23:45 local holds the 23:00 and 23:30 readings: 8 mm, sedang (5-10 mm/h).
    at = (day + timedelta(hours=23, minutes=45)).isoformat()
    now = await (await client.get("/api/v1/rain", params={"city": city.id, "at": at, "tz": "local"})).json()
    assert now["gauges"][0]["last_hour"] == {"mm": 8.0, "class": "sedang", "readings": 2}
    assert now["gauges"][0]["day"]["mm"] == 26.0 and now["gauges"][0]["day"]["to"] == at


async def test_rivers_upstream_to_downstream_with_siaga_and_rate(
    client: TestClient, database_url: str, backend: Backend
) -> None:
    now = datetime.now(UTC)
    rows: list[Reading] = []
    for gauge, (old, new) in zip(GAUGES, [(300.0, 520.0), (200.0, 260.0), (390.0, 410.0)], strict=True):
        rows.append(((now - timedelta(minutes=70)).timestamp(), gauge.id, "water_level_cm", old))
        rows.append(((now - timedelta(minutes=10)).timestamp(), gauge.id, "water_level_cm", new))
    await _write(database_url, backend, rows)
    body = await (await client.get("/api/v1/flood/rivers", params={"city": "sampit"})).json()
    [river] = body["rivers"]
    assert river["river"] == "Sungai Mentaya"
    gauges = river["gauges"]
    assert [g["sensor"] for g in gauges] == ["SPT-WL-01", "SPT-WL-02", "SPT-WL-03"]
    assert [g["siaga"]["id"] for g in gauges] == ["normal", "siaga", "awas"]  # 260, 410, 520 cm
    assert gauges[0]["siaga"]["label"] == "Siaga 4 (Normal)"
    assert [g["rate_cm_per_h"] for g in gauges] == [pytest.approx(60.0), pytest.approx(20.0), pytest.approx(220.0)]
    assert all(590 <= g["since_s"] <= 660 for g in gauges)
    assert gauges[0]["thresholds_cm"] == {"waspada": 300, "siaga": 400, "awas": 500}
    overview = await client.get("/api/v1/overview", params={"city": "sampit"})
    doc = await overview.json()
    assert doc["highest_siaga"]["sensor"] == "SPT-WL-03" and doc["highest_siaga"]["siaga"]["id"] == "awas"
    assert doc["highest_siaga"]["river"] == "Sungai Mentaya"


async def test_traffic_corridors_degree_of_saturation_and_los(
    client: TestClient, database_url: str, backend: Backend
) -> None:
    at = datetime.now(UTC).timestamp() - 60
    rows: list[Reading] = [(at, ROAD.id, "vehicle_count", 100.0), (at, ROAD.id, "interval_s", 300.0),
                           (at, ROAD.id, "avg_speed_kmh", 18.0), (at, ROAD.id, "occupancy", 0.4),
                           (at, ROAD_NO_CAPACITY.id, "vehicle_count", 50.0),
                           (at, ROAD_NO_CAPACITY.id, "interval_s", 300.0)]  # fmt: skip
    await _write(database_url, backend, rows)
    body = await (await client.get("/api/v1/traffic/corridors", params={"city": "sampit"})).json()
    counters = {c["sensor"]: c for c in body["counters"]}
    road = counters[ROAD.id]
    assert road["flow_pcu_h"] == 1200.0 and road["degree_of_saturation"] == pytest.approx(0.6)
    assert road["los"] == "C" and road["speed_kmh"] == 18.0 and road["corridor"] == "Jl. MT Haryono"
    other = counters[ROAD_NO_CAPACITY.id]
    assert other["flow_pcu_h"] == 600.0 and other["los"] is None and "capacity_pcu_h" in other["problem"]


async def test_sensor_status_and_the_overview(
    client: TestClient, store: Store, database_url: str, backend: Backend
) -> None:
    now = datetime.now(UTC)
    rows: list[Reading] = [((now - timedelta(minutes=5 * k)).timestamp(), GAUGES[0].id, "water_level_cm", 250.0)
                           for k in range(8)]  # eight equal levels in the last hour: stuck
    rows += [((now - timedelta(minutes=5 * k)).timestamp(), GAUGES[1].id, "water_level_cm", 250.0 + k)
             for k in range(8)]  # fmt: skip
    rows += [(now.timestamp() - 30, SPT_AIR.id, "pm25", 160.0)]
    await _write(database_url, backend, rows)
    async with store.connection() as conn:  # what ingest does: last_seen, and a rejection after it
        await conn.execute("UPDATE sensors SET last_seen = %s WHERE id = ANY(%s)",
                           (now - timedelta(seconds=10), [g.id for g in GAUGES] + [SPT_AIR.id]))  # fmt: skip
        await conn.execute("UPDATE sensors SET last_seen = %s WHERE id = %s", (now - timedelta(hours=2), SPT_RAIN.id))
        await conn.execute(
            "INSERT INTO rejected_messages (received_at, topic, payload, reason) VALUES (%s, %s, %s, 'out_of_range')",
            (now - timedelta(seconds=5), GAUGES[2].topic, b'{"water_level_cm": -5000}'),
        )
    sensors = (await (await client.get("/api/v1/sensors", params={"city": "sampit"})).json())["sensors"]
    status = {s["id"]: s["status"] for s in sensors}
    assert status[GAUGES[0].id] == "stuck" and status[GAUGES[1].id] == "ok"
    assert status[GAUGES[2].id] == "rejected" and status[SPT_AIR.id] == "ok"
    assert status[SPT_RAIN.id] == "offline" and status[ROAD.id] == "offline"  # silent 2 h; never heard from
    stuck = (await (await client.get("/api/v1/sensors", params={"status": "stuck"})).json())["sensors"]
    assert [s["id"] for s in stuck] == [GAUGES[0].id]
    gauge = await (await client.get(f"/api/v1/sensors/{GAUGES[2].id}")).json()
    assert gauge["status"] == "rejected"
    levels = [(line["value"], line["label"]) for line in gauge["thresholds"]["water_level_cm"]]
    assert levels == [(_SIAGA["siaga3_cm"], "Siaga 3 (Waspada)"), (_SIAGA["siaga2_cm"], "Siaga 2 (Siaga)"),
                      (_SIAGA["siaga1_cm"], "Siaga 1 (Awas)")]  # fmt: skip
    assert (await client.get("/api/v1/sensors", params={"status": "broken"})).status == 400

    alerts = AlertStore(store)
    opened = []
    for sensor_id, severity in [(SPT_AIR.id, "warning"), (GAUGES[2].id, "critical"), (GAUGES[1].id, "critical")]:
        t = await alerts.raise_alert("r", sensor_id, city="sampit", sensor_id=sensor_id, severity=severity, value=1.0,
                                     event_ts=now, reason="test")  # fmt: skip
        assert t.alert is not None
        opened.append(t.alert.id)
    at = (now + timedelta(seconds=1)).isoformat()
    first = await client.get("/api/v1/overview", params={"city": "sampit", "at": at})
    doc = await first.json()
    assert doc["sensors"] == {"ok": 2, "offline": 3, "stuck": 1, "rejected": 1, "total": 7}
    assert doc["open_alerts"] == {"info": 0, "warning": 1, "critical": 2, "total": 3}
    assert doc["worst_ispu"]["sensor"] == SPT_AIR.id and doc["worst_ispu"]["critical"] == "pm25"
    assert doc["worst_ispu"]["ispu"] == ispu_subindex("pm25", 160.0).index
    assert doc["zone"] == "WIB" and doc["newest_reading"].endswith("+07:00")
    assert 0 <= doc["ingest_lag_s"] <= 60
    etag = {"If-None-Match": first.headers["ETag"]}
    again = await client.get("/api/v1/overview", params={"city": "sampit", "at": at}, headers=etag)
    assert again.status == 304
    await alerts.resolve_by_id(opened[2], "rina")
    changed = await client.get("/api/v1/overview", params={"city": "sampit", "at": at}, headers=etag)
    assert changed.status == 200 and (await changed.json())["open_alerts"]["total"] == 2
