"""`pantau rules --check` through the real command: a good pack is summarised, a bad one named."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.test_cli import pantau
from tests.support import REPO, pantau_env


def test_check_summarises_the_default_pack() -> None:
    out = pantau("rules", "--check", env=pantau_env()).stdout
    assert out.startswith(f"{REPO / 'deploy' / 'rules.yaml'}: 14 rules ok (")
    assert "composite 1" in out and "index_band 4" in out and "not evaluated" not in out


def test_check_names_the_file_rule_and_field_of_a_mistake(tmp_path: Path) -> None:
    bad = tmp_path / "rules.yaml"
    bad.write_text(
        "version: 1\nrules:\n- id: too-high\n  kind: threshold\n  select: {kind: flood}\n"
        "  metric: water_level_cm\n  op: '>'\n  value: 300\n  for: 5x\n  severity: warning\n"
    )
    proc = pantau("rules", "--check", "--file", str(bad), env=pantau_env(), check=False)
    assert proc.returncode != 0
    assert str(bad) in proc.stderr and "too-high" in proc.stderr and "for" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_check_of_a_file_too_deep_to_load_is_one_line_naming_it(tmp_path: Path) -> None:
    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 5000 + "]" * 5000)
    proc = pantau("rules", "--check", "--file", str(deep), env=pantau_env(), check=False)
    assert proc.returncode == 1
    assert proc.stderr == f"pantau: {deep}: not valid YAML: nested too deeply to load\n"
    assert proc.stdout == ""


def _deep_block(path: Path) -> Path:
    # 5,000 block-style sequences, each inside the last: one level more indented per line.
    path.write_text("rules:\n" + "".join(" " * depth + "-\n" for depth in range(1, 5000)))
    return path


def _directory(path: Path) -> Path:
    path.mkdir()
    return path


@pytest.mark.parametrize(
    ("make", "problem"),
    [(_deep_block, "not valid YAML: nested too deeply to load"), (_directory, "cannot be read: Is a directory")],
)
def test_check_of_a_file_that_cannot_be_loaded_is_one_line_naming_it(
    tmp_path: Path, make: Callable[[Path], Path], problem: str
) -> None:
    path = make(tmp_path / "rules.yaml")
    proc = pantau("rules", "--check", "--file", str(path), env=pantau_env(), check=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", f"pantau: {path}: {problem}\n")
