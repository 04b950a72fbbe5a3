"""Region stores (Parquet | HDF5) and caption stores: the storage layer of itmflow.

Public API: :class:`RegionStoreWriter`, :func:`open_region_store` / :class:`RegionStoreReader`,
:class:`RegionDataset` (torch; imported lazily so ``import stores`` does not pull in torch), and
:mod:`stores.captions`.
"""

from __future__ import annotations

from typing import Any

from stores.reader import RegionStoreReader, open_region_store
from stores.schema import FORMAT, SCHEMA_VERSION
from stores.writer import RegionStoreWriter

__all__ = ["FORMAT", "SCHEMA_VERSION", "RegionDataset", "RegionStoreReader", "RegionStoreWriter",
           "collate_regions", "open_region_store"]


def __getattr__(name: str) -> Any:
    # torch is heavy; load the Dataset only when someone asks for it.
    if name in ("RegionDataset", "collate_regions"):
        from stores import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module 'stores' has no attribute {name!r}")
