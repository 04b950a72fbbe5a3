"""Damage is caught where data is read: a flipped byte in a committed part makes iteration, lookup,
the torch Dataset and exports raise StoreCorruptError naming the store and the part; untouched
stores (and parts written before checksums existed) read exactly as written."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest

from itmflow.errors import StoreCorruptError
from itmflow.files import sha256_file
from tests._support.store_fixtures import assert_row_equal, make_rows, write_store
from stores import RegionDataset, open_region_store
from stores.exports import export_store
from stores.integrity import CHECKSUM_FIELD, CRC_ATTR, feature_checksum

EXT = {"parquet": "parquet", "hdf5": "h5"}


def _flip(part: Path, needle: bytes, skip: int) -> None:
    """Flip one bit of the byte ``skip`` bytes after where ``needle`` (a row's stored bytes) starts."""
    data = bytearray(part.read_bytes())
    at = data.find(needle)
    assert at >= 0 and data.find(needle, at + 1) < 0, "the row's bytes must occur exactly once"
    data[at + skip] ^= 0x04
    part.write_bytes(bytes(data))


def _assert_names_store_and_part(exc: pytest.ExceptionInfo, store: Path, part: str) -> None:
    msg = str(exc.value)
    assert str(store) in msg and part in msg and "itmflow store verify" in msg, msg
    assert "\n" not in msg


def _every_reader_raises(store: Path, part: str, damaged_id: str, index: int, fixed: bool, tmp_path: Path,
                         features: bool = True) -> None:
    with pytest.raises(StoreCorruptError) as exc:
        for _ in open_region_store(store):
            pass
    _assert_names_store_and_part(exc, store, part)
    with pytest.raises(StoreCorruptError) as exc:
        open_region_store(store).get(damaged_id)
    _assert_names_store_and_part(exc, store, part)
    if features:  # read_features reads nothing else (and checks what it reads)
        with pytest.raises(StoreCorruptError) as exc:
            open_region_store(store).read_features([damaged_id])
        _assert_names_store_and_part(exc, store, part)
    with pytest.raises(StoreCorruptError) as exc:
        RegionDataset(store)[index]
    _assert_names_store_and_part(exc, store, part)
    for fmt in (["scan-precomp", "tern"] if fixed else ["tern"]):
        out = tmp_path / f"export-{fmt}"
        with pytest.raises(StoreCorruptError) as exc:
            export_store(store, fmt, out)
        _assert_names_store_and_part(exc, store, part)
        assert not [p for p in out.rglob("*") if ".tmp-" in p.name]  # no half-written file left


@pytest.mark.parametrize("adaptive", [False, True], ids=["fixed", "variable"])
@pytest.mark.parametrize("storage", ["parquet", "hdf5"])
def test_flipped_feature_byte_is_caught_by_every_reader(tmp_path, storage, adaptive):
    rows = make_rows(6, seed=21, adaptive=adaptive)
    store = write_store(tmp_path / "s", rows, storage=storage, adaptive=adaptive, rows_per_part=3)
    part = f"data/part-00001.{EXT[storage]}"
    damaged = rows[4]
    _flip(store / part, damaged["features"].astype(np.float16).tobytes()[:4096], 1001)

    _every_reader_raises(store, part, damaged["image_id"], 4, not adaptive, tmp_path)
    with pytest.raises(StoreCorruptError, match="row 1: features fail their checksum"):
        open_region_store(store).get(damaged["image_id"])
    # Only the damaged row fails: the others, in the same part and in the other one, still read.
    reader = open_region_store(store)
    for i in (0, 3, 5):
        assert_row_equal(reader.get(rows[i]["image_id"]), rows[i], "float16")


@pytest.mark.parametrize("storage", ["parquet", "hdf5"])
def test_flipped_byte_in_a_small_column_is_caught(tmp_path, storage):
    rows = make_rows(6, seed=22)
    store = write_store(tmp_path / "s", rows, storage=storage, rows_per_part=3)
    part = f"data/part-00001.{EXT[storage]}"
    _flip(store / part, rows[4]["boxes"].tobytes()[:64], 5)  # boxes of row 1 of part 1
    _every_reader_raises(store, part, rows[4]["image_id"], 4, True, tmp_path, features=False)
    assert_row_equal(open_region_store(store).get(rows[0]["image_id"]), rows[0], "float16")


@pytest.mark.parametrize("storage", ["parquet", "hdf5"])
def test_flipped_byte_in_the_ids_refuses_to_open(tmp_path, storage):
    rows = make_rows(4, seed=23)
    store = write_store(tmp_path / "s", rows, storage=storage, rows_per_part=2)
    part = f"data/part-00001.{EXT[storage]}"
    # The id's value (Parquet: PLAIN, after its 4-byte length, as min/max statistics hold copies;
    # HDF5: NUL-padded in the global heap, as the `file` values hold it too).
    needle = len("img0003").to_bytes(4, "little") + b"img0003" if storage == "parquet" else b"img0003\0"
    _flip(store / part, needle, needle.index(b"img") + 6)  # img0003 -> img0007 on the old code
    with pytest.raises(StoreCorruptError) as exc:
        open_region_store(store)
    _assert_names_store_and_part(exc, store, part)


@pytest.mark.parametrize("storage", ["parquet", "hdf5"])
def test_untouched_store_carries_checksums_and_reads_as_written(tmp_path, storage):
    rows = make_rows(7, seed=24)
    store = write_store(tmp_path / "s", rows, storage=storage, rows_per_part=4)
    want_sums = [feature_checksum(r["features"].astype(np.float16)) for r in rows]
    sums = []
    for p in (0, 1):
        path = store / f"data/part-0000{p}.{EXT[storage]}"
        if storage == "parquet":
            sums += pq.read_table(path, columns=[CHECKSUM_FIELD]).column(0).to_pylist()
        else:
            with h5py.File(path, "r") as fid:
                sums += fid[CHECKSUM_FIELD][()].tolist()
                assert all(CRC_ATTR in fid[n].attrs for n in fid if n != "features")
    assert sums == want_sums

    reader = open_region_store(store)
    assert all(reader._part(p)._raw.checksums is not None for p in (0, 1))  # the fast path checks
    for got, want in zip(reader, rows, strict=True):
        assert_row_equal(got, want, "float16")
    for want in rows:
        assert_row_equal(reader.get(want["image_id"]), want, "float16")
    np.testing.assert_array_equal(reader.read_features([r["image_id"] for r in rows]),
                                  np.stack([r["features"].astype(np.float16) for r in rows]))
    ds = RegionDataset(store)
    np.testing.assert_array_equal(ds[5]["features"].numpy(), rows[5]["features"].astype(np.float16))
    export_store(store, "scan-precomp", tmp_path / "out")
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "train_ims.npy"),
                                  np.stack([r["features"].astype(np.float16) for r in rows]).astype(np.float32))


def _strip_checksums(store: Path, storage: str) -> None:
    """Make every part look like one written before checksums existed, and re-record it."""
    doc = json.loads((store / "manifest.json").read_text())
    for entry in doc["parts"]:
        path = store / entry["file"]
        if storage == "parquet":
            table = pq.read_table(path)
            table = table.drop_columns([CHECKSUM_FIELD])
            pq.write_table(table, path, row_group_size=32, compression="none", use_dictionary=False,
                           write_statistics=["image_id"], store_schema=True, data_page_size=32 * 147456 + (1 << 20),
                           write_batch_size=1024)  # the writer's options before this change
        else:
            with h5py.File(path, "r+") as fid:
                del fid[CHECKSUM_FIELD]
                for name in fid:
                    if CRC_ATTR in fid[name].attrs:
                        del fid[name].attrs[CRC_ATTR]
        entry.update(sha256=sha256_file(path), bytes=path.stat().st_size)
    (store / "manifest.json").write_text(json.dumps(doc))


@pytest.mark.parametrize("storage", ["parquet", "hdf5"])
def test_parts_without_checksums_still_read(tmp_path, storage):
    rows = make_rows(5, seed=25)
    store = write_store(tmp_path / "s", rows, storage=storage, rows_per_part=3)
    _strip_checksums(store, storage)
    reader = open_region_store(store)
    part = reader._part(0)
    assert part._raw is not None and part._raw.checksums is None  # fast path, nothing to check
    for got, want in zip(reader, rows, strict=True):
        assert_row_equal(got, want, "float16")
    assert_row_equal(reader.get("img0004"), rows[4], "float16")
    assert RegionDataset(store)[1]["image_id"] == "img0001"


@pytest.mark.parametrize("storage", ["parquet", "hdf5"])
def test_damage_far_into_a_part_raises_at_its_row(tmp_path, storage):
    """Iteration reads features several rows per call; the rows before the damaged one are still
    handed out and the error comes at the damaged row (not at the start of its batch)."""
    rows = make_rows(90, seed=26, dim=64)
    store = write_store(tmp_path / "s", rows, storage=storage, rows_per_part=90)
    assert [r["image_id"] for r in open_region_store(store)] == [r["image_id"] for r in rows]

    _flip(store / f"data/part-00000.{EXT[storage]}", rows[77]["features"].astype(np.float16).tobytes()[:512], 300)
    got = []
    with pytest.raises(StoreCorruptError, match="row 77: features fail their checksum") as exc:
        for row in open_region_store(store):
            got.append(row["image_id"])
    assert got == [r["image_id"] for r in rows[:77]]
    _assert_names_store_and_part(exc, store, f"data/part-00000.{EXT[storage]}")


def test_one_pass_copy_and_checksum_matches_the_checksum_at_any_alignment():
    """The compiled copy + sum (stores.rawrows.copy_and_checksum) returns feature_checksum of the
    bytes it copies, for rows starting at every offset modulo 8 in the file's mapping."""
    from stores.rawrows import copy_and_checksum

    kernel = copy_and_checksum()
    assert kernel is not None, "numba is a dependency: the one-pass path must be available"
    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, 8 * 1000 + 16, dtype=np.uint8)
    for shift in range(8):
        src = data[shift:shift + 8 * 1000]
        dst = np.empty(1000, dtype=np.uint64)
        got = int(kernel(src.view(np.uint64), dst))
        assert got == feature_checksum(src)
        assert dst.view(np.uint8).tobytes() == src.tobytes()
    src = data[:8 * 1000].copy()
    before = int(kernel(src.view(np.uint64), np.empty(1000, dtype=np.uint64)))
    src[4321] ^= 0x10
    assert int(kernel(src.view(np.uint64), np.empty(1000, dtype=np.uint64))) != before


@pytest.mark.parametrize("one_pass", [True, False], ids=["one-pass", "copy-then-sum"])
@pytest.mark.parametrize("storage", ["parquet", "hdf5"])
def test_both_sequential_read_paths_read_exactly_and_catch_damage(tmp_path, storage, one_pass, monkeypatch):
    """Iteration copies rows out of a mapping and sums them in one pass (numba), or without numba
    copies 4 rows per preadv and sums them after: both hand out the stored rows and stop at a
    damaged one."""
    import stores.rawrows

    if not one_pass:
        monkeypatch.setattr(stores.rawrows, "copy_and_checksum", lambda: None)
    rows = make_rows(40, seed=27, dim=64)
    store = write_store(tmp_path / "s", rows, storage=storage, rows_per_part=20)
    for got, want in zip(open_region_store(store), rows, strict=True):
        assert_row_equal(got, want, "float16")
        assert got["features"].flags.writeable and got["features"].flags.owndata  # a fresh array
    _flip(store / f"data/part-00001.{EXT[storage]}", rows[33]["features"].astype(np.float16).tobytes()[:512], 40)
    seen = []
    with pytest.raises(StoreCorruptError, match="row 13: features fail their checksum"):
        for row in open_region_store(store):
            seen.append(row["image_id"])
    assert seen == [r["image_id"] for r in rows[:33]]
