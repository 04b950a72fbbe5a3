"""Dependencies point one way (design.md): core <- stores, detectors <- trainers <- pipeline <-
workflows <- the CLI (pipeline/cli.py and pipeline/commands/), which hands the runner what it needs.
Inside a package too: no module imports one that imports it back, however indirectly.

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


def _imports(tree: ast.AST, *, modules: set[str] | None = None) -> list[tuple[int, str]]:
    """``(line, module)`` of every import. Given our ``modules``, ``from a import b`` names ``a.b``
    where that is a module (a submodule import runs ``a/__init__`` too, but ``a`` does not import
    ``a.b`` back through it), and ``a`` for the names that are not."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if _is_main_block(node):
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if modules is None:
                found.append((node.lineno, node.module))
            else:
                subs = {f"{node.module}.{a.name}" for a in node.names} & modules
                found.extend((node.lineno, sub) for sub in sorted(subs))
                if len(subs) < len(node.names):
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


def _module_graph() -> dict[str, set[str]]:
    """Our modules -> the modules of ours they import (anywhere in the file, but ``__main__`` blocks)."""
    paths = {_module(path): path for package in OURS for path in sorted((ROOT / package).rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        targets = {name for _, name in _imports(tree, modules=set(paths))}
        graph[module] = {t for t in targets if t in paths and t != module}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_no_import_cycles() -> None:
    assert _cycles(_module_graph()) == []


def test_cycle_search_finds_a_cycle() -> None:
    graph = {"a.x": {"a.y"}, "a.y": {"a.z"}, "a.z": {"a.x"}, "a.w": {"a.x"}}
    assert _cycles(graph) == [["a.x", "a.y", "a.z"]]
