"""The extraction plan, per-image decoding failures and option checks (no Ray, no detector)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests._support.extract_support import GOOD, make_collection, write_bad_files
from itmflow.errors import ConfigError
from pipeline.cli import app
from pipeline.collections import ImageRecord
from pipeline.extract import ExtractConfig, make_plan
from detectors.butd.preprocess import Preprocessing
from detectors.butd.settings import BUTDSettings
from pipeline.extract.decode import decode_batch
from pipeline.extract.plan import WorkItem, read_failed_ids, select_images


def _images(n: int, split: str = "train") -> list[ImageRecord]:
    return [ImageRecord(f"im{i}", f"im{i}.jpg", split) for i in range(n)]


def test_batches_are_slices_of_collection_order_whatever_is_done():
    images = _images(7)
    full = make_plan(images, committed=set(), failed=set(), batch_size=3)
    assert [[i.image_id for i in b.items] for b in full.batches] == [
        ["im0", "im1", "im2"], ["im3", "im4", "im5"], ["im6"]]
    # after a crash that committed batch 0 and recorded a failure in batch 1, batch 1 keeps its
    # number and its remaining members: the detector sees the same images together again
    resumed = make_plan(images, committed={"im0", "im1", "im2"}, failed={"im4"}, batch_size=3)
    assert [(b.number, [i.image_id for i in b.items]) for b in resumed.batches] == [
        (1, ["im3", "im5"]), (2, ["im6"])]
    assert (resumed.selected, resumed.committed, resumed.failed_before) == (7, 3, 1)
    assert (resumed.todo, resumed.already_done) == (3, 4)
    retry = make_plan(images, committed={"im0", "im1", "im2"}, failed={"im4"}, batch_size=3,
                      retry_failed=True)
    assert [i.image_id for i in retry.batches[0].items] == ["im3", "im4", "im5"]


def test_split_selection_and_unknown_split():
    images = _images(2, "train") + [ImageRecord("t", "t.jpg", "test")]
    assert [im.image_id for im in select_images(images, ["test"])] == ["t"]
    assert len(select_images(images, [])) == 3
    with pytest.raises(ConfigError, match="val"):
        select_images(images, ["val"])


def test_failed_ids_tolerate_a_torn_last_line(tmp_path):
    (tmp_path / "failures.jsonl").write_text(
        json.dumps({"image_id": "a", "file": "a.jpg", "reason": "x"}) + "\n" + '{"image_id": "b", "fi')
    assert read_failed_ids(tmp_path) == {"a"}
    assert read_failed_ids(tmp_path / "nope") == set()


def test_every_bad_file_kind_becomes_a_failure_with_its_reason(tmp_path, photo_dir):
    root = tmp_path / "images"
    root.mkdir()
    (root / "astronaut.jpg").write_bytes((photo_dir / "astronaut.jpg").read_bytes())
    expected = write_bad_files(root, photo_dir / "chelsea.jpg")
    items = [WorkItem(0, "astronaut", "astronaut.jpg")] + [
        WorkItem(i + 1, Path(f).stem, f) for i, f in enumerate(expected)]
    out = decode_batch(7, str(root), items, Preprocessing(min_size=128, max_size=256))
    assert out.number == 7
    assert [i.image_id for i in out.items] == ["astronaut"]
    prepared = out.prepared[0]
    assert min(prepared.tensor.shape[1:]) == 128 and prepared.orig_width == 512
    reasons = {f.file: f.reason for f in out.failures}
    assert set(reasons) == set(expected)
    for file, word in expected.items():
        assert word in reasons[file], (file, reasons[file])


def test_config_refuses_impossible_options(tmp_path):
    base = dict(collection=tmp_path / "c.parquet", out=tmp_path / "s")
    with pytest.raises(ConfigError, match="--weights PATH"):
        ExtractConfig(**base).validate()
    with pytest.raises(ConfigError, match="exclude"):
        ExtractConfig(**base, weights="w.pth", random_init=True).validate()
    with pytest.raises(ConfigError, match="--regions"):
        ExtractConfig(**base, random_init=True, detector=BUTDSettings(regions="12")).validate()
    with pytest.raises(ConfigError, match="--min-size"):
        ExtractConfig(**base, random_init=True, detector=BUTDSettings(min_size=900, max_size=800)).validate()
    cfg = ExtractConfig(**base, random_init=True, batch_size=4, part_size=10)
    assert cfg.validate().part_batches == 2


def test_cli_reports_missing_detector_choice_and_missing_collection(tmp_path, photo_dir):
    coll = make_collection(tmp_path / "c.parquet", photo_dir, GOOD[:1])
    res = CliRunner().invoke(app, ["extract", str(coll), "--out", str(tmp_path / "s")])
    assert res.exit_code != 0 and "--random-init" in str(res.exception)
    missing = CliRunner().invoke(app, ["extract", str(tmp_path / "nope.parquet"), "--out",
                                       str(tmp_path / "s"), "--random-init"])
    assert missing.exit_code != 0 and "nope.parquet" in str(missing.exception)


def test_worker_shapes_follow_the_cluster_resources():
    from pipeline.extract.cluster import ClusterInfo, plan_workers

    gpu = plan_workers(ClusterInfo(False, "x", cpus=16, gpus=2, log_dir=None), workers=None, device="auto")
    assert (gpu.count, gpu.device, gpu.num_gpus) == (2, "cuda", 1.0)
    cpu = plan_workers(ClusterInfo(True, "local", cpus=2, gpus=0, log_dir=None), workers=2, device="auto")
    assert (cpu.count, cpu.device, cpu.num_gpus, cpu.threads) == (2, "cpu", 0.0, 1)
    # actors leave room for decode tasks: a whole CPU each would starve them on 2 CPUs
    assert cpu.count * cpu.num_cpus + cpu.decode_cpus <= 2
    forced = plan_workers(ClusterInfo(False, "x", cpus=8, gpus=1, log_dir=None), workers=3, device="cpu")
    assert (forced.count, forced.device, forced.num_gpus) == (3, "cpu", 0.0)
    # CPU actors whose threads take every core decode their own batches; otherwise decode tasks
    assert cpu.decode_in_actor and not gpu.decode_in_actor and not forced.decode_in_actor
    one = plan_workers(ClusterInfo(True, "local", cpus=2, gpus=0, log_dir=None), workers=None, device="auto")
    assert (one.count, one.threads, one.decode_in_actor) == (1, 2, True)
    with pytest.raises(ConfigError, match="no GPU"):
        plan_workers(ClusterInfo(True, "local", cpus=2, gpus=0, log_dir=None), workers=None, device="cuda")
