"""Export through the API and `pantau export`: every reading of the filter once, as CSV with a header
and units, or NDJSON, gzip when asked; both the same code, both equal to SQL's count."""

from __future__ import annotations

import csv
import gzip
import io
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pyarrow.parquet as pq
import pytest
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from ingest.writer import ReadingWriter
from pantau.domain import Sensor
from pantau.readings import Reading
from pantau.settings import Settings
from pantau.store import Backend, Store
from pantau.store.export import PARQUET_ROW_GROUP
from tests.support import bearer, pantau_env, run_pantau

SENSORS = [Sensor(id=f"SPT-AQ-{i:02d}", kind="air", city="sampit") for i in range(6)] + [
    Sensor(id=f"KTG-RG-{i:02d}", kind="rain", city="kotamobagu") for i in range(4)
]
T0 = float(int(time.time()) - 2 * 86400)
PER_SENSOR = 6000  # 60,000 readings


def _z(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@pytest.fixture
async def client(settings: Settings, store: Store, database_url: str, backend: Backend) -> AsyncIterator[TestClient]:
    await store.upsert_sensors(SENSORS)
    rows: list[Reading] = []
    for s in SENSORS:
        metric = "pm25" if s.kind == "air" else "rain_mm"
        rows += [(T0 + k * 20.0, s.id, metric, float(k % 97)) for k in range(PER_SENSOR)]
    async with ReadingWriter(database_url, backend) as writer:
        for i in range(0, len(rows), 20000):
            await writer.write(rows[i : i + 20000], [])
    async with TestClient(TestServer(create_app(settings)), headers=await bearer(store, "agency")) as c:
        yield c


def _sql_count(database_url: str, city: str, start: float, end: float) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM readings r JOIN sensors s ON s.id = r.sensor_id"
            " WHERE s.city = %s AND r.ts >= to_timestamp(%s) AND r.ts < to_timestamp(%s)",
            (city, start, end),
        ).fetchone()
    assert row is not None
    return int(row[0])


async def test_csv_export_gzipped_holds_every_reading_of_the_filter_once(client: TestClient, database_url: str) -> None:
    start, end = T0 + 3600, T0 + 86400 * 1.5
    answer = await client.get(
        "/api/v1/export",
        params={"city": "sampit", "from": _z(start), "to": _z(end)},
        headers={"Accept-Encoding": "gzip"},
        auto_decompress=False,
    )
    assert answer.status == 200 and answer.headers["Content-Encoding"] == "gzip"
    assert answer.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(gzip.decompress(await answer.read()).decode())))
    assert rows[0] == ["ts", "sensor_id", "metric", "value", "unit"]
    body = rows[1:]
    assert len(body) == _sql_count(database_url, "sampit", start, end) > 20000
    assert len({(r[0], r[1], r[2]) for r in body}) == len(body)
    assert {r[2] for r in body} == {"pm25"} and {r[4] for r in body} == {"µg/m³"}
    first = datetime.fromisoformat(body[0][0].replace("Z", "+00:00"))
    assert first.timestamp() >= start and body[0][0].endswith("Z")


async def test_ndjson_export_and_the_command_line_agree(client: TestClient, database_url: str, tmp_path: Path) -> None:
    start, end = T0, T0 + 86400 * 3
    answer = await client.get(
        "/api/v1/export", params={"city": "kotamobagu", "from": _z(start), "to": _z(end), "format": "ndjson"}
    )
    lines = [json.loads(line) for line in (await answer.read()).decode().splitlines()]
    assert len(lines) == _sql_count(database_url, "kotamobagu", start, end) == 4 * PER_SENSOR
    assert lines[0].keys() == {"ts", "sensor_id", "metric", "value", "unit"} and lines[0]["unit"] == "mm"
    out = tmp_path / "rain.csv"
    done = run_pantau(
        ["export", "--city", "kotamobagu", "--from", _z(start), "--to", _z(end), "-o", str(out)],
        pantau_env(PANTAU_DATABASE_URL=database_url),
    )
    assert done.returncode == 0, done.stderr
    rows = list(csv.reader(io.StringIO(out.read_text())))[1:]
    assert [(r[0], r[1], float(r[3])) for r in rows] == [(x["ts"], x["sensor_id"], x["value"]) for x in lines]


async def test_parquet_export_streams_row_groups_that_equal_the_csv(
    client: TestClient, database_url: str, tmp_path: Path
) -> None:
    start, end = T0, T0 + 86400 * 3
    params = {"city": "sampit", "from": _z(start), "to": _z(end)}
    answer = await client.get("/api/v1/export", params=params | {"format": "parquet"},
                              headers={"Accept-Encoding": "gzip"})  # fmt: skip
    assert answer.headers["Content-Type"] == "application/vnd.apache.parquet"
    assert "Content-Encoding" not in answer.headers  # Parquet is compressed already
    data = await answer.read()
    parquet = pq.ParquetFile(io.BytesIO(data))
    assert parquet.metadata.num_rows == _sql_count(database_url, "sampit", start, end) == 6 * PER_SENSOR
    assert parquet.metadata.num_row_groups == -(-6 * PER_SENSOR // PARQUET_ROW_GROUP) > 0
    table = parquet.read()
    text = (await (await client.get("/api/v1/export", params=params)).read()).decode()
    csv_rows = list(csv.reader(io.StringIO(text)))[1:]
    columns = [table.column(c).to_pylist() for c in ("ts", "sensor_id", "metric", "value", "unit")]
    got = list(zip(*columns, strict=True))
    want = [(datetime.fromisoformat(r[0].replace("Z", "+00:00")), r[1], r[2], float(r[3]), r[4]) for r in csv_rows]
    assert got == want
    out = tmp_path / "sampit.parquet"
    done = run_pantau(["export", "--city", "sampit", "--from", _z(start), "--to", _z(end), "--format", "parquet",
                       "-o", str(out)], pantau_env(PANTAU_DATABASE_URL=database_url))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert pq.read_table(out).equals(table)


async def test_bad_export_parameters_are_named(client: TestClient) -> None:
    naive = await client.get("/api/v1/export", params={"from": "2026-12-01T00:00:00", "to": _z(T0)})
    assert naive.status == 400 and (await naive.json())["invalid-params"][0]["name"] == "from"
    unknown = await client.get("/api/v1/export", params={"from": _z(T0), "to": _z(T0 + 60), "metric": "pm26"})
    assert unknown.status == 400 and (await unknown.json())["invalid-params"][0]["name"] == "metric"


@pytest.mark.slow
async def test_a_multi_million_row_export_holds_the_sql_count(
    settings: Settings, store: Store, database_url: str, backend: Backend
) -> None:
    stations = [Sensor(id=f"MJK-AQ-{i:03d}", kind="air", city="mojokerto") for i in range(50)]
    await store.upsert_sensors(stations)
    t0 = float(int(time.time()) - 86400)
    per_station = 42_000  # 2.1 million readings, one a second per station
    async with ReadingWriter(database_url, backend) as writer:
        for k in range(0, per_station, 2000):
            rows = [(t0 + j, s.id, "pm25", float(j % 500)) for j in range(k, k + 2000) for s in stations]
            await writer.write(rows, [])
    start, end = t0 + 100, t0 + per_station - 100  # a filter that cuts the range at both ends
    async with TestClient(TestServer(create_app(settings)), headers=await bearer(store, "agency")) as c:
        answer = await c.get("/api/v1/export", params={"city": "mojokerto", "from": _z(start), "to": _z(end)})
        lines = 0
        async for chunk in answer.content.iter_chunked(1 << 20):
            lines += chunk.count(b"\n")
    sql = _sql_count(database_url, "mojokerto", start, end)
    assert sql == 50 * (per_station - 200) > 2_000_000
    assert lines - 1 == sql  # every row once, under its header
