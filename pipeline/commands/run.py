"""`itmflow run`: a workflow file end to end (ingest → extract → tokenize → train → evaluate).

The workflow runner (:mod:`workflows.runner`) knows nothing of the command line: this module
hands it the app's commands (:func:`app_commands`), so dependencies point one way
(CLI → workflows → pipeline → trainers → stores → core).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

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


def _list_workflows(as_json: bool) -> None:
    from pipeline.commands._common import print_json
    from workflows.runner import bundled_workflows, describe_workflow

    flows = [describe_workflow(p) for p in bundled_workflows().values()]
    if as_json:
        print_json({"workflows": flows})
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="bundled workflows — `itmflow run NAME --set VAR=VALUE`")
    for col in ("name", "what it does", "variables (defaults)", "stages"):
        table.add_column(col, overflow="fold")
    for flow in flows:
        variables = "\n".join(f"{k}={_yaml_value(v)}" for k, v in flow["vars"].items())
        table.add_row(flow["name"], flow["description"], variables, ", ".join(flow["stages"]))
    Console(width=max(Console().width, 120)).print(table)


def _yaml_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def register(app: typer.Typer) -> None:
    """Add ``run`` to `app`; the command runs the stages with `app`'s own commands."""

    def run(
        workflow: Optional[str] = typer.Argument(
            None, metavar="WORKFLOW", help="A bundled workflow by name (sample, coco, flickr30k, "
            "folder: `itmflow run --list`) or a workflow YAML file."),
        set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE",
                                       help="Override a workflow variable (repeatable)."),
        force: bool = typer.Option(False, "--force", help="Run every stage even when its stamp says it is done."),
        list_: bool = typer.Option(False, "--list", help="List the bundled workflows and their variables."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print which stages would run and which "
                                     "are done, with their command lines; runs nothing."),
        as_json: bool = typer.Option(False, "--json", help="With --list or --dry-run (or after a "
                                     "run): print the result as one JSON document on stdout."),
    ) -> None:
        """Run the stages of WORKFLOW in order, skipping those whose work is already done."""
        from pipeline.commands._common import people_console, print_json

        if list_:
            _list_workflows(as_json)
            return
        if workflow is None:
            raise typer.BadParameter("give a workflow name or file (`itmflow run --list` shows "
                                     "the bundled ones)", param_hint="WORKFLOW")
        from rich.table import Table

        from workflows.runner import load_workflow, parse_overrides, resolve_workflow, run_workflow

        flow = load_workflow(resolve_workflow(workflow), parse_overrides(set_))
        if as_json and not dry_run:
            import contextlib
            import sys

            # the stages' own output is for people: keep stdout for the one JSON document
            with contextlib.redirect_stdout(sys.stderr):
                outcomes = run_workflow(flow, app_commands(app), force=force)
        else:
            outcomes = run_workflow(flow, app_commands(app), force=force, dry_run=dry_run)
        table = Table(title=f"workflow {flow.name}" + (" (dry run)" if dry_run else ""))
        for col in ("stage", "status", "seconds"):
            table.add_column(col)
        for o in outcomes:
            table.add_row(o.name, o.status, f"{o.seconds:.1f}" if o.status == "ran" else "")
        people_console(as_json).print(table)
        if as_json:
            print_json({"workflow": flow.name, "file": str(flow.path), "dry_run": dry_run,
                        "stages": [{"name": o.name, "status": o.status,
                                    "seconds": round(o.seconds, 3), "argv": o.argv}
                                   for o in outcomes]})

    app.command("run")(run)
