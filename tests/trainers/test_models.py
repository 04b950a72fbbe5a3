"""TERN / TERAN / SGRAF as the spec describes them: hand-checked cases on tiny models."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from itmflow.errors import ConfigError, ModelInputError
from tests._support.tiny_bert import tiny_bert
from trainers.losses import contrastive_loss
from trainers.models import build_model, concat_embeddings, index_embeddings, make_config
from trainers.models.sgraf import SGRAF, SgrafConfig
from trainers.training.model import require_fixed_regions
from trainers.models.teran import TERAN, TeranConfig, alignment_scores
from trainers.models.tern import TERN, TernConfig

TINY_BERT = tiny_bert(vocab_size=120, num_hidden_layers=2, intermediate_size=48, max_position_embeddings=64)
D = 24


def tiny_tern_config(cls=TernConfig, **kw):
    return cls(bert_config=dict(TINY_BERT), bert_layers=2, feature_dim=D, visual_layers=1,
               embed_size=16, layers=1, ff_dim=32, **kw)


def image_batch(b: int, k: int, lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(b, k, 2, generator=g) * 0.5
    wh = torch.rand(b, k, 2, generator=g) * 0.5
    box = torch.cat([xy, xy + wh], dim=-1)
    area = (box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1])
    return {"features": torch.randn(b, k, D, generator=g).abs(),
            "geometry": torch.cat([box, area[..., None]], dim=-1),
            "num_regions": torch.tensor(lengths)}


def bert_batch(lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(5, 120, (n,), generator=g)
        ids[i, 0], ids[i, n - 1] = 1, 2  # [CLS] ... [SEP]
    return {"bert_ids": ids, "bert_lengths": torch.tensor(lengths)}


# ------------------------------------------------------------------------------------- loss
def test_contrastive_loss_by_hand():
    s = torch.tensor([[0.9, 0.5, 0.1], [0.8, 0.7, 0.2], [0.3, 0.6, 0.4]])
    # Max violation: rows (captions for image i) 0, .3, .4; columns (images for caption j) .1, .1, 0.
    assert contrastive_loss(s, 0.2, True).item() == pytest.approx(0.9, abs=1e-6)
    # Sum of all violations: rows 0 + .3 + (.1 + .4); columns .1 + .1 + 0.
    assert contrastive_loss(s, 0.2, False).item() == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="square"):
        contrastive_loss(torch.zeros(2, 3))


# ------------------------------------------------------------------------------------- TERN
def test_tern_embeddings_do_not_depend_on_batch_padding():
    torch.manual_seed(0)
    model = TERN(tiny_tern_config()).eval()
    imgs = image_batch(3, 6, [6, 2, 4])
    caps = bert_batch([9, 4, 6])
    with torch.no_grad():
        img_all, cap_all = model.encode_images(imgs), model.encode_captions(caps)
        for i, n in enumerate([6, 2, 4]):
            one = {k: v[i:i + 1, :n] if v.dim() > 1 else v[i:i + 1] for k, v in imgs.items()}
            torch.testing.assert_close(model.encode_images(one)[0], img_all[i], atol=1e-5, rtol=0)
        for i, n in enumerate([9, 4, 6]):
            one = {"bert_ids": caps["bert_ids"][i:i + 1, :n], "bert_lengths": caps["bert_lengths"][i:i + 1]}
            torch.testing.assert_close(model.encode_captions(one)[0], cap_all[i], atol=1e-5, rtol=0)
        assert torch.allclose(img_all.norm(dim=1), torch.ones(3), atol=1e-5)
        sims = model.similarity(img_all, cap_all)
        torch.testing.assert_close(sims, model(imgs, caps))
        assert sims.shape == (3, 3) and float(sims.abs().max()) <= 1 + 1e-5


def test_tern_icls_is_a_zero_feature_through_the_box_mlp():
    torch.manual_seed(0)
    model = TERN(tiny_tern_config()).eval()
    imgs = image_batch(2, 3, [3, 3])
    with torch.no_grad():
        tokens, valid = model.image_tokens(imgs)
        # Reference: prepend zeros by hand, run the authors' sequence by hand.
        feats = torch.cat([torch.zeros(2, 1, D), imgs["features"]], 1)
        geom = torch.cat([torch.zeros(2, 1, 5), imgs["geometry"]], 1)
        x = model.img_enc.pos_encoding_image.map(torch.cat([feats, geom], -1))
        x = model.img_enc.transformer_encoder(x.transpose(0, 1)).transpose(0, 1)
        x = model.transformer_encoder_1(model.img_proj(x).transpose(0, 1)).transpose(0, 1)
    assert valid.all() and tokens.shape == (2, 4, 16)
    torch.testing.assert_close(tokens, x, atol=1e-5, rtol=0)
    # The zero slot is not zero inside the transformer: the box MLP maps it to its bias path.
    assert model.img_enc.pos_encoding_image.map(torch.zeros(1, D + 5)).abs().sum() > 0


def test_tern_shares_its_top_transformer_and_teran_does_not():
    tern, teran = TERN(tiny_tern_config()), TERAN(tiny_tern_config(TeranConfig))
    assert not hasattr(tern, "transformer_encoder_2")
    assert hasattr(teran, "transformer_encoder_2")
    shared = TERAN(tiny_tern_config(TeranConfig, shared_transformer=True))
    assert not hasattr(shared, "transformer_encoder_2")


# ------------------------------------------------------------------------------------- TERAN
def test_teran_word_positions_are_1_to_L_minus_3():
    torch.manual_seed(0)
    model = TERAN(tiny_tern_config(TeranConfig)).eval()
    caps = bert_batch([9, 4, 6, 3])
    with torch.no_grad():
        tokens, _ = model.caption_tokens(caps)
        emb = model.encode_captions(caps)
    assert emb["word_mask"].sum(1).tolist() == [6, 1, 3, 0]  # L-3 words (none for L=3)
    for b, n in enumerate([9, 4, 6, 3]):
        for j in range(n - 3):  # word j of the set is original position j+1
            torch.testing.assert_close(emb["words"][b, j], F.normalize(tokens[b, 1 + j], dim=0))
    # A caption of 3 tokens ([CLS] word [SEP]) has no scored word: its score is 0 everywhere.
    with torch.no_grad():
        ref = model.similarity(model.encode_images(image_batch(2, 5, [5, 3])), emb)
    assert ref[:, 3].abs().max() == 0  # a caption with no scored word scores 0


def _loop_alignment(regions, rmask, words, wmask, how, floor=None):
    out = torch.zeros(regions.shape[0], words.shape[0])
    for i in range(regions.shape[0]):
        for c in range(words.shape[0]):
            rs = [regions[i, r] for r in range(regions.shape[1]) if rmask[i, r]]
            ws = [words[c, w] for w in range(words.shape[1]) if wmask[c, w]]
            a = [[float(r @ w) for w in ws] for r in rs]
            mrsw = sum(max(a[r][w] for r in range(len(rs))) for w in range(len(ws))) if rs else 0.0
            mwsr = sum(max([a[r][w] for w in range(len(ws))] + ([floor] if floor is not None else []))
                       for r in range(len(rs))) if ws else 0.0
            out[i, c] = {"MrSw": mrsw, "MwSr": mwsr, "symm": mrsw + mwsr}[how]
    return out


@pytest.mark.parametrize("how", ["MrSw", "MwSr", "symm"])
def test_teran_aggregations_match_an_independent_loop(how):
    g = torch.Generator().manual_seed(1)
    regions = F.normalize(torch.randn(3, 5, 8, generator=g), dim=-1)
    words = F.normalize(torch.randn(4, 6, 8, generator=g), dim=-1)
    rmask = torch.arange(5)[None] < torch.tensor([5, 2, 4])[:, None]
    wmask = torch.arange(6)[None] < torch.tensor([6, 1, 3, 4])[:, None]
    got = alignment_scores(regions, rmask, words, wmask, how)
    torch.testing.assert_close(got, _loop_alignment(regions, rmask, words, wmask, how),
                               atol=1e-5, rtol=0)
    # The authors' padded evaluation: zeros from padding take part in MwSr's max over words.
    floored = alignment_scores(regions, rmask, words, wmask, how, mwsr_zero_floor=True)
    torch.testing.assert_close(floored, _loop_alignment(regions, rmask, words, wmask, how, 0.0),
                               atol=1e-5, rtol=0)
    if how == "MrSw":
        torch.testing.assert_close(floored, got)
    else:
        assert not torch.allclose(floored, got)  # some region has only negative cosines here


def test_teran_block_scores_equal_single_pairs():
    torch.manual_seed(0)
    model = TERAN(tiny_tern_config(TeranConfig)).eval()
    imgs, caps = image_batch(3, 6, [6, 2, 4]), bert_batch([9, 5, 7, 6])
    with torch.no_grad():
        img, cap = model.encode_images(imgs), model.encode_captions(caps)
        block = model.similarity(img, cap)
        for i in range(3):
            for c in range(4):
                one = model.similarity(index_embeddings(img, [i]), index_embeddings(cap, [c]))
                assert abs(float(one) - float(block[i, c])) < 1e-5
        # Concatenating separately encoded batches (different padded widths) changes nothing.
        parts = concat_embeddings([model.encode_captions(bert_batch([9, 5], 0)),
                                   model.encode_captions({"bert_ids": caps["bert_ids"][2:, :7],
                                                          "bert_lengths": caps["bert_lengths"][2:]})])
    assert parts["words"].shape[1] == cap["words"].shape[1]
    torch.testing.assert_close(model.similarity(img, parts), block, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------- SGRAF
def tiny_sgraf(module: str, **kw) -> SGRAF:
    return SGRAF(SgrafConfig(module=module, vocab_size=40, feature_dim=D, word_dim=6,
                             embed_size=12, sim_dim=8, **kw))


def word_batch(lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(4, 40, (n,), generator=g)
    return {"word_ids": ids, "word_lengths": torch.tensor(lengths)}


def test_sgraf_needs_exactly_36_regions():
    model = tiny_sgraf("SGR").eval()
    with pytest.raises(ModelInputError, match="exactly 36 regions.*--regions 36"):
        model.encode_images(image_batch(2, 20, [20, 12]))
    # a fixed-36 store's row whose detector kept 30 regions holds 36 (zero padded): taken as 36; a
    # variable-K store is refused by its region policy (require_fixed_regions, train and evaluate)
    model.encode_images(image_batch(2, 36, [36, 30]))
    with pytest.raises(ModelInputError, match="exactly 36"):
        model.encode_images(image_batch(2, 40, [40, 30]))
    with pytest.raises(ModelInputError, match="region policy"):
        require_fixed_regions({"kind": "adaptive", "min": 10, "max": 100, "conf": 0.2}, 36, store="s")
    require_fixed_regions({"kind": "fixed", "k": 36}, 36, store="s")
    emb = model.encode_images(image_batch(2, 36, [36, 36]))
    assert emb["regions"].shape == (2, 36, 12) and emb["global"].shape == (2, 12)


def test_sgraf_text_encoder_is_length_exact():
    torch.manual_seed(0)
    model = tiny_sgraf("SGR").eval()
    caps = word_batch([5, 2, 7])
    with torch.no_grad():
        emb = model.encode_captions(caps)
        for i, n in enumerate([5, 2, 7]):
            one = model.encode_captions({"word_ids": caps["word_ids"][i:i + 1, :n],
                                         "word_lengths": caps["word_lengths"][i:i + 1]})
            torch.testing.assert_close(one["words"][0], emb["words"][i, :n], atol=1e-6, rtol=0)
            torch.testing.assert_close(one["global"][0], emb["global"][i], atol=1e-6, rtol=0)
    assert emb["words"][1, 2:].abs().sum() == 0


def _authors_loop(model: SGRAF, img, cap):
    """The authors' per-caption loop: each caption alone (unpadded) against all images.

    For SAF the gate goes through the model's real ``nn.BatchNorm1d(1)`` module on the authors'
    ``(n_img, 1, L+1)`` tensor, so in train mode the statistics and the running averages come from
    torch's own batch norm, one caption per call, as in the original code.
    """
    sim = model.sim_enc
    out = []
    for c in range(cap["words"].shape[0]):
        n = int(cap["word_mask"][c].sum())
        words, valid = cap["words"][c:c + 1, :n], cap["word_mask"][c:c + 1, :n]
        context = sim.local_context(img["regions"], words, valid)[:, 0]          # [Ni, n, E]
        sim_loc = l2(sim.sim_tranloc_w((context - words) ** 2))
        sim_glo = l2(sim.sim_tranglo_w((img["global"] - cap["global"][c]) ** 2))
        x = torch.cat([sim_glo[:, None], sim_loc], dim=1)                         # [Ni, n+1, S]
        if sim.module_name == "SGR":
            for step in sim.SGR_module:
                edge = torch.softmax(step.graph_query_w(x) @ step.graph_key_w(x).transpose(1, 2), -1)
                x = torch.relu(step.sim_graph_w(edge @ x))
            v = x[:, 0]
        else:
            saf = sim.SAF_module
            a = torch.sigmoid(saf.bn(saf.attn_sim_w(x).permute(0, 2, 1)))         # [Ni, 1, n+1]
            a = a / (a.abs().sum(dim=-1, keepdim=True) + 1e-8)
            v = l2((a @ x).squeeze(1))
        out.append(torch.sigmoid(sim.sim_eval_w(v)))
    return torch.cat(out, dim=1)


def l2(x):
    return x / (x.pow(2).sum(-1, keepdim=True).sqrt() + 1e-8)


def test_sgraf_saf_training_batchnorm_is_per_caption_like_the_authors_loop():
    torch.manual_seed(0)
    model = tiny_sgraf("SAF", dropout=0.0).train()
    reference = copy.deepcopy(model)
    imgs, caps = image_batch(4, 36, [36] * 4), word_batch([5, 3, 6, 4])
    scores = model(imgs, caps)
    img, cap = reference.encode_images(imgs), reference.encode_captions(caps)
    expected = _authors_loop(reference, img, cap)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)
    for name in ("running_mean", "running_var"):
        torch.testing.assert_close(getattr(model.sim_enc.SAF_module.bn, name),
                                   getattr(reference.sim_enc.SAF_module.bn, name),
                                   atol=1e-6, rtol=0)
    assert int(model.sim_enc.SAF_module.bn.num_batches_tracked) == 4
    scores.sum().backward()
    assert model.txt_enc.embed.weight.grad is not None


@pytest.mark.parametrize("module", ["SGR", "SAF"])
def test_sgraf_block_scores_equal_one_caption_at_a_time(module):
    torch.manual_seed(0)
    model = tiny_sgraf(module).eval()
    imgs, caps = image_batch(3, 36, [36] * 3), word_batch([5, 2, 7, 4])
    with torch.no_grad():
        img, cap = model.encode_images(imgs), model.encode_captions(caps)
        block = model.similarity(img, cap)
        loop = _authors_loop(model, img, cap)
    assert block.shape == (3, 4) and float(block.min()) > 0 and float(block.max()) < 1
    torch.testing.assert_close(block, loop, atol=1e-5, rtol=0)


def test_sgraf_authors_init_ranges():
    model = tiny_sgraf("SGR")
    r = (6 / (D + 12)) ** 0.5
    w = model.img_enc.fc.weight.detach()
    assert float(w.abs().max()) <= r and float(w.abs().max()) > 0.5 * r
    assert float(model.img_enc.fc.bias.detach().abs().max()) == 0
    assert float(model.txt_enc.embed.weight.detach().abs().max()) <= 0.1


# ------------------------------------------------------------------------------------- registry
def test_registry_names_and_overrides():
    cfg = make_config("sgraf-saf", {"vocab_size": 10})
    assert cfg.module == "SAF" and cfg.vocab_size == 10 and cfg.sim_dim == 256
    with pytest.raises(ConfigError, match="unknown key"):
        make_config("tern", {"embed": 3})
    with pytest.raises(ConfigError, match="contradicts"):
        make_config("sgraf-sgr", {"module": "SAF"})
    with pytest.raises(ConfigError, match="unknown model"):
        build_model("vsepp")
    model = build_model("teran", {"bert_config": TINY_BERT, "bert_layers": 1, "feature_dim": D,
                                  "visual_layers": 1, "embed_size": 8, "layers": 1,
                                  "aggregation": "symm"})
    assert isinstance(model, TERAN) and model.config.aggregation == "symm"
    assert model.txt_enc.bert_model.config.num_hidden_layers == 1


def test_tern_with_the_offline_minilm_bert(minilm_dir):
    model = TERN(TernConfig(bert=str(minilm_dir), feature_dim=D, visual_layers=1, embed_size=16,
                            layers=1, ff_dim=32)).eval()
    assert model.cap_proj.in_features == 384  # follows the BERT hidden size
    assert model.config.bert_config["hidden_size"] == 384
    assert model.config.bert_config["num_hidden_layers"] == 6
    from transformers import BertTokenizerFast

    tok = BertTokenizerFast.from_pretrained(str(minilm_dir))
    enc = tok(["a cat on a sofa", "two dogs running on the beach ."], padding=True,
              return_tensors="pt")
    caps = {"bert_ids": enc["input_ids"], "bert_lengths": enc["attention_mask"].sum(1)}
    with torch.no_grad():
        emb = model.encode_captions(caps)
    assert emb.shape == (2, 16) and torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (CUDA)")
def test_models_run_forward_and_backward_on_cuda():
    for model, imgs, caps in (
            (TERN(tiny_tern_config()), image_batch(3, 6, [6, 2, 4]), bert_batch([9, 4, 6])),
            (TERAN(tiny_tern_config(TeranConfig)), image_batch(3, 6, [6, 2, 4]), bert_batch([9, 4, 6])),
            (tiny_sgraf("SAF"), image_batch(3, 36, [36] * 3), word_batch([5, 2, 7]))):
        cpu = copy.deepcopy(model).eval()
        gpu = model.cuda().eval()
        with torch.no_grad():
            torch.testing.assert_close(gpu(imgs, caps).cpu(), cpu(imgs, caps), atol=1e-4, rtol=0)
        gpu.train()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = contrastive_loss(gpu(imgs, caps).float())
        loss.backward()
        assert torch.isfinite(loss)


def test_registry_reads_each_models_declaration() -> None:
    from types import SimpleNamespace

    from typer.testing import CliRunner

    from pipeline.cli import app
    from trainers.models import MODELS, model_spec, spec_of, union_of_needs

    assert list(MODELS) == ["tern", "teran", "sgraf-sgr", "sgraf-saf"]
    assert MODELS["tern"].needs == {"bert", "geometry"} and MODELS["sgraf-sgr"].needs == {"words"}
    assert [s.name for s in MODELS.values() if s.global_vectors] == ["tern", "teran"]
    saf = SimpleNamespace(kind="sgraf", config=SimpleNamespace(module="SAF"))
    assert spec_of(saf) is model_spec("sgraf-saf")
    assert union_of_needs([MODELS["tern"], MODELS["sgraf-saf"]]) == {"bert", "geometry", "words"}
    with pytest.raises(ConfigError, match="unknown model 'vse'"):
        model_spec("vse")
    listed = CliRunner().invoke(app, ["models"])
    assert listed.exit_code == 0 and all(name in listed.output for name in MODELS)
    bad = CliRunner().invoke(app, ["train", "vse", "--regions", "r", "--captions", "c", "--out", "o"])
    assert bad.exit_code == 2 and "sgraf-saf" in bad.output


def test_the_torch_free_name_list_is_the_registrys() -> None:
    from trainers.model_names import MODEL_NAMES, check_declared
    from trainers.models import MODELS
    from trainers.models import MODEL_NAMES as REGISTERED

    assert MODEL_NAMES == REGISTERED == tuple(MODELS)
    check_declared(tuple(MODELS))
    # a model declared in SPECS but missing from the list (or the list in another order) stops
    # the registry from importing, with both lists in the message
    for declared in ([*MODELS, "vse"], list(reversed(MODELS)), ["tern"]):
        with pytest.raises(RuntimeError, match=r"trainers/model_names\.py lists .* declare"):
            check_declared(declared)
