"""Unit tests of `pantau.sensors.load_manifest`: CSV and YAML fleets, and errors that name the spot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pantau.domain import Sensor
from pantau.errors import ManifestError, PantauError
from pantau.metrics import SensorKind
from pantau.sensors import load_manifest

CSV_HEADER = "id,kind,city,district,name,lat,lon"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def manifest_error(path: Path) -> str:
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert isinstance(info.value, PantauError)
    return str(info.value)


# -- CSV ---------------------------------------------------------------------------------------------


def test_csv_manifest(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "fleet.csv",
        f"{CSV_HEADER}\n"
        "KTG-AQ-01,air,kotamobagu,Kotamobagu Barat,Taman Kota,0.7341,124.3150\n"
        "SPT-RV-01,flood,sampit,Mentawa Baru Ketapang,Sungai Mentaya,-2.5370,112.9500\n"
        "MJK-TR-01,traffic,mojokerto,,,,\n",
    )
    assert load_manifest(path) == [
        Sensor(
            id="KTG-AQ-01",
            kind=SensorKind.AIR,
            city="kotamobagu",
            district="Kotamobagu Barat",
            name="Taman Kota",
            lat=0.7341,
            lon=124.3150,
        ),
        Sensor(
            id="SPT-RV-01",
            kind=SensorKind.FLOOD,
            city="sampit",
            district="Mentawa Baru Ketapang",
            name="Sungai Mentaya",
            lat=-2.5370,
            lon=112.95,
        ),
        Sensor(id="MJK-TR-01", kind=SensorKind.TRAFFIC, city="mojokerto"),
    ]


def test_csv_kind_is_a_sensor_kind_and_empty_fields_default(tmp_path: Path) -> None:
    path = write(tmp_path, "fleet.csv", "id,kind,city\nMJK-TR-01,traffic,mojokerto\n")
    [sensor] = load_manifest(path)
    assert sensor.kind is SensorKind.TRAFFIC
    assert (sensor.district, sensor.name, sensor.lat, sensor.lon, sensor.metadata) == ("", "", None, None, {})


def test_csv_cells_are_stripped(tmp_path: Path) -> None:
    path = write(
        tmp_path, "fleet.csv", f"{CSV_HEADER}\n KTG-AQ-01 , air , kotamobagu , Kotamobagu Timur , , 0.73 , 124.3 \n"
    )
    [sensor] = load_manifest(path)
    assert (sensor.id, sensor.kind, sensor.city, sensor.district, sensor.lat, sensor.lon) == (
        "KTG-AQ-01",
        SensorKind.AIR,
        "kotamobagu",
        "Kotamobagu Timur",
        0.73,
        124.3,
    )


def test_csv_extra_columns_become_metadata_with_numbers_parsed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "rivers.csv",
        f"{CSV_HEADER},siaga3_cm,siaga1_cm,gauge_zero_m,river,capacity\n"
        "SPT-RV-01,flood,sampit,,,,,150,300,12.75,Mentaya,\n"
        "SPT-RV-02,flood,sampit,,,,,-20,1e3, 7 ,,\n",
    )
    first, second = load_manifest(path)
    assert first.metadata == {"siaga3_cm": 150, "siaga1_cm": 300, "gauge_zero_m": 12.75, "river": "Mentaya"}
    assert type(first.metadata["siaga3_cm"]) is int
    assert type(first.metadata["gauge_zero_m"]) is float
    # Empty cells are left out rather than stored as "".
    assert "capacity" not in first.metadata
    assert second.metadata == {"siaga3_cm": -20, "siaga1_cm": 1000.0, "gauge_zero_m": 7}


@pytest.mark.parametrize("cell", ["nan", "NaN", "inf", "-Infinity"])
def test_csv_non_finite_words_stay_text(tmp_path: Path, cell: str) -> None:
    # Metadata is stored as jsonb, which has no NaN or Infinity.
    path = write(tmp_path, "fleet.csv", f"id,kind,city,note\nKTG-AQ-01,air,kotamobagu,{cell}\n")
    [sensor] = load_manifest(path)
    assert sensor.metadata == {"note": cell}


def test_csv_with_quoted_fields(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "fleet.csv",
        f'{CSV_HEADER}\nKTG-AQ-01,air,kotamobagu,"Kotamobagu Barat","Taman Kota, sisi utara",0.73,124.31\n',
    )
    [sensor] = load_manifest(path)
    assert sensor.name == "Taman Kota, sisi utara"


def test_csv_with_a_byte_order_mark(tmp_path: Path) -> None:
    # Spreadsheet programs write "CSV UTF-8" with a BOM in front of the header.
    path = tmp_path / "fleet.csv"
    path.write_bytes(b"\xef\xbb\xbf" + b"id,kind,city\nKTG-AQ-01,air,kotamobagu\n")
    assert [s.id for s in load_manifest(path)] == ["KTG-AQ-01"]


def test_csv_header_only_is_an_empty_fleet(tmp_path: Path) -> None:
    assert load_manifest(write(tmp_path, "fleet.csv", f"{CSV_HEADER}\n")) == []


def test_csv_uppercase_suffix_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, "FLEET.CSV", "id,kind,city\nKTG-AQ-01,air,kotamobagu\n")
    assert len(load_manifest(path)) == 1


@pytest.mark.parametrize(
    ("header", "missing"),
    [("kind,city", "id"), ("id,city,name", "kind"), ("id,kind,lat,lon", "city"), ("name,lat", "id, kind, city")],
)
def test_csv_header_lacking_required_columns(tmp_path: Path, header: str, missing: str) -> None:
    path = write(tmp_path, "fleet.csv", f"{header}\n")
    assert manifest_error(path) == f"{path}: header lacks column(s) {missing}"


def test_csv_missing_id_names_file_line_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, "fleet.csv", f"{CSV_HEADER}\nKTG-AQ-01,air,kotamobagu,,,,\n,air,kotamobagu,,,,\n")
    assert manifest_error(path) == f"{path}:3: field 'id' is required"


def test_csv_missing_kind(tmp_path: Path) -> None:
    path = write(tmp_path, "fleet.csv", f"{CSV_HEADER}\nKTG-AQ-01,,kotamobagu,,,,\n")
    assert manifest_error(path) == f"{path}:2: field 'kind' is required"


def test_csv_missing_city(tmp_path: Path) -> None:
    path = write(tmp_path, "fleet.csv", f"{CSV_HEADER}\nKTG-AQ-01,air,,,,,\n")
    assert manifest_error(path) == f"{path}:2: field 'city' is required (or a top-level 'city')"


@pytest.mark.parametrize("kind", ["weather", "Air", "a:b"])
def test_csv_bad_kind(tmp_path: Path, kind: str) -> None:
    path = write(tmp_path, "fleet.csv", f"{CSV_HEADER}\nKTG-AQ-01,{kind},kotamobagu,,,,\n")
    message = manifest_error(path)
    assert message.startswith(f"{path}:2: field 'kind': ")
    assert repr(kind) in message


@pytest.mark.parametrize(
    ("lat", "lon", "field"),
    [("north", "124.3", "lat"), ("0.7", "east", "lon"), ("0,7", "124.3", "lat")],
)
def test_csv_coordinate_that_is_not_a_number(tmp_path: Path, lat: str, lon: str, field: str) -> None:
    path = write(tmp_path, "fleet.csv", f'{CSV_HEADER}\nKTG-AQ-01,air,kotamobagu,,,"{lat}","{lon}"\n')
    bad = lat if field == "lat" else lon
    assert manifest_error(path) == f"{path}:2: field {field!r}: {bad!r} is not a number"


@pytest.mark.parametrize(("lat", "lon", "field"), [("91", "124", "lat"), ("-90.5", "0", "lat"), ("0", "180.1", "lon")])
def test_csv_coordinate_out_of_range(tmp_path: Path, lat: str, lon: str, field: str) -> None:
    path = write(tmp_path, "fleet.csv", f"{CSV_HEADER}\nKTG-AQ-01,air,kotamobagu,,,{lat},{lon}\n")
    assert manifest_error(path).startswith(f"{path}:2: field {field!r}: ")


def test_csv_bad_sensor_id_and_city(tmp_path: Path) -> None:
    path = write(tmp_path, "fleet.csv", "id,kind,city\nKTG AQ 01,air,kotamobagu\n")
    assert manifest_error(path).startswith(f"{path}:2: field 'id': ")
    path = write(tmp_path, "fleet2.csv", "id,kind,city\nKTG-AQ-01,air,Kota Mobagu\n")
    assert manifest_error(path).startswith(f"{path}:2: field 'city': ")


def test_csv_line_numbers_count_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "fleet.csv", "id,kind,city\nKTG-AQ-01,air,kotamobagu\n\nKTG-AQ-02,wind,kotamobagu\n")
    assert manifest_error(path).startswith(f"{path}:4: field 'kind': ")


def test_csv_duplicate_id(tmp_path: Path) -> None:
    path = write(tmp_path, "fleet.csv", "id,kind,city\nKTG-AQ-01,air,kotamobagu\nKTG-AQ-01,flood,kotamobagu\n")
    assert manifest_error(path) == f"{path}: sensor id 'KTG-AQ-01' appears more than once"


# -- YAML ----------------------------------------------------------------------------------------------

FLEET_YAML = """\
city: sampit
districts: [Mentawa Baru Ketapang, Baamang]   # for the simulators; ignored here
sensors:
  - id: SPT-RV-01
    kind: flood
    district: Mentawa Baru Ketapang
    name: Sungai Mentaya, dermaga
    lat: -2.537
    lon: 112.95
    metadata:
      siaga3_cm: 150
      siaga2_cm: 200
      river: Mentaya
  - id: SPT-AQ-01
    kind: air
  - id: KTG-AQ-01
    kind: air
    city: kotamobagu
    lat: "0.7341"
    lon: 124
"""


def test_yaml_manifest(tmp_path: Path) -> None:
    sensors = load_manifest(write(tmp_path, "sampit.yaml", FLEET_YAML))
    assert sensors == [
        Sensor(
            id="SPT-RV-01",
            kind=SensorKind.FLOOD,
            city="sampit",
            district="Mentawa Baru Ketapang",
            name="Sungai Mentaya, dermaga",
            lat=-2.537,
            lon=112.95,
            metadata={"siaga3_cm": 150, "siaga2_cm": 200, "river": "Mentaya"},
        ),
        Sensor(id="SPT-AQ-01", kind=SensorKind.AIR, city="sampit"),
        Sensor(id="KTG-AQ-01", kind=SensorKind.AIR, city="kotamobagu", lat=0.7341, lon=124.0),
    ]
    assert type(sensors[2].lon) is float


def test_yml_suffix_and_same_result(tmp_path: Path) -> None:
    assert load_manifest(write(tmp_path, "a.yml", FLEET_YAML)) == load_manifest(write(tmp_path, "b.YAML", FLEET_YAML))


def test_yaml_numeric_id_becomes_text(tmp_path: Path) -> None:
    [sensor] = load_manifest(write(tmp_path, "f.yaml", "city: sampang\nsensors:\n  - {id: 1042, kind: rain}\n"))
    assert sensor.id == "1042"


def test_yaml_empty_sensor_list(tmp_path: Path) -> None:
    assert load_manifest(write(tmp_path, "f.yaml", "city: sampang\nsensors: []\n")) == []


@pytest.mark.parametrize(
    "text",
    ["", "- id: A\n  kind: air\n", "city: sampit\n", "sensors:\n  id: A\n", "just text\n", "sensors: null\n"],
)
def test_yaml_without_a_sensors_list(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "f.yaml", text)
    assert manifest_error(path) == f"{path}: expected a mapping with a 'sensors' list"


def test_yaml_sensor_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "f.yaml", "city: sampit\nsensors:\n  - {id: SPT-AQ-01, kind: air}\n  - SPT-AQ-02\n")
    assert manifest_error(path) == f"{path}: sensors[1]: expected a mapping"


def test_yaml_missing_id(tmp_path: Path) -> None:
    path = write(tmp_path, "f.yaml", "city: sampit\nsensors:\n  - {id: SPT-AQ-01, kind: air}\n  - {kind: air}\n")
    assert manifest_error(path) == f"{path}: sensors[1] (?): field 'id' is required"


def test_yaml_missing_city_without_default(tmp_path: Path) -> None:
    path = write(tmp_path, "f.yaml", "sensors:\n  - {id: SPT-AQ-01, kind: air}\n")
    assert manifest_error(path) == f"{path}: sensors[0] (SPT-AQ-01): field 'city' is required (or a top-level 'city')"


def test_yaml_bad_kind(tmp_path: Path) -> None:
    path = write(tmp_path, "f.yaml", "city: sampit\nsensors:\n  - {id: SPT-AQ-01, kind: pollution}\n")
    message = manifest_error(path)
    assert message.startswith(f"{path}: sensors[0] (SPT-AQ-01): field 'kind': ")
    assert "'pollution'" in message


@pytest.mark.parametrize(("field", "value"), [("lat", "north"), ("lat", "[1, 2]"), ("lon", "{x: 1}")])
def test_yaml_coordinate_that_is_not_a_number(tmp_path: Path, field: str, value: str) -> None:
    path = write(
        tmp_path, "f.yaml", f"city: sampit\nsensors:\n  - id: SPT-AQ-01\n    kind: air\n    {field}: {value}\n"
    )
    assert manifest_error(path).startswith(f"{path}: sensors[0] (SPT-AQ-01): field {field!r}: ")


def test_yaml_latitude_out_of_range(tmp_path: Path) -> None:
    path = write(tmp_path, "f.yaml", "city: sampit\nsensors:\n  - {id: SPT-AQ-01, kind: air, lat: -95}\n")
    assert manifest_error(path) == f"{path}: sensors[0] (SPT-AQ-01): field 'lat': lat: -95.0 is outside -90..90"


def test_yaml_unknown_field(tmp_path: Path) -> None:
    path = write(
        tmp_path, "f.yaml", "city: sampit\nsensors:\n  - {id: SPT-AQ-01, kind: air, siaga3_cm: 150, river: x}\n"
    )
    assert manifest_error(path) == f"{path}: sensors[0] (SPT-AQ-01): unknown field(s) river, siaga3_cm (use 'metadata')"


def test_yaml_metadata_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "f.yaml", "city: sampit\nsensors:\n  - {id: SPT-AQ-01, kind: air, metadata: [1, 2]}\n")
    assert manifest_error(path) == f"{path}: sensors[0] (SPT-AQ-01): field 'metadata' must be a mapping"


def test_yaml_duplicate_id(tmp_path: Path) -> None:
    path = write(
        tmp_path, "f.yaml", "city: sampit\nsensors:\n  - {id: SPT-AQ-01, kind: air}\n  - {id: SPT-AQ-01, kind: rain}\n"
    )
    assert manifest_error(path) == f"{path}: sensor id 'SPT-AQ-01' appears more than once"


@pytest.mark.parametrize("text", ["sensors: [\n", "city: sampit\nsensors:\n  - id: A\n   kind: air\n", "a: b: c\n"])
def test_invalid_yaml(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "f.yaml", text)
    assert manifest_error(path).startswith(f"{path}: not valid YAML: ")


# -- files ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fleet.json", "fleet.txt", "fleet", "fleet.csv.bak"])
def test_wrong_suffix(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, name, "id,kind,city\nKTG-AQ-01,air,kotamobagu\n")
    assert manifest_error(path) == f"{path}: expected a .csv, .yaml or .yml file"


@pytest.mark.parametrize("name", ["missing.csv", "missing.yaml"])
def test_missing_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    assert manifest_error(path) == f"{path}: file not found"


@pytest.mark.parametrize("name", ["fleet.csv", "fleet.yaml"])
def test_file_that_is_not_utf8(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    text = "id,kind,city,name\nKTG-AQ-01,air,kotamobagu,Jalan Ahmad Yani (\u00e9)\n"
    if name.endswith(".yaml"):
        text = "city: kotamobagu\nsensors:\n  - {id: KTG-AQ-01, kind: air, name: Caf\u00e9}\n"
    path.write_bytes(text.encode("latin-1"))
    assert manifest_error(path).startswith(f"{path}: not UTF-8 text: ")


def test_errors_name_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "kotamobagu-2024.csv", "id,kind,city\nKTG-AQ-01,air,kotamobagu\nKTG-AQ-02,,kotamobagu\n")
    message = manifest_error(path)
    assert re.match(rf"^{re.escape(str(path))}:3: ", message)


# -- size ----------------------------------------------------------------------------------------------


def test_yaml_manifest_of_10000_sensors_loads(tmp_path: Path) -> None:
    # Block style, as `pantau simulate --write-manifest big.yaml` writes it (libyaml's loader: a few
    # seconds; the pure-Python one took about 13 s).
    kinds = ("air", "traffic", "flood", "rain")
    lines = ["city: sampit", "sensors:"]
    for i in range(10_000):
        lines += [
            f"  - id: SPT-X-{i:05d}",
            f"    kind: {kinds[i % 4]}",
            f"    district: Kecamatan {i % 7}",
            f"    name: Sensor {i}",
            f"    lat: {-2.5 - i * 1e-5:.5f}",
            f"    lon: {112.9 + i * 1e-5:.5f}",
            "    metadata:",
            f"      order: {i % 5 + 1}",
            f"      corridor: Jl. Tjilik Riwut km {i % 40}",
        ]
    path = write(tmp_path, "big.yaml", "\n".join(lines) + "\n")
    sensors = load_manifest(path)
    assert len(sensors) == 10_000
    assert len({s.id for s in sensors}) == 10_000
    first, last = sensors[0], sensors[-1]
    assert (first.id, first.kind, first.city, first.district, first.lat) == (
        "SPT-X-00000", SensorKind.AIR, "sampit", "Kecamatan 0", -2.5
    )  # fmt: skip
    assert (last.id, last.kind, last.name, last.lon) == ("SPT-X-09999", SensorKind.RAIN, "Sensor 9999", 112.99999)
    assert last.metadata == {"order": 5, "corridor": "Jl. Tjilik Riwut km 39"}
    assert sensors[4242].metadata == {"order": 3, "corridor": "Jl. Tjilik Riwut km 2"}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("sensors: " + "[" * 5000 + "]" * 5000 + "\n", "not valid YAML: nested too deeply to load"),
        (
            "sensors:\n" + "".join(" " * i + "- \n" for i in range(0, 10000, 2)),
            "not valid YAML: nested too deeply to load",
        ),
        (
            "sensors: [\n",
            "not valid YAML: line 2, column 1: did not find expected node content (while parsing a flow node)",
        ),
        ("created: 2024-13-01\nsensors: []\n", "not valid YAML: ValueError: month must be in 1..12"),
    ],
)
def test_a_yaml_manifest_the_loader_fails_on_is_one_line_naming_the_file(
    tmp_path: Path, text: str, problem: str
) -> None:
    # A 5,000-deep manifest raised RecursionError out of `pantau sensors import` (a traceback).
    path = write(tmp_path, "f.yaml", text)
    assert manifest_error(path) == f"{path}: {problem}"
