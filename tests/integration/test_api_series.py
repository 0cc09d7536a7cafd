"""Series through the API, held to direct SQL aggregates of the raw readings: every level (raw,
1m, 1h, local days), rollups refreshed and not, local days split at each city's midnight, `auto`
choosing the level, gaps as nulls, and the point budget."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from ingest.writer import ReadingWriter
from pantau.domain import City, Sensor
from pantau.readings import Reading
from pantau.settings import Settings
from pantau.store import Backend, Store
from pantau.store.maintenance import refresh_rollups
from tests.support import bearer

WIB, WITA = ZoneInfo("Asia/Jakarta"), ZoneInfo("Asia/Makassar")
SPT = Sensor(id="SPT-AQ-01", kind="air", city="sampit")
KTG = Sensor(id="KTG-AQ-01", kind="air", city="kotamobagu")
# Three local days back from today's midnight in Jakarta: readings every 7 minutes, values that vary.
END = datetime.now(WIB).replace(hour=0, minute=0, second=0, microsecond=0)
START = END - timedelta(days=3)


def _z(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _readings(sensor: Sensor, zone: ZoneInfo) -> list[Reading]:
    rows: list[Reading] = []
    at = START
    k = 0
    while at < END - timedelta(hours=2):  # the last two hours of the span are a gap
        rows.append((at.timestamp(), sensor.id, "pm25", float(20 + (k * 37) % 61)))
        at += timedelta(minutes=7)
        k += 1
    day = (END - timedelta(days=1)).astimezone(zone).replace(hour=0, minute=0)
    rows.append(((day - timedelta(minutes=30)).timestamp(), sensor.id, "pm25", 500.0))  # 23:30 local, the day before
    rows.append(((day + timedelta(minutes=30)).timestamp(), sensor.id, "pm25", 900.0))  # 00:30 local, the day after
    return rows


@pytest.fixture
async def client(settings: Settings, store: Store, database_url: str, backend: Backend) -> AsyncIterator[TestClient]:
    await store.upsert_sensors([SPT, KTG])
    await store.upsert_city(City(id="sampit", timezone="Asia/Jakarta"))
    await store.upsert_city(City(id="kotamobagu", timezone="Asia/Makassar"))
    older = [r for r in _readings(SPT, WIB) + _readings(KTG, WITA) if r[0] < (END - timedelta(days=1)).timestamp()]
    newer = [r for r in _readings(SPT, WIB) + _readings(KTG, WITA) if r[0] >= (END - timedelta(days=1)).timestamp()]
    async with ReadingWriter(database_url, backend) as writer:
        await writer.write(older, [])
    if backend is Backend.POSTGRES:
        async with store.connection() as conn:
            await refresh_rollups(conn)  # the older days rolled up; the newest waits in the invalidation log
    else:
        async with store.connection() as conn:
            await conn.execute("CALL refresh_continuous_aggregate('readings_1m', NULL, NULL)")
            await conn.execute("CALL refresh_continuous_aggregate('readings_1h', NULL, NULL)")
    async with ReadingWriter(database_url, backend) as writer:
        await writer.write(newer, [])  # on both backends, the newest day waits for the next refresh
    async with TestClient(TestServer(create_app(settings)), headers=await bearer(store, "operator")) as c:
        yield c


def _sql_buckets(database_url: str, sensor: Sensor, bucket: str) -> dict[datetime, tuple[Any, ...]]:
    """bucket start -> (count, avg, min, max, sum, last), straight from the raw rows."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            f"SELECT {bucket} AS b, count(*), avg(value), min(value), max(value), sum(value),"
            " (array_agg(value ORDER BY ts DESC))[1] FROM readings WHERE sensor_id = %s AND metric = 'pm25'"
            " AND ts >= %s AND ts < %s GROUP BY 1",
            (sensor.id, START, END),
        ).fetchall()
    return {r[0]: tuple(r[1:]) for r in rows}


async def _series(client: TestClient, sensor: Sensor, step: str, **extra: str) -> dict[str, Any]:
    params = {"sensor": sensor.id, "metric": "pm25", "from": _z(START), "to": _z(END), "step": step,
              "agg": "avg,min,max,count,sum,last"} | extra  # fmt: skip
    answer = await client.get("/api/v1/series", params=params)
    assert answer.status == 200, await answer.text()
    return dict(await answer.json())


@pytest.mark.parametrize(
    ("step", "bucket"),
    [
        ("1m", "date_bin('1 minute', ts, timestamptz '2000-01-01 00:00:00+00')"),
        ("1h", "date_bin('1 hour', ts, timestamptz '2000-01-01 00:00:00+00')"),
    ],
)
async def test_minute_and_hour_buckets_equal_sql_over_the_raw_rows(
    client: TestClient, database_url: str, step: str, bucket: str
) -> None:
    body = await _series(client, SPT, step, max_points="20000")
    [series] = body["series"]
    want = _sql_buckets(database_url, SPT, bucket)
    points = {datetime.fromisoformat(p["ts"].replace("Z", "+00:00")): p for p in series["points"]}
    width = timedelta(minutes=1) if step == "1m" else timedelta(hours=1)
    assert len(points) == (END - START) // width  # every bucket, the empty ones too
    for at, p in points.items():
        if at not in want:
            assert (p["count"], p["avg"], p["min"], p["max"], p["sum"], p["last"]) == (0, None, None, None, None, None)
            continue
        n, avg, low, high, total, last = want[at]
        assert (p["count"], p["min"], p["max"], p["last"]) == (n, low, high, last), at
        assert p["avg"] == pytest.approx(avg) and p["sum"] == pytest.approx(total)


@pytest.mark.parametrize(("sensor", "zone"), [(SPT, WIB), (KTG, WITA)])
async def test_local_days_split_at_the_citys_midnight(
    client: TestClient, database_url: str, sensor: Sensor, zone: ZoneInfo
) -> None:
    body = await _series(client, sensor, "1d", tz="local")
    [series] = body["series"]
    local_day = "(date_trunc('day', ts AT TIME ZONE '" + zone.key + "') AT TIME ZONE '" + zone.key + "')"
    want = _sql_buckets(database_url, sensor, local_day)
    got = {datetime.fromisoformat(p["ts"]): p for p in series["points"] if p["count"]}
    assert got.keys() == want.keys()
    for at, p in got.items():
        assert at.utcoffset() == zone.utcoffset(at)  # shown in the city's zone: +07:00 or +08:00
        assert at.astimezone(zone).time().isoformat() == "00:00:00"
        n, avg, low, high, total, last = want[at]
        assert (p["count"], p["min"], p["max"], p["last"]) == (n, low, high, last), at
        assert p["avg"] == pytest.approx(avg) and p["sum"] == pytest.approx(total)
    # 23:30 and 00:30 local fall on two days: 500 is the maximum of one, 900 of the next.
    maxima = [got[at]["max"] for at in sorted(got)]
    assert 500.0 in maxima and 900.0 in maxima and maxima.index(900.0) == maxima.index(500.0) + 1


async def test_auto_picks_the_finest_level_within_max_points(client: TestClient) -> None:
    week_of_raw = await _series(client, SPT, "auto", max_points="2000")  # ~900 readings in 3 days
    assert week_of_raw["series"][0]["step"] == "raw"
    assert len(week_of_raw["series"][0]["points"]) == len(_readings(SPT, WIB))
    hours = await _series(client, SPT, "auto", max_points="100")  # 72 hours fit, 4,320 minutes do not
    assert hours["series"][0]["step"] == "1h" and len(hours["series"][0]["points"]) == 72
    days = await _series(client, SPT, "auto", max_points="10")
    assert days["series"][0]["step"] == "1d"


async def test_over_the_point_budget_is_a_422_with_a_hint(client: TestClient) -> None:
    answer = await client.get(
        "/api/v1/series",
        params={
            "sensor": SPT.id,
            "metric": "pm25",
            "from": _z(START),
            "to": _z(END),
            "step": "1m",
            "max_points": "100",
        },
    )
    assert answer.status == 422
    assert "narrow the range, or coarsen the step" in (await answer.json())["detail"]
    naive = await client.get(
        "/api/v1/series", params={"sensor": SPT.id, "metric": "pm25", "from": "2026-12-01T00:00:00", "to": _z(END)}
    )
    assert naive.status == 400 and (await naive.json())["invalid-params"][0]["name"] == "from"
