"""``evaluate``: one evaluation run as a library call (``itmflow evaluate`` is a thin wrapper).

Sources (one of): a run directory of ``itmflow train`` (its ``best/`` checkpoint), one or more
checkpoints (our model directory or an authors' TERN / TERAN / SGRAF ``.pth``; several are an
ensemble: the mean of their similarity matrices, e.g. SGRAF = SGR + SAF), or similarity matrices
saved earlier (``save_sims``). Writes ``metrics.json``, ``metrics.md`` and ``ranks.npz``.

    from trainers.evaluation.run import EvalConfig, evaluate

    result = evaluate(EvalConfig(regions="stores/regions", captions="stores/captions",
                                 run="runs/tern", split="test", folds=5))
    print(result.report.ranks.metrics.rsum)
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from itmflow.errors import ConfigError
from trainers.evaluation.recall import CAPTIONS_PER_IMAGE
from trainers.evaluation.report import (EvalInputs, EvalReport, check_sims_file, compute_ndcg,
                                        load_sims, run_model_dir, save_sims, summarize)

if TYPE_CHECKING:
    from rich.console import Console

BUFFER_DTYPES = ("float32", "float16", "bfloat16")
PathLike = str | os.PathLike[str]


@dataclass
class EvalConfig:
    """What to evaluate, on which stores and split, and how (defaults: ``itmflow evaluate``'s)."""

    regions: PathLike
    captions: PathLike
    run: PathLike | None = None
    """Run directory of ``itmflow train`` (evaluates its ``best/`` checkpoint)."""
    checkpoints: list[PathLike] = field(default_factory=list)
    """Model directories (ours) or authors' ``.pth(.tar)``; several are an ensemble."""
    sims: list[PathLike] = field(default_factory=list)
    """Similarity matrices (``.npy``) saved earlier; several are an ensemble."""
    split: str = "test"
    folds: int = 1
    """5 = COCO 1K (5 folds averaged, the all-images numbers too); 1 = one pool."""
    relevance: PathLike | None = None
    """Directory of ``<name>-<split>-rougeL.npy`` / ``-spice.npy`` relevance matrices (NDCG@25)."""
    compute_rouge: bool = False
    ndcg_i2t_nonzero: bool = False
    save_sims: PathLike | None = None
    out: PathLike | None = None
    """Output directory (default RUN/eval-SPLIT, else ./eval-SPLIT)."""
    device: str = "auto"
    batch_size: int = 128
    max_memory_gb: float = 2.0
    buffer_dtype: str = "float32"
    workers: int = 0
    max_images: int | None = None
    kind: str | None = None
    """Kind of an authors' checkpoint (tern, teran, sgraf) when it cannot be detected."""
    bert: str | None = None
    """Local BERT directory describing an authors' TERN/TERAN checkpoint's architecture."""
    progress: bool = True

    def validate(self) -> EvalConfig:
        """Refuse settings no evaluation can use (before anything is loaded)."""
        n_sources = (self.run is not None) + bool(self.checkpoints) + bool(self.sims)
        if n_sources != 1:
            raise ConfigError("give exactly one source: a RUN directory, --checkpoint FILE "
                              "(repeatable) or --sims FILE.npy (repeatable)")
        if self.folds < 1:
            raise ConfigError(f"--folds must be >= 1, got {self.folds}")
        if self.buffer_dtype not in BUFFER_DTYPES:
            raise ConfigError(f"--buffer-dtype must be one of {sorted(BUFFER_DTYPES)}, "
                              f"got {self.buffer_dtype!r}")
        return self

    def out_dir(self) -> Path:
        """Where the metrics go."""
        if self.out is not None:
            return Path(self.out)
        return Path(self.run) / f"eval-{self.split}" if self.run is not None else Path(f"eval-{self.split}")


@dataclass
class EvalResult:
    """The report and the files written."""

    report: EvalReport
    paths: dict[str, Path]


#: Manifest keys that make two region stores the same features for a model (storage and schema do not).
STORE_IDENTITY_KEYS = ("feature_dim", "detector", "region_policy")


def trained_on_other_store(run: str | os.PathLike[str], manifest: dict[str, Any],
                           regions: str | os.PathLike[str]) -> list[str]:
    """Lines saying how region store ``regions`` (its ``manifest``) differs from the one the run was
    trained on (``run.json``'s ``inputs.region_store``: detector with weights sha256 and settings,
    feature_dim, region policy), leaf by leaf; empty when they agree or the run records none."""
    import json

    from stores.manifest import MAX_LISTED_DIFFS, _leaf_diffs

    run = Path(run)
    record = next((p / "run.json" for p in (run, run.parent) if (p / "run.json").is_file()), None)
    if record is None:
        return []
    try:
        inputs = json.loads(record.read_text(encoding="utf-8")).get("inputs") or {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return [f"{record} cannot be read; the region store the run was trained on is unknown"]
    trained = inputs.get("region_store") or {}
    if not trained:
        return []
    diffs: list[str] = []
    _leaf_diffs("", {k: trained.get(k) for k in STORE_IDENTITY_KEYS},
                json.loads(json.dumps({k: manifest.get(k) for k in STORE_IDENTITY_KEYS})), diffs)
    if not diffs:
        return []
    if len(diffs) > MAX_LISTED_DIFFS:
        diffs = diffs[:MAX_LISTED_DIFFS] + [f"... and {len(diffs) - MAX_LISTED_DIFFS} more"]
    return [f"region store {regions} is not the one {run} was trained on ({inputs.get('regions')}); "
            "trained on -> evaluated on:", *[f"  {d}" for d in diffs]]


def refuse_non_finite(values: np.ndarray, what: str, cause: str) -> None:
    """Raise :class:`~itmflow.errors.ItmflowError` when ``values`` hold NaN or inf, naming
    ``what`` (the store or file) and the likely ``cause``, instead of a table of NaN metrics."""
    from itmflow.errors import ItmflowError

    bad = int(values.size - np.count_nonzero(np.isfinite(values)))
    if bad:
        raise ItmflowError(f"{bad} of {values.size} values of {what} are not finite (NaN/inf); refusing to "
                           f"report metrics from them. Likely cause: {cause}")


def evaluate(config: EvalConfig, *, console: Console | None = None) -> EvalResult:
    """Score the split with every source, compute Recall@K / rsum / NDCG@25, write the report.

    ``console`` receives progress (scoring lines, bars, notes about skipped captions).
    """
    from itmflow.weights import check_checkpoint_source

    # wrong settings and model sources are answered before torch is imported
    config.validate()
    mdir = run_model_dir(config.run) if config.run is not None else None
    for ck in config.checkpoints:
        check_checkpoint_source(ck)
    for sims in config.sims:
        check_sims_file(sims)

    import torch
    from rich.console import Console
    from torch.utils.data import DataLoader

    from trainers.checkpoints import load_model
    from trainers.data import CaptionCollator, MatchingData, collate_images
    from trainers.models import MatchingModel, spec_of, union_of_needs
    from trainers.scoring import ensemble, score_matrix
    from itmflow.devices import resolve_device

    console = console or Console(stderr=True)
    dtype = {"float32": torch.float32, "float16": torch.float16,
             "bfloat16": torch.bfloat16}[config.buffer_dtype]
    dev = resolve_device(config.device)
    timings: dict[str, float] = {}

    # -- models --------------------------------------------------------------------------
    t0 = time.perf_counter()
    models: list[MatchingModel] = []
    sources: list[str] = []
    if mdir is not None:
        models.append(load_model(mdir, device=dev))
        sources.append(str(mdir))
    for ck in config.checkpoints:
        models.append(load_model(ck, config.kind, device=dev, bert=config.bert))
        sources.append(str(ck))
    sources += [str(s) for s in config.sims]
    timings["load"] = time.perf_counter() - t0
    marks = random_marks(config, console)

    # -- data ----------------------------------------------------------------------------
    specs = [spec_of(m) for m in models]
    needs = union_of_needs(specs)    # ensembles of different models need the union of fields
    data = MatchingData(config.regions, config.captions,
                        model=specs[0].name if specs else "tern", needs=needs)
    from trainers.training.model import check_region_policy

    for model in models:  # SGRAF: a fixed-36 store (rows with fewer regions are padded to 36)
        check_region_policy(model, data)
    evalset = data.eval_set(config.split, max_images=config.max_images)
    n_img = len(evalset.image_ids)
    if n_img % config.folds:
        raise ConfigError(f"split {config.split!r} has {n_img} evaluable images, not divisible "
                          f"into {config.folds} folds (COCO 1K needs the 5,000-image test split)")
    inputs = EvalInputs(split=config.split, image_ids=evalset.image_ids,
                        caption_ids=[data.captions.caption_ids[r] for r in evalset.caption_rows],
                        raw_captions=[data.captions.raw[r] or "" for r in evalset.caption_rows],
                        sources=sources)
    from trainers.evaluation.recall import small_split_note

    note = small_split_note(n_img, what=f"split {config.split!r}")
    if note:
        console.print(f"[yellow]note: {note}[/yellow]", highlight=False, soft_wrap=True)
    if data.skipped.get(config.split):
        console.print(f"[yellow]{data.skipped[config.split]} caption(s) of split "
                      f"{config.split!r} have no image in the region store and are left out[/yellow]")
    missing, total = data.missing_images.get(config.split, (0, 0))
    if missing:
        console.print(f"[yellow]region store {config.regions} lacks {missing} of the {total} images of split "
                      f"{config.split!r} in the caption store: they are left out, so these numbers are not "
                      "those of the full split[/yellow]")
    if config.run is not None:
        for line in trained_on_other_store(config.run, data.images.manifest, config.regions):
            console.print(f"[yellow]{line}[/yellow]")

    # -- similarities --------------------------------------------------------------------
    t0 = time.perf_counter()
    n_cap = CAPTIONS_PER_IMAGE * n_img
    matrices: list[np.ndarray] = []
    for src, model in zip(sources, models):
        console.print(f"scoring {n_img} images × {n_cap} captions with {model.kind} ({src})")
        img_loader = DataLoader(evalset.images, batch_size=config.batch_size, shuffle=False,
                                collate_fn=collate_images, num_workers=config.workers)
        cap_loader = DataLoader(evalset.captions, batch_size=config.batch_size, shuffle=False,
                                collate_fn=CaptionCollator(needs), num_workers=config.workers)
        matrices.append(score_matrix(model, img_loader, cap_loader, device=dev,
                                     max_memory_gb=config.max_memory_gb, buffer_dtype=dtype,
                                     progress=config.progress, console=console))
        refuse_non_finite(matrices[-1], f"the scores of {model.kind} ({src}) on region store {config.regions}",
                          "non-finite features or box geometry in the store (image sizes 0 after "
                          "`store import --format tern` without --images / --captions-json?) or a diverged "
                          "checkpoint; run `itmflow store verify` on the store")
    for s in config.sims:
        matrices.append(load_sims(s, n_img, n_cap))
        refuse_non_finite(matrices[-1], f"the similarity file {s}", "it was saved from a run that scored NaN")
    sims = matrices[0] if len(matrices) == 1 else ensemble(matrices)
    timings["score"] = time.perf_counter() - t0
    if config.save_sims is not None:
        target = Path(config.save_sims)
        save_sims(target, sims)
        if len(matrices) > 1:
            for i, m in enumerate(matrices):
                save_sims(target.with_name(f"{target.stem}.part{i}.npy"), m)

    # -- metrics -------------------------------------------------------------------------
    out_dir = config.out_dir()
    t0 = time.perf_counter()
    ranks = summarize(sims, config.folds)
    # The folds are diagonal blocks of the full matrix: its one-pool numbers (COCO 5K next to
    # COCO 1K) cost one more sort, not another scoring pass.
    pool = summarize(sims, 1) if config.folds > 1 else None
    timings["recall"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ndcg, pool_ndcg, files = compute_ndcg(
        sims, inputs, folds=config.folds, relevance_dir=config.relevance,
        compute_rouge_dir=(out_dir / "relevance") if config.compute_rouge else None,
        i2t_exclude_zeros=config.ndcg_i2t_nonzero, name=Path(config.captions).name)
    timings["ndcg"] = time.perf_counter() - t0
    report = EvalReport(inputs=inputs, folds=config.folds, ranks=ranks, ndcg=ndcg,
                        ndcg_i2t_exclude_zeros=config.ndcg_i2t_nonzero, relevance_files=files,
                        seconds=timings, pool=pool, pool_ndcg=pool_ndcg, marks=marks)
    return EvalResult(report=report, paths=report.write(out_dir))


def random_marks(config: EvalConfig, console: Any) -> dict[str, Any]:
    """Warn (stderr) and return the metadata keys when the region store, or the store a run /
    checkpoint directory was trained on, came from a random-weight detector."""
    from itmflow.marks import metadata, run_random_init, store_random_init, warn

    found = None
    mark = store_random_init(config.regions)
    warn(console, f"region store {config.regions}", mark)
    found = found or mark
    for src in ([config.run] if config.run is not None else []) + list(config.checkpoints):
        if Path(str(src)).exists():
            mark = run_random_init(src)
            warn(console, f"the regions run {src} was trained on", mark)
            found = found or mark
    return metadata(found)


__all__ = ["EvalConfig", "EvalResult", "evaluate", "random_marks"]
