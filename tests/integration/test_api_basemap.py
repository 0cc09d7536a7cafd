"""The screen's optional base map (issue 14): none by default, a tile URL template, or a local
PMTiles archive of raster tiles served by the API itself."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pmtiles.tile import Compression, TileType

from api.app import create_app
from pantau.errors import ConfigError
from pantau.settings import Settings, load_settings
from pantau.store import Store
from tests.support import bearer
from tests.support_basemap import png, world_archive, write_archive

TEMPLATE = "http://peta.pusat-komando.lan/{z}/{x}/{y}.png"


async def _client(settings: Settings, store: Store) -> TestClient:
    client = TestClient(TestServer(create_app(settings)), headers=await bearer(store))
    await client.start_server()
    return client


async def test_no_base_map_by_default(settings: Settings, store: Store) -> None:
    client = await _client(settings, store)
    try:
        doc = await (await client.get("/api/v1/basemap")).json()
        assert doc == {"tiles": None, "format": None, "min_zoom": 0, "max_zoom": 19, "attribution": ""}
        missing = await client.get("/api/v1/basemap/0/0/0")  # the screen asks for none; nor is there one
        assert missing.status == 404 and "PANTAU_API_BASEMAP_PMTILES" in (await missing.json())["detail"]
        assert (await client.get("/api/v1/basemap/1/x/0")).status == 400
    finally:
        await client.close()


async def test_a_tile_url_template_is_handed_to_the_screen(settings: Settings, store: Store) -> None:
    configured = dataclasses.replace(settings, api_basemap_tiles=TEMPLATE, api_basemap_attribution="© OSM")
    client = await _client(configured, store)
    try:
        doc = await (await client.get("/api/v1/basemap")).json()
        assert doc == {"tiles": TEMPLATE, "format": None, "min_zoom": 0, "max_zoom": 19, "attribution": "© OSM"}
    finally:
        await client.close()


async def test_the_api_serves_a_local_pmtiles_archives_tiles(settings: Settings, store: Store, tmp_path: Path) -> None:
    archive = world_archive(tmp_path / "kota.pmtiles")
    client = await _client(dataclasses.replace(settings, api_basemap_pmtiles=str(archive)), store)
    try:
        doc = await (await client.get("/api/v1/basemap")).json()
        assert doc == {"tiles": "/api/v1/basemap/{z}/{x}/{y}", "format": "png", "min_zoom": 0, "max_zoom": 1,
                       "attribution": ""}  # fmt: skip
        for (z, x, y), colour in (((0, 0, 0), (10, 20, 30)), ((1, 1, 0), (0, 200, 0)), ((1, 1, 1), (200, 200, 0))):
            response = await client.get(f"/api/v1/basemap/{z}/{x}/{y}")
            assert response.status == 200 and response.content_type == "image/png"
            assert await response.read() == png(colour)  # this tile's bytes, not another's
            # Kept by the browser (a tile does not change while the API runs), by no shared cache.
            assert response.headers["Cache-Control"] == "private, max-age=86400"
            assert "Content-Encoding" not in response.headers
        outside = await client.get("/api/v1/basemap/1/0/2")
        assert outside.status == 400 and "up to 1 at zoom 1" in (await outside.json())["detail"]
        assert (await outside.json())["invalid-params"][0]["name"] == "y"
        deeper = await client.get("/api/v1/basemap/5/3/3")
        assert deeper.status == 404 and "5/3/3" in (await deeper.json())["detail"]
        bad = await client.get("/api/v1/basemap/1/x/0")
        assert bad.status == 400
    finally:
        await client.close()


async def test_gzipped_tiles_are_sent_gzipped_to_who_takes_gzip_and_plain_to_others(
    settings: Settings, store: Store, tmp_path: Path
) -> None:
    tile = png((9, 8, 7))
    gz = {(0, 0, 0): gzip.compress(tile)}
    archive = write_archive(tmp_path / "gz.pmtiles", gz, tile_compression=Compression.GZIP)
    client = await _client(dataclasses.replace(settings, api_basemap_pmtiles=str(archive)), store)
    try:
        gzipped = await client.get("/api/v1/basemap/0/0/0", headers={"Accept-Encoding": "gzip"})
        assert gzipped.headers["Content-Encoding"] == "gzip" and await gzipped.read() == tile  # unzipped by the client
        plain = await client.get("/api/v1/basemap/0/0/0", headers={"Accept-Encoding": "identity"})
        assert "Content-Encoding" not in plain.headers and await plain.read() == tile
        assert plain.headers["Vary"] == "Accept-Encoding"
    finally:
        await client.close()


def test_an_archive_of_vector_tiles_stops_the_configuration_with_what_to_do(tmp_path: Path) -> None:
    vector = write_archive(tmp_path / "vektor.pmtiles", {(0, 0, 0): b"\x1a\x00"}, TileType.MVT)
    (tmp_path / "none.toml").write_text("")
    with pytest.raises(ConfigError) as info:
        load_settings({"PANTAU_API_BASEMAP_PMTILES": str(vector)}, tmp_path / "none.toml")
    assert info.value.key == "PANTAU_API_BASEMAP_PMTILES"
    assert "the screen draws raster tiles only" in str(info.value) and "pmtiles convert" in str(info.value)


async def test_an_archive_gone_bad_since_the_settings_stops_the_api_before_it_connects(
    settings: Settings, tmp_path: Path
) -> None:
    path = world_archive(tmp_path / "kota.pmtiles")
    configured = dataclasses.replace(settings, api_basemap_pmtiles=str(path), api_database_url=None,
                                     database_url="postgresql://127.0.0.1:1/tidak-ada")  # fmt: skip
    path.write_bytes(b"bukan peta")  # replaced after the settings were read
    server = TestServer(create_app(configured))
    with pytest.raises(ConfigError, match="not a PMTiles archive"):
        await asyncio.wait_for(server.start_server(), 20)
    await server.close()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PANTAU_API_BASEMAP_TILES": TEMPLATE, "PANTAU_API_BASEMAP_PMTILES": "kota.pmtiles"}, "not both"),
        ({"PANTAU_API_BASEMAP_TILES": "http://peta.lan/tiles.png"}, "{z}/{x}/{y}"),
        ({"PANTAU_API_BASEMAP_TILES": "http://peta.lan/{z}/{x}.png"}, "{y} missing"),
        ({"PANTAU_API_BASEMAP_TILES": "file:///srv/{z}/{x}/{y}.png"}, "raster tile URL template"),
        ({"PANTAU_API_BASEMAP_TILES": "https:///{z}/{x}/{y}.png"}, "raster tile URL template"),
        ({"PANTAU_API_BASEMAP_TILES": "https://{s}.tile.lan/{z}/{x}/{y}.png"}, "{z}, {x} and {y} only, not {s}"),
        ({"PANTAU_API_BASEMAP_PMTILES": "/tidak/ada.pmtiles"}, "no such file"),
    ],
)
def test_base_map_settings_are_checked(env: dict[str, str], message: str, tmp_path: Path) -> None:
    (tmp_path / "none.toml").write_text("")
    with pytest.raises(ConfigError) as info:
        load_settings(env, tmp_path / "none.toml")
    assert message in str(info.value) and info.value.key in env


def test_good_base_map_settings_are_taken(tmp_path: Path) -> None:
    (tmp_path / "none.toml").write_text("")
    archive = str(world_archive(tmp_path / "kota.pmtiles"))
    assert load_settings({"PANTAU_API_BASEMAP_PMTILES": archive}, tmp_path / "none.toml").api_basemap_pmtiles == archive
    template = "https://peta.lan:8443/osm/{z}/{x}/{y}.png?v=2"
    assert load_settings({"PANTAU_API_BASEMAP_TILES": template}, tmp_path / "none.toml").api_basemap_tiles == template
