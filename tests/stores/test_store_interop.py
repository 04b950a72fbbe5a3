"""Stores open without itmflow (issue #14 §3): schema-2 stores read with pandas, pyarrow.dataset,
DuckDB, polars and h5py give the values itmflow's reader gives (features bit for bit, boxes, ids).
Schema-1 stores still open, resume as v1, and `store convert` upgrades them to v2."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pyarrow.dataset as ds
import pytest

from stores import RegionStoreWriter, open_region_store
from stores.convert import convert_store
from stores.schema import SCHEMA_VERSION
from tests._support.store_fixtures import ADAPTIVE, DETECTOR, FIXED, assert_row_equal, make_rows, write_store

import duckdb  # noqa: E402  (the test extra installs them: a missing one is an error, not a skip)
import pandas as pd  # noqa: E402
import polars as pl  # noqa: E402

DIM = 16  # small features keep the per-value Python conversions of DuckDB / polars cheap


def _bits(values, dtype: str) -> np.ndarray:
    """Values as their stored bit patterns (float16 / float32 -> uint16 / uint32), exact."""
    arr = np.asarray(values, dtype=np.float64 if dtype == "float32" else None).astype(dtype)
    return arr.view(np.uint16 if dtype == "float16" else np.uint32)


def _expected(store):
    with open_region_store(store) as reader:
        return {row["image_id"]: row for row in reader}


def _check(got_ids, got_features, got_boxes, want: dict, dtype: str) -> None:
    assert sorted(got_ids) == sorted(want)
    for image_id, feats, boxes in zip(got_ids, got_features, got_boxes):
        row = want[image_id]
        flat = np.asarray(feats).reshape(-1)
        assert flat.size == row["num_regions"] * DIM
        assert np.array_equal(_bits(flat, dtype), row["features"].reshape(-1).view(_bits(flat, dtype).dtype)), image_id
        assert np.array_equal(np.asarray(boxes, dtype=np.float32).reshape(-1, 4), row["boxes"]), image_id


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("adaptive", [False, True], ids=["fixed", "variable"])
def test_parquet_store_reads_with_pandas_pyarrow_duckdb_polars(tmp_path, dtype, adaptive):
    rows = make_rows(7, dim=DIM, seed=3, adaptive=adaptive)
    store = write_store(tmp_path / "s", rows, dtype=dtype, adaptive=adaptive, rows_per_part=3)
    assert sorted(os.listdir(store)) == ["data", "manifest.json"]
    assert sorted(os.listdir(store / "data")) == [f"part-0000{i}.parquet" for i in range(3)]
    want = _expected(store)

    # pandas: the directory idiom
    df = pd.read_parquet(store / "data")
    _check(list(df["image_id"]), list(df["features"]), list(df["boxes"]), want, dtype)
    assert df["features"].iloc[0].dtype == np.dtype(dtype)  # numbers, not bytes

    # pyarrow.dataset: fixed K comes back as a [K, D] tensor
    table = ds.dataset(store / "data", format="parquet").to_table()
    def per_row(name):
        col = table.column(name).combine_chunks()
        if adaptive:
            return [np.asarray(v.values) for v in col]
        arr = col.to_numpy_ndarray()  # fixed K: arrow.fixed_shape_tensor -> [n, K, ...]
        assert arr.shape[:2] == (7, 36)
        return list(arr)

    feats = per_row("features")
    assert feats[0].dtype == np.dtype(dtype)
    _check(table.column("image_id").to_pylist(), feats, per_row("boxes"), want, dtype)

    # DuckDB: SQL over the glob (float16 arrives as DOUBLE, which holds every float16 exactly)
    res = duckdb.sql(f"select image_id, features, boxes from '{store}/data/*.parquet' order by image_id").fetchall()
    _check([r[0] for r in res], [r[1] for r in res], [r[2] for r in res], want, dtype)
    n = duckdb.sql(f"select count(*), sum(num_regions) from '{store}/data/*.parquet'").fetchall()[0]
    assert n == (7, sum(int(r["num_regions"]) for r in want.values()))

    # polars: lazy scan of the glob
    out = pl.scan_parquet(str(store / "data" / "*.parquet")).select("image_id", "features", "boxes").collect()
    _check(out["image_id"].to_list(), [np.asarray(v) for v in out["features"].to_list()],
           [np.asarray(v) for v in out["boxes"].to_list()], want, dtype)


@pytest.mark.parametrize("adaptive", [False, True], ids=["fixed", "variable"])
def test_hdf5_store_reads_with_h5py(tmp_path, adaptive):
    rows = make_rows(5, dim=DIM, seed=4, adaptive=adaptive)
    store = write_store(tmp_path / "s", rows, storage="hdf5", adaptive=adaptive, rows_per_part=3)
    want = _expected(store)
    ids, feats, boxes = [], [], []
    for part in sorted((store / "data").iterdir()):
        with h5py.File(part, "r") as f:  # the five lines of the docs
            names = f["image_id"].asstr()[()]          # str, not bytes
            offsets = f["offsets"][()]                 # row i owns regions offsets[i]:offsets[i+1]
            for i, image_id in enumerate(names):
                a, b = offsets[i], offsets[i + 1]
                ids.append(image_id)
                feats.append(f["features"][a:b])
                boxes.append(f["boxes"][a:b])
            assert all(isinstance(x, str) for x in f["file"].asstr()[()])
    assert all(isinstance(i, str) for i in ids)
    _check(ids, feats, boxes, want, "float16")


@pytest.mark.parametrize("storage", ["parquet", "hdf5"])
@pytest.mark.parametrize("adaptive", [False, True], ids=["fixed", "variable"])
def test_v1_store_opens_resumes_as_v1_and_converts_to_v2(tmp_path, storage, adaptive):
    rows = make_rows(7, seed=5, adaptive=adaptive)
    old = write_store(tmp_path / "v1", rows[:5], storage=storage, adaptive=adaptive, rows_per_part=3,
                      schema_version=1)
    ext = "parquet" if storage == "parquet" else "h5"
    assert json.loads((old / "manifest.json").read_text())["schema_version"] == 1
    assert (old / f"part-00000.{ext}").is_file() and not (old / "data").exists()
    # resuming a v1 store keeps its layout
    with RegionStoreWriter(old, storage=storage, region_policy=ADAPTIVE if adaptive else FIXED,
                           detector=DETECTOR, rows_per_part=3) as writer:
        assert writer.version == 1
        for row in rows[5:]:
            writer.add(row)
    assert (old / f"part-00002.{ext}").is_file() and not (old / "data").exists()
    with open_region_store(old) as reader:
        for got, want in zip(reader, rows):
            assert_row_equal(got, want, "float16")

    new = convert_store(old, tmp_path / "v2")
    doc = json.loads((new / "manifest.json").read_text())
    assert doc["schema_version"] == SCHEMA_VERSION == 2 and doc["storage"] == storage
    assert doc["extra"]["converted_from"]["schema_version"] == 1
    assert [p["file"] for p in doc["parts"]] == [f"data/part-0000{i}.{ext}" for i in range(3)]
    with open_region_store(new) as reader:
        assert reader.ids() == [r["image_id"] for r in rows]
        for got, want in zip(reader, rows):
            assert_row_equal(got, want, "float16")
            assert got["features"].tobytes() == want["features"].astype(np.float16).tobytes()


def test_v2_fixed_k_parquet_keeps_the_raw_page_path(tmp_path):
    rows = make_rows(40, seed=6)
    store = write_store(tmp_path / "s", rows, rows_per_part=40)
    with open_region_store(store) as reader:
        part = reader._part(0)
        assert part._raw is not None and part._raw.checksums is not None  # preadv + per-row checksums
        got = reader.read_features([rows[33]["image_id"], rows[2]["image_id"]])
    assert got.tobytes() == np.stack([rows[33]["features"], rows[2]["features"]]).astype(np.float16).tobytes()


def test_v2_damage_in_a_spot_checked_row_is_still_named(tmp_path):
    # Row 0 is one the mapping spot-checks against its checksum: damage there makes the part fall
    # back to pyarrow's decode, which still names the row, and the other rows still read.
    from itmflow.errors import StoreCorruptError

    rows = make_rows(5, seed=8)
    store = write_store(tmp_path / "s", rows, rows_per_part=5)
    part = store / "data" / "part-00000.parquet"
    data = bytearray(part.read_bytes())
    at = bytes(data).find(rows[0]["features"].astype(np.float16).tobytes()[:4096])
    assert at > 0
    data[at + 1001] ^= 0x10
    part.write_bytes(bytes(data))
    with open_region_store(store) as reader:
        assert reader._part(0)._raw is None  # fell back
        with pytest.raises(StoreCorruptError, match="row 0: features fail their checksum"):
            reader.get(rows[0]["image_id"])
        assert reader.get(rows[3]["image_id"])["features"].tobytes() == rows[3]["features"].astype(np.float16).tobytes()


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("adaptive", [False, True], ids=["fixed", "variable"])
def test_spliced_feature_pages_equal_pyarrows_own(tmp_path, dtype, adaptive):
    # stores.pqfeatures writes the feature pages from the rows' buffers; the file must read back as
    # the table pyarrow itself would have written, with every page CRC checked.
    import pyarrow.parquet as pq

    from stores import parquet_part
    from stores.block import Block
    from stores.schema import StoreSettings, validate_row

    settings = StoreSettings(feature_dim=DIM, feature_dtype=dtype, region_policy=ADAPTIVE if adaptive else FIXED)
    rows = [validate_row(r, settings) for r in make_rows(37, dim=DIM, seed=9, adaptive=adaptive)]
    block = Block.from_rows(rows, DIM, settings.dtype, settings.present_region_fields(), stack_features=False)
    spliced = tmp_path / "a.parquet"
    parquet_part._write_spliced(block, settings, spliced, 32 if not adaptive else 4)  # raises rather than falls back
    mine = pq.ParquetFile(spliced, page_checksum_verification=True).read()
    assert mine.equals(parquet_part.block_to_table(block, settings, 2))
    reader = parquet_part.ParquetPartReader(spliced, settings)
    assert (reader._raw is not None) == (not adaptive)  # fixed K: mapped for preadv
    for i in (0, 31, 32, 36):
        assert reader.features(i).tobytes() == rows[i]["features"].tobytes()


def test_store_convert_cli_upgrades_v1_without_to(tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli import app

    rows = make_rows(3, seed=10)
    old = write_store(tmp_path / "v1", rows, rows_per_part=2, schema_version=1)
    res = CliRunner().invoke(app, ["store", "convert", str(old), str(tmp_path / "v2")])
    assert res.exit_code == 0, res.output
    assert "schema version 2" in res.output
    assert (tmp_path / "v2" / "data" / "part-00000.parquet").is_file()
    with open_region_store(tmp_path / "v2") as reader:
        for got, want in zip(reader, rows):
            assert_row_equal(got, want, "float16")


@pytest.mark.parametrize("adaptive", [False, True], ids=["fixed", "variable"])
def test_parquet_store_reads_with_hugging_face_datasets(tmp_path, adaptive):
    """``datasets.load_dataset("parquet", ...)`` with the features of stores.interop.plain_schema
    (datasets refuses Arrow extension types: the fixed-K tensors are given as their storage)."""
    import datasets

    from stores.interop import plain_schema

    rows = make_rows(7, dim=DIM, seed=5, adaptive=adaptive)
    store = write_store(tmp_path / "s", rows, adaptive=adaptive, rows_per_part=3)
    want = _expected(store)
    features = datasets.Features.from_arrow_schema(plain_schema(store))
    got = datasets.load_dataset("parquet", data_files=str(store / "data" / "*.parquet"), split="train",
                                features=features, cache_dir=str(tmp_path / "hf-cache"))
    assert got.num_rows == len(rows)
    table = got.data.table  # the Arrow table datasets holds: the stored values, not a conversion
    _check(table["image_id"].to_pylist(), [np.asarray(v.values) for v in table["features"]],
           [np.asarray(v.values) for v in table["boxes"]], want, "float16")


def test_plain_schema_refuses_an_hdf5_store(tmp_path):
    from itmflow.errors import StoreError
    from stores.interop import plain_schema

    store = write_store(tmp_path / "s", make_rows(2, dim=DIM, seed=6), storage="hdf5")
    with pytest.raises(StoreError, match="hdf5 store"):
        plain_schema(store)
