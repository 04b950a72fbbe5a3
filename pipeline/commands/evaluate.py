"""`itmflow evaluate`: Recall@K (COCO 1K folds / 5K, Flickr30k 1K), rsum and NDCG@25 of a matcher.

Options → :class:`trainers.evaluation.run.EvalConfig` → :func:`trainers.evaluation.run.evaluate`.
Sources (one of): a run directory of `itmflow train` (its ``best/`` checkpoint), one or more
``--checkpoint`` (our model directory or an authors' TERN / TERAN / SGRAF ``.pth``; several are an
ensemble: the mean of their similarity matrices, e.g. SGRAF = SGR + SAF), or ``--sims`` matrices
saved earlier with ``--save-sims``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def evaluate_command(
    run: Optional[Path] = typer.Argument(None, help="Run directory of `itmflow train` (evaluates "
                                         "its best/ checkpoint)."),
    checkpoint: list[str] = typer.Option([], "--checkpoint", help="Model directory (ours), "
                                         "authors' .pth(.tar), a name from `itmflow weights "
                                         "list` or a URL; repeat to ensemble (SGR + SAF = SGRAF)."),
    sims_in: list[Path] = typer.Option([], "--sims", help="Similarity matrix .npy saved by "
                                       "--save-sims; repeat to ensemble."),
    regions: Path = typer.Option(..., "--regions", help="Region store directory."),
    captions: Path = typer.Option(..., "--captions", help="Caption store directory."),
    split: str = typer.Option("test", "--split", help="Split to evaluate (5 captions per image)."),
    folds: int = typer.Option(1, "--folds", help="5 = COCO 1K protocol (5 folds of the 5K test "
                              "set, averaged; the all-images numbers = COCO 5K are reported too); 1 = one "
                              "pool (COCO 5K, Flickr30k 1K)."),
    relevance: Optional[Path] = typer.Option(None, "--relevance", help="Directory of relevance "
                                             "matrices '<name>-<split>-rougeL.npy' / '-spice.npy' "
                                             "(the authors' headerless float32 layout) for NDCG@25."),
    compute_rouge: bool = typer.Option(False, "--compute-rouge", help="Compute the ROUGE-L "
                                       "relevance of the split's captions (into OUT/relevance/) "
                                       "when --relevance has none."),
    ndcg_i2t_nonzero: bool = typer.Option(False, "--ndcg-i2t-nonzero", help="Average i2t NDCG over "
                                          "non-zero values only (TERAN's code does; default: all "
                                          "queries, as t2i)."),
    save_sims: Optional[Path] = typer.Option(None, "--save-sims", help="Write the [images, "
                                             "captions] similarity matrix (.npy)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output directory for metrics.json, "
                                       "metrics.md, ranks.npz (default RUN/eval-SPLIT or "
                                       "./eval-SPLIT)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, ..."),
    batch_size: int = typer.Option(128, "--batch-size", help="Encoding batch size."),
    max_memory_gb: float = typer.Option(2.0, "--max-memory-gb", help="Working memory for one "
                                        "scoring block (sets the block sizes)."),
    buffer_dtype: str = typer.Option("float32", "--buffer-dtype", help="Embedding buffers: "
                                     "float32, float16 or bfloat16."),
    workers: int = typer.Option(0, "--workers", help="DataLoader worker processes."),
    max_images: Optional[int] = typer.Option(None, "--max-images", help="Evaluate only the first "
                                             "N images of the split (quick checks)."),
    kind: Optional[str] = typer.Option(None, "--kind", help="Kind of an authors' checkpoint "
                                       "(tern, teran, sgraf) when it cannot be detected."),
    bert: Optional[str] = typer.Option(None, "--bert", help="Local BERT directory describing the "
                                       "architecture of an authors' TERN/TERAN checkpoint."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Evaluate retrieval: Recall@K, medr, meanr, rsum and NDCG@25 (ROUGE-L / SPICE)."""
    from rich.console import Console

    from trainers.evaluation.run import EvalConfig, evaluate

    console = Console(stderr=True)
    cfg = EvalConfig(
        regions=regions, captions=captions, run=run, checkpoints=list(checkpoint),
        sims=list(sims_in), split=split, folds=folds, relevance=relevance,
        compute_rouge=compute_rouge, ndcg_i2t_nonzero=ndcg_i2t_nonzero, save_sims=save_sims,
        out=out, device=device, batch_size=batch_size, max_memory_gb=max_memory_gb,
        buffer_dtype=buffer_dtype, workers=workers, max_images=max_images, kind=kind, bert=bert,
        progress=progress).validate()
    result = evaluate(cfg, console=console)
    Console().print(result.report.rich_table())
    for method, r in result.report.ndcg.items():
        if r.nan_entries:
            console.print(f"[yellow]{method}: {r.nan_entries} NaN relevance entries counted as 0[/yellow]")
    paths = result.paths
    console.print(f"wrote {paths['json']}, {paths['markdown']}, {paths['ranks']}")


def register(app: typer.Typer) -> None:
    """Add `itmflow evaluate` to `app`."""
    app.command("evaluate")(evaluate_command)
