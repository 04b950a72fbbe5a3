"""Imported TERN features without image sizes: the import takes the sizes from the images or a COCO
annotation file or refuses, geometry is never computed from a zero size, and evaluate refuses
non-finite scores instead of printing a table of NaN (it printed one, exit 0)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from itmflow.errors import InputFileError, ItmflowError, StoreError
from pipeline.cli import app
from stores import RegionStoreWriter, open_region_store
from stores.exports import export_store
from stores.imports import import_store
from stores.schema import geometry_from_boxes
from tests._support.eval_fixtures import EvalWorld, eval_world

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> EvalWorld:
    return eval_world(tmp_path_factory.mktemp("evalworld"), minilm_dir)


def _evaluate(world: EvalWorld, regions: Path, out: Path):
    return CliRunner().invoke(app, ["evaluate", str(world.tern_run), "--regions", str(regions), "--captions",
                                    str(world.captions), "--split", "test", "--out", str(out), "--no-progress"])


def _coco_json(store: Path, path: Path) -> Path:
    with open_region_store(store) as reader:
        images = [{"id": i, "file_name": f"{row['image_id']}.jpg", "width": int(row["width"]),
                   "height": int(row["height"])} for i, row in enumerate(reader)]
    path.write_text(json.dumps({"images": images, "annotations": []}), encoding="utf-8")
    return path


def test_geometry_is_never_computed_from_a_zero_size():
    with pytest.raises(StoreError, match="unknown"):
        geometry_from_boxes(np.ones((2, 4), np.float32), 0, 0)


def test_tern_import_takes_sizes_or_refuses(world: EvalWorld, tmp_path: Path):
    export_store(world.regions, "tern", tmp_path / "tern")
    with pytest.raises(InputFileError, match=r"--images ROOT.*--captions-json FILE"):
        import_store(tmp_path / "tern", "tern", tmp_path / "nosizes")
    karpathy = tmp_path / "dataset_flickr30k.json"
    karpathy.write_text(json.dumps({"images": [{"filename": "test-0000.jpg", "sentences": []}]}), encoding="utf-8")
    with pytest.raises(InputFileError, match="no width/height.*--images"):
        import_store(tmp_path / "tern", "tern", tmp_path / "k", captions_json=karpathy)
    coco = _coco_json(world.regions, tmp_path / "captions_test.json")
    back = tmp_path / "back"
    res = CliRunner().invoke(app, ["store", "import", str(tmp_path / "tern"), "--format", "tern", "--out", str(back),
                                   "--captions-json", str(coco)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    with open_region_store(back) as got, open_region_store(world.regions) as want:
        a, b = got.get("test-0003"), want.get("test-0003")
        assert (a["width"], a["height"]) == (b["width"], b["height"])
        np.testing.assert_allclose(a["geometry"], b["geometry"], rtol=1e-6)
    res = _evaluate(world, back, tmp_path / "eval")
    assert res.exit_code == 0, res.output + repr(res.exception)
    doc = json.loads((tmp_path / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert np.isfinite(doc["recall"]["rsum"])


def test_tern_import_reads_sizes_from_the_images(tmp_path: Path):
    from PIL import Image

    (tmp_path / "tern" / "bu_att").mkdir(parents=True)
    (tmp_path / "tern" / "bu_box").mkdir()
    (tmp_path / "images" / "val2014").mkdir(parents=True)
    for n, (w, h) in {391895: (64, 48), 57870: (30, 50)}.items():
        np.savez(tmp_path / "tern" / "bu_att" / f"{n}.npz", feat=np.ones((3, 8), np.float32))
        np.save(tmp_path / "tern" / "bu_box" / f"{n}.npy", np.array([[0, 0, 10, 10]] * 3, np.float32))
        Image.new("RGB", (w, h)).save(tmp_path / "images" / "val2014" / f"COCO_val2014_{n:012d}.jpg")
    import_store(tmp_path / "tern", "tern", tmp_path / "s", images=tmp_path / "images")
    with open_region_store(tmp_path / "s") as reader:
        row = reader.get("57870")
        assert (row["width"], row["height"]) == (30, 50)
        np.testing.assert_allclose(row["geometry"][0], [0, 0, 10 / 30, 10 / 50, 100 / 1500], rtol=1e-6)
    (tmp_path / "images" / "val2014" / "COCO_val2014_000000057870.jpg").unlink()
    with pytest.raises(InputFileError, match="1 of 2 images have no size"):
        import_store(tmp_path / "tern", "tern", tmp_path / "s2", images=tmp_path / "images")


def test_evaluate_refuses_a_store_without_sizes(world: EvalWorld, tmp_path: Path):
    """A store as the old TERN import wrote it (width/height 0, no geometry): named, not NaN scores."""
    old = tmp_path / "old"
    with open_region_store(world.regions) as reader, RegionStoreWriter(
            old, feature_dim=reader.settings.feature_dim, feature_dtype="float32",
            region_policy=reader.settings.region_policy, absent_fields=("geometry", "object_ids", "object_conf",
                                                                        "attr_ids", "attr_conf")) as writer:
        for row in reader:
            writer.add({**row, "width": 0, "height": 0, "geometry": None})
    res = _evaluate(world, old, tmp_path / "eval")
    assert res.exit_code != 0
    assert isinstance(res.exception, ItmflowError)
    assert str(old) in str(res.exception) and "image size" in str(res.exception)


def test_non_finite_scores_are_refused():
    from trainers.evaluation.run import refuse_non_finite

    refuse_non_finite(np.ones((2, 10)), "x", "y")
    sims = np.ones((2, 10))
    sims[0, 3] = np.nan
    with pytest.raises(ItmflowError, match=r"1 of 20 values of region store S are not finite.*cause: C"):
        refuse_non_finite(sims, "region store S", "C")
