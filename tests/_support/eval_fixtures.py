"""Tiny real stores and model directories for the evaluate / embed / search command tests.

Built once per test session (module-level cache): the synthetic region + caption stores of
``synthetic_collection`` (real Parquet stores through the public writers, real WordPiece and SCAN
word tokenization), a TERAN run directory and a TERN run directory saved with
``trainers.checkpoints.save_pretrained``, and SGR / SAF checkpoints in the authors' ``torch.save``
layout (a list of three state dicts plus an ``argparse.Namespace``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

from tests._support.tiny_bert import tiny_bert

SPLITS = {"train": 8, "val": 5, "test": 10}
FEATURE_DIM = 32
_CACHE: dict[str, "EvalWorld"] = {}


@dataclass
class EvalWorld:
    root: Path
    regions: Path
    captions: Path
    teran_run: Path
    tern_run: Path
    sgr_ckpt: Path
    saf_ckpt: Path
    vocab_size: int


# A one-layer BERT with the bert-base-uncased vocabulary, built empty (random weights): the
# tokenizer stays the real MiniLM one (``bert`` below), loading pretrained weights is not needed.
TINY_BERT = tiny_bert()


def tiny_transformer_model(kind: str, bert: Path, seed: int, feature_dim: int = FEATURE_DIM):
    """A tiny TERN / TERAN whose config records ``bert`` (the tokenizer directory)."""
    from trainers.models import build_model

    torch.manual_seed(seed)
    return build_model(kind, {"bert": str(bert), "bert_config": dict(TINY_BERT), "bert_layers": 1,
                              "feature_dim": feature_dim, "visual_layers": 1, "embed_size": 16,
                              "layers": 1, "ff_dim": 32})


def _authors_sgraf(path: Path, module: str, vocab_size: int, seed: int) -> Path:
    from trainers.models.sgraf import SGRAF, SgrafConfig

    torch.manual_seed(seed)
    model = SGRAF(SgrafConfig(module=module, vocab_size=vocab_size, feature_dim=FEATURE_DIM,
                              word_dim=12, embed_size=16, sim_dim=8))
    opt = argparse.Namespace(module_name=module, vocab_size=vocab_size, img_dim=FEATURE_DIM,
                             word_dim=12, embed_size=16, sim_dim=8, sgr_step=3, num_layers=1,
                             bi_gru=True, no_imgnorm=False, no_txtnorm=False, data_name="coco_precomp")
    torch.save({"epoch": 3, "model": [model.img_enc.state_dict(), model.txt_enc.state_dict(),
                                      model.sim_enc.state_dict()],
                "best_rsum": 1.5, "opt": opt, "Eiters": 10}, path)
    return path


def eval_world(tmp_root: Path, bert: Path) -> EvalWorld:
    """Build (once) and return the stores and models under ``tmp_root``."""
    if "world" in _CACHE:
        return _CACHE["world"]
    from tests._support.synthetic_collection import write_synthetic_stores

    from trainers.checkpoints import save_pretrained

    stores = write_synthetic_stores(tmp_root, bert, splits=SPLITS, feature_dim=FEATURE_DIM, seed=3)
    from pipeline.text.vocab import WordVocab

    vocab_size = len(WordVocab.load(stores.vocab))
    teran_run = tmp_root / "teran-run"
    save_pretrained(tiny_transformer_model("teran", bert, 0), teran_run / "best")
    tern_run = tmp_root / "tern-run"
    save_pretrained(tiny_transformer_model("tern", bert, 1), tern_run / "best")
    world = EvalWorld(
        root=tmp_root, regions=stores.regions, captions=stores.captions, teran_run=teran_run,
        tern_run=tern_run,
        sgr_ckpt=_authors_sgraf(tmp_root / "sgr_model_best.pth.tar", "SGR", int(vocab_size), 5),
        saf_ckpt=_authors_sgraf(tmp_root / "saf_model_best.pth.tar", "SAF", int(vocab_size), 6),
        vocab_size=int(vocab_size))
    _CACHE["world"] = world
    return world
