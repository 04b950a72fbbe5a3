"""The learning test: the whole data → train → evaluate path learns, for TERN, TERAN and SGRAF.

A synthetic collection with controlled meaning (``tests._support.synthetic_collection``: region features encode
which coloured objects an image shows, its captions name them) is written as real region and
caption stores, each model trains on CPU for 100 iterations with the real loop (small dimensions,
a 1-layer BERT with the real WordPiece vocabulary / a SCAN-built word vocabulary), and its ``best``
checkpoint (picked on the val split) must retrieve images for held-out test captions with
R@1 at least 5 times chance, and better than the same model before training.

The settings that differ from the paper presets are there to learn in ~100 steps from scratch:
a higher learning rate, no warm-up, no dropout, and the hinge summed over all negatives
(``max_violation: false``) — max-violation from a random start gives almost no gradient signal
(VSE++ §3.3); the published models start from a pretrained BERT instead. SGRAF starts on a loss
plateau (all scores ≈ equal); with its earlier settings (LR 2e-3, dropout 0.4) it left the plateau
late or not at all within 100 steps, so the result of one run was decided by float rounding:
over seeds 0-9 t2i R@1 ranged 2-58 % on either training path, half the runs under 5× chance
(issue #18). With LR 5e-3 and no dropout, seeds 0-9 on both paths: SAF 47-97 %, SGR 24-92 %
on the default (sliced) path and 1.4-83 % on the reference one (one run of 20 still stuck).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests._support.synthetic_collection import write_synthetic_stores
from tests._support.tiny_bert import tiny_bert
from trainers.checkpoints import from_pretrained
from trainers.data import MatchingData
from trainers.training.config import build_config
from trainers.training import Trainer, evaluate_split, train

TINY_BERT = tiny_bert(hidden_size=64, intermediate_size=128, max_position_embeddings=64, type_vocab_size=2)
TRANSFORMERS = {"bert_config": TINY_BERT, "bert_layers": 1, "visual_layers": 1, "embed_size": 64,
                "layers": 1, "ff_dim": 128, "dropout": 0.0, "visual_dropout": 0.0}
SETTINGS = {
    "tern": {"lr": 1e-3, "model_config": TRANSFORMERS},
    "teran": {"lr": 1e-3, "model_config": TRANSFORMERS},
    **{name: {"lr": 5e-3, "model_config": {"embed_size": 64, "word_dim": 32, "sim_dim": 32,
                                           "dropout": 0.0}}
       for name in ("sgraf-sgr", "sgraf-saf")},
}
STEPS = 100
TEST_IMAGES = 100


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path):
    """600 training images (train + restval, 3,000 captions), 50 val, 100 held-out test images."""
    return write_synthetic_stores(tmp_path_factory.mktemp("learning"), minilm_dir,
                                  splits={"train": 480, "restval": 120, "val": 50,
                                          "test": TEST_IMAGES}, feature_dim=64, seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(SETTINGS))
def test_model_learns_on_synthetic_stores(model: str, stores, tmp_path: Path) -> None:
    overrides = {"batch_size": 32, "warmup_iters": 0, "max_violation": False, "epochs": 10,
                 "max_steps": STEPS, "val_every": 50, "progress": False, "device": "cpu",
                 **SETTINGS[model]}
    config = build_config(model, overrides=overrides)
    data = MatchingData(stores.regions, stores.captions, model=model)
    untrained = Trainer(config, data, tmp_path / "untrained").model
    before = evaluate_split(untrained, data, "test")

    run = tmp_path / "run"
    summary = train(config, stores.regions, stores.captions, run)
    assert summary["steps"] == STEPS
    after = evaluate_split(from_pretrained(run / "best"), data, "test")

    chance = 100.0 / TEST_IMAGES
    result = {"model": model, "t2i_r1_before": before.t2i.r1, "t2i_r1_after": after.t2i.r1,
              "i2t_r1_after": after.i2t.r1, "rsum_after": after.rsum, "chance_r1": chance,
              "train_seconds": summary["seconds"]}
    (run / "learning.json").write_text(json.dumps(result))
    print(result)
    assert after.t2i.r1 >= 5 * chance, result
    assert after.t2i.r1 > before.t2i.r1 and after.rsum > before.rsum, result
