"""`itmflow store inspect` answers what a user asks first: random init and seed, detector scale and
proposals, regions per image, per-split counts, provenance, the collection it came from."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from itmflow.files import sha256_file
from pipeline.cli import app
from pipeline.collections import CaptionRecord, ImageRecord, write_collection
from stores import RegionStoreWriter
from tests._support.store_fixtures import ADAPTIVE, make_rows, write_store

runner = CliRunner()

DETECTOR = {"name": "test-butd", "weights_file": None, "weights_sha256": None,
            "settings": {"random_init": True, "seed": 7, "min_size": 600, "max_size": 1000, "pre_nms_topk": 6000,
                         "post_nms_topk": 300, "rpn_nms_thresh": 0.7}}


def _inspect(tmp_path, store):
    res = runner.invoke(app, ["store", "inspect", str(store), "--out", str(tmp_path / "i.json")])
    assert res.exit_code == 0, res.output
    return res.output, json.loads((tmp_path / "i.json").read_text())


def test_inspect_shows_what_users_ask(tmp_path):
    rows = make_rows(6, adaptive=True, seed=2)
    images = [ImageRecord(r["image_id"], r["file"], "train" if i < 4 else "test") for i, r in enumerate(rows)]
    table = write_collection(tmp_path / "coll.parquet", images, [CaptionRecord(f"{r['image_id']}#0", r["image_id"], "a")
                                                                 for r in rows],
                             source_format="folder", images_root=tmp_path)
    extra = {"extract": {"collection": "coll.parquet", "collection_file": str(table.resolve()),
                         "collection_sha256": sha256_file(table)}}
    store = tmp_path / "s"
    with RegionStoreWriter(store, feature_dim=rows[0]["features"].shape[1], region_policy=ADAPTIVE,
                           detector=DETECTOR, rows_per_part=4, extra=extra) as writer:
        for row in rows:
            writer.add(row)
    output, summary = _inspect(tmp_path, store)
    counts = sorted(int(r["features"].shape[0]) for r in rows)
    assert summary["regions_per_image"] == {"min": counts[0], "median": (counts[2] + counts[3]) / 2,
                                            "max": counts[-1]}
    assert summary["random_init"] is True and summary["seed"] == 7
    assert "600" in summary["detector_scale"] and "1000" in summary["detector_scale"]
    assert "300" in summary["proposals"] and "6000" in summary["proposals"]
    assert summary["split_counts"] == {"test": 2, "train": 4}
    assert summary["collection"] == {"file": str(table.resolve()), "sha256": sha256_file(table)}
    assert summary["made"]["created"] and summary["made"]["by"].startswith("itmflow")
    assert "pyarrow" in summary["made"]["versions"]
    for label in ("random_init", "regions_per_image", "split_counts", "collection", "made"):
        assert label in output


def test_inspect_without_a_recorded_collection_says_unknown(tmp_path):
    store = write_store(tmp_path / "s", make_rows(3), rows_per_part=2)
    _, summary = _inspect(tmp_path, store)
    assert summary["split_counts"].startswith("unknown")
    assert summary["regions_per_image"] == {"min": 36, "median": 36.0, "max": 36}
    assert summary["collection"]["sha256"] == "not recorded"
