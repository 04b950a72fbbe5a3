"""Opening a Parquet region store with tools that do not know Arrow's extension types.

A fixed-K store keeps ``features`` and the per-region fields as ``arrow.fixed_shape_tensor``
columns (``[K, D]`` tensors to pyarrow; their storage, a fixed-size list of the K·D values, to
pandas, DuckDB and polars). Hugging Face ``datasets`` infers its features from the Arrow schema
and refuses extension types ("does not have a datasets dtype equivalent"); given the schema with
each extension type replaced by its storage type, it reads the parts as they are::

    features = datasets.Features.from_arrow_schema(plain_schema("out/regions"))
    ds = datasets.load_dataset("parquet", data_files="out/regions/data/*.parquet",
                               split="train", features=features)

``features`` then comes as a flat list of K·D values per image (``num_regions`` rows of
``feature_dim`` in the manifest).
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from itmflow.errors import StoreCorruptError, StoreError
from stores.manifest import load_manifest


def plain_schema(store: str | os.PathLike[str]) -> pa.Schema:
    """The Arrow schema of the Parquet store's parts with every extension type replaced by its
    storage type (field names, order, nullability and the schema metadata kept)."""
    store = Path(store)
    manifest = load_manifest(store)
    if manifest.get("storage") != "parquet":
        raise StoreError(f"{store} is an {manifest.get('storage')} store; plain_schema is for Parquet "
                         "stores (h5py reads HDF5 parts as they are)")
    if not manifest["parts"]:
        raise StoreError(f"{store} has no committed parts yet: there is no schema to read")
    first = store / manifest["parts"][0]["file"]  # "data/part-00000.parquet" (schema 2)
    try:
        schema = pq.read_schema(first)
    except (OSError, pa.ArrowException) as exc:
        raise StoreCorruptError(f"{first}: not a readable Parquet file ({exc}); run `itmflow store verify "
                                f"{store}`") from exc
    fields = [f.with_type(f.type.storage_type) if isinstance(f.type, pa.BaseExtensionType) else f
              for f in schema]
    return pa.schema(fields, metadata=schema.metadata)


__all__ = ["plain_schema"]
