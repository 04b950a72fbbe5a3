"""`itmflow evaluate`: Recall@K (COCO 1K folds / 5K, Flickr30k 1K), rsum and NDCG@25 of a matcher.

Options → :class:`trainers.evaluation.run.EvalConfig` → :func:`trainers.evaluation.run.evaluate`.
Sources (one of): a run directory of `itmflow train` (its ``best/`` checkpoint), one or more
``--checkpoint`` (our model directory or an authors' TERN / TERAN / SGRAF ``.pth``; several are an
ensemble: the mean of their similarity matrices, e.g. SGRAF = SGR + SAF), or ``--sims`` matrices
saved earlier with ``--save-sims``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import typer


def evaluate_command(
    run: Optional[Path] = typer.Argument(None, metavar="RUN", help="Run directory of `itmflow "
                                         "train` (evaluates its best/ checkpoint)."),
    checkpoint: list[str] = typer.Option([], "--checkpoint", metavar="PATH|NAME|URL", help="Model directory (ours), "
                                         "authors' .pth(.tar), a name from `itmflow weights "
                                         "list` or a URL; repeat to ensemble (SGR + SAF = SGRAF)."),
    sims_in: list[Path] = typer.Option([], "--sims", metavar="FILE", help="Similarity matrix .npy saved by "
                                       "--save-sims; repeat to ensemble."),
    regions: Path = typer.Option(..., "--regions", metavar="DIR", help="Region store directory."),
    captions: Path = typer.Option(..., "--captions", metavar="DIR", help="Caption store directory."),
    split: str = typer.Option("test", "--split", metavar="SPLIT", help="Split to evaluate (5 captions per image)."),
    folds: int = typer.Option(1, "--folds", metavar="N", help="5 = COCO 1K protocol (5 folds of the 5K test "
                              "set, averaged; the all-images numbers = COCO 5K are reported too); 1 = one "
                              "pool (COCO 5K, Flickr30k 1K)."),
    relevance: Optional[Path] = typer.Option(None, "--relevance", metavar="DIR", help="Directory of relevance "
                                             "matrices '<name>-<split>-rougeL.npy' / '-spice.npy' "
                                             "(the authors' headerless float32 layout) for NDCG@25."),
    compute_rouge: bool = typer.Option(False, "--compute-rouge", help="Compute the ROUGE-L "
                                       "relevance of the split's captions (into OUT/relevance/) "
                                       "when --relevance has none."),
    ndcg_i2t_nonzero: bool = typer.Option(False, "--ndcg-i2t-nonzero", help="Average i2t NDCG over "
                                          "non-zero values only (TERAN's code does; default: all "
                                          "queries, as t2i)."),
    save_sims: Optional[Path] = typer.Option(None, "--save-sims", metavar="FILE", help="Write the [images, "
                                             "captions] similarity matrix (.npy)."),
    out: Optional[Path] = typer.Option(None, "--out", metavar="DIR", help="Output directory for metrics.json, "
                                       "metrics.md, ranks.npz (default RUN/eval-SPLIT or "
                                       "./eval-SPLIT)."),
    device: str = typer.Option("auto", "--device", metavar="DEVICE", help="auto, cpu, cuda, cuda:1, ..."),
    batch_size: int = typer.Option(128, "--batch-size", metavar="N", help="Encoding batch size."),
    max_memory_gb: float = typer.Option(2.0, "--max-memory-gb", metavar="GB", help="Working memory for one "
                                        "scoring block (sets the block sizes)."),
    buffer_dtype: Literal["float32", "float16", "bfloat16"] = typer.Option(
        "float32", "--buffer-dtype", help="Embedding buffers' dtype."),
    loader_workers: int = typer.Option(0, "--loader-workers", metavar="N",
                                       help="DataLoader worker processes."),
    workers_old: Optional[int] = typer.Option(None, "--workers", hidden=True,
                                              help="Deprecated spelling of --loader-workers."),
    max_images: Optional[int] = typer.Option(None, "--max-images", metavar="N", help="Evaluate only the first "
                                             "N images of the split (quick checks)."),
    kind: Optional[Literal["tern", "teran", "sgraf", "sgraf-sgr", "sgraf-saf"]] = typer.Option(
        None, "--kind", help="Kind of an authors' checkpoint when it cannot be detected "
        "(sgraf-sgr / sgraf-saf read as sgraf)."),
    bert: Optional[str] = typer.Option(None, "--bert", metavar="DIR", help="Local BERT directory describing the "
                                       "architecture of an authors' TERN/TERAN checkpoint."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    as_json: bool = typer.Option(False, "--json", help="Print metrics.json (plus the files "
                                 "written) as one JSON document on stdout; tables go to stderr."),
) -> None:
    """Evaluate retrieval: Recall@K, medr, meanr, rsum and NDCG@25 (ROUGE-L / SPICE)."""
    from pipeline.commands._common import (check_splits, check_store_dir, people_console, pick,
                                           print_json)

    loader_workers = pick(None, workers_old, "--workers", "--loader-workers") \
        if workers_old is not None else loader_workers
    # usage errors before torch and any model are loaded
    check_store_dir(regions, "--regions", "region store", "run `itmflow extract` first")
    check_store_dir(captions, "--captions", "caption store", "run `itmflow tokenize` first")
    check_splits(captions, [split])
    from rich.console import Console

    from trainers.evaluation.run import EvalConfig, evaluate

    console = Console(stderr=True)
    cfg = EvalConfig(
        regions=regions, captions=captions, run=run, checkpoints=list(checkpoint),
        sims=list(sims_in), split=split, folds=folds, relevance=relevance,
        compute_rouge=compute_rouge, ndcg_i2t_nonzero=ndcg_i2t_nonzero, save_sims=save_sims,
        out=out, device=device, batch_size=batch_size, max_memory_gb=max_memory_gb,
        buffer_dtype=buffer_dtype, workers=loader_workers, max_images=max_images, kind=kind, bert=bert,
        progress=progress).validate()
    result = evaluate(cfg, console=console)
    people_console(as_json).print(result.report.rich_table())
    for method, r in result.report.ndcg.items():
        if r.nan_entries:
            console.print(f"[yellow]{method}: {r.nan_entries} NaN relevance entries counted as 0[/yellow]")
    paths = result.paths
    console.print(f"wrote {paths['json']}, {paths['markdown']}, {paths['ranks']}")
    if as_json:
        import json

        doc = json.loads(Path(paths["json"]).read_text(encoding="utf-8"))
        print_json({"files": {k: str(v) for k, v in paths.items()}, **doc})


def register(app: typer.Typer) -> None:
    """Add `itmflow evaluate` to `app`."""
    app.command("evaluate")(evaluate_command)
