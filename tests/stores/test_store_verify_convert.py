"""verify catches damage and names the part; convert parquet <-> hdf5 keeps every value bit for bit."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from itmflow.files import sha256_file

from tests._support.store_fixtures import assert_row_equal, make_rows, write_store
from stores import open_region_store
from stores.convert import convert_store
from stores.integrity import CHECKSUM_FIELD, feature_checksum
from stores.verify import verify_store


@pytest.mark.parametrize("storage", ["parquet", "hdf5"])
def test_verify_sound_and_flipped_byte(tmp_path, storage):
    store = write_store(tmp_path / "s", make_rows(6), storage=storage, rows_per_part=3)
    report = verify_store(store)
    assert report.ok and report.parts_checked == 2 and report.rows_checked == 6
    ext = "parquet" if storage == "parquet" else "h5"
    part = store / f"data/part-00001.{ext}"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0x40  # inside the feature bytes
    part.write_bytes(bytes(data))
    report = verify_store(store)
    assert not report.ok
    assert {f for f, _ in report.problems} == {f"data/part-00001.{ext}"}
    assert "sha256" in report.problems[0][1]
    # the readers verify uses check the feature checksums too, and name the row
    assert any("features fail their checksum" in m for _, m in report.problems[1:]), report.problems


def test_verify_names_nonfinite_row_duplicates_and_truncation(tmp_path):
    rows = make_rows(4)
    store = write_store(tmp_path / "s", rows, rows_per_part=2)
    # Rewrite part 1 with a NaN feature and a duplicate id, then fix up the feature checksum and the
    # manifest hashes so only the content checks can catch it (as if someone edited the store and
    # its manifest).
    bad = make_rows(2, seed=9)
    bad[0]["image_id"] = rows[0]["image_id"]
    other = write_store(tmp_path / "o", bad, rows_per_part=2)
    table = pq.read_table(other / "data/part-00000.parquet")
    ftype = table.schema.field("features").type  # v2: arrow.fixed_shape_tensor<halffloat>[K, D]
    feats = table.column("features").combine_chunks().to_numpy_ndarray().copy()
    feats[1, 0, 0] = np.nan
    col = pa.ExtensionArray.from_storage(ftype, pa.FixedSizeListArray.from_arrays(
        pa.array(feats.reshape(-1)), ftype.storage_type.list_size))
    table = table.set_column(table.schema.get_field_index("features"), table.schema.field("features"), col)
    sums = pa.array([feature_checksum(f.view(np.uint8)) for f in feats], type=pa.uint64())
    table = table.set_column(table.schema.get_field_index(CHECKSUM_FIELD), table.schema.field(CHECKSUM_FIELD), sums)
    pq.write_table(table, store / "data/part-00001.parquet", row_group_size=8, use_dictionary=False,
                   compression="none")
    mpath = store / "manifest.json"
    doc = json.loads(mpath.read_text())
    doc["parts"][1]["sha256"] = sha256_file(store / "data/part-00001.parquet")
    doc["parts"][1]["bytes"] = (store / "data/part-00001.parquet").stat().st_size
    mpath.write_text(json.dumps(doc))
    report = verify_store(store)
    messages = [m for f, m in report.problems if f == "data/part-00001.parquet"]
    assert any("row 0: duplicate image_id 'img0000'" in m for m in messages), messages
    assert any("row 1 (image_id 'img0001'): non-finite" in m for m in messages), messages

    data = (store / "data/part-00000.parquet").read_bytes()
    (store / "data/part-00000.parquet").write_bytes(data[:-100])
    report = verify_store(store)
    assert any(f == "data/part-00000.parquet" and "bytes" in m for f, m in report.problems)
    (store / "data/part-00000.parquet").unlink()
    report = verify_store(store)
    assert ("data/part-00000.parquet", "missing (named in the manifest); restore it or re-extract its images") \
        in report.problems


def test_verify_reports_debris_as_warning(tmp_path):
    store = write_store(tmp_path / "s", make_rows(2))
    (store / "data/part-00009.parquet").write_bytes(b"junk")
    report = verify_store(store)
    assert report.ok and report.warnings[0][0] == "data/part-00009.parquet"


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("adaptive", [False, True])
def test_convert_bit_for_bit(tmp_path, dtype, adaptive):
    rows = make_rows(7, adaptive=adaptive, seed=11)
    src = write_store(tmp_path / "p", rows, storage="parquet", dtype=dtype, adaptive=adaptive, rows_per_part=3)
    convert_store(src, tmp_path / "h", to="hdf5")
    convert_store(tmp_path / "h", tmp_path / "p2", to="parquet")
    a, b, c = (open_region_store(tmp_path / n) for n in ("p", "h", "p2"))
    assert b.manifest["storage"] == "hdf5" and c.manifest["storage"] == "parquet"
    assert [p["rows"] for p in b.manifest["parts"]] == [3, 3, 1]
    for key in ("feature_dim", "feature_dtype", "region_policy", "detector", "absent_fields"):
        assert a.manifest[key] == b.manifest[key] == c.manifest[key], key
    for ra, rb, rc in zip(a, b, c):
        for name, value in ra.items():
            if isinstance(value, np.ndarray):
                for other in (rb[name], rc[name]):
                    assert other.dtype == value.dtype and other.tobytes() == value.tobytes(), name
            else:
                assert rb[name] == value == rc[name], name
    for got, want in zip(b, rows):
        assert_row_equal(got, want, dtype)
    # Same rows, same writer: the round-tripped Parquet parts are byte-identical to the originals.
    for pa_, pc in zip(a.manifest["parts"], c.manifest["parts"]):
        assert pa_["sha256"] == pc["sha256"]
