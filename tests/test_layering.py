"""Dependencies point one way (design.md): core <- stores, detectors <- trainers <- pipeline <-
workflows <- the CLI (pipeline/cli.py and pipeline/commands/), which hands the runner what it needs.

Every import counts, also those inside functions (heavy libraries are imported lazily, and so
were the cycles this test guards against). A script's ``if __name__ == "__main__":`` block is its
composition root and may wire the CLI in.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OURS = ("itmflow", "stores", "detectors", "trainers", "pipeline", "workflows")
CLI = ("pipeline.cli", "pipeline.commands", "pipeline.__main__")

# what each layer may import (besides itself)
ALLOWED = {
    "itmflow": set(),
    "stores": {"itmflow"},
    "detectors": {"itmflow"},
    "trainers": {"itmflow", "stores"},
    "pipeline": {"itmflow", "stores", "detectors", "trainers"},
    "workflows": {"itmflow", "stores", "detectors", "trainers", "pipeline"},
    "cli": set(OURS),
}


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _layer(module: str) -> str:
    if module.startswith(CLI):
        return "cli"
    return module.split(".")[0]


def _is_main_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return (isinstance(node, ast.If) and isinstance(test, ast.Compare)
            and isinstance(test.left, ast.Name) and test.left.id == "__name__")


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if _is_main_block(node):
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _violations() -> list[str]:
    bad = []
    for package in OURS:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = _module(path)
            layer = _layer(module)
            if layer == "cli":
                continue                      # the top: it may import every layer
            for line, name in _imports(ast.parse(path.read_text(encoding="utf-8"))):
                if name.split(".")[0] not in OURS:
                    continue
                target = _layer(name)
                if target != layer and target not in ALLOWED[layer]:
                    bad.append(f"{path.relative_to(ROOT)}:{line}: {module} ({layer}) imports "
                               f"{name} ({target})")
    return bad


def test_dependencies_point_one_way() -> None:
    assert _violations() == []
