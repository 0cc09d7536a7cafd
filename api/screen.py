"""The operator screen, served by the API itself: `/` and its static files under `/screen/`.

Plain HTML, CSS and JavaScript modules from `api/screen/` (no library, no CDN: nothing leaves the
machine). The files are public; everything they show comes from the API with the signed-in
operator's session.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from api.openapi import API, Param
from api.problems import not_found

FILES = Path(__file__).parent / "screen"
TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
FILE = Param("file", {"type": "string"}, "a file of the screen", where="path")


@API.get("/", summary="The operator screen (Bahasa Indonesia, English by a toggle)", tag="screen", roles=None,
         media=("text/html",), responses={200: "HTML"})  # fmt: skip
async def screen(request: web.Request) -> web.Response:
    return _file("index.html")


@API.get("/screen/{file}", summary="The screen's scripts and styles", tag="screen", roles=None, params=[FILE],
         media=tuple(sorted(set(TYPES.values()))), responses={200: "The file"})  # fmt: skip
async def screen_file(request: web.Request) -> web.Response:
    return _file(FILE.read(request))


def _file(name: str) -> web.Response:
    path = FILES / name
    if "/" in name or name.startswith(".") or path.suffix not in TYPES or not path.is_file():
        raise not_found(f"screen file {name!r}")
    # Revalidated on each load: a new release's screen is what the wall shows after a reload.
    return web.Response(body=path.read_bytes(), content_type=TYPES[path.suffix], headers={"Cache-Control": "no-cache"})
