"""Export -> import gives the same values for all four legacy formats; bad legacy input is named."""

from __future__ import annotations

import json

import base64
import io
import pickle
import zipfile

import numpy as np
import pytest

from itmflow.errors import InputFileError, StoreError, UnsafeCheckpointError
from tests._support.store_fixtures import make_rows, write_store
from stores import open_region_store
from stores.captions import write_caption_store
from stores.exports import export_store
from stores.imports import import_store, read_npz_safely


def _caption_store(path, rows, split="test"):
    caps = [{"caption_id": f"{r['image_id']}#{n}", "image_id": r["image_id"], "split": split,
             "raw": f"caption {n} of {r['image_id']}"} for r in rows for n in range(6)]
    return write_caption_store(path, caps, {"tokenizer": None})


def _compare(imported, original, fields):
    a = open_region_store(original)
    b = open_region_store(imported)
    assert sorted(b.ids()) == sorted(a.ids())
    for image_id in a.ids():
        ra, rb = a.get(image_id), b.get(image_id)
        assert rb["features"].dtype == np.float32
        np.testing.assert_array_equal(rb["features"], ra["features"].astype(np.float32))
        for name in fields:
            if isinstance(ra[name], np.ndarray):
                np.testing.assert_array_equal(rb[name], ra[name], err_msg=name)
            else:
                assert rb[name] == ra[name], name
    return b


def test_scan_precomp_round_trip_with_captions(tmp_path):
    rows = make_rows(4, seed=1)
    store = write_store(tmp_path / "s", rows, dtype="float16")
    caps = _caption_store(tmp_path / "caps", rows)
    summary = export_store(store, "scan-precomp", tmp_path / "precomp", captions=caps, split="testall")
    assert summary["rows"] == 4
    ims = np.load(tmp_path / "precomp" / "testall_ims.npy", mmap_mode="r")
    assert ims.shape == (4, 36, 2048) and ims.dtype == np.float32
    lines = (tmp_path / "precomp" / "testall_caps.txt").read_text().splitlines()
    assert len(lines) == 20 and lines[5] == "caption 0 of img0001" and lines[4] == "caption 4 of img0000"
    source = import_store(tmp_path / "precomp", "scan-precomp", tmp_path / "back", split="testall")
    back = _compare(tmp_path / "back", store, ["image_id"])
    assert back.manifest["region_policy"] == {"kind": "fixed", "k": 36}
    assert "boxes" in back.manifest["absent_fields"]
    assert source.captions[:2] == [("img0000#0", "img0000", "caption 0 of img0000"),
                                   ("img0000#1", "img0000", "caption 1 of img0000")]
    assert source.images[0] == ("img0000", "img0000", "test")


def test_scan_precomp_refuses_variable_k(tmp_path):
    store = write_store(tmp_path / "s", make_rows(3, adaptive=True), adaptive=True)
    with pytest.raises(StoreError, match=r"variable number of regions.*scan-precomp.*tern, butd-tsv or milvlg"):
        export_store(store, "scan-precomp", tmp_path / "out")
    assert not (tmp_path / "out" / "train_ims.npy").exists()


@pytest.mark.parametrize("adaptive", [False, True])
def test_tern_round_trip(tmp_path, adaptive):
    store = write_store(tmp_path / "s", make_rows(3, adaptive=adaptive), adaptive=adaptive, dtype="float32")
    export_store(store, "tern", tmp_path / "tern")
    with np.load(tmp_path / "tern" / "bu_att" / "img0001.npz") as z:
        assert z["feat"].dtype == np.float32 and z["feat"].shape[1] == 2048
    assert np.load(tmp_path / "tern" / "bu_box" / "img0001.npy").shape[1] == 4
    # TERN's files carry no image size: taken from a COCO annotation file (else refused)
    images = [{"id": r["image_id"], "file_name": r["image_id"] + ".jpg", "width": int(r["width"]),
               "height": int(r["height"])} for r in open_region_store(store)]
    (tmp_path / "coco.json").write_text(json.dumps({"images": images}), encoding="utf-8")
    import_store(tmp_path / "tern", "tern", tmp_path / "back", captions_json=tmp_path / "coco.json")
    _compare(tmp_path / "back", store, ["boxes", "num_regions", "width", "height", "geometry"])


@pytest.mark.parametrize("adaptive", [False, True])
def test_butd_tsv_round_trip(tmp_path, adaptive):
    store = write_store(tmp_path / "s", make_rows(3, adaptive=adaptive), adaptive=adaptive)
    export_store(store, "butd-tsv", tmp_path / "tsv", split="val")
    line = (tmp_path / "tsv" / "val.tsv").read_text().splitlines()[0].split("\t")
    first = open_region_store(store).get("img0000")
    assert line[:4] == ["img0000", str(first["width"]), str(first["height"]), str(first["num_regions"])]
    import_store(tmp_path / "tsv" / "val.tsv", "butd-tsv", tmp_path / "back")
    back = _compare(tmp_path / "back", store, ["boxes", "width", "height", "num_regions", "geometry"])
    assert back.manifest["region_policy"]["kind"] == ("variable" if adaptive else "fixed")


def test_butd_tsv_bad_base64_length_names_file_and_line(tmp_path):
    store = write_store(tmp_path / "s", make_rows(3))
    export_store(store, "butd-tsv", tmp_path / "tsv")
    path = tmp_path / "tsv" / "train.tsv"
    lines = path.read_text().splitlines()
    fields = lines[1].split("\t")
    fields[5] = base64.b64encode(base64.b64decode(fields[5])[:-8]).decode()  # two floats short
    lines[1] = "\t".join(fields)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputFileError, match=r"train.tsv line 2 \(image_id 'img0001'\): field 'features' decodes"
                                             r" to 294904 bytes, expected 294912"):
        import_store(path, "butd-tsv", tmp_path / "back", rows_per_part=1)
    # The row before the bad one was committed and stays readable.
    assert open_region_store(tmp_path / "back").ids() == ["img0000"]
    lines[1] = "img0001\t10\t10\t36"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputFileError, match=r"train.tsv line 2: 4 tab-separated fields, expected 6"):
        import_store(path, "butd-tsv", tmp_path / "back2")


def test_milvlg_round_trip_with_labels(tmp_path):
    store = write_store(tmp_path / "s", make_rows(3, adaptive=True), adaptive=True)
    export_store(store, "milvlg-npz", tmp_path / "npz")
    data = read_npz_safely(tmp_path / "npz" / "img0002.npz")
    assert data["info"]["image_id"] == "img0002" and data["info"]["objects_id"].dtype == np.int64
    assert int(data["num_bbox"]) == data["x"].shape[0]
    import_store(tmp_path / "npz", "milvlg-npz", tmp_path / "back")
    _compare(tmp_path / "back", store, ["boxes", "width", "height", "num_regions", "geometry", "object_ids",
                                       "object_conf", "attr_ids", "attr_conf"])


class _Evil:
    def __reduce__(self):
        # os.system, not print: Ray replaces builtins.print once a session has started Ray.
        import os

        return (os.system, ("echo pwned",))


def test_milvlg_hostile_pickle_refused(tmp_path):
    bio = io.BytesIO()
    np.lib.format.write_array(bio, np.array(1.0))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for key in ("x", "bbox", "num_bbox", "image_h", "image_w"):
            z.writestr(f"{key}.npy", bio.getvalue())
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "|O", "fortran_order": False, "shape": ()})
        z.writestr("info.npy", header.getvalue() + pickle.dumps(_Evil()))
    (tmp_path / "npz").mkdir()
    (tmp_path / "npz" / "evil.npz").write_bytes(buf.getvalue())
    with pytest.raises(UnsafeCheckpointError, match="system"):
        read_npz_safely(tmp_path / "npz" / "evil.npz")
    with pytest.raises(UnsafeCheckpointError):
        import_store(tmp_path / "npz", "milvlg-npz", tmp_path / "back")


def test_export_needs_boxes(tmp_path):
    rows = make_rows(2, labels=False)
    for r in rows:
        r.pop("boxes"), r.pop("geometry")
    store = write_store(tmp_path / "s", rows, absent_fields=("boxes", "geometry", "object_ids", "object_conf",
                                                             "attr_ids", "attr_conf"))
    with pytest.raises(StoreError, match="has no boxes"):
        export_store(store, "butd-tsv", tmp_path / "o")
