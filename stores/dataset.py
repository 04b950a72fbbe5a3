"""torch Dataset over a region store, safe with a multi-worker DataLoader.

The Dataset keeps only the path and the id list when pickled to workers; each process opens its
own reader (and so its own HDF5 / Parquet handles) on first use. Opening a handle in the parent
and forking can return wrong data from libhdf5 (pytorch #11929), and h5py handles cannot be
pickled for spawn at all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from stores.reader import RegionStoreReader, open_region_store

_LONG_FIELDS = ("object_ids", "attr_ids")


class RegionDataset(Dataset):
    """Rows of a region store as dicts of tensors.

    ``features`` is ``[K, D]`` in ``dtype``; boxes, geometry and confidences are float32; label ids
    are int64 (ready for ``nn.Embedding``); absent fields are ``None``. ``ids`` selects and orders
    the images (default: every image in commit order).
    """

    def __init__(self, path: str | os.PathLike[str], ids: Sequence[str] | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
        self.path = Path(path)
        self.dtype = dtype
        reader = open_region_store(self.path)
        try:
            self.manifest = reader.manifest
            if ids is None:
                self.ids = reader.ids()
            else:
                self.ids = list(ids)
                missing = [i for i in self.ids if i not in reader]
                if missing:
                    from itmflow.errors import StoreError

                    raise StoreError(f"{len(missing)} requested image ids are not in {self.path} "
                                     f"(first: {missing[0]!r})")
        finally:
            reader.close()
        self._reader: RegionStoreReader | None = None
        self._pid = -1

    def _get_reader(self) -> RegionStoreReader:
        if self._reader is None or self._pid != os.getpid():
            self._reader = open_region_store(self.path)
            self._pid = os.getpid()
        return self._reader

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self._get_reader().get(self.ids[index])
        out: dict[str, Any] = {}
        for name, value in row.items():
            if isinstance(value, np.ndarray):
                if name == "features":
                    out[name] = torch.from_numpy(np.array(value)).to(self.dtype)
                elif name in _LONG_FIELDS:
                    out[name] = torch.from_numpy(value.astype(np.int64))
                else:
                    out[name] = torch.from_numpy(np.array(value, dtype=np.float32))
            else:
                out[name] = value
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_reader"] = None
        state["_pid"] = -1
        return state


def collate_regions(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch rows with (possibly) different K: region tensors padded to the largest K, plus a
    ``region_mask`` (True = real region) and ``num_regions`` as a tensor.

    Rows of a fixed-K store whose detector kept fewer regions hold K regions (zero padded, see
    :func:`stores.schema.validate_row`) and their real count in ``num_regions``: the mask leaves
    the padding out, as it does the collate padding."""
    k_max = max(int(it["features"].shape[0]) for it in items)
    out: dict[str, Any] = {"image_id": [it["image_id"] for it in items], "file": [it["file"] for it in items]}
    for name in ("width", "height", "num_regions"):
        out[name] = torch.tensor([int(it[name]) for it in items], dtype=torch.long)
    mask = torch.zeros(len(items), k_max, dtype=torch.bool)
    for i, it in enumerate(items):
        mask[i, : int(it["num_regions"])] = True
    out["region_mask"] = mask
    for name, value in items[0].items():
        if not isinstance(value, torch.Tensor):
            if name not in out:
                out[name] = None if value is None else [it[name] for it in items]
            continue
        padded = value.new_zeros((len(items), k_max, *value.shape[1:]))
        for i, it in enumerate(items):
            padded[i, : it[name].shape[0]] = it[name]
        out[name] = padded
    return out
