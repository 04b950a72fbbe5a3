"""`itmflow evaluate --checkpoint NAME`: a catalog name of an authors' release resolves through
the cache (here a random-valued SGRAF file in the authors' layout placed where a user would put
the file they fetched by hand)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tests._support.eval_fixtures import FEATURE_DIM, _authors_sgraf
from tests._support.synthetic_collection import write_synthetic_stores


@pytest.mark.slow
def test_evaluate_checkpoint_by_catalog_name(tmp_path, minilm_dir, monkeypatch):
    from pipeline.cli import app
    from pipeline.text.vocab import WordVocab

    cache = tmp_path / "cache"
    monkeypatch.setenv("ITMFLOW_CACHE", str(cache))
    stores = write_synthetic_stores(tmp_path / "stores", minilm_dir,
                                    splits={"train": 4, "val": 2, "test": 5},
                                    feature_dim=FEATURE_DIM, seed=2)
    placed = cache / "weights" / "sgraf-coco-saf" / "model_best.pth.tar"
    placed.parent.mkdir(parents=True)
    _authors_sgraf(placed, "SAF", len(WordVocab.load(stores.vocab)), 6)
    out = tmp_path / "eval"
    res = CliRunner().invoke(app, ["evaluate", "--checkpoint", "sgraf-coco-saf", "--regions",
                                   str(stores.regions), "--captions", str(stores.captions),
                                   "--split", "test", "--device", "cpu", "--out", str(out),
                                   "--no-progress"])
    assert res.exit_code == 0, (res.output, res.exception)
    doc = json.loads((out / "metrics.json").read_text())
    assert "recall" in doc
