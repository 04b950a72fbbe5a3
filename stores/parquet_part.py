"""Parquet part files.

Layout (one row per image, no compression, no dictionary encoding, small row groups):

* ``image_id``, ``file``: string; ``width``, ``height``: int32; ``num_regions``: int16.
* fixed K: ``boxes`` ``arrow.fixed_shape_tensor<float32>[K,4]``, ``geometry`` [K,5], ``object_ids`` /
  ``attr_ids`` ``<int16>[K]``, ``object_conf`` / ``attr_conf`` ``<float32>[K]``;
  variable K: the same fields as ``large_list`` of the flattened values (``K*4`` for boxes).
* ``features``: the raw little-endian bytes of the ``[K, D]`` array, ``fixed_size_binary(K*D*itemsize)``
  for fixed K and ``large_binary`` for variable K; the field metadata ``itmflow.dtype`` /
  ``itmflow.shape`` say how to view them. Measured here (docs/stores.md): Parquet's own float16
  (FIXED_LEN_BYTE_ARRAY(2) per value) writes at ~110 MB/s and reads at ~180 MB/s, a sixth of a raw
  memmap; the byte column runs near memmap speed.

Row groups hold few rows (default 4) so a lookup by id decodes ~1 MB, not a whole file; statistics
are written for ``image_id`` only (min/max of 147 KB feature blobs would bloat the footer).
"""

from __future__ import annotations

import json
import os
from bisect import bisect_right
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from itmflow.errors import StoreCorruptError
from stores.block import Block
from stores.schema import REGION_FIELDS, SCALAR_FIELDS, SCHEMA_VERSION, StoreSettings

META_KEY = b"itmflow.regions"
DEFAULT_ROW_GROUP_ROWS = 4
_ARROW_TYPES = {np.dtype(np.float32): pa.float32(), np.dtype(np.int16): pa.int16(),
                np.dtype(np.int32): pa.int32(), np.dtype(np.float16): pa.float16()}


def _region_array(flat: np.ndarray, offsets: np.ndarray, width: int | None, k: int | None) -> pa.Array:
    """A per-region field as a fixed-shape tensor (fixed K) or a list of flattened values."""
    values = pa.array(flat.reshape(-1), type=_ARROW_TYPES[flat.dtype])
    per_region = width or 1
    if k is not None:
        shape = (k, width) if width else (k,)
        tensor_type = pa.fixed_shape_tensor(values.type, shape)
        storage = pa.FixedSizeListArray.from_arrays(values, k * per_region)
        return pa.ExtensionArray.from_storage(tensor_type, storage)
    return pa.LargeListArray.from_arrays(pa.array(offsets * per_region, type=pa.int64()), values)


def _features_array(block: Block, k: int | None, dim: int, itemsize: int) -> pa.Array | pa.ChunkedArray:
    if block.feature_rows is not None:
        # One zero-copy chunk per row: the rows' own buffers go straight into the encoder.
        if k is not None:
            typ = pa.binary(k * dim * itemsize)
            return pa.chunked_array([pa.FixedSizeBinaryArray.from_buffers(typ, 1, [None, pa.py_buffer(f)])
                                     for f in block.feature_rows], type=typ)
        return pa.chunked_array([pa.LargeBinaryArray.from_buffers(
            pa.large_binary(), 1, [None, pa.py_buffer(np.array([0, f.nbytes], np.int64)), pa.py_buffer(f)])
            for f in block.feature_rows], type=pa.large_binary())
    data = pa.py_buffer(np.ascontiguousarray(block.features))
    n = len(block)
    if k is not None:
        return pa.FixedSizeBinaryArray.from_buffers(pa.binary(k * dim * itemsize), n, [None, data])
    byte_offsets = pa.py_buffer(block.offsets * (dim * itemsize))
    return pa.LargeBinaryArray.from_buffers(pa.large_binary(), n, [None, byte_offsets, data])


def block_to_table(block: Block, settings: StoreSettings) -> pa.Table:
    """The Arrow table of one part (layout in the module docstring)."""
    k, dim = settings.fixed_k, settings.feature_dim
    cols: dict[str, pa.Array | pa.ChunkedArray] = {
        "image_id": pa.array(block.image_id, type=pa.string()),
        "file": pa.array(block.file, type=pa.string()),
        "width": pa.array(block.width, type=pa.int32()),
        "height": pa.array(block.height, type=pa.int32()),
        "num_regions": pa.array(block.num_regions, type=pa.int16()),
    }
    for name, (_, width) in REGION_FIELDS.items():
        if block.regions[name] is not None:
            cols[name] = _region_array(block.regions[name], block.offsets, width, k)
    cols["features"] = _features_array(block, k, dim, settings.dtype.itemsize)
    fields = []
    for name, arr in cols.items():
        meta = None
        if name == "features":
            meta = {b"itmflow.dtype": settings.feature_dtype.encode(),
                    b"itmflow.shape": json.dumps([k if k is not None else -1, dim]).encode()}
        fields.append(pa.field(name, arr.type, nullable=False, metadata=meta))
    meta = {META_KEY: json.dumps({"schema_version": SCHEMA_VERSION, "feature_dim": dim,
                                  "feature_dtype": settings.feature_dtype, "k": k}).encode()}
    arrays = [c if isinstance(c, pa.ChunkedArray) else pa.chunked_array([c]) for c in cols.values()]
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=meta))


def write_part(block: Block, settings: StoreSettings, path: str | os.PathLike[str],
               row_group_rows: int = DEFAULT_ROW_GROUP_ROWS) -> None:
    """Write ``block`` as a Parquet part file at ``path`` (the committer fsyncs, hashes, renames it).

    Written straight to the file: encoding into memory first and writing that costs one more copy
    of every feature byte (measured ~20% of write CPU).
    """
    pq.write_table(block_to_table(block, settings), path, row_group_size=max(1, row_group_rows),
                   compression="none", use_dictionary=False, write_statistics=["image_id"], store_schema=True)


def _flat_values(arr: pa.Array, dtype: np.dtype) -> np.ndarray:
    if isinstance(arr, pa.ExtensionArray):
        storage = arr.storage  # FixedSizeListArray: values sliced by hand (flatten() is a compute call)
        size = storage.type.list_size
        values = storage.values.slice(storage.offset * size, len(storage) * size)
    else:
        values = arr.flatten()
    return values.to_numpy(zero_copy_only=False).astype(dtype, copy=False)


def _decode_region(arr: pa.Array, name: str, width: int | None, n_regions: int, where: str) -> np.ndarray:
    dtype = REGION_FIELDS[name][0]
    if isinstance(arr, pa.ExtensionArray) or pa.types.is_large_list(arr.type) or pa.types.is_list(arr.type):
        flat = _flat_values(arr, dtype)
    else:
        raise StoreCorruptError(f"{where}: column {name!r} has unexpected type {arr.type}")
    per_region = width or 1
    if flat.size != n_regions * per_region:
        raise StoreCorruptError(f"{where}: column {name!r} holds {flat.size} values, expected "
                                f"{n_regions * per_region} (num_regions disagrees)")
    return flat.reshape(-1, width) if width else flat


def _decode_features(arr: pa.Array, offsets: np.ndarray, dim: int, dtype: np.dtype, where: str) -> np.ndarray:
    n_regions = int(offsets[-1])
    itemsize = dtype.itemsize
    if pa.types.is_fixed_size_binary(arr.type):
        width = arr.type.byte_width
        start = arr.offset * width
        data = np.frombuffer(arr.buffers()[1], dtype=np.uint8, count=len(arr) * width, offset=start)
    elif pa.types.is_large_binary(arr.type):
        offs = np.frombuffer(arr.buffers()[1], dtype=np.int64, count=len(arr) + 1, offset=arr.offset * 8)
        data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offs[0]:offs[-1]]
        expect = offsets * (dim * itemsize)
        if not np.array_equal(offs - offs[0], expect):
            raise StoreCorruptError(f"{where}: feature byte lengths disagree with num_regions x {dim} x {itemsize}")
    else:
        raise StoreCorruptError(f"{where}: column 'features' has unexpected type {arr.type}")
    if data.size != n_regions * dim * itemsize:
        raise StoreCorruptError(f"{where}: features hold {data.size} bytes, expected "
                                f"{n_regions * dim * itemsize} ({n_regions} regions x {dim} x {dtype})")
    return data.view(dtype).reshape(n_regions, dim)


def _column(table: pa.Table, name: str) -> pa.Array:
    col = table.column(name)
    return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()


def table_to_block(table: pa.Table, settings: StoreSettings, where: str) -> Block:
    """Decode rows of a part (any number of chunks) into a :class:`Block`.

    Features are not concatenated across chunks (that would copy every byte once more): the block
    holds one zero-copy ``[K, D]`` view per row in ``feature_rows``.
    """
    names = set(table.schema.names)
    required = {"image_id", "file", *SCALAR_FIELDS, "features", *settings.present_region_fields()}
    missing = required - names
    if missing:
        raise StoreCorruptError(f"{where}: columns {sorted(missing)} are missing; the part does not match "
                                "the manifest")
    counts = _column(table, "num_regions").to_numpy(zero_copy_only=False).astype(np.int16, copy=False)
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    regions: dict[str, np.ndarray | None] = {}
    for name, (_, width) in REGION_FIELDS.items():
        regions[name] = (None if name in settings.absent_fields
                         else _decode_region(_column(table, name), name, width, int(offsets[-1]), where))
    feature_rows: list[np.ndarray] = []
    row = 0
    for chunk in table.column("features").chunks:
        n = len(chunk)
        local = offsets[row:row + n + 1] - offsets[row]
        flat = _decode_features(chunk, local, settings.feature_dim, settings.dtype, where)
        feature_rows.extend(flat[local[i]:local[i + 1]] for i in range(n))
        row += n
    return Block(image_id=_column(table, "image_id").to_pylist(), file=_column(table, "file").to_pylist(),
                 width=_column(table, "width").to_numpy(zero_copy_only=False).astype(np.int32, copy=False),
                 height=_column(table, "height").to_numpy(zero_copy_only=False).astype(np.int32, copy=False),
                 num_regions=counts, offsets=offsets, features=None, regions=regions,  # type: ignore[arg-type]
                 feature_rows=feature_rows)


class ParquetPartReader:
    """Reads one Parquet part: ids, a row by index (row-group cache of one), blocks in order."""

    def __init__(self, path: str | os.PathLike[str], settings: StoreSettings) -> None:
        self.path = Path(path)
        self.settings = settings
        try:
            self._file = pq.ParquetFile(self.path, memory_map=True)
        except (OSError, pa.ArrowException) as exc:
            raise StoreCorruptError(f"{self.path}: not a readable Parquet file ({exc}); run "
                                    "`itmflow store verify` and re-extract the part's images") from exc
        md = self._file.metadata
        sizes = [md.row_group(g).num_rows for g in range(md.num_row_groups)]
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.num_rows = int(md.num_rows)
        self._cached: tuple[int, Block] | None = None

    def ids(self) -> list[str]:
        """The image ids in row order (reads the id column only)."""
        try:
            return self._file.read(columns=["image_id"]).column(0).to_pylist()
        except (OSError, KeyError, pa.ArrowException) as exc:
            raise StoreCorruptError(f"{self.path}: cannot read column image_id ({exc})") from exc

    def _group(self, g: int) -> Block:
        if self._cached is not None and self._cached[0] == g:
            return self._cached[1]
        try:
            # One small group: worker threads cost more than they save (measured ~25% CPU).
            table = self._file.read_row_group(g, use_threads=False)
        except (OSError, pa.ArrowException) as exc:
            raise StoreCorruptError(f"{self.path}: row group {g} cannot be read ({exc})") from exc
        block = table_to_block(table, self.settings, f"{self.path} row group {g}")
        self._cached = (g, block)
        return block

    def row(self, i: int) -> dict[str, Any]:
        """Row ``i`` of the part."""
        g = bisect_right(self._starts, i) - 1
        return self._group(g).row(i - int(self._starts[g]))

    def blocks(self, rows_per_block: int = 256) -> Iterator[Block]:
        """Blocks covering the part in order (whole row groups, about ``rows_per_block`` rows each)."""
        n_groups = len(self._starts) - 1
        per = max(1, rows_per_block // max(1, int(self._starts[1] - self._starts[0]) if n_groups else 1))
        for g0 in range(0, n_groups, per):
            groups = list(range(g0, min(n_groups, g0 + per)))
            try:
                table = self._file.read_row_groups(groups)
            except (OSError, pa.ArrowException) as exc:
                raise StoreCorruptError(f"{self.path}: row groups {groups[0]}-{groups[-1]} cannot be read "
                                        f"({exc})") from exc
            yield table_to_block(table, self.settings, f"{self.path} row groups {groups[0]}-{groups[-1]}")

    def close(self) -> None:
        """Drop the file handle."""
        self._file = None  # type: ignore[assignment]
        self._cached = None
