"""Export: readings for any filter and range as CSV (a header, units named) or NDJSON, streamed
straight from PostgreSQL with flat memory and no row cap, gzip when the client accepts it; the same
code as `pantau export` (pantau.store.export)."""

from __future__ import annotations

from aiohttp import web

from api.keys import STORE
from api.openapi import API, EXPORT, Param
from api.problems import bad_param
from pantau.metrics import METRICS
from pantau.store.export import FORMATS, MEDIA_TYPES, ExportFilter, export

FROM = Param("from", {"type": "string", "format": "date-time"}, "start, RFC 3339 with an offset", required=True)
TO = Param("to", {"type": "string", "format": "date-time"}, "end (excluded), RFC 3339 with an offset", required=True)
FORMAT = Param("format", {"type": "string", "enum": list(FORMATS), "default": "csv"}, "csv, ndjson or parquet")
CITY = Param("city", {"type": "string"}, "city slug")
KIND = Param("kind", {"type": "string", "enum": ["air", "traffic", "flood", "rain"]}, "sensor kind")
SENSORS = Param("sensor", {"type": "string"}, "sensor id (repeat for several)")
METRICS_PARAM = Param("metric", {"type": "string", "enum": sorted(METRICS)}, "metric (repeat for several)")


@API.get(
    "/api/v1/export",
    summary="Readings as CSV, NDJSON or Parquet, streamed with no row cap (gzip when accepted)",
    tag="readings",
    roles=EXPORT,
    params=[
        FROM,
        TO,
        FORMAT,
        CITY,
        KIND,
        SENSORS,
        METRICS_PARAM,
    ],
    media=("text/csv", "application/x-ndjson", "application/vnd.apache.parquet"),
)
async def export_readings(request: web.Request) -> web.StreamResponse:
    start, end, fmt = FROM.read(request), TO.read(request), FORMAT.read(request)
    if end <= start:
        raise bad_param("to", "after from")
    metrics = METRICS_PARAM.read_all(request)
    f = ExportFilter(start=start, end=end, sensors=SENSORS.read_all(request), city=CITY.read(request),
                     kind=KIND.read(request), metrics=metrics)  # fmt: skip
    response = web.StreamResponse(
        headers={
            "Content-Type": MEDIA_TYPES[fmt],
            "Content-Disposition": f'attachment; filename="pantau-readings.{fmt}"',
        }
    )
    if fmt != "parquet" and "gzip" in request.headers.get("Accept-Encoding", ""):  # Parquet is compressed already
        response.enable_compression(web.ContentCoding.gzip)
    async with request.app[STORE].connection() as conn:
        chunks = export(conn, f, fmt)
        first = await anext(chunks, b"")  # a bad filter fails here, before any byte is sent
        await response.prepare(request)
        await response.write(first)
        async for chunk in chunks:
            await response.write(chunk)
    await response.write_eof()
    return response
