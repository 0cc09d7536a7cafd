"""pantau installed from a wheel, outside the checkout, finds what it reads at run time (the rule
pack, the private servers' configs, the fleets): `pip install .` is not an editable install."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from pantau.store import Backend
from tests.support import REPO, pantau_env

pytestmark = pytest.mark.slow


def _run(argv: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`argv` with nothing on its path but what its own interpreter has (no PYTHONPATH)."""
    clean = {k: v for k, v in (env or os.environ).items() if k != "PYTHONPATH"}
    return subprocess.run(argv, cwd=cwd, env=clean, capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with pantau's wheel in it; its dependencies are taken from this one's
    site-packages (a path file), so nothing is downloaded and the checkout is not on its path."""
    root = tmp_path_factory.mktemp("wheel")
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(root / "dist"), str(REPO)], cwd=root
    )
    assert built.returncode == 0, built.stderr
    [wheel] = (root / "dist").glob("pantau-*.whl")
    venv = root / "venv"
    assert _run([sys.executable, "-m", "venv", str(venv)], cwd=root).returncode == 0
    python = venv / "bin" / "python"
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root)
    (Path(site.stdout.strip()) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = _run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], cwd=root)
    assert done.returncode == 0, done.stderr
    return venv


def test_the_installed_pantau_is_not_the_checkout(installed: Path) -> None:
    code = "import pantau, rules; print(pantau.__file__, rules.__file__)"
    where = _run([str(installed / "bin" / "python"), "-c", code], cwd=installed)
    assert where.returncode == 0, where.stderr
    assert str(REPO) not in where.stdout and str(installed) in where.stdout


def test_rules_check_finds_the_shipped_pack(installed: Path) -> None:
    result = _run([str(installed / "bin" / "pantau"), "rules", "--check"], cwd=installed, env=pantau_env())
    assert result.returncode == 0, result.stderr
    assert "rules ok" in result.stdout and str(installed) in result.stdout and str(REPO) not in result.stdout


def test_db_migrate_from_the_wheel(installed: Path, empty_database_url: str, backend: Backend) -> None:
    env = pantau_env(PANTAU_DATABASE_URL=empty_database_url)
    result = _run([str(installed / "bin" / "pantau"), "db", "migrate"], cwd=installed, env=env)
    assert result.returncode == 0, result.stderr
    # The backend the test server gives (the template's migrate chose it the same way).
    assert f"schema up to date on {backend.value}" in result.stdout


def test_the_servers_configs_and_the_fleets_ship(installed: Path) -> None:
    code = (
        "from pantau.settings import SHIPPED_DIR; from simulators.fleet import load_fleet;"
        "print([(SHIPPED_DIR / n).is_file() for n in ('rules.yaml', 'mosquitto.conf', 'postgresql.conf')]);"
        "print(len(load_fleet('sampit').sensors))"
    )
    result = _run([str(installed / "bin" / "python"), "-c", code], cwd=installed)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[True,", "True,", "True]", "22"]
