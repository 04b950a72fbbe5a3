"""Convert a region store between Parquet and HDF5, or upgrade it to the current schema version
(a schema-1 store is written again as schema 2: parts in ``data/``, Parquet features as numbers),
keeping every value bit for bit.

Rows are copied in commit order with the same part boundaries; the feature dtype, region policy,
detector block and absent fields are carried over unchanged, so converting back yields a store
whose rows equal the original's exactly (the part files differ, being another format).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from itmflow.errors import StoreError
from stores.reader import open_region_store
from stores.writer import RegionStoreWriter


def convert_store(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, to: str | None = None,
                  progress: Callable[[int], None] | None = None) -> Path:
    """Write a copy of store ``src`` at ``dst`` in storage ``to`` ("parquet" | "hdf5"; default: the
    source's), in the current schema version (:data:`stores.schema.SCHEMA_VERSION`).

    ``dst`` must not hold a store yet; a partially converted ``dst`` (interrupted run) is resumed.
    """
    source = open_region_store(src)
    dst = Path(dst)
    if Path(src).resolve() == dst.resolve():
        raise StoreError(f"convert: source and destination are the same directory {dst}")
    try:
        settings = source.settings
        manifest = source.manifest
        to = to or settings.storage
        extra = dict(manifest.get("extra") or {})
        extra["converted_from"] = {"storage": settings.storage, "schema_version": manifest["schema_version"],
                                  "provenance": manifest.get("provenance"), "parts": [
            {"file": p["file"], "sha256": p["sha256"]} for p in manifest["parts"]]}
        writer = RegionStoreWriter(dst, storage=to, feature_dim=settings.feature_dim,
                                   feature_dtype=settings.feature_dtype, region_policy=settings.region_policy,
                                   detector=settings.detector, rows_per_part=1 << 30, extra=extra,
                                   absent_fields=settings.absent_fields)
        done = writer.committed_ids()
        with writer:
            for p in range(source.num_parts):
                for block in source.part_blocks(p):
                    for row in block.rows():
                        if row["image_id"] not in done:
                            writer.add(row)
                    if progress is not None:
                        progress(len(block))
                writer.commit()  # one destination part per source part: same boundaries
    finally:
        source.close()
    return dst

