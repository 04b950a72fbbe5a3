"""Recall@K / medr / meanr / folds against hand-worked cases and the originals' per-query loop."""

from __future__ import annotations

import numpy as np
import pytest

from itmflow.errors import ConfigError
from trainers.evaluation.recall import (
    direction_metrics,
    evaluate_folds,
    evaluate_sims,
    i2t_ranks,
    t2i_ranks,
)


def _loop_i2t(sims: np.ndarray, cpi: int) -> np.ndarray:
    """The SCAN/SGRAF i2t loop, written out per query (reference)."""
    ranks = np.zeros(sims.shape[0], dtype=np.int64)
    for index in range(sims.shape[0]):
        inds = np.argsort(sims[index])[::-1]
        rank = 10**9
        for i in range(cpi * index, cpi * index + cpi):
            tmp = np.where(inds == i)[0][0]
            rank = min(rank, tmp)
        ranks[index] = rank
    return ranks


def _loop_t2i(sims: np.ndarray, cpi: int) -> np.ndarray:
    d = sims.T
    ranks = np.zeros(d.shape[0], dtype=np.int64)
    for index in range(sims.shape[0]):
        for i in range(cpi):
            inds = np.argsort(d[cpi * index + i])[::-1]
            ranks[cpi * index + i] = np.where(inds == index)[0][0]
    return ranks


def test_hand_case_two_captions_per_image() -> None:
    # 3 images, 2 captions each: caption c belongs to image c // 2.
    sims = np.array([
        [0.9, 0.1, 0.8, 0.2, 0.3, 0.0],   # image 0: its captions 0 (best) → rank 0
        [0.5, 0.4, 0.7, 0.3, 0.6, 0.1],   # image 1: captions 2,3; order 2,4,0,1,3,5 → rank 0
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],   # image 2: captions 4,5 at positions 4,5 → rank 4
    ], dtype=np.float32)
    np.testing.assert_array_equal(i2t_ranks(sims, cpi=2), [0, 0, 4])
    # t2i: column c, rank of image c//2 among the 3 images (descending).
    # c0: [.9,.5,.9] → argsort ascending [1,0,2] reversed [2,0,1] → image 0 at 1
    # c1: [.1,.4,.8] → order 2,1,0 → image 0 at 2; c2: [.8,.7,.7]: image 1 is 2nd or 3rd (tie)
    r = t2i_ranks(sims, cpi=2)
    assert r[0] == 1 and r[1] == 2
    np.testing.assert_array_equal(r, _loop_t2i(sims, 2))
    m = direction_metrics(np.array([0, 0, 4]))
    assert m.r1 == pytest.approx(200 / 3) and m.r5 == 100.0 and m.r10 == 100.0
    assert m.medr == 1.0 and m.meanr == pytest.approx(1 + 4 / 3)


def test_medr_floor_of_median_of_even_count() -> None:
    m = direction_metrics(np.array([0, 1, 2, 5]))   # median 1.5 → floor 1 → medr 2
    assert m.medr == 2.0
    assert m.r1 == 25.0 and m.r5 == 75.0 and m.r10 == 100.0
    assert m.meanr == pytest.approx(1 + 2.0)


@pytest.mark.parametrize("cpi", [1, 5])
def test_vectorised_ranks_equal_the_original_loop(cpi: int) -> None:
    rng = np.random.default_rng(3)
    sims = rng.standard_normal((37, 37 * cpi)).astype(np.float32)
    # Plant ties (quantised scores) so the argsort semantics matter.
    sims = np.round(sims, 1)
    np.testing.assert_array_equal(i2t_ranks(sims, cpi), _loop_i2t(sims, cpi))
    np.testing.assert_array_equal(t2i_ranks(sims, cpi), _loop_t2i(sims, cpi))


def test_chunked_sorting_matches_loop_over_many_rows() -> None:
    rng = np.random.default_rng(0)
    sims = rng.random((300, 1500)).astype(np.float32)   # > one 256-row chunk in both directions
    np.testing.assert_array_equal(i2t_ranks(sims), _loop_i2t(sims, 5))
    np.testing.assert_array_equal(t2i_ranks(sims), _loop_t2i(sims, 5))


def test_perfect_and_reversed_matchers() -> None:
    n = 8
    good = np.repeat(np.eye(n, dtype=np.float32), 5, axis=1)     # GT captions score 1, others 0
    res = evaluate_sims(good + 1e-3 * np.arange(5 * n)[None, :] / (5 * n))
    assert res.metrics.rsum == pytest.approx(600.0)
    assert res.metrics.i2t.medr == 1.0 and res.metrics.t2i.meanr == 1.0
    bad = evaluate_sims(-good)
    assert bad.metrics.t2i.r1 == 0.0 and bad.metrics.i2t.r1 == 0.0


def test_fold_average_and_rsum_recomputed() -> None:
    rng = np.random.default_rng(7)
    n_img, folds = 50, 5
    sims = rng.random((n_img, 5 * n_img)).astype(np.float32)
    # Make the matcher good on some folds only, so folds differ.
    for f in range(folds):
        if f % 2 == 0:
            for i in range(10 * f, 10 * f + 10):
                sims[i, 5 * i:5 * i + 5] += 0.5
    res = evaluate_folds(sims, n_folds=folds)
    per_fold = []
    for f in range(folds):
        sub = sims[10 * f:10 * f + 10, 50 * f:50 * f + 50]
        per_fold.append(evaluate_sims(sub).metrics)
        # Fold-local ranks come back concatenated in fold order.
        np.testing.assert_array_equal(res.i2t_ranks[10 * f:10 * f + 10], _loop_i2t(sub, 5))
    for attr in ("r1", "r5", "r10", "medr", "meanr"):
        assert res.metrics.i2t.__getattribute__(attr) == pytest.approx(
            np.mean([getattr(m.i2t, attr) for m in per_fold]))
        assert getattr(res.metrics.t2i, attr) == pytest.approx(
            np.mean([getattr(m.t2i, attr) for m in per_fold]))
    # rsum = sum of the averaged R@K (== mean of fold rsums, since rsum is linear) ...
    expected = sum(getattr(res.metrics.i2t, k) + getattr(res.metrics.t2i, k) for k in ("r1", "r5", "r10"))
    assert res.metrics.rsum == pytest.approx(expected)
    assert res.metrics.rsum == pytest.approx(np.mean([m.rsum for m in per_fold]))
    # ... and not the originals' printed value (6 × mean of the i2t average recall).
    wrong = 6 * np.mean([m.i2t.rsum / 3 for m in per_fold])
    assert res.metrics.rsum != pytest.approx(wrong)
    d = res.metrics.to_dict()
    assert len(d["folds"]) == folds and d["rsum"] == pytest.approx(expected)


def test_bad_shapes_raise_clear_errors() -> None:
    with pytest.raises(ConfigError, match="captions per image"):
        i2t_ranks(np.zeros((3, 14)))
    with pytest.raises(ConfigError, match="equal folds"):
        evaluate_folds(np.zeros((12, 60)), n_folds=5)
