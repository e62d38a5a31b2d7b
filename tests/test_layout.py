"""The package's arrows go one way: the core never imports a view, nothing imports the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "tuner"
#: The views read the database; only the command line starts them.
VIEWS = ("tuner.display", "tuner.report", "tuner.dashboard")


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


def test_the_core_never_imports_a_view_and_nothing_imports_the_cli() -> None:
    modules = {_module(path): _imports(path) for path in PACKAGE.rglob("*.py")}
    assert "tuner.execution.worker" in modules and "tuner.report.page" in modules
    for module, imported in modules.items():
        assert "tuner.cli" not in imported, f"{module} imports the command line"
        if module == "tuner.cli" or _under(module, VIEWS):
            continue
        views = sorted(name for name in imported if _under(name, VIEWS))
        assert not views, f"{module} (core) imports the view(s) {views}"
