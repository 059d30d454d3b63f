"""The engine knows no diffusion: nothing in graph/ imports rollgraph.stages or rollgraph.ui, and stages/ never
imports rollgraph.ui. Every import statement of every file is parsed, function-local ones included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {"graph": ("rollgraph.stages", "rollgraph.ui"), "stages": ("rollgraph.ui",)}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def violations(folder: str) -> list[str]:
    bad = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for line, module in imported_modules(path):
            if any(module == f or module.startswith(f + ".") for f in FORBIDDEN[folder]):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return bad


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_layers_import_only_downwards(folder):
    assert violations(folder) == []


def test_the_check_sees_function_local_and_from_imports(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    from rollgraph.stages.config import TrainConfig\n    import rollgraph.ui.app\n"
                      "from rollgraph import stages\n")
    assert [m for _, m in imported_modules(sample)] == ["rollgraph", "rollgraph.stages", "rollgraph.stages.config",
                                                         "rollgraph.stages.config.TrainConfig", "rollgraph.ui.app"]
