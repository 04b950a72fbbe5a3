"""An image whose detector kept fewer regions than a fixed-K store's K is kept: the row is padded to
K (features / boxes / geometry / confidences zero, label ids -1) and ``num_regions`` holds the real
count; readers, verify, convert, the collate mask, the models and every export treat it consistently."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch

from stores import collate_regions, open_region_store
from stores.convert import convert_store
from stores.dataset import RegionDataset
from stores.exports import export_store
from stores.schema import PAD_ID
from stores.verify import verify_store
from tests._support.store_fixtures import make_rows, write_store

FEW = 5


def _rows():
    rows = make_rows(3)
    short = rows[1]
    for name in ("boxes", "geometry", "features", "object_ids", "object_conf", "attr_ids", "attr_conf"):
        short[name] = short[name][:FEW]
    short["num_regions"] = FEW
    return rows


@pytest.mark.parametrize("storage", ["parquet", "hdf5"])
def test_short_row_is_padded_and_read_back(tmp_path, storage):
    rows = _rows()
    store = write_store(tmp_path / "s", rows, storage=storage, dtype="float32")
    with open_region_store(store) as reader:
        got = reader.get("img0001")
        assert got["num_regions"] == FEW
        assert got["features"].shape == (36, 2048) and got["boxes"].shape == (36, 4)
        np.testing.assert_array_equal(got["features"][:FEW], rows[1]["features"])
        assert not got["features"][FEW:].any() and not got["boxes"][FEW:].any()
        assert not got["geometry"][FEW:].any() and not got["object_conf"][FEW:].any()
        assert (got["object_ids"][FEW:] == PAD_ID).all() and (got["attr_ids"][FEW:] == PAD_ID).all()
        assert reader.read_features(["img0000", "img0001"]).shape == (2, 36, 2048)
        assert [r["num_regions"] for r in reader] == [36, FEW, 36]
    assert verify_store(store).ok
    other = convert_store(store, tmp_path / "c", to="hdf5" if storage == "parquet" else "parquet")
    with open_region_store(other) as reader:
        assert reader.get("img0001")["num_regions"] == FEW
        assert reader.get("img0001")["features"].shape == (36, 2048)


def test_collate_masks_the_padding(tmp_path):
    store = write_store(tmp_path / "s", _rows())
    data = RegionDataset(store)
    batch = collate_regions([data[i] for i in range(len(data))])
    assert batch["features"].shape[:2] == (3, 36)
    assert batch["num_regions"].tolist() == [36, FEW, 36]
    assert batch["region_mask"][1].sum() == FEW and batch["region_mask"][0].all()


def test_exports_write_real_regions_or_zero_padding(tmp_path):
    store = write_store(tmp_path / "s", _rows())
    export_store(store, "tern", tmp_path / "tern")
    assert np.load(tmp_path / "tern" / "bu_att" / "img0001.npz")["feat"].shape == (FEW, 2048)
    assert np.load(tmp_path / "tern" / "bu_box" / "img0001.npy").shape == (FEW, 4)
    export_store(store, "milvlg-npz", tmp_path / "m")
    npz = np.load(tmp_path / "m" / "img0001.npz", allow_pickle=True)
    assert npz["x"].shape == (FEW, 2048) and int(npz["num_bbox"]) == FEW
    assert len(npz["info"].item()["objects_id"]) == FEW
    export_store(store, "butd-tsv", tmp_path / "t")
    line = (tmp_path / "t" / "train.tsv").read_text(encoding="utf-8").splitlines()[1].split("\t")
    assert int(line[3]) == FEW
    feats = np.frombuffer(base64.b64decode(line[5]), dtype=np.float32).reshape(int(line[3]), -1)
    assert feats.shape == (FEW, 2048)
    export_store(store, "scan-precomp", tmp_path / "scan")
    ims = np.load(tmp_path / "scan" / "train_ims.npy")
    assert ims.shape == (3, 36, 2048) and not ims[1, FEW:].any() and ims[1, :FEW].any()


def test_tern_masks_padded_regions_and_sgraf_takes_36():
    from tests.trainers.test_models import image_batch, tiny_tern_config
    from trainers.models.sgraf import check_regions
    from trainers.models.tern import TERN

    torch.manual_seed(0)
    model = TERN(tiny_tern_config()).eval()
    imgs = image_batch(1, 36, [FEW])
    padded = {"features": imgs["features"].clone(), "geometry": imgs["geometry"].clone(),
              "num_regions": imgs["num_regions"]}
    padded["features"][:, FEW:] = 0
    padded["geometry"][:, FEW:] = 0
    real = {"features": imgs["features"][:, :FEW], "geometry": imgs["geometry"][:, :FEW],
            "num_regions": imgs["num_regions"]}
    with torch.no_grad():
        torch.testing.assert_close(model.encode_images(padded), model.encode_images(real), atol=1e-5, rtol=0)
    check_regions(36, torch.tensor([36, FEW]), 36)  # padded rows: 36 regions held
    with pytest.raises(Exception, match="exactly 36"):
        check_regions(20, torch.tensor([20]), 36)
