"""`itmflow evaluate`: Recall@K (COCO 1K folds / 5K, Flickr30k 1K), rsum and NDCG@25 of a matcher.

Sources (one of): a run directory of `itmflow train` (its ``best/`` checkpoint), one or more
``--checkpoint`` (our model directory or an authors' TERN / TERAN / SGRAF ``.pth``; several are an
ensemble: the mean of their similarity matrices, e.g. SGRAF = SGR + SAF), or ``--sims`` matrices
saved earlier with ``--save-sims``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from itmflow.errors import ConfigError


def evaluate_command(
    run: Optional[Path] = typer.Argument(None, help="Run directory of `itmflow train` (evaluates "
                                         "its best/ checkpoint)."),
    checkpoint: list[Path] = typer.Option([], "--checkpoint", help="Model directory (ours) or "
                                          "authors' .pth(.tar); repeat to ensemble (SGR + SAF = "
                                          "SGRAF)."),
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
    import time

    import numpy as np
    import torch
    from rich.console import Console
    from torch.utils.data import DataLoader

    from trainers.checkpoints import load_model
    from trainers.data import CaptionCollator, MatchingData, collate_images
    from trainers.evaluation.report import (EvalInputs, EvalReport, compute_ndcg, load_sims,
                                            run_model_dir, save_sims as write_sims, summarize)
    from trainers.models import spec_of, union_of_needs
    from trainers.scoring import ensemble, score_matrix
    from trainers.train import resolve_device

    console = Console(stderr=True)
    n_sources = (run is not None) + bool(checkpoint) + bool(sims_in)
    if n_sources != 1:
        raise ConfigError("give exactly one source: a RUN directory, --checkpoint FILE "
                          "(repeatable) or --sims FILE.npy (repeatable)")
    if folds < 1:
        raise ConfigError(f"--folds must be >= 1, got {folds}")
    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if buffer_dtype not in dtypes:
        raise ConfigError(f"--buffer-dtype must be one of {sorted(dtypes)}, got {buffer_dtype!r}")
    dev = resolve_device(device)
    timings: dict[str, float] = {}

    # -- models --------------------------------------------------------------------------
    t0 = time.perf_counter()
    models: list[Any] = []
    sources: list[str] = []
    if run is not None:
        mdir = run_model_dir(run)
        models.append(load_model(mdir, device=dev))
        sources.append(str(mdir))
    for ck in checkpoint:
        models.append(load_model(ck, kind, device=dev, bert=bert))
        sources.append(str(ck))
    sources += [str(s) for s in sims_in]
    timings["load"] = time.perf_counter() - t0

    # -- data ----------------------------------------------------------------------------
    specs = [spec_of(m) for m in models]
    needs = union_of_needs(specs)    # ensembles of different models need the union of fields
    data = MatchingData(regions, captions, model=specs[0].name if specs else "tern", needs=needs)
    evalset = data.eval_set(split, max_images=max_images)
    n_img = len(evalset.image_ids)
    if n_img % folds:
        raise ConfigError(f"split {split!r} has {n_img} evaluable images, not divisible into "
                          f"{folds} folds (COCO 1K needs the 5,000-image test split)")
    inputs = EvalInputs(split=split, image_ids=evalset.image_ids,
                        caption_ids=[data.captions.caption_ids[r] for r in evalset.caption_rows],
                        raw_captions=[data.captions.raw[r] or "" for r in evalset.caption_rows],
                        sources=sources)
    if data.skipped.get(split):
        console.print(f"[yellow]{data.skipped[split]} caption(s) of split {split!r} have no "
                      "image in the region store and are left out[/yellow]")

    # -- similarities --------------------------------------------------------------------
    t0 = time.perf_counter()
    matrices: list[np.ndarray] = []
    for src, model in zip(sources, models):
        console.print(f"scoring {n_img} images × {5 * n_img} captions with {model.kind} ({src})")
        img_loader = DataLoader(evalset.images, batch_size=batch_size, shuffle=False,
                                collate_fn=collate_images, num_workers=workers)
        cap_loader = DataLoader(evalset.captions, batch_size=batch_size, shuffle=False,
                                collate_fn=CaptionCollator(needs), num_workers=workers)
        matrices.append(score_matrix(model, img_loader, cap_loader, device=dev,
                                     max_memory_gb=max_memory_gb, buffer_dtype=dtypes[buffer_dtype],
                                     progress=progress, console=console))
    for s in sims_in:
        matrices.append(load_sims(s, n_img, 5 * n_img))
    sims = matrices[0] if len(matrices) == 1 else ensemble(matrices)
    timings["score"] = time.perf_counter() - t0
    if save_sims is not None:
        write_sims(save_sims, sims)
        if len(matrices) > 1:
            for i, m in enumerate(matrices):
                write_sims(save_sims.with_name(f"{save_sims.stem}.part{i}.npy"), m)

    # -- metrics -------------------------------------------------------------------------
    out_dir = out or ((run / f"eval-{split}") if run is not None else Path(f"eval-{split}"))
    t0 = time.perf_counter()
    ranks = summarize(sims, folds)
    # The folds are diagonal blocks of the full matrix: its one-pool numbers (COCO 5K next to
    # COCO 1K) cost one more sort, not another scoring pass.
    pool = summarize(sims, 1) if folds > 1 else None
    timings["recall"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ndcg, pool_ndcg, files = compute_ndcg(sims, inputs, folds=folds, relevance_dir=relevance,
                               compute_rouge_dir=(out_dir / "relevance") if compute_rouge else None,
                               i2t_exclude_zeros=ndcg_i2t_nonzero, name=Path(captions).name)
    timings["ndcg"] = time.perf_counter() - t0
    report = EvalReport(inputs=inputs, folds=folds, ranks=ranks, ndcg=ndcg,
                        ndcg_i2t_exclude_zeros=ndcg_i2t_nonzero, relevance_files=files,
                        seconds=timings, pool=pool, pool_ndcg=pool_ndcg)
    paths = report.write(out_dir)
    Console().print(report.rich_table())
    for method, r in ndcg.items():
        if r.nan_entries:
            console.print(f"[yellow]{method}: {r.nan_entries} NaN relevance entries counted as 0[/yellow]")
    console.print(f"wrote {paths['json']}, {paths['markdown']}, {paths['ranks']}")


def register(app: typer.Typer) -> None:
    """Add `itmflow evaluate` to `app`."""
    app.command("evaluate")(evaluate_command)
