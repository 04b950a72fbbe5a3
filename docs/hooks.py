"""mkdocs hook: regenerate the CLI reference and the benchmark tables before every build.

docs/gen_cli.py walks the typer app; docs/gen_benchmarks.py reads benchmarks/results/*.json.
Files are rewritten only when their content changes, so `mkdocs serve` does not rebuild in a loop.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"itmflow_docs_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def on_pre_build(config, **kwargs) -> None:
    _load("gen_cli").write()
    _load("gen_benchmarks").write()
