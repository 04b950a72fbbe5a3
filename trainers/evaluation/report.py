"""One evaluation run: score the test split, compute Recall@K and NDCG, write JSON / Markdown / ranks.

Used by ``itmflow evaluate``. A run evaluates one model, an ensemble (equal-weight mean of the
models' similarity matrices: SGRAF = SGR + SAF, or TERAN Ens.), or similarity matrices saved
earlier (``--sims``), on the images of a split that have 5 captions (caption c ↔ image c // 5).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from itmflow.errors import InputFileError
from itmflow.files import atomic_path, atomic_write_bytes, atomic_write_json
from itmflow.provenance import provenance
from trainers.evaluation.ndcg import (
    NdcgResult,
    find_relevance,
    ndcg_protocol,
    open_relevance,
    relevance_filename,
)
from trainers.evaluation.recall import CAPTIONS_PER_IMAGE, RankResult, evaluate_protocol


@dataclass
class EvalInputs:
    """What was evaluated: ids in evaluation order and the raw captions (for ROUGE-L)."""

    split: str
    image_ids: list[str]
    caption_ids: list[str]
    raw_captions: list[str]
    sources: list[str]


@dataclass
class EvalReport:
    """Metrics of one evaluation (recall on the chosen protocol, NDCG per relevance method)."""

    inputs: EvalInputs
    folds: int
    ranks: RankResult
    ndcg: dict[str, NdcgResult] = field(default_factory=dict)
    ndcg_i2t_exclude_zeros: bool = False
    relevance_files: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    pool: RankResult | None = None
    """With folds: the same matrix as one pool of all images (COCO 1K folds → COCO 5K for free)."""
    pool_ndcg: dict[str, NdcgResult] = field(default_factory=dict)
    marks: dict[str, Any] = field(default_factory=dict)
    """``random_init_regions`` / ``random_init_seed`` when the regions (or the model's training
    regions) came from a random-weight detector (:mod:`itmflow.marks`)."""

    @property
    def protocol(self) -> str:
        n = len(self.inputs.image_ids)
        if self.folds > 1:
            return f"{self.folds} folds of {n // self.folds} images, averaged"
        return f"{n} images, {n * CAPTIONS_PER_IMAGE} captions"

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (metrics.json)."""
        return {
            "format": "itmflow.evaluation", "version": 1,
            "split": self.inputs.split, "protocol": self.protocol, "folds": self.folds,
            "n_images": len(self.inputs.image_ids), "n_captions": len(self.inputs.caption_ids),
            "sources": self.inputs.sources,
            "recall": self.ranks.metrics.to_dict(),
            "ndcg": {m: r.to_dict() for m, r in self.ndcg.items()},
            "ndcg_k": 25, "ndcg_i2t_exclude_zeros": self.ndcg_i2t_exclude_zeros,
            "relevance_files": self.relevance_files, "seconds": self.seconds,
            **({"all_images": {"recall": self.pool.metrics.to_dict(),
                               "ndcg": {m: r.to_dict() for m, r in self.pool_ndcg.items()}}}
               if self.pool is not None else {}),
            **self.marks,
            "provenance": provenance(),
        }

    def _rows(self) -> list[tuple[str, str, Any, dict[str, NdcgResult]]]:
        """(label, direction key, metrics, ndcg) of every table row."""
        m = self.ranks.metrics
        rows = [("image→text", "i2t", m.i2t, self.ndcg), ("text→image", "t2i", m.t2i, self.ndcg)]
        if self.pool is not None:
            n = len(self.inputs.image_ids)
            p = self.pool.metrics
            rows += [(f"image→text, all {n}", "i2t", p.i2t, self.pool_ndcg),
                     (f"text→image, all {n}", "t2i", p.t2i, self.pool_ndcg)]
        return rows

    def markdown(self) -> str:
        """A Markdown summary (metrics.md)."""
        m = self.ranks.metrics
        head = ["direction", "R@1", "R@5", "R@10", "medr", "meanr"]
        head += [f"NDCG@25 {k}" for k in self.ndcg]
        lines = [f"# Evaluation — split `{self.inputs.split}` ({self.protocol})", "",
                 "Sources: " + ", ".join(f"`{s}`" for s in self.inputs.sources), "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, key, d, nd in self._rows():
            cells = [name, f"{d.r1:.2f}", f"{d.r5:.2f}", f"{d.r10:.2f}", f"{d.medr:g}",
                     f"{d.meanr:.2f}"] + [f"{getattr(nd[k], key):.4f}" if k in nd else "" for k in self.ndcg]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"**rsum = {m.rsum:.2f}** (recomputed from the averaged R@K)"]
        if self.pool is not None:
            lines += ["", f"rsum over all {len(self.inputs.image_ids)} images as one pool: "
                          f"{self.pool.metrics.rsum:.2f}"]
        lines.append("")
        if self.folds > 1:
            lines += ["| fold | i2t R@1 | i2t R@5 | i2t R@10 | t2i R@1 | t2i R@5 | t2i R@10 | rsum |",
                      "|---|---|---|---|---|---|---|---|"]
            for f, fm in enumerate(m.folds):
                lines.append(f"| {f} | {fm.i2t.r1:.2f} | {fm.i2t.r5:.2f} | {fm.i2t.r10:.2f} | "
                             f"{fm.t2i.r1:.2f} | {fm.t2i.r5:.2f} | {fm.t2i.r10:.2f} | {fm.rsum:.2f} |")
            lines.append("")
        if self.ndcg_i2t_exclude_zeros:
            lines.append("i2t NDCG averages the non-zero values only (TERAN's convention).")
        return "\n".join(lines) + "\n"

    def rich_table(self) -> Any:
        """A rich Table of the metrics for the terminal."""
        from rich.table import Table

        m = self.ranks.metrics
        caption = f"rsum {m.rsum:.2f}"
        if self.pool is not None:
            caption += f"; all images as one pool: rsum {self.pool.metrics.rsum:.2f}"
        table = Table(title=f"{self.inputs.split}: {self.protocol}", caption=caption)
        for col in ("direction", "R@1", "R@5", "R@10", "medr", "meanr", *[f"NDCG {k}" for k in self.ndcg]):
            table.add_column(col, justify="right" if col != "direction" else "left")
        for name, key, d, nd in self._rows():
            table.add_row(name, f"{d.r1:.2f}", f"{d.r5:.2f}", f"{d.r10:.2f}", f"{d.medr:g}",
                          f"{d.meanr:.2f}",
                          *[f"{getattr(nd[k], key):.4f}" if k in nd else "" for k in self.ndcg])
        return table

    def write(self, out: str | os.PathLike[str]) -> dict[str, Path]:
        """Write ``metrics.json``, ``metrics.md`` and ``ranks.npz`` (per-query ranks) into ``out``."""
        d = Path(out)
        d.mkdir(parents=True, exist_ok=True)
        paths = {"json": d / "metrics.json", "markdown": d / "metrics.md", "ranks": d / "ranks.npz"}
        atomic_write_json(paths["json"], self.to_dict())
        atomic_write_bytes(paths["markdown"], self.markdown().encode("utf-8"))
        arrays: dict[str, np.ndarray] = {
            "image_ids": np.array(self.inputs.image_ids, dtype=str),
            "caption_ids": np.array(self.inputs.caption_ids, dtype=str),
            # 0-based ranks within each query's pool (its fold for --folds > 1).
            "i2t_ranks": self.ranks.i2t_ranks, "t2i_ranks": self.ranks.t2i_ranks,
        }
        for method, r in self.ndcg.items():
            arrays[f"i2t_ndcg_{method}"] = r.i2t_per_query
            arrays[f"t2i_ndcg_{method}"] = r.t2i_per_query
        if self.pool is not None:
            # Ranks among all images / captions (e.g. COCO 5K next to the 1K folds).
            arrays["i2t_ranks_all"] = self.pool.i2t_ranks
            arrays["t2i_ranks_all"] = self.pool.t2i_ranks
            for method, r in self.pool_ndcg.items():
                arrays[f"i2t_ndcg_{method}_all"] = r.i2t_per_query
                arrays[f"t2i_ndcg_{method}_all"] = r.t2i_per_query
        # Through a handle: given a path without ".npz", numpy would append the suffix itself.
        with atomic_path(paths["ranks"]) as tmp, open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)
        return paths


def run_model_dir(run: str | os.PathLike[str]) -> Path:
    """The model directory of a run (``best/``, else ``last/``) or ``run`` itself if it is one."""
    r = Path(run)
    for name in ("best", "last"):
        if (r / name / "config.json").is_file():
            return r / name
    if (r / "config.json").is_file():
        return r
    raise InputFileError(f"{r} is not a run directory of `itmflow train` (no best/ or last/ "
                         "checkpoint with config.json) nor a model directory; pass --checkpoint "
                         "for an authors' .pth file")


def check_rouge_alignment(relevance: np.ndarray, path: str | os.PathLike[str]) -> None:
    """Refuse a ROUGE-L matrix whose rows are not in our caption order.

    Caption q is one of the references of its own image, so ``R[q, q // 5] == 1`` for every q when
    the file's order matches the evaluation order; a file made for another order fails this.
    """
    n_cap = relevance.shape[0]
    q = np.arange(n_cap)
    own = np.asarray(relevance[q, q // CAPTIONS_PER_IMAGE], dtype=np.float64)
    bad = np.flatnonzero(np.abs(own - 1.0) > 1e-4)
    if bad.size > 0.01 * n_cap:
        raise InputFileError(
            f"relevance file {path}: {bad.size} of {n_cap} captions do not score 1.0 against their "
            f"own image (first: row {int(bad[0])}), so its caption/image order differs from the "
            "evaluation order of this caption store; build the stores in the same order as the "
            "file or recompute ROUGE-L with --compute-rouge")


def compute_ndcg(sims: np.ndarray, inputs: EvalInputs, *, folds: int,
                 relevance_dir: str | os.PathLike[str] | None, compute_rouge_dir: Path | None,
                 i2t_exclude_zeros: bool, name: str = "itmflow", workers: int = 1,
                 progress: Any | None = None
                 ) -> tuple[dict[str, NdcgResult], dict[str, NdcgResult], dict[str, str]]:
    """NDCG@25 for every relevance matrix found (and ROUGE-L computed when asked).

    Returns ``(per protocol, over all images as one pool (only with folds), files used)``.
    """
    files: dict[str, Path] = {}
    if relevance_dir is not None:
        files.update(find_relevance(relevance_dir, inputs.split))
    if compute_rouge_dir is not None and "rougeL" not in files:
        from trainers.evaluation.rouge import write_rouge_relevance

        target = compute_rouge_dir / relevance_filename(name, inputs.split, "rougeL")
        write_rouge_relevance(inputs.raw_captions, target, cpi=CAPTIONS_PER_IMAGE, workers=workers,
                              progress=progress)
        files["rougeL"] = target
    results: dict[str, NdcgResult] = {}
    pooled: dict[str, NdcgResult] = {}
    n_cap, n_img = len(inputs.caption_ids), len(inputs.image_ids)
    for method, path in sorted(files.items()):
        rel = open_relevance(path, n_queries=n_cap, n_images=n_img)
        if method == "rougeL":
            check_rouge_alignment(rel, path)
        results[method] = ndcg_protocol(sims, rel, n_folds=folds, cpi=CAPTIONS_PER_IMAGE,
                                        i2t_exclude_zeros=i2t_exclude_zeros)
        if folds > 1:
            pooled[method] = ndcg_protocol(sims, rel, n_folds=1, cpi=CAPTIONS_PER_IMAGE,
                                           i2t_exclude_zeros=i2t_exclude_zeros)
    return results, pooled, {m: str(p) for m, p in files.items()}


def check_sims_file(path: str | os.PathLike[str]) -> Path:
    """``path`` as a :class:`Path`, refused when no such file exists (checked before loading)."""
    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"similarity file {p} does not exist")
    return p


def load_sims(path: str | os.PathLike[str], n_img: int, n_cap: int) -> np.ndarray:
    """A similarity matrix saved with ``--save-sims`` (``.npy``), checked against the split."""
    p = check_sims_file(path)
    try:
        sims = np.load(p, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise InputFileError(f"similarity file {p} is not a .npy array ({exc})") from None
    if sims.shape != (n_img, n_cap):
        raise InputFileError(f"similarity file {p} has shape {sims.shape}; this split needs "
                             f"({n_img}, {n_cap}) = (images, {CAPTIONS_PER_IMAGE} captions per image)")
    return np.asarray(sims, dtype=np.float32)


def summarize(sims: np.ndarray, folds: int) -> RankResult:
    """Recall protocol on a full matrix (``folds`` > 1: averaged folds)."""
    return evaluate_protocol(sims, n_folds=folds, cpi=CAPTIONS_PER_IMAGE)


def save_sims(path: str | os.PathLike[str], sims: np.ndarray) -> Path:
    """Write a similarity matrix as ``.npy`` (atomic)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(p) as tmp, open(tmp, "wb") as handle:  # a handle: numpy appends no ".npy"
        np.save(handle, sims)
    return p


__all__ = ["EvalInputs", "EvalReport", "check_rouge_alignment", "check_sims_file", "compute_ndcg",
           "load_sims", "run_model_dir", "save_sims", "summarize"]
