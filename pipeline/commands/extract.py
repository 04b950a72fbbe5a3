"""`itmflow extract`: the Ray job from a collection table to a region store (resumable)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

import typer

from itmflow.errors import InputFileError


def extract(
    collection: Path = typer.Argument(..., metavar="COLLECTION", help="Collection table written by `itmflow ingest` (.parquet)."),
    out: Path = typer.Option(..., "--out", "-o", metavar="DIR", help="Region store directory (created or resumed)."),
    storage: Literal["parquet", "hdf5"] = typer.Option("parquet", "--storage", help="Store format."),
    weights: Optional[str] = typer.Option(None, "--weights", metavar="FILE|NAME", help="Detector weights (MILVLG .pth, airsplay .pkl, HF dir, or a name from `itmflow weights list`)."),
    random_init: bool = typer.Option(False, "--random-init", help="Seeded random detector: for tests and demos; features are meaningless."),
    seed: int = typer.Option(0, "--seed", help="Seed of --random-init."),
    labels: Optional[str] = typer.Option(None, "--labels", metavar="DIR", help="Visual Genome label folder (objects_vocab.txt / attributes_vocab.txt; default: next to the weights, else the shipped lists)."),
    vocab_old: Optional[str] = typer.Option(None, "--vocab", hidden=True, help="Deprecated spelling of --labels."),
    regions: Literal["36", "10-100"] = typer.Option("36", "--regions", help="Regions per image: 36 (fixed) or 10-100 (adaptive, conf 0.2)."),
    split: list[str] = typer.Option([], "--split", metavar="SPLIT", help="Only images of this split (repeatable); default all."),
    workers: Optional[int] = typer.Option(None, "--workers", metavar="N", help="Ray workers (detector actors): default one per GPU, else 1 CPU actor."),
    batch_size: int = typer.Option(2, "--batch-size", help="Images per detector call."),
    min_size: int = typer.Option(600, "--min-size", help="Short side after resizing."),
    max_size: int = typer.Option(1000, "--max-size", help="Long side limit after resizing."),
    proposals: Optional[int] = typer.Option(None, "--proposals", help="RPN proposals kept after NMS (default: the detector's 300)."),
    precision: Literal["fp32", "tf32", "bf16", "fp16"] = typer.Option(
        "fp32", "--precision", help="fp32 (TF32 off on CUDA), tf32, or bf16 / fp16 autocast: see the "
        "detector guide for what each changes."),
    device: Literal["auto", "cpu", "cuda"] = typer.Option("auto", "--device", help="auto: GPU actors when the cluster has GPUs."),
    feature_dtype: Literal["float16", "float32"] = typer.Option("float16", "--feature-dtype", help="Stored feature dtype."),
    images: Optional[Path] = typer.Option(None, "--images", metavar="DIR", help="Images root (overrides the one recorded in the collection)."),
    address: Optional[str] = typer.Option(None, "--address", metavar="HOST:PORT", envvar="RAY_ADDRESS", help="Ray cluster to join; default: an embedded local Ray."),
    connect_timeout: float = typer.Option(15.0, "--connect-timeout", envvar="ITMFLOW_RAY_CONNECT_TIMEOUT", help="Seconds to wait for --address to answer before giving up."),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", help="CPUs of the embedded Ray (default: all)."),
    part_size: int = typer.Option(512, "--part-size", help="Images per committed store part (rounded down to whole batches)."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Try again the images listed in failures.jsonl."),
    summary_json: Optional[Path] = typer.Option(None, "--summary", metavar="FILE", help="Also write the run summary as JSON to this file."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (images to process, already done, failed earlier) without starting Ray or loading the detector."),
    as_json: bool = typer.Option(False, "--json", help="Print the run summary (or, with --dry-run, the plan) as one JSON document on stdout; tables go to stderr."),
) -> None:
    """Detect regions in every image of COLLECTION and commit them to the store at --out.

    Resumable: run it again after a crash or after adding images and only what is missing is
    processed. Per-image problems go to STORE/failures.jsonl and the job goes on.
    """
    from rich.console import Console

    from detectors.butd.settings import BUTDSettings
    from pipeline.extract import ExtractConfig, run_extract
    from pipeline.extract.job import ExtractInterrupted
    from pipeline.commands._common import people_console, pick, print_json
    from pipeline.extract.progress import summary_table

    labels = pick(labels, vocab_old, "--vocab", "--labels")
    console = Console(stderr=True)
    cfg = ExtractConfig(
        collection=collection, out=out, storage=storage, weights=weights, random_init=random_init,
        seed=seed, vocab=labels, splits=list(split), workers=workers, batch_size=batch_size,
        detector=BUTDSettings(regions=regions, min_size=min_size, max_size=max_size, precision=precision,
                              **({} if proposals is None else {"post_nms_topk": proposals})),
        device=device, feature_dtype=feature_dtype, images_root=images,
        address=address, num_cpus=num_cpus, part_size=part_size, retry_failed=retry_failed,
        connect_timeout=connect_timeout,
    ).validate()
    if dry_run:
        _dry_run(cfg, as_json)
        return
    if random_init:
        console.print("[bold red]--random-init: the detector has random weights; the features "
                      "are meaningless (use --weights for real ones).[/]")
    import contextlib
    import sys

    # Ray forwards its workers' output to the driver's stdout: with --json, stdout carries only
    # the one document, so everything else goes to stderr while the job runs
    quiet = contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()
    try:
        with quiet:
            summary = run_extract(cfg, console=console)
    except ExtractInterrupted as stop:
        typer.echo(str(stop), err=True)
        raise typer.Exit(stop.exit_code) from None
    people_console(as_json).print(summary_table(summary))
    labels = _labels_line(out) if summary.rows_in_store else None
    if labels:
        people_console(as_json).print(f"most frequent regions: {labels}")
    if as_json:
        print_json(summary.to_dict())
    if summary_json is not None:
        summary_json.parent.mkdir(parents=True, exist_ok=True)
        from itmflow.files import atomic_write_bytes

        atomic_write_bytes(summary_json, (json.dumps(summary.to_dict(), indent=2) + "\n").encode("utf-8"))
    if summary.failed and not summary.processed and not summary.rows_in_store:
        first = summary.failures[0]["reason"]
        raise InputFileError(
            f"every one of the {summary.failed} images failed (first: {first}); nothing is in "
            f"{out}. See {out / 'failures.jsonl'} and fix the cause (a wrong --images root?), then "
            "rerun: images whose file was missing and exists now are tried again by themselves, "
            "others with --retry-failed")


def _labels_line(out: Path) -> str | None:
    """The store's most frequent region labels as names (``white shirt (12), ...``)."""
    from pipeline.labels import top_labels, top_labels_text

    try:
        return top_labels_text(top_labels(out, k=6))
    except Exception:  # the summary must not fail on a look at the labels
        return None


def plan_document(cfg) -> dict:
    """What a run of ``cfg`` would do (``--dry-run``): no Ray, no torch."""
    from pipeline.extract.job import plan_run
    from pipeline.extract.plan import read_failures

    collection, plan = plan_run(cfg)
    failures = read_failures(cfg.out)
    return {"store": str(cfg.out), "collection": str(cfg.collection),
            "images_root": str(collection.images_root), "splits": list(cfg.splits) or None,
            "selected": plan.selected, "to_process": plan.todo, "already_done": plan.already_done,
            "committed": plan.committed, "failed_earlier": len(failures),
            "failed_earlier_skipped": plan.failed_before,
            "retry_failed": cfg.retry_failed, "batches": len(plan.batches),
            "batch_size": cfg.batch_size}


def _dry_run(cfg, as_json: bool) -> None:
    from pipeline.commands._common import people_console, print_json

    doc = plan_document(cfg)
    if as_json:
        print_json(doc)
        return
    from rich.table import Table

    table = Table(title=f"extract --dry-run → {cfg.out}", show_header=False)
    table.add_column("what")
    table.add_column("images", justify="right")
    table.add_row("selected", str(doc["selected"]))
    table.add_row("to process now", str(doc["to_process"]))
    table.add_row("already done (committed)", str(doc["committed"]))
    table.add_row("failed earlier", f"{doc['failed_earlier']}"
                  + ("" if cfg.retry_failed else " (skipped; --retry-failed tries them)"))
    table.add_row("batches", f"{doc['batches']} of {cfg.batch_size}")
    people_console(False).print(table)


def register(app: typer.Typer) -> None:
    """Add ``extract`` to `app`."""
    app.command("extract")(extract)
