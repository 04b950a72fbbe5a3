"""`itmflow weights list|download`: the catalog of detector / matcher / BERT releases, and fetching
one into the cache (:mod:`itmflow.weights`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

weights_app = typer.Typer(
    name="weights", no_args_is_help=True,
    help="Detector checkpoints, the authors' TERN / TERAN / SGRAF releases and BERT: where they "
         "come from, and downloads into the cache.")


@weights_app.command("list")
def list_command(
    as_json: bool = typer.Option(False, "--json", help="Print the catalog as JSON."),
) -> None:
    """The checkpoints users actually use: name, source, size, sha256, the command that reads it."""
    from rich.console import Console
    from rich.table import Table

    from itmflow.weights import CATALOG, cached_path

    entries = list(CATALOG.values())
    cached = {}
    for e in entries:
        try:
            cached[e.name] = cached_path(e)
        except Exception:  # a broken cache must not break the listing
            cached[e.name] = None
    if as_json:
        rows = []
        for e in entries:
            row = e.as_dict()
            row["cached"] = str(cached[e.name]) if cached[e.name] else None
            rows.append(row)
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="itmflow weights — a NAME works wherever a weights path does")
    for col in ("name", "source", "size", "sha256", "used by", "download"):
        table.add_column(col, overflow="fold")
    for e in entries:
        if cached[e.name]:
            how = f"cached: {cached[e.name]}"
        elif e.downloadable:
            how = "yes"
        else:
            how = f"no — by hand from {e.page}"
        table.add_row(e.name, e.source, e.size or "unknown", e.sha256 or "unknown", e.used_by, how)
    Console(width=max(Console().width, 160)).print(table)
    typer.echo("--json prints every field (what each file is, notes, files, pages).")


@weights_app.command("download")
def download_command(
    spec: str = typer.Argument(..., metavar="NAME|URL", help="A name of `itmflow weights list`, an "
                               "http(s) URL or a Hugging Face hub id (owner/name)."),
    to: Optional[Path] = typer.Option(None, "--to", help="Directory to download into (default: "
                                      "the cache, $ITMFLOW_CACHE/weights or ~/.cache/itmflow/"
                                      "weights; hub ids: the Hugging Face cache)."),
    sha256: Optional[str] = typer.Option(None, "--sha256", help="Expected sha256 (hex) of the "
                                         "file; a mismatch keeps nothing."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Fetch one release (resuming an interrupted download), check its sha256, print its path."""
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TimeRemainingColumn,
                               TransferSpeedColumn)

    from itmflow.weights import download

    console = Console(stderr=True)
    if not progress:
        path = download(spec, to=to, sha256=sha256)
    else:
        with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                      TransferSpeedColumn(), TimeRemainingColumn(), console=console,
                      transient=True) as bar:
            task = bar.add_task(spec.rsplit("/", 1)[-1][:40], total=None)

            def report(done: int, total: int | None) -> None:
                bar.update(task, completed=done, total=total)

            path = download(spec, to=to, sha256=sha256, progress=report)
    typer.echo(str(path))


def register(app: typer.Typer) -> None:
    """Add `itmflow weights list|download` to `app`."""
    app.add_typer(weights_app, name="weights")
