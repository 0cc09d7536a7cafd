"""The base map's PMTiles archive (pantau.tiles): what is refused, with what message, and that a
tile is found as protomaps' own reader finds it, without decoding the directories again."""

from __future__ import annotations

import random
import struct
import time
from pathlib import Path

import pytest
from pmtiles.reader import MmapSource, Reader, all_tiles
from pmtiles.tile import Compression, TileType, deserialize_header

from pantau.errors import ConfigError
from pantau.tiles import open_raster_archive
from tests.support_basemap import png, world_archive, write_archive


def refused(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        open_raster_archive(str(path))
    assert info.value.key == "PANTAU_API_BASEMAP_PMTILES"
    return str(info.value)


def patched(path: Path, offset: int, value: bytes) -> Path:
    data = bytearray(path.read_bytes())
    data[offset : offset + len(value)] = value
    path.write_bytes(bytes(data))
    return path


def test_a_raster_archive_is_opened_with_its_format_and_zooms(tmp_path: Path) -> None:
    archive = open_raster_archive(str(world_archive(tmp_path / "kota.pmtiles")))
    try:
        assert (archive.media, archive.min_zoom, archive.max_zoom, archive.gzipped) == ("image/png", 0, 1, False)
        assert archive.tile(1, 1, 0) == png((0, 200, 0))
        assert archive.tile(2, 0, 0) is None  # deeper than the archive
    finally:
        archive.close()


@pytest.mark.parametrize("kind", [TileType.MVT, TileType.MLT])
def test_an_archive_of_vector_tiles_is_refused_with_what_to_do(tmp_path: Path, kind: TileType) -> None:
    message = refused(write_archive(tmp_path / "vektor.pmtiles", {(0, 0, 0): b"\x1a\x00"}, kind))
    assert f"holds vector ({kind.name}) tiles; the screen draws raster tiles only" in message
    assert "pmtiles convert" in message and "OpenStreetMap" in message


def test_other_tiles_than_png_jpeg_or_webp_are_refused(tmp_path: Path) -> None:
    message = refused(write_archive(tmp_path / "avif.pmtiles", {(0, 0, 0): b"avif"}, TileType.AVIF))
    assert "holds AVIF tiles; the screen draws PNG, JPEG or WebP tiles" in message


def test_a_file_that_is_no_pmtiles_v3_archive_is_refused(tmp_path: Path) -> None:
    (tmp_path / "peta.png").write_bytes(png((1, 2, 3)) * 20)
    assert "is not a PMTiles archive" in refused(tmp_path / "peta.png")
    (tmp_path / "kosong.pmtiles").write_bytes(b"")
    assert "is empty" in refused(tmp_path / "kosong.pmtiles")
    (tmp_path / "pendek.pmtiles").write_bytes(b"PMTiles\x03\x00")  # a header cut after its version
    assert "is not a PMTiles archive" in refused(tmp_path / "pendek.pmtiles")
    v2 = patched(world_archive(tmp_path / "v2.pmtiles"), 7, b"\x02")
    assert "is not PMTiles version 3" in refused(v2)
    assert "cannot read" in refused(tmp_path)  # a directory


def test_compressions_the_screen_or_the_reader_cannot_take_are_refused(tmp_path: Path) -> None:
    brotli = write_archive(tmp_path / "br.pmtiles", {(0, 0, 0): b"x"}, tile_compression=Compression.BROTLI)
    assert "tiles are compressed with BROTLI" in refused(brotli)
    plain_directories = patched(world_archive(tmp_path / "dir.pmtiles"), 97, bytes([Compression.NONE.value]))
    assert "directories are compressed with NONE, not gzip" in refused(plain_directories)


def test_a_damaged_or_cut_archive_is_refused(tmp_path: Path) -> None:
    path = world_archive(tmp_path / "rusak.pmtiles")
    root_offset = deserialize_header(path.read_bytes()[:127])["root_offset"]
    assert "root directory does not read" in refused(patched(path, root_offset, b"\x00" * 8))
    cut = world_archive(tmp_path / "potong.pmtiles")
    cut.write_bytes(cut.read_bytes()[:-10])
    assert "is cut short" in refused(cut)


def big_archive(path: Path, seed: int = 14) -> Path:
    """Every tile of zooms 0 to 7 and part of 8, each a different length: enough entries that the
    root directory does not fit its 16 KiB and the writer makes leaf directories."""
    rng = random.Random(seed)
    tiles = {}
    for z in range(9):
        for x in range(min(2**z, 90)):
            for y in range(min(2**z, 90)):
                tiles[(z, x, y)] = struct.pack(">HHH", z, x, y) + bytes(rng.randrange(1, 120))
    return write_archive(path, tiles)


def test_every_tile_is_found_as_protomaps_reader_finds_it_without_decoding_directories_again(tmp_path: Path) -> None:
    path = big_archive(tmp_path / "besar.pmtiles")
    with path.open("rb") as f:
        source = MmapSource(f)
        assert Reader(source).header()["leaf_directory_length"] > 0  # the walk goes through leaves
        expected = dict(all_tiles(source))
    archive = open_raster_archive(str(path))
    try:
        keys = random.Random(1).sample(sorted(expected), 1000)
        started = time.perf_counter()
        for z, x, y in keys:
            assert archive.tile(z, x, y) == expected[(z, x, y)]
        # Decoding a directory of this archive takes milliseconds; a thousand tiles take about that
        # long in all when each directory is decoded once.
        assert time.perf_counter() - started < 1.0
        assert all(archive.tile(z, x, y) == data for (z, x, y), data in expected.items())
        assert archive.tile(8, 200, 200) is None  # within zoom 8, not in the archive
    finally:
        archive.close()
