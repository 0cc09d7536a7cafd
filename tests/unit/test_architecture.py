"""The architecture contract: services stand on the kernel alone (docs/architecture.md).

- the kernel (`pantau/`) imports no service, except `pantau/cli.py`, which assembles them;
- ingest, rules, simulators and api import none of one another;
- nothing but the CLI imports the benchmarks; benchmarks and tests may import anything.

Every import statement counts, at the top of a module or inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support import REPO

SERVICES = ("ingest", "rules", "simulators", "api")
# Modules of the kernel allowed to import services: the command line, which assembles them.
ASSEMBLY = {"pantau/cli.py", "pantau/__main__.py"}


def imported_packages(source: str) -> set[str]:
    """The top-level packages a module's import statements name."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def violations(root: Path) -> list[str]:
    """Each import that breaks the contract, as 'module imports package (why)'."""
    out: list[str] = []
    for package in ("pantau", *SERVICES):
        for path in sorted((root / package).rglob("*.py")):
            module = path.relative_to(root).as_posix()
            imported = imported_packages(path.read_text(encoding="utf-8"))
            if package == "pantau":
                forbidden = set() if module in ASSEMBLY else {*SERVICES, "benchmarks"}
                why = "the kernel imports no service"
            else:
                forbidden = {*SERVICES, "benchmarks"} - {package}
                why = "services import only the kernel"
            out += [f"{module} imports {name} ({why})" for name in sorted(imported & forbidden)]
    return out


def test_services_stand_on_the_kernel_alone() -> None:
    assert violations(REPO) == []


def test_the_contract_sees_a_violation(tmp_path: Path) -> None:
    # A copy of the house with one service reaching into another, at the top and in a function,
    # and the kernel reaching into a service.
    for package in ("pantau", *SERVICES):
        (tmp_path / package).mkdir()
    (tmp_path / "pantau" / "cli.py").write_text("import rules.worker\nfrom ingest import service\n")
    (tmp_path / "pantau" / "store.py").write_text("def f():\n    from ingest.writer import ReadingWriter\n")
    (tmp_path / "rules" / "worker.py").write_text("from pantau.outbox import claim\nfrom ingest.writer import X\n")
    (tmp_path / "api" / "app.py").write_text("def g():\n    import simulators.load\n    import benchmarks\n")
    assert violations(tmp_path) == [
        "pantau/store.py imports ingest (the kernel imports no service)",
        "rules/worker.py imports ingest (services import only the kernel)",
        "api/app.py imports benchmarks (services import only the kernel)",
        "api/app.py imports simulators (services import only the kernel)",
    ]
