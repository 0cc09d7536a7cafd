"""The screen's base map archive: a PMTiles v3 file of raster tiles (docs/decisions.md D24).

Checked when the settings are read, so a file the screen cannot draw stops `pantau up` and
`pantau api` at start with what to do; then opened once by each API process, which serves its
tiles. The format is read by protomaps' `pmtiles` package (header, directories, the tile search);
the directories it decodes are kept, since decoding a city's root directory in Python takes
milliseconds and a screen asks for dozens of tiles at once.
"""

from __future__ import annotations

import functools
import mmap
import struct
import zlib
from pathlib import Path

from pmtiles.tile import (
    Compression,
    Entry,
    HeaderDict,
    MagicNumberNotFound,
    SpecVersionUnsupported,
    TileType,
    deserialize_directory,
    deserialize_header,
    find_tile,
    zxy_to_tileid,
)

from pantau.errors import ConfigError

KEY = "PANTAU_API_BASEMAP_PMTILES"
MEDIA = {TileType.PNG: "image/png", TileType.JPEG: "image/jpeg", TileType.WEBP: "image/webp"}
HEADER_BYTES = 127
MAX_DEPTH = 4  # the root and up to three levels of leaf directories, as the format allows
DIRECTORIES_KEPT = 64  # decoded directories kept per archive: a city's root and the leaves in use
RASTER_HOWTO = ("use a raster archive, e.g. tiles rendered from OpenStreetMap into an MBTiles file and converted "
                "with `pmtiles convert tiles.mbtiles tiles.pmtiles`")  # fmt: skip


class RasterArchive:
    """An open, checked PMTiles archive of PNG, JPEG or WebP tiles, memory-mapped."""

    def __init__(self, path: str, data: mmap.mmap, header: HeaderDict) -> None:
        self.path, self._data, self._header = path, data, header
        self.media = MEDIA[header["tile_type"]]
        self.min_zoom, self.max_zoom = header["min_zoom"], header["max_zoom"]
        self.gzipped = header["tile_compression"] == Compression.GZIP  # served as Content-Encoding: gzip
        self._directory = functools.lru_cache(maxsize=DIRECTORIES_KEPT)(self._decode_directory)

    def _decode_directory(self, offset: int, length: int) -> list[Entry]:
        return deserialize_directory(self._data[offset : offset + length])

    def tile(self, z: int, x: int, y: int) -> bytes | None:
        """The stored bytes of tile z/x/y (x and y within zoom z), None when the archive has none."""
        h = self._header
        tile_id, offset, length = zxy_to_tileid(z, x, y), h["root_offset"], h["root_length"]
        for _depth in range(MAX_DEPTH):  # what pmtiles' Reader.get does, on directories decoded once
            entry = find_tile(self._directory(offset, length), tile_id)
            if entry is None:
                return None
            if entry.run_length > 0:
                start = h["tile_data_offset"] + entry.offset
                return self._data[start : start + entry.length]
            offset, length = h["leaf_directory_offset"] + entry.offset, entry.length
        return None

    def close(self) -> None:
        self._directory.cache_clear()
        self._data.close()


def open_raster_archive(path: str) -> RasterArchive:
    """The archive at `path`, checked: PMTiles v3 of PNG, JPEG or WebP tiles whose root directory
    reads. ConfigError naming PANTAU_API_BASEMAP_PMTILES with what is wrong otherwise."""
    try:
        with Path(path).open("rb") as f:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except ValueError:  # mmap of an empty file
        raise ConfigError(KEY, f"{path} is empty, not a PMTiles archive") from None
    except OSError as exc:
        raise ConfigError(KEY, f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        header = _checked_header(path, data)
    except BaseException:
        data.close()
        raise
    return RasterArchive(path, data, header)


def _checked_header(path: str, data: mmap.mmap) -> HeaderDict:
    try:
        header = deserialize_header(data[:HEADER_BYTES])
    except SpecVersionUnsupported:
        raise ConfigError(KEY, f"{path} is not PMTiles version 3 (`pmtiles convert` makes one)") from None
    except (MagicNumberNotFound, UnicodeDecodeError, IndexError, ValueError):  # ValueError: an unknown enum byte
        raise ConfigError(KEY, f"{path} is not a PMTiles archive") from None
    kind = header["tile_type"]
    if kind in (TileType.MVT, TileType.MLT):
        raise ConfigError(KEY, f"{path} holds vector ({kind.name}) tiles; the screen draws raster tiles only (PNG, "
                          f"JPEG or WebP): {RASTER_HOWTO}")  # fmt: skip
    if kind not in MEDIA:
        raise ConfigError(KEY, f"{path} holds {kind.name} tiles; the screen draws PNG, JPEG or WebP tiles: "
                          f"{RASTER_HOWTO}")  # fmt: skip
    if header["tile_compression"] not in (Compression.NONE, Compression.UNKNOWN, Compression.GZIP):
        compression = header["tile_compression"].name
        raise ConfigError(KEY, f"{path}'s tiles are compressed with {compression}; raster tiles are stored as "
                          "they are: `pmtiles convert` of an MBTiles file writes them so")  # fmt: skip
    if header["internal_compression"] != Compression.GZIP:  # all the `pmtiles` reader decodes
        compression = header["internal_compression"].name
        raise ConfigError(KEY, f"{path}'s directories are compressed with {compression}, not gzip; "
                          "`pmtiles convert` rewrites the archive with gzip")  # fmt: skip
    ends = (header["root_offset"] + header["root_length"], header["tile_data_offset"] + header["tile_data_length"],
            header["leaf_directory_offset"] + header["leaf_directory_length"])  # fmt: skip
    if max(ends) > len(data):
        raise ConfigError(KEY, f"{path} is cut short: its header names {max(ends)} bytes, the file has {len(data)}")
    try:
        deserialize_directory(data[header["root_offset"] : ends[0]])
    except (OSError, EOFError, zlib.error, struct.error, IndexError):  # gzip.BadGzipFile is an OSError
        raise ConfigError(KEY, f"{path} is damaged: its root directory does not read") from None
    return header
