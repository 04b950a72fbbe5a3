"""Block scoring equals a straightforward per-pair computation written from the spec (1e-5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests._support.eval_fixtures import tiny_transformer_model
from itmflow.errors import ConfigError
from trainers.models.sgraf import SGRAF, SgrafConfig
from trainers.models.teran import TERAN
from trainers.scoring import block_sizes, encode, ensemble, pair_bytes, score_encoded, score_matrix

EPS = 1e-8


# ------------------------------------------------------------------- per-pair references (spec)

def _l2(x: torch.Tensor, dim: int = -1, eps: float = 0.0) -> torch.Tensor:
    return x / (x.pow(2).sum(dim=dim, keepdim=True).sqrt() + eps)


def ref_teran_pair(regions: torch.Tensor, words: torch.Tensor) -> float:
    """MrSw (spec §3): cosine of every region/word, max over regions, summed over words."""
    a = regions @ words.t()
    return float(a.max(dim=0).values.sum())


def ref_sgraf_pair(sim: torch.nn.Module, module: str, regions: torch.Tensor, img_glo: torch.Tensor,
                   words: torch.Tensor, cap_glo: torch.Tensor) -> float:
    """One (image, caption) pair through SGRAF's similarity (spec §4.1), with the model's weights."""
    # SCAN text-to-image attention, smooth 9.
    attn = F.leaky_relu(regions @ words.t(), 0.1)                  # [36, L]
    attn = _l2(attn, dim=1, eps=EPS)                               # over words
    attn = torch.softmax(attn.t() * 9.0, dim=1)                    # [L, 36] over regions
    context = _l2(attn @ regions, eps=EPS)                         # [L, E]
    sim_loc = _l2(F.linear((context - words) ** 2, sim.sim_tranloc_w.weight, sim.sim_tranloc_w.bias), eps=EPS)
    sim_glo = _l2(F.linear((img_glo - cap_glo) ** 2, sim.sim_tranglo_w.weight, sim.sim_tranglo_w.bias), eps=EPS)
    x = torch.cat([sim_glo[None], sim_loc], dim=0)                 # [L+1, S]
    if module == "SGR":
        for step in sim.SGR_module:
            q = F.linear(x, step.graph_query_w.weight, step.graph_query_w.bias)
            k = F.linear(x, step.graph_key_w.weight, step.graph_key_w.bias)
            edge = torch.softmax(q @ k.t(), dim=1)
            x = F.relu(F.linear(edge @ x, step.sim_graph_w.weight, step.sim_graph_w.bias))
        v = x[0]
    else:
        saf = sim.SAF_module
        a = F.linear(x, saf.attn_sim_w.weight, saf.attn_sim_w.bias)[:, 0]
        bn = saf.bn
        a = (a - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
        a = torch.sigmoid(a)
        a = a / (a.abs().sum() + EPS)
        v = _l2(a @ x, eps=EPS)
    return float(torch.sigmoid(F.linear(v, sim.sim_eval_w.weight, sim.sim_eval_w.bias))[0])


# --------------------------------------------------------------------------------- tiny inputs

def image_batches(n: int, bs: int, k: int, dim: int, *, fixed: bool, seed: int = 1) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in range(0, n, bs):
        b = min(bs, n - s)
        counts = torch.full((b,), k) if fixed else torch.randint(3, k + 1, (b,), generator=g)
        feats = torch.randn(b, k, dim, generator=g)
        for i in range(b):
            feats[i, int(counts[i]):] = 0
        out.append({"features": feats, "geometry": torch.rand(b, k, 5, generator=g),
                    "num_regions": counts})
    return out


def bert_batches(n: int, bs: int, seed: int = 2) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in range(0, n, bs):
        b = min(bs, n - s)
        lengths = torch.randint(5, 14, (b,), generator=g)
        ids = torch.randint(1000, 5000, (b, int(lengths.max())), generator=g)
        ids[:, 0] = 101
        for i in range(b):
            ids[i, int(lengths[i]) - 1] = 102
            ids[i, int(lengths[i]):] = 0
        out.append({"bert_ids": ids, "bert_lengths": lengths})
    return out


def word_batches(n: int, bs: int, vocab: int, seed: int = 3) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in range(0, n, bs):
        b = min(bs, n - s)
        lengths = torch.randint(3, 11, (b,), generator=g)
        ids = torch.randint(4, vocab, (b, int(lengths.max())), generator=g)
        for i in range(b):
            ids[i, int(lengths[i]):] = 0
        out.append({"word_ids": ids, "word_lengths": lengths})
    return out


@pytest.fixture(scope="module")
def tiny_teran(minilm_dir: Path) -> TERAN:
    return tiny_transformer_model("teran", minilm_dir, 0, feature_dim=48).eval()


def _tiny_sgraf(module: str, seed: int) -> SGRAF:
    torch.manual_seed(seed)
    model = SGRAF(SgrafConfig(module=module, vocab_size=60, feature_dim=40, word_dim=16,
                              embed_size=24, sim_dim=12))
    # Non-trivial BatchNorm running statistics (eval uses them).
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return model.eval()


# ------------------------------------------------------------------------------------- tests

def test_teran_blocks_equal_per_pair_reference(tiny_teran: TERAN) -> None:
    imgs = image_batches(11, 4, 9, 48, fixed=False)
    caps = bert_batches(23, 6)
    # A tiny memory budget forces many blocks that cut across loader chunks.
    sims = score_matrix(tiny_teran, imgs, caps, max_memory_gb=2e-6)
    assert sims.shape == (11, 23) and sims.dtype == np.float32
    img_enc = encode(tiny_teran, imgs, "images")
    cap_enc = encode(tiny_teran, caps, "captions")
    ref = np.zeros((11, 23))
    ii = 0
    for ic in img_enc.chunks:
        for a in range(ic["regions"].shape[0]):
            regions = ic["regions"][a][ic["region_mask"][a]]
            cc_i = 0
            for cc in cap_enc.chunks:
                for b in range(cc["words"].shape[0]):
                    ref[ii, cc_i] = ref_teran_pair(regions, cc["words"][b][cc["word_mask"][b]])
                    cc_i += 1
            ii += 1
    np.testing.assert_allclose(sims, ref, atol=1e-5, rtol=0)
    # One block for everything gives the same matrix.
    big = score_matrix(tiny_teran, imgs, caps, max_memory_gb=4.0)
    np.testing.assert_allclose(big, sims, atol=1e-6, rtol=0)


@pytest.mark.parametrize("module", ["SGR", "SAF"])
def test_sgraf_blocks_equal_per_pair_reference(module: str) -> None:
    model = _tiny_sgraf(module, seed=4)
    imgs = image_batches(7, 3, 36, 40, fixed=True)
    caps = word_batches(16, 5, 60)
    sims = score_matrix(model, imgs, caps, max_memory_gb=1e-4)
    img_enc = encode(model, imgs, "images")
    cap_enc = encode(model, caps, "captions")
    regions = torch.cat([c["regions"] for c in img_enc.chunks])
    img_glo = torch.cat([c["global"] for c in img_enc.chunks])
    ref = np.zeros((7, 16))
    c = 0
    with torch.no_grad():
        for cc in cap_enc.chunks:
            for b in range(cc["words"].shape[0]):
                words = cc["words"][b][cc["word_mask"][b]]
                for i in range(7):
                    ref[i, c] = ref_sgraf_pair(model.sim_enc, module, regions[i], img_glo[i],
                                               words, cc["global"][b])
                c += 1
    np.testing.assert_allclose(sims, ref, atol=1e-5, rtol=0)
    assert ((sims > 0) & (sims < 1)).all()


def test_sgraf_ensemble_is_mean_of_sgr_and_saf() -> None:
    imgs = image_batches(5, 5, 36, 40, fixed=True)
    caps = word_batches(10, 10, 60)
    a = score_matrix(_tiny_sgraf("SGR", 5), imgs, caps)
    b = score_matrix(_tiny_sgraf("SAF", 6), imgs, caps)
    np.testing.assert_allclose(ensemble([a, b]), (a.astype(np.float64) + b) / 2, atol=1e-7)
    with pytest.raises(ConfigError, match="differ in shape"):
        ensemble([a, b[:, :5]])


def test_tern_dot_products_and_float16_buffers(minilm_dir: Path) -> None:
    model = tiny_transformer_model("tern", minilm_dir, 1, feature_dim=48).eval()
    imgs = image_batches(6, 4, 8, 48, fixed=False)
    caps = bert_batches(12, 5)
    sims = score_matrix(model, imgs, caps)
    with torch.no_grad():
        iv = torch.cat([model.encode_images(b) for b in imgs])
        cv = torch.cat([model.encode_captions(b) for b in caps])
    ref = np.array([[float(iv[i] @ cv[c]) for c in range(12)] for i in range(6)])
    np.testing.assert_allclose(sims, ref, atol=1e-5, rtol=0)
    half = score_matrix(model, imgs, caps, buffer_dtype=torch.float16)
    np.testing.assert_allclose(half, ref, atol=2e-3, rtol=0)            # fp16 storage: ~1e-3


def test_block_sizes_follow_the_memory_budget(tiny_teran: TERAN) -> None:
    img = encode(tiny_teran, image_batches(4, 4, 9, 48, fixed=False), "images")
    cap = encode(tiny_teran, bert_batches(8, 8), "captions")
    per_pair = pair_bytes(tiny_teran, img.chunks[0], cap.chunks[0])
    assert per_pair == 4 * 9 * cap.chunks[0]["words"].shape[1] * 4
    for gb in (1e-6, 1e-5, 1e-3):
        bi, bc = block_sizes(tiny_teran, img.chunks[0], cap.chunks[0], gb, 1000, 5000)
        assert bi >= 1 and bc >= 1
        assert bi * bc * per_pair <= max(gb * (1 << 30), per_pair)
    with pytest.raises(ConfigError, match="positive"):
        block_sizes(tiny_teran, img.chunks[0], cap.chunks[0], 0, 10, 50)
    out = np.full((4, 8), np.nan, dtype=np.float32)
    score_encoded(tiny_teran, img, cap, out=out)
    assert np.isfinite(out).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_block_scoring_equals_cpu() -> None:
    model = _tiny_sgraf("SGR", seed=7)
    imgs = image_batches(9, 4, 36, 40, fixed=True)
    caps = word_batches(20, 6, 60)
    cpu = score_matrix(model, imgs, caps, max_memory_gb=1e-4)
    gpu = score_matrix(model.cuda(), imgs, caps, device="cuda", max_memory_gb=1e-4)
    np.testing.assert_allclose(gpu, cpu, atol=1e-5, rtol=0)


@pytest.mark.parametrize("module", ["SGR", "SAF"])
def test_sgraf_evaluation_path_equals_training_path(module: str, monkeypatch) -> None:
    """Eval-mode scoring (length groups, Gram-matrix norms, folded graph steps, node 0 only) gives
    the training path's numbers; gradients switch back to the training path."""
    import trainers.models.sgraf as sgraf_mod

    torch.manual_seed(11)
    model = SGRAF(SgrafConfig(module=module, vocab_size=50, feature_dim=48, word_dim=16,
                              embed_size=64, sim_dim=32)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.bias.uniform_(-0.2, 0.2)  # non-zero biases exercise the folded constant terms
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(9, 36, 48, generator=g)
    lengths = torch.tensor([1, 7, 3, 7, 12, 2, 3, 9, 7, 1, 5])
    ids = torch.randint(4, 50, (11, 12), generator=g)
    calls = {"n": 0}
    real = sgraf_mod.score_block

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(sgraf_mod, "score_block", counting)
    with torch.no_grad():
        img = model.encode_images({"features": feats})
        cap = model.encode_captions({"word_ids": ids, "word_lengths": lengths})
        fast = model.similarity(img, cap)
        ref = model.reference_similarity(img, cap)
    assert calls["n"] == 1 and fast.shape == (9, 11)
    torch.testing.assert_close(fast, ref, atol=2e-6, rtol=0)
    # Slices of one image (the smallest a slice can be) give the same matrix.
    monkeypatch.setattr("trainers.models.sgraf_scoring.CPU_WORDS_PER_SLICE", 1)
    with torch.no_grad():
        torch.testing.assert_close(model.similarity(img, cap), fast, atol=1e-6, rtol=0)
    calls["n"] -= 1
    if module == "SGR":  # the folded weights follow an in-place weight change
        with torch.no_grad():
            model.sim_enc.SGR_module[1].graph_key_w.weight.mul_(1.5)
            torch.testing.assert_close(model.similarity(img, cap), model.reference_similarity(img, cap),
                                       atol=2e-6, rtol=0)
    with torch.enable_grad():
        out = model.similarity({k: v.detach() for k, v in img.items()}, cap)
    assert out.requires_grad and calls["n"] == (2 if module == "SGR" else 1)


def test_teran_packed_mrsw_equals_masked_reference() -> None:
    """Evaluation MrSw with the valid words packed equals the padded, masked computation, also for
    images with missing regions, an image with none, and a caption without words."""
    from trainers.models.teran import alignment_scores, mrsw_scores_packed

    g = torch.Generator().manual_seed(8)
    regions = F.normalize(torch.randn(5, 9, 32, generator=g), dim=-1)
    region_mask = torch.arange(9)[None] < torch.tensor([9, 4, 1, 9, 0])[:, None]
    words = F.normalize(torch.randn(6, 7, 32, generator=g), dim=-1)
    word_mask = torch.arange(7)[None] < torch.tensor([7, 3, 1, 0, 5, 2])[:, None]
    packed = mrsw_scores_packed(regions, region_mask, words, word_mask)
    ref = alignment_scores(regions, region_mask, words, word_mask, "MrSw")
    torch.testing.assert_close(packed, ref, atol=1e-6, rtol=0)
    assert float(packed[4].abs().max()) == 0.0 and float(packed[:, 3].abs().max()) == 0.0
    full = torch.ones_like(region_mask)
    torch.testing.assert_close(mrsw_scores_packed(regions, full, words, word_mask),
                               alignment_scores(regions, full, words, word_mask, "MrSw"), atol=1e-6, rtol=0)


def test_teran_similarity_uses_the_packed_path_only_for_evaluation(tiny_teran: TERAN, monkeypatch) -> None:
    import trainers.models.teran as teran_mod

    calls = {"n": 0}
    real = teran_mod.mrsw_scores_packed

    def counting(*args):
        calls["n"] += 1
        return real(*args)

    monkeypatch.setattr(teran_mod, "mrsw_scores_packed", counting)
    img = encode(tiny_teran, image_batches(4, 4, 9, 48, fixed=False), "images").chunks[0]
    cap = encode(tiny_teran, bert_batches(6, 6), "captions").chunks[0]
    with torch.no_grad():
        fast = tiny_teran.similarity(img, cap)
    assert calls["n"] == 1
    with torch.enable_grad():
        slow = tiny_teran.similarity(img, cap)
    assert calls["n"] == 1
    torch.testing.assert_close(fast, slow.detach(), atol=1e-6, rtol=0)
