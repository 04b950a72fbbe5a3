"""`itmflow ingest`: read a collection (Karpathy / COCO / Flickr30k / folder), validate it, write
the collection table and a problem report, print a summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

import typer

from itmflow.errors import CollectionError, ConfigError


def _print_summary(summary: dict[str, Any], problems: list, report: Path, out: Path,
                   to_stderr: bool = False) -> None:
    """Two rich tables: the numbers, then the first problems."""
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=to_stderr)
    table = Table(title=f"collection {out.name} ({summary['source_format']})", show_header=False)
    table.add_column("what")
    table.add_column("value")
    cpi = summary["captions_per_image"]
    table.add_row("images", str(summary["images"]))
    table.add_row("captions", str(summary["captions"]))
    table.add_row("captions per image (min/median/max)", f"{cpi['min']} / {cpi['median']} / {cpi['max']}")
    table.add_row("images without captions", str(summary["images_without_captions"]))
    table.add_row("splits", ", ".join(f"{k} {v}" for k, v in sorted(summary["split_sizes"].items())))
    for key in ("missing_files", "duplicate_image_ids", "duplicate_caption_ids", "empty_captions",
                "captions_of_unknown_images", "unsafe_paths", "non_utf8_lines", "unreadable_images"):
        value = summary[key]
        shown = "not checked (--check-images)" if value is None else str(value)
        table.add_row(key.replace("_", " "), f"[red]{shown}[/red]" if value else shown)
    table.add_row("images root", summary["images_root"])
    console.print(table)
    if problems:
        shown = Table(title=f"first problems ({len(problems)} in {report})")
        for col in ("kind", "where", "message", "action"):
            shown.add_column(col)
        for p in problems[:10]:
            shown.add_row(p.kind, p.where, p.message, p.action)
        console.print(shown)


def ingest(
    source: Path = typer.Argument(..., metavar="SOURCE", help="Karpathy JSON, COCO caption JSON (or its folder), Flickr30k "
                                            ".token/.csv, or the image folder."),
    fmt: Literal["karpathy", "coco", "flickr30k", "folder"] = typer.Option(
        ..., "--format", help="What SOURCE is: a Karpathy split JSON (dataset_coco.json ...), an "
        "official COCO caption file, Flickr30k captions, or a folder of images."),
    images: Optional[Path] = typer.Option(None, "--images", metavar="DIR", help="Images root the file names are relative "
                                          "to (default: beside SOURCE; for folder: SOURCE)."),
    captions: Optional[Path] = typer.Option(None, "--captions", metavar="FILE", help="folder only: captions .jsonl or .csv "
                                            "(default: captions.jsonl / captions.csv in the folder)."),
    karpathy: Optional[Path] = typer.Option(None, "--karpathy", metavar="JSON", help="coco / flickr30k: Karpathy split JSON "
                                            "assigning train/restval/val/test."),
    out: Path = typer.Option(..., "--out", metavar="FILE", help="Collection table to write: one "
                             "file, ending in .parquet."),
    check_images: bool = typer.Option(False, "--check-images", help="Decode every image and count the "
                                      "unreadable ones (slow for big collections)."),
    report: Optional[Path] = typer.Option(None, "--report", metavar="FILE", help="Problem report (.json with summary, or "
                                          ".jsonl one problem per line; default: OUT with .report.json)."),
    force: bool = typer.Option(False, "--force", help="Replace the collection table already at --out."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON document on "
                                 "stdout (the tables go to stderr)."),
) -> None:
    """Read a collection, validate it and write the collection table (one row per image)."""
    from itmflow.files import sha256_file
    from pipeline.collections.adapters import read_source
    from pipeline.collections.table import write_collection
    from pipeline.collections.validate import check_files, summarize, write_report

    from pipeline.commands._common import print_json, refuse_existing

    if out.suffix != ".parquet":
        raise ConfigError(f"--out {out} must end in .parquet")
    refuse_existing(out, force, what="a collection table")
    result = read_source(fmt, source, images_root=images, captions=captions, karpathy=karpathy)
    if not result.builder.images:
        raise CollectionError(f"{source}: no images found (format {fmt}); check SOURCE and --format")
    check_files(result, check_images=check_images)
    summary = summarize(result, checked_images=check_images)
    report_path = report or out.with_name(out.stem + ".report.json")
    write_report(report_path, summary, result.builder.problems)
    sources = [{"name": p.name, "sha256": sha256_file(p)} for p in result.source_files]
    counts = {k: v for k, v in summary.items() if k not in ("notes", "images_root")}
    write_collection(out, result.builder.images, result.builder.captions, source_format=fmt,
                     images_root=result.images_root, extra={"sources": sources, "summary": counts})
    _print_summary(summary, result.builder.problems, report_path, out, to_stderr=as_json)
    typer.echo(f"wrote {out} and {report_path}", err=as_json)
    if as_json:
        print_json({"collection": str(out), "report": str(report_path), "source": str(source),
                    "problems": len(result.builder.problems), **summary})


def register(app: typer.Typer) -> None:
    """Add `itmflow ingest` to ``app``."""
    app.command("ingest")(ingest)
