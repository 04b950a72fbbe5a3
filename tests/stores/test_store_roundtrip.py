"""Write/read round trips for both storages, both dtypes, fixed and adaptive K; bad rows rejected."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests._support.store_fixtures import DETECTOR, FIXED, assert_row_equal, make_rows, write_store
from itmflow.errors import SchemaVersionError, StoreError
from stores import RegionStoreWriter, open_region_store
from stores.schema import FORMAT, SCHEMA_VERSION


@pytest.mark.parametrize("storage", ["parquet", "hdf5"])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("adaptive", [False, True])
def test_round_trip(tmp_path, storage, dtype, adaptive):
    rows = make_rows(9, adaptive=adaptive, seed=3)
    write_store(tmp_path / "s", rows, storage=storage, dtype=dtype, adaptive=adaptive, rows_per_part=4,
                row_group_rows=3)
    reader = open_region_store(tmp_path / "s")
    m = reader.manifest
    assert m["format"] == FORMAT and m["schema_version"] == SCHEMA_VERSION
    assert m["storage"] == storage and m["feature_dtype"] == dtype and m["feature_dim"] == 2048
    assert [p["rows"] for p in m["parts"]] == [4, 4, 1]
    assert m["num_rows"] == 9 and m["num_regions"] == sum(r["num_regions"] for r in rows)
    assert m["detector"] == DETECTOR
    assert len(reader) == 9 and reader.ids() == [r["image_id"] for r in rows]
    got = list(reader)
    assert len(got) == 9
    for g, want in zip(got, rows):
        assert_row_equal(g, want, dtype)
    for want in reversed(rows):  # random access, reverse order crosses parts and row groups
        assert_row_equal(reader.get(want["image_id"]), want, dtype)
    feats = reader.read_features([rows[5]["image_id"], rows[0]["image_id"]])
    if adaptive:
        assert feats.dtype == object and feats[0].shape == (rows[5]["num_regions"], 2048)
    else:
        assert feats.shape == (2, 36, 2048) and feats.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(feats[1], rows[0]["features"].astype(dtype))
    with pytest.raises(StoreError, match="nope"):
        reader.get("nope")
    reader.close()


@pytest.mark.parametrize("storage", ["parquet", "hdf5"])
def test_absent_fields_store(tmp_path, storage):
    rows = make_rows(3, labels=False, seed=1)
    for r in rows:
        r.pop("boxes"), r.pop("geometry")
    write_store(tmp_path / "s", rows, storage=storage, dtype="float32",
                absent_fields=("boxes", "geometry", "object_ids", "object_conf", "attr_ids", "attr_conf"))
    reader = open_region_store(tmp_path / "s")
    assert reader.manifest["absent_fields"] == sorted(["attr_conf", "attr_ids", "boxes", "geometry",
                                                       "object_conf", "object_ids"])
    for got, want in zip(reader, rows):
        assert_row_equal(got, want)
        assert got["boxes"] is None and got["object_ids"] is None


def test_bad_rows_named(tmp_path):
    rows = make_rows(3, seed=2)
    writer = RegionStoreWriter(tmp_path / "s", region_policy=FIXED, rows_per_part=10)
    writer.add(rows[0])
    bad = dict(rows[1], features=np.zeros((36, 1024), np.float32))
    with pytest.raises(StoreError, match=r"img0001.*dimension 1024.*feature_dim is 2048"):
        writer.add(bad)
    with pytest.raises(StoreError, match="duplicate image_id 'img0000'"):
        writer.add(rows[0])
    long = dict(rows[1], features=np.concatenate([rows[1]["features"]] * 2)[:40], num_regions=40)
    with pytest.raises(StoreError, match="fixed K=36"):
        writer.add(long)
    short = dict(rows[1], features=rows[1]["features"][:20], num_regions=20)
    with pytest.raises(StoreError, match="'boxes' has shape"):  # fewer regions are padded, not refused
        writer.add(short)
    nolabels = {k: v for k, v in rows[2].items() if k != "attr_conf"}
    with pytest.raises(StoreError, match="'attr_conf' is missing"):
        writer.add(nolabels)
    nan = dict(rows[2], features=np.full((36, 2048), np.nan, np.float32))
    with pytest.raises(StoreError, match="not finite"):
        writer.add(nan)
    huge = dict(rows[2], features=np.full((36, 2048), 1e6, np.float32))  # overflows float16
    with pytest.raises(StoreError, match="not finite"):
        writer.add(huge)
    writer.add(rows[1])
    writer.close()
    # The failed adds left nothing behind; the good rows are committed.
    assert open_region_store(tmp_path / "s").ids() == ["img0000", "img0001"]
    with pytest.raises(StoreError, match="duplicate image_id 'img0001': already committed in data/part-00000"):
        RegionStoreWriter(tmp_path / "s", region_policy=FIXED).add(rows[1])


def test_settings_mismatch_names_field(tmp_path):
    write_store(tmp_path / "s", make_rows(2), dtype="float16")
    with pytest.raises(StoreError, match=r"feature_dtype: \"float16\" -> \"float32\""):
        RegionStoreWriter(tmp_path / "s", feature_dtype="float32", region_policy=FIXED, detector=DETECTOR)
    with pytest.raises(StoreError, match="detector"):
        RegionStoreWriter(tmp_path / "s", region_policy=FIXED, detector={"name": "other"})
    with pytest.raises(StoreError, match="storage"):
        RegionStoreWriter(tmp_path / "s", storage="hdf5", region_policy=FIXED, detector=DETECTOR)
    # Same settings: resumes fine.
    w = RegionStoreWriter(tmp_path / "s", region_policy=FIXED, detector=DETECTOR)
    assert w.committed_ids() == {"img0000", "img0001"}


def test_newer_schema_version_refused(tmp_path):
    write_store(tmp_path / "s", make_rows(2))
    mpath = tmp_path / "s" / "manifest.json"
    doc = json.loads(mpath.read_text())
    doc["schema_version"] = SCHEMA_VERSION + 1
    mpath.write_text(json.dumps(doc))
    with pytest.raises(SchemaVersionError, match=r"manifest.json has schema_version 3.*upgrade itmflow"):
        open_region_store(tmp_path / "s")
    with pytest.raises(SchemaVersionError):
        RegionStoreWriter(tmp_path / "s", region_policy=FIXED, detector=DETECTOR)


def test_failures_jsonl(tmp_path):
    with RegionStoreWriter(tmp_path / "s", region_policy=FIXED) as w:
        w.record_failure("x1", "a/x1.jpg", "truncated JPEG")
        w.record_failure("x2", "a/x2.jpg", "not an image")
    lines = [json.loads(line) for line in (tmp_path / "s" / "failures.jsonl").read_text().splitlines()]
    assert lines == [{"file": "a/x1.jpg", "image_id": "x1", "reason": "truncated JPEG"},
                     {"file": "a/x2.jpg", "image_id": "x2", "reason": "not an image"}]
    assert len(open_region_store(tmp_path / "s")) == 0


def test_context_manager_commits_on_error(tmp_path):
    rows = make_rows(3)
    with pytest.raises(RuntimeError):
        with RegionStoreWriter(tmp_path / "s", region_policy=FIXED, rows_per_part=10) as w:
            w.add(rows[0])
            w.add(rows[1])
            raise RuntimeError("extractor crashed")
    assert open_region_store(tmp_path / "s").ids() == ["img0000", "img0001"]


def test_hdf5_plain_read_path_matches_mapped(tmp_path, monkeypatch):
    """Fixed-K HDF5 rows come from the mapped file; the h5py fallback must give the same rows."""
    from stores import hdf5_part

    rows = make_rows(5, seed=7)
    store = write_store(tmp_path / "s", rows, storage="hdf5", rows_per_part=3)
    mapped = open_region_store(store)
    assert mapped._part(0)._raw is not None  # the fast path is in use

    def no_map(self):
        self._raw = None

    monkeypatch.setattr(hdf5_part.HDF5PartReader, "_map_chunks", no_map)
    plain = open_region_store(store)
    assert plain._part(0)._raw is None
    for a, b, want in zip(mapped, plain, rows):
        assert_row_equal(a, want, "float16")
        assert_row_equal(b, want, "float16")
    assert_row_equal(plain.get("img0004"), rows[4], "float16")


def test_parquet_mapped_features_and_foreign_layout_fallback(tmp_path):
    """Fixed-K Parquet features come from the mapped file; a part laid out differently (several
    data pages per group, as another writer may produce) is detected and decoded by pyarrow."""
    import pyarrow.parquet as pq

    from itmflow.files import sha256_file
    from stores.block import Block
    from stores.parquet_part import block_to_table
    from stores.schema import StoreSettings, validate_row

    rows = make_rows(6, seed=12)
    store = write_store(tmp_path / "s", rows, rows_per_part=6)
    reader = open_region_store(store)
    assert reader._part(0)._raw is not None
    for got, want in zip(reader, rows):
        assert_row_equal(got, want, "float16")

    settings = StoreSettings.from_manifest(reader.manifest)
    clean = [validate_row(r, settings) for r in rows]
    table = block_to_table(Block.from_rows(clean, 2048, settings.dtype, settings.present_region_fields()),
                           settings)
    part = store / "data/part-00000.parquet"
    pq.write_table(table, part, row_group_size=6, compression="none", use_dictionary=False,
                   data_page_size=1, write_batch_size=1)  # one data page per value
    doc = json.loads((store / "manifest.json").read_text())
    doc["parts"][0].update(sha256=sha256_file(part), bytes=part.stat().st_size)
    (store / "manifest.json").write_text(json.dumps(doc))
    foreign = open_region_store(store)
    assert foreign._part(0)._raw is None
    for want in rows:
        assert_row_equal(foreign.get(want["image_id"]), want, "float16")
