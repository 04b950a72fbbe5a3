"""ROUGE-L relevance matrices computed fast, and SPICE relevance (import, or compute with Java).

Definition (TERN/TERAN ``evaluate_utils/rouge.py`` = pycocoevalcap's ROUGE-L, docs/guide/evaluation.md): tokens are
``caption.lower().split(" ")`` of the raw caption (punctuation stays attached; double or trailing
spaces give empty tokens, which count and match each other). For a candidate c and the references
r_1..r_5 of an image: P = max_r LCS(c, r)/|c| and R = max_r LCS(c, r)/|r| (the two maxima taken
independently), score = (1 + β²)·P·R / (R + β²·P) with β = 1.2, and 0 when P or R is 0.

Speed: the LCS of one candidate (≤ 64 tokens) against many references is computed with the
bit-parallel algorithm of Allison–Dix / Hyyrö: the candidate's positions of every token form a
32- or 64-bit match mask, and each reference token updates a bit vector with four word operations
(``U = V & M; V = (V + U) | (V - U)``); LCS = |c| − popcount(V). numpy applies this to a whole
[references × candidates] block per reference position, references sorted by length so each
step touches only those still running. No Python loop per pair; threads share the blocks (numpy
releases the GIL). Candidates longer than 64 tokens (none in COCO / Flickr30k) use a vectorised
dynamic programme.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from itmflow.errors import ConfigError, InputFileError
from trainers.evaluation.ndcg import create_relevance, finish_relevance
from trainers.evaluation.recall import CAPTIONS_PER_IMAGE

BETA = 1.2
_WORD = 64


def rouge_tokens(caption: str) -> list[str]:
    """The originals' tokenisation: lower-case, split on single spaces (empty tokens kept)."""
    return caption.lower().split(" ")


class _Encoded:
    """Captions as padded token-id arrays (shared vocabulary), lengths and length order."""

    def __init__(self, captions: Sequence[str]) -> None:
        vocab: dict[str, int] = {}
        token_lists = [[vocab.setdefault(t, len(vocab)) for t in rouge_tokens(c)] for c in captions]
        self.vocab_size = len(vocab)
        self.lengths = np.array([len(t) for t in token_lists], dtype=np.int64)
        width = int(self.lengths.max()) if len(token_lists) else 0
        self.ids = np.full((len(token_lists), width), self.vocab_size, dtype=np.int64)  # pad → zero column
        for i, toks in enumerate(token_lists):
            self.ids[i, :len(toks)] = toks


def _match_table(q_ids: np.ndarray, q_lens: np.ndarray, vocab_size: int,
                 dtype: type = np.uint64) -> np.ndarray:
    """``table[token, q]`` = bit mask of the positions of ``token`` in candidate q ([V+1, Q])."""
    n_q, width = q_ids.shape
    table = np.zeros((vocab_size + 1, n_q), dtype=dtype)
    pos = np.arange(width)
    valid = pos[None, :] < q_lens[:, None]
    rows = q_ids[valid]
    cols = np.broadcast_to(np.arange(n_q)[:, None], q_ids.shape)[valid]
    bits = np.left_shift(dtype(1), np.broadcast_to(pos[None, :], q_ids.shape)[valid].astype(dtype))
    np.bitwise_or.at(table, (rows, cols), bits)
    table[vocab_size] = 0   # the padding token never matches
    return table


def _lcs_bitparallel(table: np.ndarray, q_lens: np.ndarray, r_ids: np.ndarray,
                     r_lens: np.ndarray) -> np.ndarray:
    """LCS lengths ``[R, Q]`` of references (rows of r_ids, sorted by decreasing length) × candidates.

    The word type of ``table`` (uint32 or uint64) must hold the longest candidate.
    """
    dtype = table.dtype.type
    bits = 8 * table.dtype.itemsize
    n_r = r_ids.shape[0]
    n_q = table.shape[1]
    v = np.full((n_r, n_q), np.iinfo(dtype).max, dtype=dtype)
    u = np.empty_like(v)
    t = np.empty_like(v)
    for j in range(int(r_lens[0]) if n_r else 0):
        active = int(np.searchsorted(-r_lens, -j, side="left"))   # refs with length > j
        if active == 0:
            break
        vs, us, ts = v[:active], u[:active], t[:active]
        np.take(table, r_ids[:active, j], axis=0, out=us)          # match masks M
        np.bitwise_and(vs, us, out=us)                               # U = V & M
        np.subtract(vs, us, out=ts)                                  # V - U
        np.add(vs, us, out=vs)                                       # V + U (wraps: fine)
        np.bitwise_or(vs, ts, out=vs)
    low = np.where(q_lens >= bits, np.iinfo(dtype).max,
                   np.left_shift(dtype(1), np.minimum(q_lens, bits - 1).astype(dtype)) - dtype(1))
    ones = np.bitwise_count(v & low.astype(dtype)[None, :]).astype(np.int64)
    return q_lens[None, :] - ones


def _lcs_dp(q: np.ndarray, r_ids: np.ndarray, r_lens: np.ndarray) -> np.ndarray:
    """LCS of one candidate (any length) against every reference; DP vectorised over references."""
    n_r, width = r_ids.shape
    prev = np.zeros((n_r, width + 1), dtype=np.int64)
    for tok in q:
        cur = np.zeros_like(prev)
        match = r_ids == tok
        for j in range(1, width + 1):
            cur[:, j] = np.where(match[:, j - 1], prev[:, j - 1] + 1, np.maximum(prev[:, j], cur[:, j - 1]))
        prev = cur
    return prev[np.arange(n_r), r_lens]


def lcs_lengths(candidates: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """LCS length of every (candidate, reference) pair, ``[len(candidates), len(references)]``."""
    enc = _Encoded(list(candidates) + list(references))
    nc = len(candidates)
    q_ids, q_lens = enc.ids[:nc], enc.lengths[:nc]
    return _lcs_block(q_ids, q_lens, enc.ids[nc:], enc.lengths[nc:], enc.vocab_size).T


def _lcs_block(q_ids: np.ndarray, q_lens: np.ndarray, r_ids: np.ndarray, r_lens: np.ndarray,
               vocab_size: int) -> np.ndarray:
    """``[R, Q]`` LCS lengths for arbitrary (unsorted) references."""
    order = np.argsort(-r_lens, kind="stable")
    inverse = np.empty_like(order)
    inverse[order] = np.arange(order.size)
    r_sorted, len_sorted = r_ids[order], r_lens[order]
    out = np.empty((r_ids.shape[0], q_ids.shape[0]), dtype=np.int64)
    # Candidates of ≤ 32 tokens (nearly all captions) run on 32-bit words: half the memory traffic.
    for dtype, lo, hi in ((np.uint32, 0, 32), (np.uint64, 32, _WORD)):
        sel = np.flatnonzero((q_lens > lo) & (q_lens <= hi))
        if sel.size:
            table = _match_table(q_ids[sel], q_lens[sel], vocab_size, dtype)
            out[:, sel] = _lcs_bitparallel(table, q_lens[sel], r_sorted, len_sorted)[inverse]
    for qi in np.flatnonzero(q_lens > _WORD):
        out[:, qi] = _lcs_dp(q_ids[qi, :q_lens[qi]], r_ids, r_lens)
    return out


def rouge_l_scores(lcs: np.ndarray, cand_lens: np.ndarray, ref_lens: np.ndarray, cpi: int,
                   beta: float = BETA) -> np.ndarray:
    """ROUGE-L of candidates vs images from an LCS block ``[n_cand, cpi·N]`` → ``[n_cand, N]``."""
    n_c, n_r = lcs.shape
    lcs_g = lcs.reshape(n_c, n_r // cpi, cpi).astype(np.float64)
    prec = lcs_g.max(axis=2) / cand_lens[:, None]
    rec = (lcs_g / ref_lens.reshape(1, -1, cpi)).max(axis=2)
    b2 = beta * beta
    with np.errstate(invalid="ignore", divide="ignore"):
        score = (1 + b2) * prec * rec / (rec + b2 * prec)
    return np.where((prec > 0) & (rec > 0), score, 0.0)


def rouge_l_matrix_rows(captions: Sequence[str], rows: slice, *, cpi: int = CAPTIONS_PER_IMAGE,
                        _enc: _Encoded | None = None) -> np.ndarray:
    """ROUGE-L relevance rows ``[rows, N]`` of a split's captions (caption c ↔ image c // cpi)."""
    enc = _enc or _Encoded(captions)
    n_cap = len(captions)
    if n_cap % cpi:
        raise ConfigError(f"{n_cap} captions are not {cpi} per image")
    q = np.arange(n_cap)[rows]
    lcs = _lcs_block(enc.ids[q], enc.lengths[q], enc.ids, enc.lengths, enc.vocab_size).T
    return rouge_l_scores(lcs, enc.lengths[q], enc.lengths, cpi)


def write_rouge_relevance(captions: Sequence[str], path: str | os.PathLike[str], *, cpi: int = CAPTIONS_PER_IMAGE,
                          chunk: int = 256, workers: int = 1,
                          progress: Callable[[int], None] | None = None) -> Path:
    """Compute the ROUGE-L relevance matrix ``[5N, N]`` and write it in the authors' layout.

    ``captions`` are the split's evaluation captions in order (5 per image). Rows are computed in
    chunks of ``chunk`` candidates (memory ≈ chunk × 5N × 24 bytes) on ``workers`` threads and
    written straight into a float32 memmap; the file appears under its final name only when
    complete. ``progress(n_rows_done)`` is called after each chunk.
    """
    n_cap = len(captions)
    if n_cap == 0 or n_cap % cpi:
        raise ConfigError(f"need a non-empty list of captions, {cpi} per image; got {n_cap}")
    enc = _Encoded(captions)
    mm = create_relevance(path, n_cap, n_cap // cpi)
    starts = list(range(0, n_cap, chunk))

    def work(start: int) -> int:
        stop = min(start + chunk, n_cap)
        mm[start:stop] = rouge_l_matrix_rows(captions, slice(start, stop), cpi=cpi, _enc=enc)
        return stop - start

    if workers <= 1:
        for s in starts:
            done = work(s)
            if progress:
                progress(done)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for done in pool.map(work, starts):
                if progress:
                    progress(done)
    return finish_relevance(mm, path)


# ----------------------------------------------------------------------------------- SPICE

SPICE_HOWTO = (
    "SPICE relevance needs Java 8+ (`apt-get install openjdk-17-jre-headless`), the package "
    "pycocoevalcap (`pip install pycocoevalcap`) and its SPICE models (spice-1.0.jar with "
    "lib/stanford-corenlp-3.6.0*.jar, fetched by pycocoevalcap's get_stanford_models script on a "
    "machine with internet). Simpler: use the authors' precomputed matrix "
    "(coco-test-spice.npy in TERAN's data.tgz) with --relevance DIR; it loads as it is."
)


def spice_available() -> tuple[bool, str]:
    """Whether SPICE can run here, and if not, what is missing (plus how to get it)."""
    if shutil.which("java") is None:
        return False, "java was not found on PATH. " + SPICE_HOWTO
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        return False, "pycocoevalcap is not installed. " + SPICE_HOWTO
    root = Path(list(spec.submodule_search_locations)[0]) / "spice"
    if not (root / "spice-1.0.jar").is_file() or not list((root / "lib").glob("stanford-corenlp-3.6.0*.jar")):
        return False, f"the SPICE jars are missing under {root}. " + SPICE_HOWTO
    return True, ""


def write_spice_relevance(captions: Sequence[str], path: str | os.PathLike[str], *, cpi: int = CAPTIONS_PER_IMAGE,
                          progress: Callable[[int], None] | None = None) -> Path:
    """SPICE relevance ``[5N, N]`` with pycocoevalcap (one Java run per query, as the originals).

    Very slow (25,000 Java runs for COCO test); prefer importing the authors' matrix. Raises
    :class:`InputFileError` explaining what to install when Java or the SPICE models are missing.
    """
    ok, why = spice_available()
    if not ok:
        raise InputFileError(why)
    from pycocoevalcap.spice.spice import Spice  # type: ignore[import-not-found]
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer  # type: ignore[import-not-found]

    n_cap = len(captions)
    n_img = n_cap // cpi
    refs = {j: [{"caption": c} for c in captions[j * cpi:(j + 1) * cpi]] for j in range(n_img)}
    refs_tok = PTBTokenizer().tokenize(refs)
    mm = create_relevance(path, n_cap, n_img)
    scorer = Spice()
    for q in range(n_cap):
        hyp = PTBTokenizer().tokenize({j: [{"caption": captions[q]}] for j in range(n_img)})
        _, scores = scorer.compute_score(refs_tok, hyp)
        mm[q] = [s["All"]["f"] if isinstance(s, dict) else np.nan for s in scores]
        if progress:
            progress(1)
    return finish_relevance(mm, path)
