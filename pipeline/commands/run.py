"""`itmflow run`: a workflow file end to end (ingest → extract → tokenize → train → evaluate)."""

from __future__ import annotations

from pathlib import Path

import typer


def run(
    workflow: Path = typer.Argument(..., help="Workflow YAML (see workflows/*.yaml)."),
    set_: list[str] = typer.Option([], "--set", help="Override a workflow variable: key=value (repeatable)."),
    force: bool = typer.Option(False, "--force", help="Run every stage even when its stamp says it is done."),
) -> None:
    """Run the stages of WORKFLOW in order, skipping those whose work is already done."""
    from rich.console import Console
    from rich.table import Table

    from workflows.runner import load_workflow, parse_overrides, run_workflow

    flow = load_workflow(workflow, parse_overrides(set_))
    outcomes = run_workflow(flow, force=force)
    table = Table(title=f"workflow {flow.name}")
    for col in ("stage", "status", "seconds"):
        table.add_column(col)
    for o in outcomes:
        table.add_row(o.name, o.status, f"{o.seconds:.1f}" if o.status == "ran" else "")
    Console().print(table)


def register(app: typer.Typer) -> None:
    """Add ``run`` to `app`."""
    app.command("run")(run)
