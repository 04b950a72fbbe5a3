"""Evaluating with another region store than the run was trained on, or one that lacks test images,
is said before scoring (which detector / weights / settings differ; how many images are missing)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from stores import RegionStoreWriter, open_region_store
from tests._support.eval_fixtures import EvalWorld, eval_world

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> EvalWorld:
    return eval_world(tmp_path_factory.mktemp("evalworld"), minilm_dir)


def _copy_store(src: Path, dst: Path, *, detector: dict | None = None, drop: set[str] = frozenset()) -> Path:
    with open_region_store(src) as reader, RegionStoreWriter(
            dst, feature_dim=reader.settings.feature_dim, feature_dtype=reader.settings.feature_dtype,
            region_policy=reader.settings.region_policy,
            detector=reader.settings.detector if detector is None else detector,
            absent_fields=reader.settings.absent_fields) as writer:
        for row in reader:
            if row["image_id"] not in drop:
                writer.add(row)
    return dst


def _run_trained_on(world: EvalWorld, tmp_path: Path) -> Path:
    """A copy of the TERN run with the run.json `itmflow train` writes (inputs.region_store)."""
    run = tmp_path / "run"
    shutil.copytree(world.tern_run, run)
    manifest = json.loads((world.regions / "manifest.json").read_text(encoding="utf-8"))
    store = {k: manifest[k] for k in ("format", "schema_version", "storage", "feature_dim", "detector",
                                      "region_policy") if k in manifest}
    (run / "run.json").write_text(json.dumps({"model": "tern", "inputs": {"regions": str(world.regions),
                                                                          "region_store": store}}),
                                  encoding="utf-8")
    return run


def _evaluate(run: Path, regions: Path, world: EvalWorld, out: Path, folds: str = "1"):
    res = CliRunner().invoke(app, ["evaluate", str(run), "--regions", str(regions), "--captions",
                                   str(world.captions), "--split", "test", "--folds", folds, "--out", str(out),
                                   "--no-progress"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return " ".join(res.output.split())


def test_same_store_says_nothing(world: EvalWorld, tmp_path: Path):
    out = _evaluate(_run_trained_on(world, tmp_path), world.regions, world, tmp_path / "e")
    assert "not the one" not in out and "lacks" not in out


def test_other_store_is_named_leaf_by_leaf_before_scoring(world: EvalWorld, tmp_path: Path):
    manifest = json.loads((world.regions / "manifest.json").read_text(encoding="utf-8"))
    other_det = json.loads(json.dumps(manifest["detector"]))
    other_det["weights_sha256"] = "cd" * 32
    other = _copy_store(world.regions, tmp_path / "other", detector=other_det)
    out = _evaluate(_run_trained_on(world, tmp_path), other, world, tmp_path / "e")
    assert "is not the one" in out and "detector.weights_sha256:" in out and "cd" * 32 in out
    assert out.index("is not the one") < out.index("scoring")


def test_store_lacking_test_images_says_how_many(world: EvalWorld, tmp_path: Path):
    fewer = _copy_store(world.regions, tmp_path / "fewer", drop={"test-0001", "test-0007"})
    out = _evaluate(world.tern_run, fewer, world, tmp_path / "e", folds="1")
    assert "lacks 2 of the 10 images of split 'test'" in out
    assert out.index("lacks 2") < out.index("scoring")
