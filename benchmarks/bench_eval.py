"""Evaluation speed: block scoring vs a per-caption loop (SGRAF, TERAN), memory, ROUGE-L relevance.

Run: ``.venv/bin/python benchmarks/bench_eval.py [--quick]`` → ``benchmarks/results/eval.json``.

* Similarity pairs/s of ``trainers.scoring.score_encoded`` (blocks of images × captions through the
  model's vectorised ``similarity``) against the straightforward loop the originals run: shards of
  100 images, one caption at a time (SGRAF ``shard_attn_scores`` / ``forward_sim``; TERAN's eval also
  loops over queries). Same model, same embeddings, same run; the two matrices are compared.
  Models have the papers' sizes (SGRAF embed 1024 / sim 256 / 36 regions; TERAN 1024-d tokens,
  36 regions) with random weights — speed does not depend on the weights.
* Arithmetic: SGR's FLOPs per pair on both paths (:func:`sgr_flops_per_pair`) and this device's
  float32 GEMM rate, so each scoring rate can be read as GFLOP/s against the device's peak.
* Peak memory: resident-set growth while scoring (Linux ``VmHWM`` reset through
  ``/proc/self/clear_refs``), or ``torch.cuda.max_memory_allocated`` on a GPU; plus the embedding
  buffers a COCO 5K evaluation needs, ours (float32 / float16, chunk-padded) against the originals'
  (SGRAF float64, TERAN float32 padded to 88 words).
* ROUGE-L relevance: pairs/s of ``write_rouge_relevance`` (bit-parallel LCS) on COCO-like captions
  against a plain-Python LCS (the pycocoevalcap reference) on a sample of the same pairs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchlib import row, write_result  # noqa: E402
from trainers.evaluation.rouge import rouge_tokens, write_rouge_relevance  # noqa: E402
from trainers.models.common import index_embeddings, num_items  # noqa: E402
from trainers.scoring import EncodedChunks, encode, score_encoded  # noqa: E402

SHARD = 100


# ----------------------------------------------------------------------------------- memory

def _reset_peak() -> int:
    """Reset the process' peak RSS (Linux) and return the current RSS in bytes."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        pass
    return _status("VmRSS")


def _status(key: str) -> int:
    try:
        with open("/proc/self/status", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _peak_since(start_rss: int, device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return max(0, _status("VmHWM") - start_rss) / 2**20


# ---------------------------------------------------------------------------------- scoring

def per_caption_loop(model, images: EncodedChunks, captions: EncodedChunks,
                     device: torch.device) -> np.ndarray:
    """The originals' structure: image shards of 100, one caption per similarity call.

    Each caption is cut to its own word count first, as SGRAF's ``forward_sim`` does
    (``cap_emb[i, :n_word]``; TERAN's authors pad every caption to 88 tokens instead, so for TERAN
    this baseline is faster than theirs), and goes through the straightforward arithmetic the model
    trains with (``reference_similarity``).
    """
    n_img, n_cap = len(images), len(captions)
    out = np.empty((n_img, n_cap), dtype=np.float32)
    img_all = model.concat(images.chunks) if len(images.chunks) > 1 else images.chunks[0]
    reference = getattr(model, "reference_similarity", None)
    similarity = reference or model.similarity
    c0 = 0
    with torch.no_grad():
        for chunk in captions.chunks:
            for b in range(num_items(chunk)):
                cap = index_embeddings(chunk, slice(b, b + 1))
                if reference is not None:
                    n_word = int(cap["word_mask"].sum())
                    cap = {**cap, "words": cap["words"][:, :n_word], "word_mask": cap["word_mask"][:, :n_word]}
                for s in range(0, n_img, SHARD):
                    img = index_embeddings(img_all, slice(s, s + SHARD))
                    out[s:s + SHARD, c0] = similarity(img, cap)[:, 0].float().cpu().numpy()
                c0 += 1
    return out


def sgr_flops_per_pair(lengths: list[int], evaluation_path: bool, regions: int = 36, embed: int = 1024,
                       sim: int = 256, steps: int = 3) -> float:
    """Multiply-add FLOPs per (image, caption) pair of SGR, averaged over the captions' word counts.

    Both paths share the attention (two ``R × L × E`` products), the local (``L × E × S``) and global
    (``E × S``) alignment layers. The training path runs every graph step on all ``L + 1`` nodes
    with three ``S × S`` layers; the evaluation path folds query and key into one layer and runs the
    last step for node 0 only.
    """
    total = 0.0
    for length in lengths:
        nodes = length + 1
        shared = 2 * 2 * regions * length * embed + 2 * length * embed * sim + 2 * embed * sim
        edges = 2 * 2 * nodes * nodes * sim
        if evaluation_path:
            graph = (steps - 1) * (2 * 2 * nodes * sim * sim + edges) + 2 * 2 * sim * sim + 2 * 2 * nodes * sim
            shared += 2 * regions * regions * length  # context norms from the Gram matrix
        else:
            graph = steps * (3 * 2 * nodes * sim * sim + edges)
        total += shared + graph
    return total / len(lengths)


def gemm_peak(device: torch.device) -> list[dict]:
    """float32 GEMM throughput of this device at the shape of SGRAF's local alignment layer."""
    a = torch.randn(3072, 1024, device=device)
    b = torch.randn(1024, 256, device=device)
    for _ in range(3):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    reps, t = 20, time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    rate = 2 * 3072 * 1024 * 256 * reps / (time.perf_counter() - t) / 1e9
    return [row("float32 GEMM 3072x1024 @ 1024x256", rate, "GFLOP/s",
                note="the device's matrix-multiply rate, for the GFLOP/s of the scoring rows")]


def bench_model(name: str, model, images: EncodedChunks, captions: EncodedChunks,
                device: torch.device, max_memory_gb: float) -> list[dict]:
    pairs = len(images) * len(captions)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    rss = _reset_peak()
    t = time.perf_counter()
    block = score_encoded(model, images, captions, device=device, max_memory_gb=max_memory_gb)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t_block = time.perf_counter() - t
    peak = _peak_since(rss, device)
    t = time.perf_counter()
    loop = per_caption_loop(model, images, captions, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t_loop = time.perf_counter() - t
    diff = float(np.abs(block - loop).max())
    print(f"{name}: block {pairs / t_block:,.0f} pairs/s, loop {pairs / t_loop:,.0f} pairs/s, "
          f"max |diff| {diff:.2e}")
    return [
        row(f"{name} block scoring", pairs / t_block, "pairs/s",
            baseline="per-caption loop (shards of 100 images)", baseline_value=pairs / t_loop,
            pairs=pairs, max_abs_diff=diff, max_memory_gb=max_memory_gb),
        row(f"{name} block scoring peak working memory", peak, "MiB",
            note="RSS growth while scoring (CPU) / max allocated (GPU)"),
    ]


def sgraf_inputs(n_img: int, n_cap: int, seed: int = 0):
    from trainers.models.sgraf import SGRAF, SgrafConfig

    torch.manual_seed(seed)
    model = SGRAF(SgrafConfig(module="SGR", vocab_size=11353)).eval()
    g = torch.Generator().manual_seed(seed)
    imgs = [{"features": torch.rand(min(50, n_img - s), 36, 2048, generator=g),
             "num_regions": torch.full((min(50, n_img - s),), 36)} for s in range(0, n_img, 50)]
    caps = []
    for s in range(0, n_cap, 128):
        b = min(128, n_cap - s)
        lengths = torch.randint(9, 16, (b,), generator=g)       # COCO: ~10.5 words + <start>/<end>
        caps.append({"word_ids": torch.randint(4, 11353, (b, int(lengths.max())), generator=g),
                     "word_lengths": lengths})
    return model, imgs, caps


def teran_embeddings(n_img: int, n_cap: int, seed: int = 1) -> tuple[EncodedChunks, EncodedChunks]:
    """TERAN token embeddings of the real sizes (36 regions, ~11 word pieces, 1024-d, unit norm)."""
    g = torch.Generator().manual_seed(seed)

    def unit(*shape: int) -> torch.Tensor:
        return torch.nn.functional.normalize(torch.randn(*shape, generator=g), dim=-1)

    imgs = [{"regions": unit(min(128, n_img - s), 36, 1024),
             "region_mask": torch.ones(min(128, n_img - s), 36, dtype=torch.bool)}
            for s in range(0, n_img, 128)]
    caps = []
    for s in range(0, n_cap, 128):
        b = min(128, n_cap - s)
        n_words = torch.randint(8, 15, (b,), generator=g)
        width = int(n_words.max())
        caps.append({"words": unit(b, width, 1024),
                     "word_mask": torch.arange(width)[None] < n_words[:, None]})
    return EncodedChunks(imgs), EncodedChunks(caps)


def coco_buffers() -> list[dict]:
    """Embedding buffers of a COCO 5K evaluation (5,000 images, 25,000 captions), in GiB."""
    gib = 2**30
    n_img, n_cap, e = 5000, 25000, 1024
    mean_words_sgraf, padded_chunk_sgraf = 12.5, 16    # words incl. <start>/<end>; chunk max
    sgraf_orig = (n_cap * 36 * e + n_cap * 50 * e) * 8 / gib             # float64, 5× images
    sgraf_ours = (n_img * 36 * e + n_cap * padded_chunk_sgraf * e) * 4 / gib
    teran_orig = (n_cap * 37 * e + n_cap * 88 * e) * 4 / gib             # float32, 88 words
    teran_ours = (n_img * 36 * e + n_cap * 16 * e) * 4 / gib
    return [
        row("COCO 5K SGRAF embedding buffers", sgraf_ours, "GiB", baseline="originals (float64, "
            "image per caption slot, max_len 50)", baseline_value=sgraf_orig,
            note=f"ours float32, images once, captions chunk-padded (~{mean_words_sgraf} words); "
                 "half with --buffer-dtype float16"),
        row("COCO 5K TERAN embedding buffers", teran_ours, "GiB", baseline="originals (float32, "
            "37 × 25,000 image slots, 88 words)", baseline_value=teran_orig,
            note="ours float32; half with --buffer-dtype float16"),
    ]


# ----------------------------------------------------------------------------------- ROUGE-L

def coco_like_captions(n_img: int, seed: int = 0) -> list[str]:
    """Captions with COCO's statistics: Zipf word frequencies, 8–16 words, some punctuation."""
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(8000)]
    probs = 1.0 / np.arange(1, len(vocab) + 1)
    probs /= probs.sum()
    caps = []
    for _ in range(n_img * 5):
        words = list(rng.choice(vocab, size=int(rng.integers(8, 17)), p=probs))
        if rng.random() < 0.3:
            words[-1] += "."
        caps.append(" ".join(words))
    return caps


def python_lcs(a: list[str], b: list[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    lengths = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for j in range(1, len(b) + 1):
        for i in range(1, len(a) + 1):
            lengths[i][j] = (lengths[i - 1][j - 1] + 1 if a[i - 1] == b[j - 1]
                             else max(lengths[i - 1][j], lengths[i][j - 1]))
    return lengths[len(a)][len(b)]


def bench_rouge(n_img: int, workers: int) -> list[dict]:
    caps = coco_like_captions(n_img)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        write_rouge_relevance(caps, Path(tmp) / "r.npy", workers=workers)
        dt = time.perf_counter() - t
    lcs_pairs = len(caps) ** 2
    toks = [rouge_tokens(c) for c in caps]
    rng = np.random.default_rng(1)
    sample = rng.integers(len(caps), size=(4000, 2))
    t = time.perf_counter()
    for a, b in sample:
        python_lcs(toks[a], toks[b])
    py_rate = len(sample) / (time.perf_counter() - t)
    print(f"ROUGE-L: {lcs_pairs / dt:,.0f} LCS pairs/s (python {py_rate:,.0f}/s)")
    return [
        row("ROUGE-L relevance (bit-parallel LCS)", lcs_pairs / dt, "caption pairs/s",
            baseline="plain-Python LCS (pycocoevalcap my_lcs)", baseline_value=py_rate,
            captions=len(caps), workers=workers,
            relevance_entries_per_s=len(caps) * n_img / dt,
            coco_5k_estimate_s=25000**2 / (lcs_pairs / dt)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    q = args.quick
    sizes = {"sgraf": (20, 60) if q else (100, 120), "teran": (100, 400) if q else (200, 500),
             "rouge_images": 200 if q else 1000}
    rows: list[dict] = []

    model, imgs, caps = sgraf_inputs(*sizes["sgraf"])
    model = model.to(device)
    ie = encode(model, imgs, "images", device=device)
    ce = encode(model, caps, "captions", device=device)
    rows += gemm_peak(device)
    sgr = bench_model("SGRAF (SGR)", model, ie, ce, device, max_memory_gb=1.0)
    lengths = [int(n) for c in ce.chunks for n in c["word_mask"].sum(dim=1).tolist()]
    fast, ref = sgr_flops_per_pair(lengths, True), sgr_flops_per_pair(lengths, False)
    sgr[0].update(mflop_per_pair=fast / 1e6, gflop_per_s=sgr[0]["value"] * fast / 1e9,
                  baseline_mflop_per_pair=ref / 1e6, baseline_gflop_per_s=sgr[0]["baseline_value"] * ref / 1e9)
    rows += sgr

    from trainers.models.teran import TERAN, TeranConfig

    class _TeranScorer(torch.nn.Module):
        """TERAN's similarity alone (its encoders are irrelevant to scoring speed)."""

        kind = "teran"
        config = TeranConfig()
        similarity = TERAN.similarity
        reference_similarity = TERAN.reference_similarity
        concat = staticmethod(TERAN.concat)

    ie, ce = teran_embeddings(*sizes["teran"])
    teran = bench_model("TERAN (MrSw)", _TeranScorer().eval(), ie, ce, device, max_memory_gb=1.0)
    # MrSw: one R × W × E product per pair; both paths run at each caption's own word count.
    widths = [int(n) for c in ce.chunks for n in c["word_mask"].sum(dim=1).tolist()]
    flops = 2 * 36 * 1024 * float(np.mean(widths))
    teran[0].update(mflop_per_pair=flops / 1e6, gflop_per_s=teran[0]["value"] * flops / 1e9,
                    baseline_gflop_per_s=teran[0]["baseline_value"] * flops / 1e9)
    rows += teran
    rows += coco_buffers()
    rows += bench_rouge(sizes["rouge_images"], workers=args.threads)
    config = {"device": str(device), "threads": args.threads, "quick": q, "sizes": sizes,
              "shard": SHARD, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}
    write_result("eval", config, rows)


if __name__ == "__main__":
    main()
