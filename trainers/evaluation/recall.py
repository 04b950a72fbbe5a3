"""Recall@K, median and mean rank for image↔text retrieval, with the originals' exact semantics.

Layout (VSE++ → SCAN → SGRAF / TERN / TERAN, spec ``trainers.md`` §1.2): a similarity matrix
``sims`` has one row per image and one column per caption; caption ``c`` belongs to image
``c // cpi`` (``cpi`` = captions per image, 5 for COCO and Flickr30k).

* i2t: for image ``i`` the captions are ordered by ``numpy.argsort(sims[i])[::-1]``; the rank is the
  best (smallest) position of its ``cpi`` ground-truth captions.
* t2i: for caption ``c`` the images are ordered by ``numpy.argsort(sims[:, c])[::-1]``; the rank is
  the position of image ``c // cpi``.
* R@K = 100·mean(rank < K); medr = floor(median(rank)) + 1; meanr = mean(rank) + 1.

Ranks are 0-based (as the originals store them). We use numpy's default ``argsort`` (the same
unstable quicksort the originals call) and reverse it, so even tied scores give the originals'
ranks bit for bit. Rows are sorted in chunks so a COCO 5K matrix (5,000 × 25,000) needs a bounded
amount of index memory.

The 5-fold COCO 1K protocol averages every metric over the folds. The originals then print a wrong
"rsum" for the 5 folds (a ``mean_metrics[k]*6`` of the wrong column); here ``rsum`` is always
recomputed from the averaged R@K.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from itmflow.errors import ConfigError

RECALL_KS = (1, 5, 10)
CAPTIONS_PER_IMAGE = 5
"""Captions per image in every evaluation (COCO and Flickr30k): caption ``c`` ↔ image ``c // 5``."""
#: Below this many images an evaluation's recall is mostly chance (see :func:`small_split_note`).
SMALL_SPLIT_IMAGES = 100
# Rows sorted per chunk: 256 rows × 25,000 captions × int64 ≈ 51 MB of indices at a time.
_ROW_CHUNK = 256


@dataclass(frozen=True)
class DirectionMetrics:
    """R@1/5/10 (percent), median rank and mean rank (1-based) of one retrieval direction."""

    r1: float
    r5: float
    r10: float
    medr: float
    meanr: float

    @property
    def rsum(self) -> float:
        """R@1 + R@5 + R@10 of this direction."""
        return self.r1 + self.r5 + self.r10


@dataclass(frozen=True)
class RetrievalMetrics:
    """Both directions; ``rsum`` = i2t R@1+R@5+R@10 + t2i R@1+R@5+R@10."""

    i2t: DirectionMetrics
    t2i: DirectionMetrics
    folds: list[RetrievalMetrics] = field(default_factory=list)

    @property
    def rsum(self) -> float:
        """Sum of the six recalls, always computed from the (averaged) R@K shown."""
        return self.i2t.rsum + self.t2i.rsum

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON: ``{"i2t": {...}, "t2i": {...}, "rsum": x, "folds": [...]}``."""
        out: dict[str, Any] = {"i2t": asdict(self.i2t), "t2i": asdict(self.t2i), "rsum": self.rsum}
        if self.folds:
            out["folds"] = [f.to_dict() for f in self.folds]
        return out


def _check_sims(sims: np.ndarray, cpi: int) -> tuple[int, int]:
    if sims.ndim != 2:
        raise ConfigError(f"similarity matrix must be 2-D [n_images, n_captions], got shape {sims.shape}")
    n_img, n_cap = sims.shape
    if cpi < 1 or n_cap != cpi * n_img:
        raise ConfigError(
            f"similarity matrix {sims.shape}: expected {cpi} captions per image "
            f"(n_captions = {cpi} × n_images); pass the first {cpi} captions of every image"
        )
    return n_img, n_cap


def _reverse_positions(block: np.ndarray) -> np.ndarray:
    """Position of every column in ``argsort(row)[::-1]`` for each row of ``block``.

    ``np.argsort`` along axis 1 sorts each row with the same algorithm as the originals' 1-D call.
    """
    n = block.shape[1]
    order = np.argsort(block, axis=1)
    pos = np.empty_like(order)
    rows = np.arange(block.shape[0])[:, None]
    # order[r, k] is the column at ascending position k → reversed position n-1-k.
    pos[rows, order] = (n - 1) - np.arange(n)[None, :]
    return pos


def _best_positions(rows: np.ndarray, gt_of: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """For each row q of ``rows``: min position, in ``argsort(row)[::-1]``, of the columns ``gt_of(q)``.

    ``gt_of`` maps query indices ``[n]`` to their ground-truth columns ``[n, g]``.
    """
    n = rows.shape[0]
    ranks = np.empty(n, dtype=np.int64)
    for start in range(0, n, _ROW_CHUNK):
        stop = min(start + _ROW_CHUNK, n)
        # A contiguous copy keeps the element order the originals' 1-D argsort sees.
        pos = _reverse_positions(np.ascontiguousarray(rows[start:stop]))
        gt = gt_of(np.arange(start, stop))
        ranks[start:stop] = pos[np.arange(stop - start)[:, None], gt].min(axis=1)
    return ranks


def i2t_ranks(sims: np.ndarray, cpi: int = CAPTIONS_PER_IMAGE) -> np.ndarray:
    """0-based rank of the best ground-truth caption for every image (shape ``[n_images]``)."""
    sims = np.asarray(sims)
    _check_sims(sims, cpi)
    return _best_positions(sims, lambda q: q[:, None] * cpi + np.arange(cpi)[None, :])


def t2i_ranks(sims: np.ndarray, cpi: int = CAPTIONS_PER_IMAGE) -> np.ndarray:
    """0-based rank of the ground-truth image for every caption (shape ``[n_captions]``)."""
    sims = np.asarray(sims)
    _check_sims(sims, cpi)
    return _best_positions(sims.T, lambda q: (q // cpi)[:, None])


def direction_metrics(ranks: np.ndarray) -> DirectionMetrics:
    """R@1/5/10, medr and meanr from 0-based ranks (the originals' formulas)."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        raise ConfigError("no queries to evaluate (empty rank array)")
    recalls = [100.0 * float(np.mean(ranks < k)) for k in RECALL_KS]
    return DirectionMetrics(
        r1=recalls[0], r5=recalls[1], r10=recalls[2],
        medr=float(np.floor(np.median(ranks)) + 1), meanr=float(ranks.mean() + 1),
    )


@dataclass(frozen=True)
class RankResult:
    """Metrics plus the per-query ranks that produced them."""

    metrics: RetrievalMetrics
    i2t_ranks: np.ndarray
    t2i_ranks: np.ndarray


def evaluate_sims(sims: np.ndarray, cpi: int = CAPTIONS_PER_IMAGE) -> RankResult:
    """Both directions on one pool (COCO 5K, Flickr30k 1K, or one fold)."""
    r_i2t = i2t_ranks(sims, cpi)
    r_t2i = t2i_ranks(sims, cpi)
    metrics = RetrievalMetrics(direction_metrics(r_i2t), direction_metrics(r_t2i))
    return RankResult(metrics, r_i2t, r_t2i)


def t2i_metrics(sims: np.ndarray, cpi: int = CAPTIONS_PER_IMAGE) -> DirectionMetrics:
    """Text→image only (TERN validates on t2i alone)."""
    return direction_metrics(t2i_ranks(sims, cpi))


def fold_bounds(n_images: int, n_folds: int) -> list[tuple[int, int]]:
    """Image ranges ``[start, stop)`` of the folds; fold f = images ``f·n/F .. (f+1)·n/F``."""
    if n_folds < 1 or n_images % n_folds:
        raise ConfigError(
            f"{n_images} images cannot be split into {n_folds} equal folds "
            f"(COCO 1K needs the 5,000-image test set with --folds 5)"
        )
    size = n_images // n_folds
    return [(f * size, (f + 1) * size) for f in range(n_folds)]


def average_metrics(folds: list[RetrievalMetrics]) -> RetrievalMetrics:
    """Mean of every metric over the folds; rsum follows from the averaged R@K (not copied)."""

    def mean_dir(attr: str) -> DirectionMetrics:
        dirs = [getattr(m, attr) for m in folds]
        return DirectionMetrics(**{k: float(np.mean([getattr(d, k) for d in dirs]))
                                   for k in ("r1", "r5", "r10", "medr", "meanr")})

    return RetrievalMetrics(mean_dir("i2t"), mean_dir("t2i"), folds=list(folds))


def evaluate_folds(sims: np.ndarray, n_folds: int = 5, cpi: int = CAPTIONS_PER_IMAGE) -> RankResult:
    """COCO 1K: metrics on each diagonal block ``sims[f·n:(f+1)·n, f·cpi·n:(f+1)·cpi·n]``, averaged.

    The returned ranks are the per-fold ranks concatenated in fold order (0-based within the fold).
    """
    sims = np.asarray(sims)
    n_img, _ = _check_sims(sims, cpi)
    per_fold: list[RankResult] = []
    for start, stop in fold_bounds(n_img, n_folds):
        per_fold.append(evaluate_sims(sims[start:stop, start * cpi:stop * cpi], cpi))
    metrics = average_metrics([r.metrics for r in per_fold])
    return RankResult(metrics, np.concatenate([r.i2t_ranks for r in per_fold]),
                      np.concatenate([r.t2i_ranks for r in per_fold]))


def evaluate_protocol(sims: np.ndarray, n_folds: int = 1, cpi: int = CAPTIONS_PER_IMAGE) -> RankResult:
    """``n_folds == 1``: one pool (5K / Flickr30k 1K); otherwise the averaged fold protocol."""
    return evaluate_sims(sims, cpi) if n_folds == 1 else evaluate_folds(sims, n_folds, cpi)


def small_split_note(n_images: int, *, what: str = "evaluation") -> str | None:
    """A note when a split is so small that its recall is near chance (None otherwise).

    With N images a random ranking puts the right image first for 1 query in N (t2i R@1 = 1/N),
    and R@10 of a random ranking is 10/N: with 5 images every R@5 is 100 %.
    """
    if n_images <= 0 or n_images >= SMALL_SPLIT_IMAGES:
        return None
    chance = 100.0 / n_images
    return (f"{what} on {n_images} images only: R@1 by chance = 1/{n_images} = {chance:.1f} %, "
            f"R@10 by chance = {min(100.0, 10 * chance):.0f} %; these recalls say little "
            f"(use ≥ {SMALL_SPLIT_IMAGES} images to compare models)")
