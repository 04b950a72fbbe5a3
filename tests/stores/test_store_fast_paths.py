"""The fast paths of the region store: batched feature reads, raw HDF5 chunk writes, the
read-ahead of the next part, and commits finished in the background."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

import stores.writer as writer_mod
from itmflow.errors import DiskFullError, StoreError
from tests._support.store_fixtures import DETECTOR, FIXED, assert_row_equal, make_rows, write_store
from stores import RegionStoreWriter, open_region_store


def test_batched_reads_cross_row_group_breaks(tmp_path):
    """Rows read several per ``preadv`` equal rows read one by one, across row-group gaps."""
    rows = make_rows(23, seed=3)
    store = write_store(tmp_path / "s", rows, rows_per_part=23, row_group_rows=5)
    reader = open_region_store(store)
    raw = reader._part(0)._raw
    assert raw is not None
    gaps = np.diff(np.array(raw.offsets)) != raw.nbytes
    assert gaps.sum() == 4  # five row groups: the features of each group lie apart from the next
    batch = raw.read(0, 23)
    for i in range(23):
        np.testing.assert_array_equal(batch[i], raw(i))
        assert batch[i].base is not batch[(i + 1) % 23].base  # every row is its own array
    for got, want in zip(reader, rows):
        assert_row_equal(got, want, "float16")


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_hdf5_parts_read_back_through_h5py(tmp_path, dtype):
    """Fixed-K HDF5 features are written straight into their chunks; libhdf5 reads the same values."""
    rows = make_rows(7, seed=9)
    store = write_store(tmp_path / "s", rows, storage="hdf5", dtype=dtype, rows_per_part=7)
    with h5py.File(store / "data/part-00000.h5", "r") as fid:
        ds = fid["features"]
        assert ds.chunks == (36, 2048) and ds.dtype == np.dtype(dtype)
        stacked = np.concatenate([r["features"] for r in rows]).astype(dtype)
        np.testing.assert_array_equal(ds[()], stacked)
        np.testing.assert_array_equal(fid["boxes"][()], np.concatenate([r["boxes"] for r in rows]))
    for got, want in zip(open_region_store(store), rows):
        assert_row_equal(got, want, dtype)


def test_iteration_over_many_parts_keeps_order_and_stops_cleanly(tmp_path):
    rows = make_rows(11, seed=4)
    for storage in ("parquet", "hdf5"):
        store = write_store(tmp_path / storage, rows, storage=storage, rows_per_part=2)
        reader = open_region_store(store)
        assert reader.num_parts == 6
        assert [r["image_id"] for r in reader] == [r["image_id"] for r in rows]
        it = iter(reader)
        first = [next(it)["image_id"] for _ in range(3)]
        it.close()  # stopping early shuts the read-ahead thread down
        assert first == [r["image_id"] for r in rows[:3]]
        assert_row_equal(reader.get("img0009"), rows[9], "float16")


def test_background_commit_error_surfaces_and_rows_stay_pending(tmp_path, monkeypatch):
    rows = make_rows(6, seed=2)
    store = tmp_path / "s"
    real_fsync = writer_mod.os.fsync
    failing = {"on": False}

    def flaky_fsync(fd):
        if failing["on"]:
            failing["on"] = False
            raise OSError(28, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(writer_mod.os, "fsync", flaky_fsync)
    writer = RegionStoreWriter(store, region_policy=FIXED, detector=DETECTOR, rows_per_part=2)
    failing["on"] = True  # the next fsync anywhere (os is one module) is part 0's
    writer.add(rows[0])
    writer.add(rows[1])  # part 0 is handed to the background, whose fsync fails
    writer.add(rows[2])
    with pytest.raises(StoreError, match="duplicate image_id 'img0002'"):
        writer.add(rows[2])
    with pytest.raises(DiskFullError, match="No space left"):
        writer.add(rows[3])  # the next commit reports the failure; rows 2 and 3 stay pending
    assert writer.committed_ids() == set()
    writer.wait()
    writer.add(rows[4])  # commits rows 2, 3 and 4 (now three pending: the part boundary moved)
    writer.close()
    reader = open_region_store(store)
    assert reader.ids() == ["img0002", "img0003", "img0004"]
    assert not [n for n in os.listdir(store) + os.listdir(store / "data") if n.startswith(".")]  # the failed part left no debris
    resumed = RegionStoreWriter(store, region_policy=FIXED, detector=DETECTOR, rows_per_part=2)
    with resumed:
        for row in rows:
            if row["image_id"] not in resumed.committed_ids():
                resumed.add(row)
    assert sorted(open_region_store(store).ids()) == sorted(r["image_id"] for r in rows)


def test_ids_of_a_part_being_finished_are_refused_and_durable_after_wait(tmp_path):
    rows = make_rows(3, seed=6)
    writer = RegionStoreWriter(tmp_path / "s", region_policy=FIXED, detector=DETECTOR, rows_per_part=2)
    writer.add(rows[0])
    writer.add(rows[1])
    with pytest.raises(StoreError, match="already committed in data/part-00000.parquet"):
        writer.add(rows[0])
    writer.wait()
    assert writer.committed_ids() == {"img0000", "img0001"}
    assert open_region_store(tmp_path / "s").ids() == ["img0000", "img0001"]
    writer.add(rows[2])
    writer.close()
    with pytest.raises(StoreError, match="closed"):
        writer.add(rows[2])
    assert open_region_store(tmp_path / "s").ids() == ["img0000", "img0001", "img0002"]
