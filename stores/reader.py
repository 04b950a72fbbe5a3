"""Reading a region store: iteration in commit order, lookup by image_id, feature batches.

Only parts named in the manifest are read (anything else in the directory is debris). The index
``image_id -> (part, row)`` is built when the store is opened from the id columns alone (a few ms
per 10,000 images); part files open lazily and stay open, so a lookup is one small read.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from itmflow.errors import StoreCorruptError, StoreError
from stores import hdf5_part, parquet_part
from stores.manifest import load_manifest
from stores.schema import StoreSettings


#: Rows per columnar block where a part is read in blocks (variable K; a fixed-K part is one block).
ROWS_PER_BLOCK = 256


class RegionStoreReader:
    """A committed region store. Use :func:`open_region_store`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.manifest: dict[str, Any] = load_manifest(self.path)
        self.settings = StoreSettings.from_manifest(self.manifest)
        self._parts: list[Any] = [None] * len(self.manifest["parts"])
        self._ids: list[str] = []
        self._index: dict[str, tuple[int, int]] = {}
        for p, part in enumerate(self.manifest["parts"]):
            reader = self._part(p)
            ids = reader.ids()
            if len(ids) != int(part["rows"]):
                raise StoreCorruptError(f"{reader.path}: holds {len(ids)} rows, the manifest says {part['rows']}; "
                                        "run `itmflow store verify`")
            for r, image_id in enumerate(ids):
                if image_id in self._index:
                    q = self._index[image_id][0]
                    raise StoreCorruptError(f"{reader.path} row {r}: duplicate image_id {image_id!r} (also in "
                                            f"{self.manifest['parts'][q]['file']}); run `itmflow store verify`")
                self._index[image_id] = (p, r)
            self._ids.extend(ids)

    def _part(self, p: int) -> Any:
        if self._parts[p] is None:
            file = self.path / self.manifest["parts"][p]["file"]
            if not file.is_file():
                raise StoreCorruptError(f"{file} is named in the manifest but missing; restore it from a "
                                        "backup or re-extract its images")
            # A size check is free; the sha256 of every part is `itmflow store verify`'s job.
            expected = int(self.manifest["parts"][p]["bytes"])
            if file.stat().st_size != expected:
                raise StoreCorruptError(f"{file} has {file.stat().st_size} bytes, the manifest says {expected} "
                                        "(truncated or edited); run `itmflow store verify`")
            if self.settings.storage == "parquet":
                self._parts[p] = parquet_part.ParquetPartReader(file, self.settings)
            else:
                self._parts[p] = hdf5_part.HDF5PartReader(file, self.settings)
        return self._parts[p]

    @property
    def fixed_k(self) -> int | None:
        """K when the region policy is fixed, else None."""
        return self.settings.fixed_k

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._index

    def ids(self) -> list[str]:
        """Image ids in commit order."""
        return list(self._ids)

    def get(self, image_id: str) -> dict[str, Any]:
        """The row of ``image_id`` (raises :class:`StoreError` naming it when absent)."""
        p, r = self._locate(image_id)
        return self._part(p).row(r)

    def _locate(self, image_id: str) -> tuple[int, int]:
        try:
            return self._index[image_id]
        except KeyError:
            raise StoreError(f"image_id {image_id!r} is not in the store {self.path}") from None

    @property
    def num_parts(self) -> int:
        """Number of committed parts."""
        return len(self._parts)

    def part_blocks(self, p: int, rows_per_block: int = ROWS_PER_BLOCK) -> Iterator[Any]:
        """Columnar blocks (:class:`stores.block.Block`) of part ``p`` in order."""
        yield from self._part(p).blocks(rows_per_block)

    def blocks(self, rows_per_block: int = ROWS_PER_BLOCK) -> Iterator[Any]:
        """Columnar blocks in commit order, each with its part index: ``(p, block)``.

        While one block is consumed, a helper thread reads the next (pyarrow's decode and ``pread``
        release the GIL): on two cores that takes the Parquet decode of the small columns (~2-3 µs
        per image) off the reading thread. At most one block is read ahead; a fixed-K block is a
        whole part whose features stay lazy (read when its rows are taken), ~1.8 KB per image.
        """
        return _read_ahead(self._blocks_in_order(rows_per_block))

    def _blocks_in_order(self, rows_per_block: int) -> Iterator[tuple[int, Any]]:
        for p in range(len(self._parts)):
            for block in self.part_blocks(p, rows_per_block):
                yield p, block

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # The rows' dicts (less their features) are made by the read-ahead thread too (~1 µs per
        # row), mostly while this thread waits in ``preadv`` with the GIL released.
        for block, templates in _read_ahead((block, block.row_templates())
                                            for _, block in self._blocks_in_order(ROWS_PER_BLOCK)):
            yield from block.rows(templates)

    def read_features(self, ids: Iterable[str]) -> np.ndarray:
        """Features of ``ids`` in the store dtype: ``[n, K, D]`` for fixed K; for variable K an object
        array of ``[K_i, D]`` arrays."""
        ids = list(ids)
        k = self.fixed_k
        if k is not None:
            out = np.empty((len(ids), k, self.settings.feature_dim), dtype=self.settings.dtype)
            for i, image_id in enumerate(ids):
                p, r = self._locate(image_id)
                out[i] = self._part(p).features(r)
            return out
        out = np.empty(len(ids), dtype=object)
        for i, image_id in enumerate(ids):
            out[i] = np.array(self.get(image_id)["features"])
        return out

    def close(self) -> None:
        """Close every open part file."""
        for p, part in enumerate(self._parts):
            if part is not None:
                part.close()
                self._parts[p] = None

    def __enter__(self) -> "RegionStoreReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # File handles do not cross process boundaries; each process reopens parts lazily.
        state = self.__dict__.copy()
        state["_parts"] = [None] * len(self._parts)
        return state


def _read_ahead(source: Iterator[Any]) -> Iterator[Any]:
    """The items of ``source``, each produced by a helper thread while the previous one is used
    (at most one item ahead; the generator only ever runs in that thread)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-read-ahead") as pool:
        upcoming = pool.submit(next, source, None)
        while True:
            item = upcoming.result()
            if item is None:
                return
            upcoming = pool.submit(next, source, None)
            yield item


def open_region_store(path: str | os.PathLike[str]) -> RegionStoreReader:
    """Open the committed store at ``path`` for reading."""
    return RegionStoreReader(path)
