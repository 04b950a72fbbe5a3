"""`itmflow run`: a workflow file end to end (ingest → extract → tokenize → train → evaluate).

The workflow runner (:mod:`workflows.runner`) knows nothing of the command line: this module
hands it the app's commands (:func:`app_commands`), so dependencies point one way
(CLI → workflows → pipeline → trainers → stores → core).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from itmflow.errors import ConfigError

if TYPE_CHECKING:
    from workflows.runner import Commands


def command_paths(app: typer.Typer) -> frozenset[tuple[str, ...]]:
    """Every command path of ``app`` (``("extract",)``, ``("store", "verify")``, ...)."""
    found: set[tuple[str, ...]] = set()

    def walk(cmd: Any, prefix: tuple[str, ...]) -> None:
        if prefix:
            found.add(prefix)
        # typer >= 0.26 vendors click: duck-type the group instead of importing click's class
        for name, sub in (getattr(cmd, "commands", None) or {}).items():
            walk(sub, prefix + (name,))

    walk(typer.main.get_command(app), ())
    return frozenset(found)


def run_in_process(app: typer.Typer, argv: list[str]) -> None:
    """Run one ``itmflow`` command of ``app`` in this process (errors propagate as exceptions)."""
    try:
        app(args=argv, prog_name="itmflow", standalone_mode=False)
    except SystemExit as exc:  # typer.Exit inside a command
        if exc.code not in (0, None):
            raise ConfigError(f"`itmflow {' '.join(argv)}` exited with status {exc.code}") from None


def app_commands(app: typer.Typer) -> Commands:
    """The :class:`workflows.runner.Commands` of ``app``: its command paths and an in-process runner."""
    from workflows.runner import Commands

    return Commands(names=command_paths(app), run=lambda argv: run_in_process(app, argv))


def register(app: typer.Typer) -> None:
    """Add ``run`` to `app`; the command runs the stages with `app`'s own commands."""

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
        outcomes = run_workflow(flow, app_commands(app), force=force)
        table = Table(title=f"workflow {flow.name}")
        for col in ("stage", "status", "seconds"):
            table.add_column(col)
        for o in outcomes:
            table.add_row(o.name, o.status, f"{o.seconds:.1f}" if o.status == "ran" else "")
        Console().print(table)

    app.command("run")(run)
