"""The package's arrows go one way, stated per subpackage (CONTRIBUTING.md: design): the tree is
the map."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "tuner"
#: The views read studies; only the command line starts them.
VIEWS = ("tuner.views",)
#: What writes trials or studies: the views must not reach it.
RECORDS = (
    "tuner.runner",
    "tuner.execution",
    "tuner.study.lifecycle",
    "tuner.study.confirmation",
    "tuner.study.warm_start",
)
#: What is sampled knows nothing of how trials run, what a study concluded, or who reads it.
NOT_FOR_SEARCH = ("tuner.execution", "tuner.study", "tuner.views", "tuner.runner")
#: Storage knows rows and files: not search spaces, configs, workloads or what runs them.
NOT_FOR_STORAGE = (
    "tuner.search",
    "tuner.study",
    "tuner.execution",
    "tuner.workloads",
    "tuner.views",
    "tuner.spec",
    "tuner.config",
    "tuner.runner",
)
#: The one module allowed to import the CLI: ``python -m tuner``.
ENTRY_POINT = "tuner.__main__"


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every tuner module a file imports, at its top or inside a function (lazy imports too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.startswith("tuner")}


def _under(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == package or name.startswith(package + ".") for package in packages)


MODULES = {_module(path): _imports(path) for path in PACKAGE.rglob("*.py")}


def _offending(of: tuple[str, ...], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    """For each module under `of`, the forbidden modules it imports."""
    found = {
        module: sorted(name for name in imported if _under(name, forbidden))
        for module, imported in MODULES.items()
        if _under(module, of)
    }
    return {module: names for module, names in found.items() if names}


def test_the_tree_has_the_subpackages_the_rules_name() -> None:
    for package in ("search", "study", "storage", "execution", "workloads", "views"):
        assert f"tuner.{package}" in MODULES, f"tuner/{package}/ is missing"
    assert "tuner.execution.worker" in MODULES and "tuner.views.report.page" in MODULES


def test_nothing_imports_the_cli_but_python_dash_m() -> None:
    for module, imported in MODULES.items():
        if module != ENTRY_POINT:
            assert "tuner.cli" not in imported, f"{module} imports the command line"


def test_the_core_never_imports_a_view() -> None:
    for module, imported in MODULES.items():
        if module in ("tuner.cli", ENTRY_POINT) or _under(module, VIEWS):
            continue
        views = sorted(name for name in imported if _under(name, VIEWS))
        assert not views, f"{module} (core) imports the view(s) {views}"


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("tuner.views", RECORDS),
        ("tuner.search", NOT_FOR_SEARCH),
        ("tuner.storage", NOT_FOR_STORAGE),
    ],
    ids=["views-import-nothing-that-records", "search-never-runs", "storage-knows-rows"],
)
def test_each_subpackage_keeps_to_its_side(package: str, forbidden: tuple[str, ...]) -> None:
    assert _offending((package,), forbidden) == {}
