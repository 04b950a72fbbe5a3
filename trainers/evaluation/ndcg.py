"""NDCG@25 with ROUGE-L / SPICE relevance, and relevance matrices in the authors' file layout.

Definitions (TERN/TERAN ``evaluate_utils/dcg.py``, spec ``trainers.md`` §2.5):

* For one query, ``ranking`` = the top-k retrieved items (``argsort(scores)[::-1][:k]``),
  DCG = Σ_k (2^rel_k − 1) / log2(k + 2) with k counted from 0; the ideal DCG is the same sum over the
  query's relevance row sorted in decreasing order; NDCG = DCG / ideal, and 0 when the ideal is 0.
* A relevance matrix ``R`` has one row per caption (5N) and one column per image (N):
  ``R[q, j]`` = how well caption q matches the reference captions of image j.
* t2i (query = caption q, pool = the images of its fold): ``y_true = R[q, img_start:img_stop]``.
* i2t (query = image i, pool = the captions of its fold): ``y_true = R[cap_start:cap_stop, i]``.
* The reported value is the plain mean over queries, zeros included. TERAN's i2t code instead
  averages only the non-zero NDCGs (``ndcgs[ndcgs != 0]``); ``i2t_exclude_zeros=True`` reproduces
  that number for comparison with the TERAN paper.

Files: the authors write each matrix with ``np.memmap(mode='w+')`` — raw float32, **no .npy header**
despite the ``.npy`` name — and read it back as ``memmap(dtype=float32).reshape(n_queries, -1)``.
:func:`open_relevance` reads that layout as it is (and also a real ``.npy`` file, recognised by its
magic bytes); :func:`create_relevance` writes it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from itmflow.errors import ConfigError, InputFileError
from trainers.evaluation.recall import CAPTIONS_PER_IMAGE, fold_bounds

NDCG_K = 25
RELEVANCE_METHODS = ("rougeL", "spice")
_NPY_MAGIC = b"\x93NUMPY"
_QUERY_CHUNK = 512


def discounts(k: int) -> np.ndarray:
    """``1 / log2(k + 2)`` for positions 0..k-1."""
    return 1.0 / np.log2(np.arange(k, dtype=np.float64) + 2.0)


def ndcg_rows(scores: np.ndarray, relevance: np.ndarray, k: int = NDCG_K) -> np.ndarray:
    """NDCG@k of each row: ``scores[q]`` ranks the pool, ``relevance[q]`` grades it (same shape).

    Ranking uses ``argsort(...)[::-1]`` like the originals, so tied scores resolve identically.
    """
    scores = np.asarray(scores)
    relevance = np.asarray(relevance, dtype=np.float64)
    if scores.shape != relevance.shape or scores.ndim != 2:
        raise ConfigError(f"scores {scores.shape} and relevance {relevance.shape} must be equal 2-D shapes")
    kk = min(k, scores.shape[1])
    disc = discounts(kk)
    gains = np.exp2(relevance) - 1.0
    out = np.empty(scores.shape[0], dtype=np.float64)
    for start in range(0, scores.shape[0], _QUERY_CHUNK):
        stop = min(start + _QUERY_CHUNK, scores.shape[0])
        top = np.argsort(scores[start:stop], axis=1)[:, ::-1][:, :kk]
        g = gains[start:stop]
        dcg = (np.take_along_axis(g, top, axis=1) * disc).sum(axis=1)
        # The ideal ranking sorts the relevance row; gain is monotone in relevance, so sort gains.
        best = -np.sort(-g, axis=1)[:, :kk]
        ideal = (best * disc).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start:stop] = np.where(ideal > 0, dcg / np.where(ideal > 0, ideal, 1.0), 0.0)
    return out


@dataclass(frozen=True)
class NdcgResult:
    """Mean NDCG of both directions plus the per-query values (fold order)."""

    i2t: float
    t2i: float
    i2t_per_query: np.ndarray
    t2i_per_query: np.ndarray
    nan_entries: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready means (per-query arrays are saved separately)."""
        return {"i2t": self.i2t, "t2i": self.t2i, "nan_relevance_entries": self.nan_entries}


def ndcg_protocol(sims: np.ndarray, relevance: np.ndarray, *, n_folds: int = 1, cpi: int = CAPTIONS_PER_IMAGE,
                  k: int = NDCG_K, i2t_exclude_zeros: bool = False) -> NdcgResult:
    """NDCG@k in both directions over the folds of §2.5 (``n_folds=1``: one pool, e.g. 5K).

    ``sims`` is ``[N images, cpi·N captions]``; ``relevance`` is ``[cpi·N, N]`` (the authors'
    layout, may be a memmap: only one fold's block is read at a time). NaN relevance entries
    (SPICE marks unparsable captions that way) count as 0 and are reported in ``nan_entries``.
    """
    sims = np.asarray(sims)
    n_img, n_cap = sims.shape
    if relevance.shape != (n_cap, n_img):
        raise ConfigError(
            f"relevance matrix has shape {tuple(relevance.shape)} but the similarity matrix needs "
            f"({n_cap}, {n_img}) = (captions, images); use the relevance file of this split"
        )
    t2i_all, i2t_all = [], []
    nan_entries = 0
    for start, stop in fold_bounds(n_img, n_folds):
        cs, ce = start * cpi, stop * cpi
        block = np.array(relevance[cs:ce, start:stop], dtype=np.float64)   # [captions, images]
        nans = np.isnan(block)
        if nans.any():
            nan_entries += int(nans.sum())
            block[nans] = 0.0
        fold_sims = sims[start:stop, cs:ce]
        t2i_all.append(ndcg_rows(np.ascontiguousarray(fold_sims.T), block, k))
        i2t_all.append(ndcg_rows(fold_sims, np.ascontiguousarray(block.T), k))
    t2i = np.concatenate(t2i_all)
    i2t = np.concatenate(i2t_all)
    i2t_for_mean = i2t[i2t != 0] if i2t_exclude_zeros else i2t
    return NdcgResult(
        i2t=float(i2t_for_mean.mean()) if i2t_for_mean.size else 0.0,
        t2i=float(t2i.mean()), i2t_per_query=i2t, t2i_per_query=t2i, nan_entries=nan_entries,
    )


# ----------------------------------------------------------------------------- relevance files


def relevance_filename(name: str, split: str, method: str) -> str:
    """The authors' name ``{name}-{split}-{method}.npy`` (e.g. ``coco-test-rougeL.npy``)."""
    if method not in RELEVANCE_METHODS:
        raise ConfigError(f"unknown relevance method {method!r}; choose one of {RELEVANCE_METHODS}")
    return f"{name}-{split}-{method}.npy"


def open_relevance(path: str | os.PathLike[str], n_queries: int | None = None,
                   n_images: int | None = None) -> np.ndarray:
    """Memory-map a relevance matrix ``[n_queries, n_images]`` (read-only).

    Accepts the authors' headerless float32 layout (``n_queries`` or ``n_images`` is needed to
    find the shape; with neither, a square-free (5N, N) shape is inferred) and real ``.npy`` files.
    """
    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"relevance file {p} does not exist")
    with open(p, "rb") as handle:
        magic = handle.read(len(_NPY_MAGIC))
    if magic == _NPY_MAGIC:
        arr = np.load(p, mmap_mode="r")
        if arr.ndim != 2:
            raise InputFileError(f"relevance file {p}: expected a 2-D array, got shape {arr.shape}")
    else:
        size = p.stat().st_size
        if size == 0 or size % 4:
            raise InputFileError(
                f"relevance file {p}: {size} bytes is not a whole number of float32 values; "
                "the file is truncated or not a relevance matrix"
            )
        count = size // 4
        if n_queries is None and n_images is None:
            # The authors' matrices are (5N, N): count = 5N² → N = sqrt(count / 5).
            n = int(round((count / 5) ** 0.5))
            if 5 * n * n != count:
                raise InputFileError(
                    f"relevance file {p}: {count} values is not a (5N, N) matrix; pass the number "
                    "of queries/images explicitly"
                )
            n_queries = 5 * n
        if n_queries is None:
            assert n_images is not None
            n_queries = count // n_images
        if count % n_queries:
            raise InputFileError(
                f"relevance file {p}: {count} float32 values do not divide into {n_queries} rows"
            )
        arr = np.memmap(p, dtype=np.float32, mode="r", shape=(n_queries, count // n_queries))
    if n_queries is not None and arr.shape[0] != n_queries or n_images is not None and arr.shape[1] != n_images:
        raise InputFileError(
            f"relevance file {p} has shape {tuple(arr.shape)}, expected "
            f"({n_queries}, {n_images}) for this split; use the file made for the same split"
        )
    return arr


def create_relevance(path: str | os.PathLike[str], n_queries: int, n_images: int) -> np.memmap:
    """A writable headerless float32 memmap ``[n_queries, n_images]`` (the authors' layout).

    Written under a temporary name; call :func:`finish_relevance` after filling it so a crash never
    leaves a half matrix under the final name. (The caller fills the memmap between the two calls,
    so this is :func:`itmflow.files.atomic_path` split in two: same temporary name, same commit.)
    """
    from itmflow.files import temp_path_for

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(p)
    return np.memmap(tmp, dtype=np.float32, mode="w+", shape=(n_queries, n_images))


def finish_relevance(mm: np.memmap, path: str | os.PathLike[str]) -> Path:
    """Flush a matrix from :func:`create_relevance` and move it to its final name atomically."""
    from itmflow.files import commit_temp

    mm.flush()
    tmp = Path(mm.filename)
    del mm
    target = Path(path)
    commit_temp(tmp, target)  # fsync, rename, fsync the directory
    return target


def find_relevance(directory: str | os.PathLike[str], split: str) -> dict[str, Path]:
    """Relevance files for ``split`` in ``directory``: ``{method: path}`` (``*-{split}-{method}.npy``)."""
    d = Path(directory)
    if not d.is_dir():
        raise InputFileError(f"relevance directory {d} does not exist")
    found: dict[str, Path] = {}
    for method in RELEVANCE_METHODS:
        matches = sorted(d.glob(f"*-{split}-{method}.npy"))
        if len(matches) > 1:
            raise InputFileError(
                f"relevance directory {d} holds several {method} files for split {split!r}: "
                f"{[m.name for m in matches]}; keep one"
            )
        if matches:
            found[method] = matches[0]
    if not found:
        raise InputFileError(
            f"no relevance file for split {split!r} in {d}: expected names like "
            f"'coco-{split}-rougeL.npy' / 'coco-{split}-spice.npy' (make ROUGE-L ones with "
            "`trainers.evaluation.rouge.write_rouge_relevance`)"
        )
    return found
