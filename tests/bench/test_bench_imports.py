"""The benchmarks stand on their own: no module of ``bench/`` imports a test module."""

from __future__ import annotations

import ast
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_bench_module_imports_tests() -> None:
    offenders = {
        f"{path.name}: {name}"
        for path in sorted(BENCH.glob("*.py"))
        for name in _imported_modules(path)
        if name == "tests" or name.startswith("tests.")
    }

    assert not offenders, f"bench/ imports test modules: {sorted(offenders)}"
