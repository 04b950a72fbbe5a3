"""NDCG@25 vs the formula written out, ROUGE-L vs a plain-Python LCS, relevance file round trip."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from itmflow.errors import ConfigError, InputFileError
from trainers.evaluation.ndcg import (
    create_relevance,
    find_relevance,
    finish_relevance,
    ndcg_protocol,
    ndcg_rows,
    open_relevance,
)
from trainers.evaluation.rouge import (
    lcs_lengths,
    rouge_l_matrix_rows,
    rouge_tokens,
    spice_available,
    write_rouge_relevance,
    write_spice_relevance,
)


# ------------------------------------------------------------------ references written from the spec

def ref_ndcg(y_true: np.ndarray, scores: np.ndarray, k: int = 25) -> float:
    ranking = np.argsort(scores)[::-1][:k]

    def dcg(order: np.ndarray) -> float:
        return sum((2.0 ** float(y_true[r]) - 1.0) / math.log2(i + 2) for i, r in enumerate(order))

    ideal = dcg(np.argsort(y_true)[::-1][:k])
    return 0.0 if ideal == 0 else dcg(ranking) / ideal


def ref_lcs(a: list[str], b: list[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            table[i][j] = (table[i - 1][j - 1] + 1 if a[i - 1] == b[j - 1]
                           else max(table[i - 1][j], table[i][j - 1]))
    return table[-1][-1]


def ref_rouge(cand: str, refs: list[str], beta: float = 1.2) -> float:
    c = cand.lower().split(" ")
    prec, rec = [], []
    for r in refs:
        t = r.lower().split(" ")
        lcs = ref_lcs(c, t)
        prec.append(lcs / len(c))
        rec.append(lcs / len(t))
    p, r_ = max(prec), max(rec)
    return 0.0 if p == 0 or r_ == 0 else (1 + beta**2) * p * r_ / (r_ + beta**2 * p)


# ---------------------------------------------------------------------------------------- NDCG

def test_ndcg_hand_cases() -> None:
    rel = np.array([[3.0, 0.0, 1.0]])
    # Perfect order → 1.
    assert ndcg_rows(np.array([[0.9, 0.1, 0.5]]), rel)[0] == pytest.approx(1.0)
    # Worst order: dcg = 0/1 + 1/log2(3) + 7/log2(4); ideal = 7 + 1/log2(3).
    worst = (1 / math.log2(3) + 7 / 2) / (7 + 1 / math.log2(3))
    assert ndcg_rows(np.array([[0.0, 0.9, 0.5]]), rel)[0] == pytest.approx(worst)
    # All-zero relevance → 0, not NaN.
    assert ndcg_rows(np.array([[0.3, 0.2, 0.1]]), np.zeros((1, 3)))[0] == 0.0


def test_ndcg_rows_match_formula_with_cutoff_and_ties() -> None:
    rng = np.random.default_rng(1)
    scores = np.round(rng.random((40, 60)), 2).astype(np.float32)    # ties present
    rel = rng.random((40, 60)).astype(np.float32) * (rng.random((40, 60)) > 0.5)
    got = ndcg_rows(scores, rel, k=25)
    want = [ref_ndcg(rel[q], scores[q]) for q in range(40)]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_ndcg_protocol_fold_slicing_both_directions() -> None:
    rng = np.random.default_rng(2)
    n_img, folds = 20, 2
    sims = rng.standard_normal((n_img, 5 * n_img)).astype(np.float32)
    rel = rng.random((5 * n_img, n_img)).astype(np.float32)
    rel[rel < 0.4] = 0
    rel[7, :] = 0                             # one query whose ideal DCG is 0 → NDCG 0
    res = ndcg_protocol(sims, rel, n_folds=folds)
    t2i, i2t = [], []
    for f in range(folds):
        for q in range(50):
            qg = 50 * f + q
            t2i.append(ref_ndcg(rel[qg, 10 * f:10 * f + 10], sims[10 * f:10 * f + 10, qg]))
        for i in range(10):
            ig = 10 * f + i
            i2t.append(ref_ndcg(rel[50 * f:50 * f + 50, ig], sims[ig, 50 * f:50 * f + 50]))
    np.testing.assert_allclose(res.t2i_per_query, t2i, atol=1e-12)
    np.testing.assert_allclose(res.i2t_per_query, i2t, atol=1e-12)
    assert res.t2i_per_query[7] == 0.0
    assert res.t2i == pytest.approx(np.mean(t2i))              # zeros included
    # TERAN's i2t mean drops zero NDCGs.
    rel2 = rel.copy()
    rel2[:, 3] = 0
    teran = ndcg_protocol(sims, rel2, n_folds=folds, i2t_exclude_zeros=True)
    plain = ndcg_protocol(sims, rel2, n_folds=folds)
    nz = plain.i2t_per_query[plain.i2t_per_query != 0]
    assert teran.i2t == pytest.approx(nz.mean()) and plain.i2t < teran.i2t


def test_ndcg_nan_relevance_counts_as_zero_and_shape_checked() -> None:
    sims = np.eye(2, 10, dtype=np.float32)
    rel = np.ones((10, 2), dtype=np.float32)
    rel[0, 1] = np.nan
    res = ndcg_protocol(sims, rel)
    assert res.nan_entries == 1 and np.isfinite(res.t2i)
    with pytest.raises(ConfigError, match="relevance matrix has shape"):
        ndcg_protocol(sims, rel.T)


# ------------------------------------------------------------------------------ relevance files

def test_relevance_round_trip_in_authors_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    data = rng.random((15, 3)).astype(np.float32)
    path = tmp_path / "coco-test-rougeL.npy"
    mm = create_relevance(path, 15, 3)
    assert not path.exists()                         # only the partial file while writing
    mm[:] = data
    finish_relevance(mm, path)
    assert path.stat().st_size == data.nbytes         # headerless raw float32
    # Read exactly as the authors do.
    theirs = np.memmap(path, dtype=np.float32, mode="r").reshape(15, -1)
    np.testing.assert_array_equal(theirs, data)
    np.testing.assert_array_equal(open_relevance(path), data)           # (5N, N) inferred
    np.testing.assert_array_equal(open_relevance(path, n_queries=15), data)
    # A file someone wrote with np.save (a header) also loads.
    np.save(tmp_path / "other.npy", data)
    np.testing.assert_array_equal(open_relevance(tmp_path / "other.npy", 15, 3), data)
    with pytest.raises(InputFileError, match="expected"):
        open_relevance(path, n_queries=15, n_images=4)
    (tmp_path / "bad-test-spice.npy").write_bytes(b"\x00" * 7)
    with pytest.raises(InputFileError, match="float32"):
        open_relevance(tmp_path / "bad-test-spice.npy")
    found = find_relevance(tmp_path, "test")
    assert found["rougeL"] == path and found["spice"].name == "bad-test-spice.npy"
    with pytest.raises(InputFileError, match="no relevance file"):
        find_relevance(tmp_path, "val")


# ------------------------------------------------------------------------------------- ROUGE-L

TRICKY = [
    "A cat on a sofa.",
    "a cat  on the sofa .",                # double space → empty token
    "A CAT sitting on a red sofa",
    "two dogs, running in the park ",      # trailing space → empty token at the end
    "Two dogs running, in the park.",
    "",                                     # empty caption: one empty token
    "a a a a a a a a a a",
    "the the cat cat sofa sofa on on",
    "park the in running dogs two",
    "a man riding a wave on top of a surfboard",
]


def test_lcs_matches_plain_python_incl_punctuation_and_spaces() -> None:
    rng = np.random.default_rng(4)
    words = ["a", "the", "cat", "dog", "on", "sofa", "", "sofa.", ","]
    extra = [" ".join(rng.choice(words, size=int(rng.integers(1, 30)))) for _ in range(40)]
    extra.append(" ".join(rng.choice(words, size=80)))         # > 64 tokens: DP path
    extra.append(" ".join(rng.choice(words, size=64)))         # exactly one 64-bit word
    extra.append(" ".join(rng.choice(words, size=40)))         # 64-bit word, partly used
    extra.append(" ".join(rng.choice(words, size=32)))         # exactly one 32-bit word
    caps = TRICKY + extra
    got = lcs_lengths(caps, caps)
    toks = [rouge_tokens(c) for c in caps]
    want = np.array([[ref_lcs(a, b) for b in toks] for a in toks])
    np.testing.assert_array_equal(got, want)


def test_rouge_rows_match_reference_and_self_score() -> None:
    caps = TRICKY  # 10 captions = 2 images × 5
    got = rouge_l_matrix_rows(caps, slice(0, 10), cpi=5)
    want = np.array([[ref_rouge(caps[q], caps[5 * j:5 * j + 5]) for j in range(2)] for q in range(10)])
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # A caption is among its own image's references → P = R = 1 → score 1.
    for q in range(10):
        assert got[q, q // 5] == pytest.approx(1.0)


def test_write_rouge_relevance_threads_chunks_and_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    words = "a the cat dog man woman on in with sofa park bench red blue".split()
    caps = [" ".join(rng.choice(words, size=int(rng.integers(3, 15)))) for _ in range(60)]
    path = tmp_path / "mine-test-rougeL.npy"
    seen: list[int] = []
    write_rouge_relevance(caps, path, chunk=7, workers=2, progress=seen.append)
    assert sum(seen) == 60
    mat = open_relevance(path)
    assert mat.shape == (60, 12) and mat.dtype == np.float32
    for q in (0, 13, 59):
        for j in (0, 5, 11):
            assert mat[q, j] == pytest.approx(ref_rouge(caps[q], caps[5 * j:5 * j + 5]), abs=1e-6)
    with pytest.raises(ConfigError, match="per image"):
        write_rouge_relevance(caps[:7], tmp_path / "x.npy")


def test_spice_without_java_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))          # no java on this PATH
    ok, why = spice_available()
    assert not ok and "java" in why and "--relevance" in why
    with pytest.raises(InputFileError, match="java|pycocoevalcap|jars"):
        write_spice_relevance(TRICKY, tmp_path / "s.npy")
