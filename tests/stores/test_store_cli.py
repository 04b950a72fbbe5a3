"""`itmflow store ...` through typer's CliRunner: output, files and exit codes."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.collections import read_collection
from tests._support.store_fixtures import make_rows, write_store
from stores import open_region_store

runner = CliRunner()


def test_inspect_and_verify(tmp_path):
    store = write_store(tmp_path / "s", make_rows(5), rows_per_part=2)
    res = runner.invoke(app, ["store", "inspect", str(store), "--out", str(tmp_path / "i.json")])
    assert res.exit_code == 0, res.output
    assert "parquet" in res.output and "test-butd" in res.output
    summary = json.loads((tmp_path / "i.json").read_text())
    assert summary["rows"] == 5 and summary["parts"] == 3 and summary["regions"] == 180
    assert summary["feature_dtype"] == "float16"

    res = runner.invoke(app, ["store", "verify", str(store)])
    assert res.exit_code == 0 and "ok" in res.output
    part = store / "data/part-00001.parquet"
    data = bytearray(part.read_bytes())
    data[1000] ^= 1
    part.write_bytes(bytes(data))
    res = runner.invoke(app, ["store", "verify", str(store), "--out", str(tmp_path / "v.json")])
    assert res.exit_code == 1
    assert "part-00001.parquet" in res.output and "sha256" in res.output
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["ok"] is False and report["problems"][0]["file"] == "data/part-00001.parquet"

    res = runner.invoke(app, ["store", "verify", str(tmp_path / "nowhere")])
    assert res.exit_code == 1 and "manifest.json is missing" in res.output


def test_convert_export_import(tmp_path):
    rows = make_rows(3)
    store = write_store(tmp_path / "s", rows)
    res = runner.invoke(app, ["store", "convert", str(store), str(tmp_path / "h"), "--to", "hdf5"])
    assert res.exit_code == 0, res.output
    assert open_region_store(tmp_path / "h").manifest["storage"] == "hdf5"
    res = runner.invoke(app, ["store", "convert", str(store), str(tmp_path / "x"), "--to", "zarr"])
    assert res.exit_code == 2 and "'zarr' is not one of" in res.output  # a usage error

    res = runner.invoke(app, ["store", "export", str(tmp_path / "h"), "--format", "butd-tsv",
                              "--out", str(tmp_path / "tsv")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["store", "import", str(tmp_path / "tsv" / "train.tsv"), "--format", "butd-tsv",
                              "--out", str(tmp_path / "back"), "--storage", "hdf5", "--feature-dtype", "float16"])
    assert res.exit_code == 0, res.output
    back = open_region_store(tmp_path / "back")
    assert back.manifest["feature_dtype"] == "float16"
    np.testing.assert_array_equal(back.get("img0002")["features"], rows[2]["features"].astype(np.float16))

    res = runner.invoke(app, ["store", "export", str(store), "--format", "npy", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "'npy' is not one of" in res.output  # a usage error


def test_import_scan_writes_collection(tmp_path):
    src = tmp_path / "coco_precomp"
    src.mkdir()
    feats = np.random.default_rng(0).standard_normal((2, 36, 64)).astype(np.float32)
    np.save(src / "dev_ims.npy", feats)
    (src / "dev_ids.txt").write_text("391895\n522418\n")
    (src / "dev_caps.txt").write_text("".join(f"caption {i}\n" for i in range(10)))
    res = runner.invoke(app, ["store", "import", str(src), "--format", "scan-precomp", "--split", "dev",
                              "--out", str(tmp_path / "store"), "--collection-out",
                              str(tmp_path / "coll.parquet")])
    assert res.exit_code == 0, res.output
    coll = read_collection(tmp_path / "coll.parquet")
    assert [im.image_id for im in coll.images] == ["391895", "522418"]
    assert {im.split for im in coll.images} == {"val"}
    assert [c.raw for c in coll.captions[5:7]] == ["caption 5", "caption 6"]
    assert coll.captions[5].image_id == "522418" and coll.captions[5].caption_id == "522418#0"
    reader = open_region_store(tmp_path / "store")
    np.testing.assert_array_equal(reader.read_features(["522418"])[0], feats[1])
    # Captions that do not come 5 (or 1) per image are refused, naming the file.
    (src / "dev_caps.txt").write_text("a\nb\nc\n")
    res = runner.invoke(app, ["store", "import", str(src), "--format", "scan-precomp", "--split", "dev",
                              "--out", str(tmp_path / "store2")])
    assert res.exit_code == 1 and "dev_caps.txt: 3 captions for 2 images" in str(res.exception)


def test_inspect_caption_store(tmp_path):
    from stores.captions import write_caption_store

    rows = [{"caption_id": f"c{i}", "image_id": f"im{i // 5}", "split": "test", "raw": f"text {i}"}
            for i in range(10)]
    write_caption_store(tmp_path / "caps", rows, {"tokenizer": "bert-base-uncased"})
    res = runner.invoke(app, ["store", "inspect", str(tmp_path / "caps"), "--out", str(tmp_path / "c.json")])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "c.json").read_text())
    assert summary["kind"] == "captions" and summary["captions"] == 10 and summary["images"] == 2
    assert summary["splits"] == {"test": 10} and summary["tokenizer"] == "bert-base-uncased"
