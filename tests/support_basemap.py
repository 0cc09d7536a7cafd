"""Small base-map archives for the tests: PMTiles v3 files of hand-made PNG tiles (no imaging
library), written with the `pmtiles` package's own writer."""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

from pmtiles.tile import Compression, TileType, zxy_to_tileid
from pmtiles.writer import Writer


def png(rgb: tuple[int, int, int], size: int = 4) -> bytes:
    """A `size`×`size` PNG of one colour."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + bytes(rgb) * size for _ in range(size))
    ihdr = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def write_archive(path: Path, tiles: dict[tuple[int, int, int], bytes], tile_type: TileType = TileType.PNG,
                  tile_compression: Compression = Compression.NONE) -> Path:  # fmt: skip
    """A PMTiles archive at `path` holding `tiles` ((z, x, y) -> bytes, stored as given)."""
    with path.open("wb") as f:
        writer = Writer(f)
        for (z, x, y), data in sorted(tiles.items(), key=lambda t: zxy_to_tileid(*t[0])):
            writer.write_tile(zxy_to_tileid(z, x, y), data)
        header = {"tile_type": tile_type, "tile_compression": tile_compression, "min_lon_e7": 1120000000,
                  "min_lat_e7": -30000000, "max_lon_e7": 1140000000, "max_lat_e7": -20000000, "center_zoom": 0,
                  "center_lon_e7": 1130000000, "center_lat_e7": -25000000}  # fmt: skip
        writer.finalize(header, {"attribution": "test"})
    return path


def world_archive(path: Path) -> Path:
    """Zoom 0 and the four tiles of zoom 1, each its own colour."""
    colours = [(10, 20, 30), (200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0)]
    tiles = {(0, 0, 0): png(colours[0])}
    for i, (x, y) in enumerate(((0, 0), (1, 0), (0, 1), (1, 1)), start=1):
        tiles[(1, x, y)] = png(colours[i])
    return write_archive(path, tiles)


def tile_of(lon: float, lat: float, z: int) -> tuple[int, int]:
    """The (x, y) of the Web Mercator tile holding a point at zoom z."""
    n = 2**z
    y = (1 - math.log(math.tan(math.pi / 4 + math.radians(lat) / 2)) / math.pi) / 2
    return int((lon + 180) / 360 * n), int(y * n)


def area_archive(path: Path, bbox: tuple[float, float, float, float], zooms: range) -> Path:
    """Every tile over `bbox` (min lon, min lat, max lon, max lat) at `zooms`, a grey-blue PNG each."""
    tile = png((40, 60, 80))
    tiles = {}
    for z in zooms:
        (x0, y0), (x1, y1) = tile_of(bbox[0], bbox[3], z), tile_of(bbox[2], bbox[1], z)
        tiles |= {(z, x, y): tile for x in range(x0, x1 + 1) for y in range(y0, y1 + 1)}
    return write_archive(path, tiles)
