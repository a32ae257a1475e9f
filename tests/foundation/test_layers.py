"""Layers import downward only: services never import pipelines/ or agent/; pipelines never agent/.

Read from the source (every import, including those inside functions and under TYPE_CHECKING),
so a builder that reaches up into the CLI layer for a type or a helper fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"services": ("agent", "pipelines"), "pipelines": ("agent",)}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of each absolute import in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(layer):
    above = FORBIDDEN[layer]
    files = sorted((ROOT / layer).rglob("*.py"))
    assert files
    upward = [
        f"{path.relative_to(ROOT)}:{line}: {module}"
        for path in files
        for line, module in imported_modules(path)
        if module.split(".")[0] in above
    ]
    assert not upward, "imports reaching up a layer:\n" + "\n".join(upward)
