"""Benchmark result files: ``benchmarks/results/<area>.json`` plus a printed table.

Benchmark-only: the scripts in this folder import it as ``benchlib`` (their folder is first on
``sys.path`` when run as ``python benchmarks/bench_<area>.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from itmflow.files import atomic_write_bytes
from itmflow.provenance import library_versions, machine_info, now_iso

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def row(metric: str, value: float, unit: str, *, baseline: str | None = None,
        baseline_value: float | None = None, **extra: Any) -> dict[str, Any]:
    """One result row; with a baseline measured in the same run the ratio is filled in."""
    out: dict[str, Any] = {"metric": metric, "value": value, "unit": unit, **extra}
    if baseline is not None and baseline_value is not None:
        out["baseline"] = baseline
        out["baseline_value"] = baseline_value
        out["ratio"] = value / baseline_value if baseline_value else None
    return out


def write_result(area: str, config: dict[str, Any], rows: list[dict[str, Any]],
                 results_dir: Path | None = None) -> Path:
    """Write the JSON result of benchmark ``area`` and print its rows as a table."""
    out_dir = results_dir or RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": area, "date": now_iso(), "machine": machine_info(),
           "versions": library_versions(), "config": config, "results": rows}
    path = out_dir / f"{area}.json"
    atomic_write_bytes(path, (json.dumps(doc, indent=2) + "\n").encode("utf-8"))
    print_table(area, rows)
    print(f"wrote {path}")
    return path


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    """Print result rows with rich (metric, value, unit, baseline, ratio)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("metric", "value", "unit", "baseline", "baseline_value", "ratio"):
        table.add_column(col)
    for r in rows:
        cells = []
        for col in ("metric", "value", "unit", "baseline", "baseline_value", "ratio"):
            v = r.get(col)
            cells.append(f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v)))
        table.add_row(*cells)
    Console().print(table)
