"""Checkpoints: files in exactly the authors' layouts load into models that reproduce the outputs;
strict key mapping; refused pickles; our safetensors + JSON round trip."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from itmflow.errors import CheckpointLayoutError, InputFileError, UnsafeCheckpointError
from tests._support.tiny_bert import tiny_bert
from trainers.checkpoints import (
    from_pretrained,
    load_authors_checkpoint,
    load_model,
    read_model_config,
    save_pretrained,
)
from trainers.models.sgraf import SGRAF, SgrafConfig
from trainers.models.teran import TERAN, TeranConfig
from trainers.models.tern import TERN, TernConfig

D, E, H = 24, 16, 64
TINY_BERT = tiny_bert(vocab_size=120, hidden_size=H, num_hidden_layers=2, num_attention_heads=1,
                      intermediate_size=48, max_position_embeddings=64)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values in every tensor (BatchNorm statistics included) so nothing loads by luck."""
    g = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    for key, value in state.items():
        if value.is_floating_point():
            noise = torch.randn(value.shape, generator=g) * 0.2
            value.copy_(noise.abs() + 0.5 if key.endswith("running_var") else value + noise)
    return model.eval()


def images(k: int = 36, b: int = 3, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    box = torch.rand(b, k, 4, generator=g).sort(dim=-1).values
    area = (box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1])
    return {"features": torch.randn(b, k, D, generator=g).abs(),
            "geometry": torch.cat([box, area[..., None]], -1),
            "num_regions": torch.full((b,), k)}


def bert_captions(seed: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 120, (4, 9), generator=g)
    lengths = torch.tensor([9, 6, 7, 5])
    for i, n in enumerate(lengths.tolist()):
        ids[i, 0], ids[i, n - 1], ids[i, n:] = 101 % 120, 102 % 120, 0
    return {"bert_ids": ids, "bert_lengths": lengths}


def word_captions(seed: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 50, (4, 8), generator=g)
    lengths = torch.tensor([8, 3, 5, 6])
    for i, n in enumerate(lengths.tolist()):
        ids[i, n:] = 0
    return {"word_ids": ids, "word_lengths": lengths}


def tern_like(kind: str, **kw):
    cls, cfg_cls = (TERN, TernConfig) if kind == "tern" else (TERAN, TeranConfig)
    return randomize(cls(cfg_cls(bert_config=dict(TINY_BERT), bert_layers=2, feature_dim=D,
                                 visual_layers=2, embed_size=E, layers=2, ff_dim=40, **kw)))


def sgraf_model(module: str) -> SGRAF:
    return randomize(SGRAF(SgrafConfig(module=module, vocab_size=50, feature_dim=D, word_dim=10,
                                       embed_size=E, sim_dim=8)))


# ---------------------------------------------------------------- the authors' layouts, by hand
def authors_tern_dict(model, kind: str, *, alignment: str = "MrSw") -> dict:
    """``train.py::save_checkpoint`` of TERN/TERAN: ``TERN.state_dict()`` under ``img_txt_enc.``
    plus the tensors the authors' modules hold but never use, the YAML config, opt, optimiser."""
    g = torch.Generator().manual_seed(7)
    state = {f"img_txt_enc.{k}": v.clone() for k, v in model.state_dict().items()}
    state["img_txt_enc.img_enc.fc.weight"] = torch.randn(E, D, generator=g)
    state["img_txt_enc.img_enc.fc.bias"] = torch.randn(E, generator=g)
    state["img_txt_enc.txt_enc.map.weight"] = torch.randn(E, H, generator=g)
    state["img_txt_enc.txt_enc.map.bias"] = torch.randn(E, generator=g)
    state["img_txt_enc.txt_enc.bert_model.pooler.dense.weight"] = torch.randn(H, H, generator=g)
    state["img_txt_enc.txt_enc.bert_model.pooler.dense.bias"] = torch.randn(H, generator=g)
    # The same tensor registered twice in the authors' EncoderText.
    state["img_txt_enc.txt_enc.word_embeddings.weight"] = \
        state["img_txt_enc.txt_enc.bert_model.embeddings.word_embeddings.weight"]
    config = {
        "dataset": {"name": "coco", "data": "data", "restval": True},
        "text-model": {"name": "bert", "pretrain": "bert-base-uncased", "word-dim": H,
                       "extraction-hidden-layer": 2, "fine-tune": True, "pre-extracted": False,
                       "layers": 0, "dropout": 0.1},
        "image-model": {"name": "bottomup", "pre-extracted-features-root": "data/coco/features_36",
                        "transformer-layers": 2, "dropout": 0.1,
                        "pos-encoding": "concat-and-process", "crop-size": 224, "fine-tune": False,
                        "feat-dim": D, "norm": True},
        "model": {"name": "teran" if kind == "teran" else "transformer", "embed-size": E,
                  "text-aggregation": "first", "image-aggregation": "first", "layers": 2,
                  "exclude-stopwords": False, "shared-transformer": kind == "tern",
                  "dropout": 0.1},
        "training": {"lr": 2e-6, "grad-clip": 2.0, "max-violation": True, "measure": "dot",
                     "margin": 0.2, "bs": 80, "scheduler": "steplr", "gamma": 0.1,
                     "step-size": 30, "warmup": "linear", "warmup-period": 1000},
    }
    if kind == "teran":
        config["training"].update({"loss-type": "alignment", "alignment-mode": alignment})
    n = len(state)
    ckpt = {"epoch": 4, "model": state,
            "optimizer": {"state": {0: {"step": torch.tensor(10.0), "exp_avg": torch.zeros(3)}},
                          "param_groups": [{"lr": 2e-6, "betas": (0.9, 0.999), "eps": 1e-8,
                                            "weight_decay": 0, "amsgrad": False,
                                            "params": list(range(n))}]},
            "scheduler": {"step_size": 30, "gamma": 0.1, "base_lrs": [2e-6], "last_epoch": 4},
            "opt": argparse.Namespace(config="configs/tern.yaml", resume="", workers=10,
                                      val_step=500, logger_name="runs/test"),
            "config": config, "Eiters": 12345}
    if kind == "tern":
        ckpt.update(best_rsum=412.5, best_ndcg=np.float64(0.6531))
    return ckpt


def authors_sgraf_dict(model: SGRAF) -> dict:
    """SGRAF's ``save_checkpoint``: ``model`` = [img_enc, txt_enc, sim_enc] state dicts."""
    parts = [{k: v.clone() for k, v in m.state_dict().items()}
             for m in (model.img_enc, model.txt_enc, model.sim_enc)]
    opt = argparse.Namespace(
        data_path="/data", data_name="coco_precomp", vocab_path="./vocab/", model_name="runs/x",
        logger_name="runs/x/log", batch_size=128, num_epochs=20, lr_update=10,
        learning_rate=0.0002, workers=10, log_step=10, val_step=1000, grad_clip=2.0, margin=0.2,
        max_violation=True, img_dim=D, word_dim=10, embed_size=E, sim_dim=8, num_layers=1,
        bi_gru=True, no_imgnorm=False, no_txtnorm=False, module_name=model.config.module,
        sgr_step=3, vocab_size=50)
    return {"epoch": 19, "model": parts, "best_rsum": 501.3, "opt": opt, "Eiters": 88000}


def save_legacy(obj, path, legacy: bool = True):
    # torch-1.x era files use the pre-1.6 (non-zip) serialisation.
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


# ---------------------------------------------------------------- layouts match the spec
def test_full_size_layouts_have_the_spec_key_counts():
    """Full-size TERN/TERAN on the meta device: with the unused tensors added, the authors' key
    count and number count (spec §2.4 / §3) come out; spot-check names and shapes."""
    from transformers import BertConfig

    bert = BertConfig().to_dict()  # bert-base-uncased architecture
    for cls, cfg, keys, numbers in ((TERN, TernConfig, 188, 222.1), (TERAN, TeranConfig, 212, 238.9)):
        with torch.device("meta"):
            state = {f"img_txt_enc.{k}": v for k, v in cls(cfg(bert_config=bert)).state_dict().items()}
        unused = {"img_enc.fc.weight": 1024 * 2048, "img_enc.fc.bias": 1024,
                  "txt_enc.map.weight": 1024 * 768, "txt_enc.map.bias": 1024,
                  "txt_enc.bert_model.pooler.dense.weight": 768 * 768,
                  "txt_enc.bert_model.pooler.dense.bias": 768,
                  "txt_enc.word_embeddings.weight": 30522 * 768}
        assert len(state) + len(unused) == keys
        total = sum(v.numel() for v in state.values()) + sum(unused.values())
        assert round(total / 1e6, 1) == numbers
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        assert shapes["img_txt_enc.img_enc.transformer_encoder.layers.3.self_attn.in_proj_weight"] == (6144, 2048)
        assert shapes["img_txt_enc.img_enc.pos_encoding_image.map.0.weight"] == (2048, 2053)
        assert shapes["img_txt_enc.img_enc.pos_encoding_image.map.2.weight"] == (2048, 2048)
        assert shapes["img_txt_enc.img_proj.weight"] == (1024, 2048)
        assert shapes["img_txt_enc.cap_proj.weight"] == (1024, 768)
        assert shapes["img_txt_enc.transformer_encoder_1.layers.1.linear1.weight"] == (2048, 1024)
        assert shapes["img_txt_enc.txt_enc.bert_model.encoder.layer.5.intermediate.dense.weight"] == (3072, 768)
        assert "img_txt_enc.txt_enc.bert_model.encoder.layer.6.output.dense.weight" not in shapes
        assert ("img_txt_enc.transformer_encoder_2.layers.1.norm2.bias" in shapes) == (cls is TERAN)


def _sgraf_spec_keys(module: str) -> list[set[str]]:
    """The key names of spec §4.4, written out."""
    img = {"fc.weight", "fc.bias"}
    txt = {"embed.weight"} | {f"cap_rnn.{w}_l0{s}" for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                              for s in ("", "_reverse")}
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    sim = {f"v_global_w.embedding_local.0.{p}" for p in ("weight", "bias")}
    sim |= {f"v_global_w.embedding_local.1.{p}" for p in bn}
    sim |= {f"v_global_w.embedding_global.0.{p}" for p in ("weight", "bias")}
    sim |= {f"v_global_w.embedding_global.1.{p}" for p in bn}
    sim |= {f"v_global_w.embedding_common.0.{p}" for p in ("weight", "bias")}
    sim |= {f"t_global_w.embedding_{n}.0.{p}" for n in ("local", "global", "common")
            for p in ("weight", "bias")}
    sim |= {f"{n}.{p}" for n in ("sim_tranloc_w", "sim_tranglo_w", "sim_eval_w") for p in ("weight", "bias")}
    if module == "SGR":
        sim |= {f"SGR_module.{i}.{n}.{p}" for i in range(3)
                for n in ("graph_query_w", "graph_key_w", "sim_graph_w") for p in ("weight", "bias")}
    else:
        sim |= {f"SAF_module.attn_sim_w.{p}" for p in ("weight", "bias")}
        sim |= {f"SAF_module.bn.{p}" for p in bn}
    return [img, txt, sim]


@pytest.mark.parametrize("module,sim_params", [("SGR", 5.32), ("SAF", 4.73)])
def test_sgraf_layout_matches_the_spec(module, sim_params):
    with torch.device("meta"):
        model = SGRAF(SgrafConfig(module=module))
    parts = (model.img_enc, model.txt_enc, model.sim_enc)
    for part, expected in zip(parts, _sgraf_spec_keys(module)):
        assert set(part.state_dict()) == expected
    counts = [sum(p.numel() for p in m.parameters()) / 1e6 for m in parts]
    assert [round(c, 2) for c in counts] == [2.10, 11.55, sim_params]
    assert tuple(model.sim_enc.v_global_w.embedding_local[1].running_mean.shape) == (36,)


# ---------------------------------------------------------------- loading reproduces outputs
@pytest.mark.parametrize("legacy", [True, False])
def test_tern_release_loads_and_reproduces_outputs(tmp_path, legacy):
    model = tern_like("tern")
    path = save_legacy(authors_tern_dict(model, "tern"), tmp_path / "model_best_ndcg.pth", legacy)
    loaded = load_authors_checkpoint(path)
    assert isinstance(loaded, TERN) and not loaded.training
    report = loaded.import_report
    assert report.kind == "tern"
    assert report.unused_expected == sorted([
        "img_enc.fc.bias", "img_enc.fc.weight", "txt_enc.bert_model.pooler.dense.bias",
        "txt_enc.bert_model.pooler.dense.weight", "txt_enc.map.bias", "txt_enc.map.weight",
        "txt_enc.word_embeddings.weight"])
    assert report.info["epoch"] == 4 and report.info["best_ndcg"] == pytest.approx(0.6531)
    cfg = loaded.config
    assert (cfg.feature_dim, cfg.embed_size, cfg.visual_layers, cfg.layers, cfg.bert_layers) == (D, E, 2, 2, 2)
    assert cfg.shared_transformer and cfg.bert_config["hidden_size"] == H
    imgs, caps = images(k=5), bert_captions()
    with torch.no_grad():
        torch.testing.assert_close(loaded(imgs, caps), model(imgs, caps), atol=1e-6, rtol=0)


@pytest.mark.parametrize("alignment", ["MrSw", "MwSr"])
def test_teran_release_loads_and_reproduces_outputs(tmp_path, alignment):
    model = tern_like("teran", aggregation=alignment, mwsr_zero_floor=alignment == "MwSr")
    path = save_legacy(authors_tern_dict(model, "teran", alignment=alignment), tmp_path / "t.pth")
    loaded = load_authors_checkpoint(path)
    assert isinstance(loaded, TERAN)
    assert loaded.config.aggregation == alignment and not loaded.config.shared_transformer
    assert loaded.config.mwsr_zero_floor == (alignment == "MwSr")
    assert len(loaded.import_report.unused_expected) == 7
    imgs, caps = images(k=6), bert_captions()
    with torch.no_grad():
        torch.testing.assert_close(loaded(imgs, caps), model(imgs, caps), atol=1e-6, rtol=0)
        torch.testing.assert_close(loaded.encode_images(imgs)["global"],
                                   model.encode_images(imgs)["global"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("module", ["SGR", "SAF"])
def test_sgraf_release_loads_and_reproduces_outputs(tmp_path, module):
    model = sgraf_model(module)
    path = save_legacy(authors_sgraf_dict(model), tmp_path / "model_best.pth.tar")
    loaded = load_authors_checkpoint(path)
    assert isinstance(loaded, SGRAF) and loaded.config.module == module
    assert loaded.config.vocab_size == 50 and loaded.config.num_regions == 36
    assert loaded.import_report.unused_expected == [] and loaded.import_report.info["epoch"] == 19
    imgs, caps = images(), word_captions()
    with torch.no_grad():
        torch.testing.assert_close(loaded(imgs, caps), model(imgs, caps), atol=1e-6, rtol=0)
    # The BatchNorm statistics came from the file, not from a fresh init.
    torch.testing.assert_close(loaded.sim_enc.v_global_w.embedding_local[1].running_var,
                               model.sim_enc.v_global_w.embedding_local[1].running_var)


# ---------------------------------------------------------------- strict mapping
def test_missing_unused_and_misshaped_keys_are_named(tmp_path):
    model = tern_like("tern")
    ckpt = authors_tern_dict(model, "tern")
    del ckpt["model"]["img_txt_enc.cap_proj.bias"]
    ckpt["model"]["img_txt_enc.extra_head.weight"] = torch.zeros(2, 2)
    ckpt["model"]["img_txt_enc.img_proj.weight"] = torch.zeros(E + 1, D)
    with pytest.raises(CheckpointLayoutError) as info:
        load_authors_checkpoint(save_legacy(ckpt, tmp_path / "bad.pth"))
    text = str(info.value)
    assert "missing keys (1): cap_proj.bias" in text
    assert "unused keys (1): extra_head.weight" in text
    assert "img_proj.weight: file (17, 24) vs model (16, 24)" in text
    assert "bad.pth" in text


def test_sgraf_extra_key_and_wrong_structure_are_named(tmp_path):
    ckpt = authors_sgraf_dict(sgraf_model("SGR"))
    ckpt["model"][2]["SGR_module.3.graph_key_w.weight"] = torch.zeros(8, 8)
    with pytest.raises(CheckpointLayoutError, match=r"unused keys \(1\): sim_enc.SGR_module.3.graph_key_w.weight"):
        load_authors_checkpoint(save_legacy(ckpt, tmp_path / "x.pth"))
    ckpt["model"] = ckpt["model"][:2]
    with pytest.raises(CheckpointLayoutError, match="list of 3 state dicts"):
        load_authors_checkpoint(save_legacy(ckpt, tmp_path / "y.pth"))
    good = save_legacy(authors_sgraf_dict(sgraf_model("SGR")), tmp_path / "sgr.pth")
    with pytest.raises(CheckpointLayoutError, match="asked for sgraf-saf.*SGR"):
        load_authors_checkpoint(good, "sgraf-saf")
    assert load_authors_checkpoint(good, "sgraf-sgr").config.module == "SGR"
    with pytest.raises(CheckpointLayoutError, match="'model'"):
        load_authors_checkpoint(save_legacy({"weights": {}}, tmp_path / "z.pth"))


class _Payload:
    """Pickles as a call to ``open(marker, 'w')`` — the file appears only if the call runs."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("legacy", [True, False])
def test_a_pickle_asking_for_another_global_is_refused(tmp_path, legacy):
    marker = tmp_path / "ran"
    ckpt = authors_sgraf_dict(sgraf_model("SAF"))
    ckpt["opt"] = _Payload(str(marker))
    path = save_legacy(ckpt, tmp_path / "evil.pth", legacy)
    with pytest.raises(UnsafeCheckpointError, match="open") as info:
        load_authors_checkpoint(path)
    assert "evil.pth" in str(info.value)
    assert not marker.exists()


# ---------------------------------------------------------------- our format
@pytest.mark.parametrize("which", ["tern", "teran", "sgraf"])
def test_save_pretrained_round_trip(tmp_path, which):
    if which == "sgraf":
        model, imgs, caps = sgraf_model("SAF"), images(), word_captions()
    else:
        model, imgs, caps = tern_like(which), images(k=5), bert_captions()
    out = save_pretrained(model, tmp_path / "m", extra={"epoch": 3})
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    meta = read_model_config(out)
    assert meta["kind"] == model.kind and meta["extra"] == {"epoch": 3}
    # BERT needs no hub or directory: its architecture is in the config.
    if which != "sgraf":
        meta["config"]["bert"] = "/nonexistent/bert"
        (out / "config.json").write_text(json.dumps(meta))
    loaded = from_pretrained(out, verify=True)
    assert type(loaded) is type(model) and not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(imgs, caps), model(imgs, caps), atol=0, rtol=0)
    assert type(load_model(out)) is type(model)


def test_float64_weights_load_rounded_or_exactly(tmp_path):
    """A ``dtype: float64`` run saves float64 tensors: the default load rounds them into the
    float32 model (evaluation, embedding); ``dtype=torch.float64`` (what --resume passes) keeps
    them exactly, and the float64 model scores what its float32 rounding scores, to rounding."""
    model = sgraf_model("SGR").double()
    out = save_pretrained(model, tmp_path / "m")
    rounded = from_pretrained(out)
    exact = from_pretrained(out, dtype=torch.float64)
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            assert rounded.state_dict()[key].dtype == torch.float32
            assert torch.equal(rounded.state_dict()[key], value.float())
            assert torch.equal(exact.state_dict()[key], value)
    imgs, caps = images(), word_captions()
    with torch.no_grad():
        high = exact(imgs, caps)
        assert high.dtype == torch.float64
        torch.testing.assert_close(rounded(imgs, caps), high.float(), rtol=1e-5, atol=1e-6)


def test_from_pretrained_errors_name_the_problem(tmp_path):
    model = sgraf_model("SGR")
    out = save_pretrained(model, tmp_path / "m")
    data = bytearray((out / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (out / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointLayoutError, match="sha256"):
        from_pretrained(out, verify=True)
    with pytest.raises(InputFileError, match="config.json"):
        from_pretrained(tmp_path)
    meta = json.loads((out / "config.json").read_text())
    meta["config"]["sim_dim"] = 9
    (out / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointLayoutError, match="shape mismatches"):
        from_pretrained(out)


def test_minilm_tern_saves_and_reloads_offline(tmp_path, minilm_dir):
    model = TERN(TernConfig(bert=str(minilm_dir), feature_dim=D, visual_layers=1,
                            embed_size=E, layers=1, ff_dim=32)).eval()
    assert model.cap_proj.in_features == 384
    out = save_pretrained(model, tmp_path / "m")
    loaded = from_pretrained(out)
    caps = {"bert_ids": torch.tensor([[101, 1037, 4937, 2006, 1037, 10682, 102]]),
            "bert_lengths": torch.tensor([7])}
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_captions(caps), model.encode_captions(caps))


def test_a_file_saved_from_gpu_tensors_loads_on_cpu(tmp_path, monkeypatch):
    """The releases were saved from CUDA models: their storages carry the location 'cuda:0'.
    No GPU here, so the file is written with the location tag torch would have recorded."""
    import torch.serialization as serialization

    model = sgraf_model("SGR")
    with monkeypatch.context() as patch:
        patch.setattr(serialization, "location_tag", lambda storage: "cuda:0")
        path = save_legacy(authors_sgraf_dict(model), tmp_path / "gpu.pth.tar")
    assert b"cuda:0" in path.read_bytes()
    loaded = load_authors_checkpoint(path)
    assert loaded.img_enc.fc.weight.device.type == "cpu"
    torch.testing.assert_close(loaded.img_enc.fc.weight, model.img_enc.fc.weight)
