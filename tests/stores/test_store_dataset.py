"""RegionDataset with a 2-worker DataLoader (per-worker handles), and padding collate for variable K."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tests._support.store_fixtures import make_rows, write_store
from stores import RegionDataset, collate_regions


@pytest.mark.parametrize("storage", ["parquet", "hdf5"])
def test_two_worker_dataloader(tmp_path, storage):
    rows = make_rows(8, seed=4)
    store = write_store(tmp_path / "s", rows, storage=storage, rows_per_part=3)
    ds = RegionDataset(store)
    assert len(ds) == 8
    item = ds[2]  # opens a reader in the parent before the workers fork: they must not reuse it
    assert item["features"].dtype == torch.float32 and item["object_ids"].dtype == torch.int64
    loader = DataLoader(ds, batch_size=3, num_workers=2, shuffle=False)
    seen = []
    for batch in loader:
        for i, image_id in enumerate(batch["image_id"]):
            want = rows[int(image_id[3:])]
            np.testing.assert_array_equal(batch["features"][i].numpy(),
                                          want["features"].astype(np.float16).astype(np.float32))
            np.testing.assert_array_equal(batch["boxes"][i].numpy(), want["boxes"])
            seen.append(image_id)
    assert seen == [r["image_id"] for r in rows]


def test_subset_dtype_and_variable_k_collate(tmp_path):
    rows = make_rows(5, adaptive=True, seed=8)
    store = write_store(tmp_path / "s", rows, storage="hdf5", adaptive=True, dtype="float32")
    ds = RegionDataset(store, ids=["img0003", "img0001"], dtype=torch.float16)
    assert ds[0]["image_id"] == "img0003" and ds[0]["features"].dtype == torch.float16
    batch = collate_regions([ds[0], ds[1]])
    k = [rows[3]["num_regions"], rows[1]["num_regions"]]
    assert batch["features"].shape == (2, max(k), 2048)
    assert batch["region_mask"].sum(1).tolist() == k
    assert batch["num_regions"].tolist() == k
    np.testing.assert_array_equal(batch["boxes"][1, : k[1]].numpy(), rows[1]["boxes"])
    assert not batch["boxes"][1, k[1]:].any()
    with pytest.raises(Exception, match="not in"):
        RegionDataset(store, ids=["missing"])
