"""The ``itmflow`` command line: one typer app; each command group lives in ``pipeline/commands/``.

Heavy libraries (torch, ray, transformers) are imported inside the commands that need them, so
``itmflow --help`` stays fast. Errors a user can cause (:class:`itmflow.errors.ItmflowError`) are
printed in a line or two and exit with status 1; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import sys

import typer

from itmflow import __version__
from itmflow.errors import ItmflowError
from pipeline.commands._common import polish
from pipeline.commands import (
    detect,
    embed,
    evaluate,
    extract,
    ingest,
    run,
    serve,
    store,
    tokenize,
    train,
    weights,
)

app = typer.Typer(
    name="itmflow",
    help="Region features, caption tokenizations and image-text matchers from raw image collections.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"itmflow {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """itmflow: bottom-up region features → stores → TERN / TERAN / SGRAF."""
    _state["debug"] = debug


for _module in (ingest, detect, extract, tokenize, store, train, evaluate, embed, serve, weights, run):
    _module.register(app)
polish(app)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except ItmflowError as exc:
        if _state["debug"] or "--debug" in sys.argv:
            raise
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(1)
    except KeyboardInterrupt:
        # commands that can resume say how (extract); anything else stopped by Ctrl-C ends quietly
        if _state["debug"] or "--debug" in sys.argv:
            raise
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
