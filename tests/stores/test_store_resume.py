"""Resume after a simulated crash: debris removed, committed ids skipped, no duplicates, same bytes."""

from __future__ import annotations

import os
import shutil

import pytest

import stores.writer as writer_mod
from itmflow.errors import StoreCorruptError, StoreError
from tests._support.store_fixtures import DETECTOR, FIXED, assert_row_equal, make_rows, write_store
from stores import RegionStoreWriter, open_region_store


@pytest.mark.parametrize("storage", ["parquet", "hdf5"])
def test_resume_after_crash(tmp_path, storage, monkeypatch):
    rows = make_rows(10, seed=5)
    store = tmp_path / "s"
    real_replace = os.replace
    calls = {"n": 0}

    def crashing_replace(src, dst):
        # The second part's rename never happens: the process "dies" after writing the temp file.
        if str(dst).endswith(("part-00001.parquet", "part-00001.h5")):
            raise KeyboardInterrupt("simulated crash")
        calls["n"] += 1
        return real_replace(src, dst)

    monkeypatch.setattr(writer_mod.os, "replace", crashing_replace)
    writer = RegionStoreWriter(store, storage=storage, region_policy=FIXED, detector=DETECTOR, rows_per_part=4)
    with pytest.raises(KeyboardInterrupt):
        for row in rows:
            writer.add(row)
        writer.close()  # the background commit's crash surfaces here at the latest
    monkeypatch.setattr(writer_mod.os, "replace", real_replace)
    ext = ".parquet" if storage == "parquet" else ".h5"
    # Leave more debris: a stray part file the manifest does not name (crash between rename and
    # manifest rewrite) next to the temp file the crash left.
    shutil.copy(store / f"data/part-00000{ext}", store / f"data/part-00007{ext}")
    assert any(n.startswith(".part-00001") for n in os.listdir(store / "data"))

    resumed = RegionStoreWriter(store, storage=storage, region_policy=FIXED, detector=DETECTOR, rows_per_part=4)
    assert sorted(resumed.removed_debris) == sorted([f"data/part-00007{ext}"] + [
        n for n in resumed.removed_debris if n.startswith("data/.part-00001")])
    assert len(resumed.removed_debris) == 2
    assert resumed.committed_ids() == {r["image_id"] for r in rows[:4]}
    with resumed:
        for row in rows:
            if row["image_id"] not in resumed.committed_ids():
                resumed.add(row)
    assert sorted(os.listdir(store)) == ["data", "manifest.json"]
    names = sorted(os.listdir(store / "data"))
    assert names == [f"part-00000{ext}", f"part-00001{ext}", f"part-00002{ext}"]
    reader = open_region_store(store)
    assert reader.ids() == [r["image_id"] for r in rows]  # no duplicates, commit order kept
    for got, want in zip(reader, rows):
        assert_row_equal(got, want, "float16")
    # Determinism: the resumed store's parts are byte-identical to a run in one go.
    one_go = write_store(tmp_path / "one", rows, storage=storage, rows_per_part=4)
    for name in names[1:]:
        assert (store / "data" / name).read_bytes() == (one_go / "data" / name).read_bytes(), name


def test_truncated_committed_part_is_not_touched(tmp_path):
    store = write_store(tmp_path / "s", make_rows(6), rows_per_part=3)
    part = store / "data/part-00001.parquet"
    data = part.read_bytes()
    part.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreCorruptError, match=r"part-00001.parquet has \d+ bytes, the manifest says"):
        RegionStoreWriter(store, region_policy=FIXED, detector=DETECTOR)
    assert part.read_bytes() == data[: len(data) // 2]  # refused, removed nothing
    assert (store / "data/part-00000.parquet").exists()
    with pytest.raises(StoreCorruptError, match="part-00001.parquet"):
        list(open_region_store(store))


def test_parts_without_manifest_are_not_deleted(tmp_path):
    store = write_store(tmp_path / "s", make_rows(2))
    (store / "manifest.json").unlink()
    with pytest.raises(StoreError, match="no manifest.json; nothing was deleted"):
        RegionStoreWriter(store, region_policy=FIXED, detector=DETECTOR)
    assert (store / "data/part-00000.parquet").exists()
