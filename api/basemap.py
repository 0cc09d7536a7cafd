"""The screen's optional base map: where its tiles come from, and a local PMTiles archive's tiles.

None by default, and then nothing asks for a tile: the screen is sensors on a plain map. An
operator may name a raster tile URL template (a tile server on the command centre's network) or a
local PMTiles archive of raster tiles, which this API serves itself, so the screen still needs
nothing off the machine. Raster only: the screen draws tiles as images (docs/decisions.md D24).
"""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from api.common import answer
from api.keys import SETTINGS
from api.openapi import API, Param
from api.problems import Problem, not_found
from pantau.tiles import MEDIA, RasterArchive, open_raster_archive

TILES_PATH = "/api/v1/basemap/{z}/{x}/{y}"
MAX_ZOOM = 19  # a tile server's usual deepest level, for a template
ARCHIVE = web.AppKey("basemap_archive", RasterArchive)


async def archive_ctx(app: web.Application) -> AsyncIterator[None]:
    """The configured archive, open (memory-mapped) for the application's life."""
    path = app[SETTINGS].api_basemap_pmtiles
    if not path:
        yield
        return
    app[ARCHIVE] = archive = open_raster_archive(path)  # checked again: the file may have changed since
    try:
        yield
    finally:
        archive.close()


@API.get("/api/v1/basemap", summary="The screen's base map: where its tiles come from (null: none)", tag="screen")
async def basemap(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    archive = request.app.get(ARCHIVE)
    doc: dict[str, Any] = {"tiles": None, "format": None, "min_zoom": 0, "max_zoom": MAX_ZOOM,
                           "attribution": settings.api_basemap_attribution}  # fmt: skip
    if archive is not None:
        doc |= {"tiles": TILES_PATH, "format": archive.media.removeprefix("image/"), "min_zoom": archive.min_zoom,
                "max_zoom": archive.max_zoom}  # fmt: skip
    elif settings.api_basemap_tiles:
        doc["tiles"] = settings.api_basemap_tiles
    return answer(request, doc)


Z = Param("z", {"type": "integer", "minimum": 0, "maximum": 30}, "zoom level", where="path", required=True)
X = Param("x", {"type": "integer", "minimum": 0}, "tile column", where="path", required=True)
Y = Param("y", {"type": "integer", "minimum": 0}, "tile row (from the north)", where="path", required=True)


@API.get(TILES_PATH, summary="A tile of the local base map (PMTiles)", tag="screen", params=[Z, X, Y],
         media=tuple(sorted(set(MEDIA.values()))), responses={200: "The tile"})  # fmt: skip
async def tile(request: web.Request) -> web.Response:
    z, x, y = Z.read(request), X.read(request), Y.read(request)
    if x >= 2**z or y >= 2**z:
        raise Problem(400, "Bad request", f"tile {z}/{x}/{y}: x and y go up to {2**z - 1} at zoom {z}",
                      param="x" if x >= 2**z else "y")  # fmt: skip
    archive = request.app.get(ARCHIVE)
    if archive is None:
        raise Problem(404, "Not found", "no local base map is configured (PANTAU_API_BASEMAP_PMTILES)")
    data = archive.tile(z, x, y)
    if data is None:
        raise not_found(f"tile {z}/{x}/{y} of the base map")
    # A tile does not change while the API runs; private: it is behind the sign-in, not for shared caches.
    headers = {"Cache-Control": "private, max-age=86400"}
    if archive.gzipped:
        headers["Vary"] = "Accept-Encoding"
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            headers["Content-Encoding"] = "gzip"
        else:
            data = gzip.decompress(data)
    return web.Response(body=data, content_type=archive.media, headers=headers)
