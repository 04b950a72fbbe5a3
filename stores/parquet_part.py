"""Parquet part files.

Layout (one row per image, no compression, no dictionary encoding, small row groups):

* ``image_id``, ``file``: string; ``width``, ``height``: int32; ``num_regions``: int16.
* fixed K: ``boxes`` ``arrow.fixed_shape_tensor<float32>[K,4]``, ``geometry`` [K,5], ``object_ids`` /
  ``attr_ids`` ``<int16>[K]``, ``object_conf`` / ``attr_conf`` ``<float32>[K]``;
  variable K: the same fields as ``large_list`` of the flattened values (``K*4`` for boxes).
* ``features``, schema 2: numbers that pandas / DuckDB / polars read as such —
  ``arrow.fixed_shape_tensor<halffloat|float>[K, D]`` for fixed K (storage: a fixed-size list of
  K*D values), ``large_list`` of the K*D values for variable K. Built zero-copy over each row's
  numpy buffer. Parquet writes them PLAIN (halffloat: FIXED_LEN_BYTE_ARRAY(2) with the Float16
  logical type), so a row group's values are contiguous little-endian bytes at the end of its one
  data page, after the RLE repetition/definition levels: the reader maps them as for schema 1.
  pyarrow's own encoder would cost ~5x the CPU of the byte column (two levels per value, RLE-encoded,
  and each 2-byte value copied on its own: ~230 against ~1,300 MB per CPU-second), so the feature
  pages are written by :mod:`stores.pqfeatures` straight from the rows' buffers (~1,000-1,400 MB per
  CPU-second); pyarrow writes the other columns. Reading is the same ``preadv`` as for schema 1.
* ``features``, schema 1: the raw little-endian bytes of the ``[K, D]`` array,
  ``fixed_size_binary(K*D*itemsize)`` for fixed K and ``large_binary`` for variable K; the field
  metadata ``itmflow.dtype`` / ``itmflow.shape`` say how to view them. Read through pyarrow's decode,
  Parquet's own float16 runs at ~180 MB/s, a sixth of a raw memmap; the byte column near memmap speed.

Row groups hold few rows (4 for variable K, so a lookup decodes ~1 MB, not a whole file; 32 for
fixed K, whose features are read from the mapped file without decoding); statistics
are written for ``image_id`` only (min/max of 147 KB feature blobs would bloat the footer).

Reading fixed-K parts: each row group keeps its features in one uncompressed PLAIN data page, so
their byte offsets follow from the footer metadata; the reader copies one image per ``pread``, and decodes the other columns of a part once (kept: ~1.8 KB per image at K=36).
Anything that does not match (another writer's file, a failed spot check) uses pyarrow's decode.

Checks on read (:mod:`stores.integrity`): every page carries a CRC32 in its header (Parquet page
checksums), which pyarrow checks when it decodes a page of the small columns; the ``feature_checksum``
column (uint64, one per row) is checked against every row's features after they are read, on the
mapped path and after pyarrow's decode alike (pyarrow's page check of a 4.7 MB feature page costs
~3 ms; the per-row sum is taken in the same pass as the copy when rows are read in order, and costs
~2.7 µs per image after a lookup's ``pread``). Parts without these (older ones) are read unchecked.
"""

from __future__ import annotations

import json
import os
from bisect import bisect_right
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from itmflow.errors import StoreCorruptError
from stores.block import Block, CheckedRows, LazyRows
from stores.integrity import CHECKSUM_FIELD, corrupt, feature_checksum
from stores.pqfeatures import SpliceError, write_with_features
from stores.pqfeatures import ThriftReader as _ThriftReader
from stores.rawrows import RawRows
from stores.schema import REGION_FIELDS, SCALAR_FIELDS, SCHEMA_VERSION, StoreSettings, stored_counts

META_KEY = b"itmflow.regions"
DEFAULT_ROW_GROUP_ROWS = 4
#: Fixed-K parts are read through the mapped feature bytes (lookups never decode a group), so their
#: groups can be larger: fewer groups mean less per-group decode work for the other columns.
FIXED_K_ROW_GROUP_ROWS = 32


def default_row_group_rows(settings: StoreSettings) -> int:
    """Rows per row group when the caller does not choose: 32 for fixed K, 4 for variable K (whose
    lookups decode a whole group: ~600 KB-1.6 MB)."""
    return FIXED_K_ROW_GROUP_ROWS if settings.fixed_k is not None else DEFAULT_ROW_GROUP_ROWS
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


def _feature_values(rows: Sequence[np.ndarray], k: int | None, dim: int, dtype: np.dtype) -> pa.ChunkedArray:
    """v2 features as numbers: one zero-copy chunk per row (Arrow arrays over the rows' own buffers).

    Fixed K: ``arrow.fixed_shape_tensor<halffloat|float>[K, D]`` (storage: a fixed-size list of K*D
    values, read by pandas, DuckDB and polars as a list of numbers); variable K: ``large_list`` of the
    row's K*D values. Parquet writes the values PLAIN (halffloat: FIXED_LEN_BYTE_ARRAY(2)), so a row
    group's feature values are the same contiguous little-endian bytes as v1's byte column, at the
    end of its single data page (after the repetition/definition levels).
    """
    vtype = _ARROW_TYPES[np.dtype(dtype)]
    if k is not None:
        ttype = pa.fixed_shape_tensor(vtype, (k, dim))
        return pa.chunked_array([pa.ExtensionArray.from_storage(
            ttype, pa.FixedSizeListArray.from_arrays(pa.array(f.reshape(-1), type=vtype), k * dim)) for f in rows],
            type=ttype)
    return pa.chunked_array([pa.LargeListArray.from_arrays(
        pa.array(np.array([0, f.size], np.int64)), pa.array(f.reshape(-1), type=vtype)) for f in rows],
        type=pa.large_list(vtype))


def block_to_table(block: Block, settings: StoreSettings, version: int = SCHEMA_VERSION, *,
                   placeholder: bool = False) -> pa.Table:
    """The Arrow table of one part (layout in the module docstring; ``version`` 1 writes the old
    byte column for features)."""
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
    cols[CHECKSUM_FIELD] = pa.array(block.feature_checksums(), type=pa.uint64())
    if placeholder:  # one value per row, same Parquet type (stores.pqfeatures writes the real pages)
        values = pa.array(np.zeros(len(block), settings.dtype), type=_ARROW_TYPES[settings.dtype])
        cols["features"] = (pa.FixedSizeListArray.from_arrays(values, 1) if k is not None else
                            pa.LargeListArray.from_arrays(pa.array(np.arange(len(block) + 1), pa.int64()), values))
    elif version >= 2:
        rows = block.feature_rows if block.feature_rows is not None else [
            block.features[block.offsets[i]:block.offsets[i + 1]] for i in range(len(block))]
        cols["features"] = _feature_values(rows, k, dim, settings.dtype)
    else:
        cols["features"] = _features_array(block, k, dim, settings.dtype.itemsize)
    fields = []
    for name, arr in cols.items():
        meta = None
        if name == "features" and version < 2:
            meta = {b"itmflow.dtype": settings.feature_dtype.encode(),
                    b"itmflow.shape": json.dumps([k if k is not None else -1, dim]).encode()}
        fields.append(pa.field(name, arr.type, nullable=False, metadata=meta))
    meta = {META_KEY: json.dumps({"schema_version": version, "feature_dim": dim,
                                  "feature_dtype": settings.feature_dtype, "k": k}).encode()}
    arrays = [c if isinstance(c, pa.ChunkedArray) else pa.chunked_array([c]) for c in cols.values()]
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=meta))


def write_part(block: Block, settings: StoreSettings, path: str | os.PathLike[str],
               row_group_rows: int | None = None, *, version: int = SCHEMA_VERSION) -> None:
    """Write ``block`` as a Parquet part file at ``path`` (the committer fsyncs, hashes, renames it).

    Written straight to the file: encoding into memory first and writing that costs one more copy
    of every feature byte (measured ~20% of write CPU). Every page gets its CRC32 (pyarrow computes
    it for the feature pages too, ~70 ms per 147 MB part; it cannot be asked per column).
    """
    row_group_rows = row_group_rows or default_row_group_rows(settings)
    if version >= 2 and len(block):
        try:
            _write_spliced(block, settings, path, row_group_rows)
            return
        except SpliceError:
            pass  # an unexpected footer: pyarrow writes the whole part (same values, slower)
    row_bytes = (settings.fixed_k or 36) * settings.feature_dim * settings.dtype.itemsize
    # One data page per column chunk (the page limit is above a whole group): with PLAIN encoding,
    # no compression and a required column, a group's feature values then lie back to back at the
    # end of its column chunk, which is what lets the reader map them (ParquetPartReader).
    pq.write_table(block_to_table(block, settings, version), path, row_group_size=max(1, row_group_rows),
                   compression="none", use_dictionary=False, write_statistics=["image_id"], store_schema=True,
                   data_page_size=max(1 << 20, max(1, row_group_rows) * row_bytes + (1 << 20)),
                   write_batch_size=max(1024, row_group_rows), write_page_checksum=True)


def _write_spliced(block: Block, settings: StoreSettings, path: str | os.PathLike[str],
                   row_group_rows: int) -> None:
    """Schema 2: pyarrow writes every column but the features (a one-value placeholder per row);
    :mod:`stores.pqfeatures` writes the feature pages from the rows' buffers (module docstring there)."""
    k, dim = settings.fixed_k, settings.feature_dim
    vtype = _ARROW_TYPES[settings.dtype]
    rows = block.feature_rows if block.feature_rows is not None else [
        block.features[block.offsets[i]:block.offsets[i + 1]] for i in range(len(block))]
    real = block_to_table(block, settings, 2, placeholder=True)
    ftype = pa.fixed_shape_tensor(vtype, (k, dim)) if k is not None else pa.large_list(vtype)
    write_with_features(real, ftype, [np.ascontiguousarray(r) for r in rows], path, max(1, row_group_rows),
                        compression="none", use_dictionary=False, write_statistics=["image_id"], store_schema=True,
                        data_page_size=1 << 20, write_batch_size=max(1024, row_group_rows),
                        write_page_checksum=True)


def _flat_values(arr: pa.Array, dtype: np.dtype) -> np.ndarray:
    if isinstance(arr, pa.ExtensionArray) or pa.types.is_fixed_size_list(arr.type):
        storage = arr.storage if isinstance(arr, pa.ExtensionArray) else arr
        # FixedSizeListArray: values sliced by hand (flatten() is a compute call)
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
    elif isinstance(arr, pa.ExtensionArray) or pa.types.is_large_list(arr.type) or pa.types.is_list(arr.type) \
            or pa.types.is_fixed_size_list(arr.type):  # v2: numbers
        values = _flat_values(arr, dtype)
        if values.dtype != dtype:
            raise StoreCorruptError(f"{where}: column 'features' holds {values.dtype}, the manifest says {dtype}")
        data = values.view(np.uint8)
    else:
        raise StoreCorruptError(f"{where}: column 'features' has unexpected type {arr.type}")
    if data.size != n_regions * dim * itemsize:
        raise StoreCorruptError(f"{where}: features hold {data.size} bytes, expected "
                                f"{n_regions * dim * itemsize} ({n_regions} regions x {dim} x {dtype})")
    return data.view(dtype).reshape(n_regions, dim)


def _column(table: pa.Table, name: str) -> pa.Array:
    col = table.column(name)
    return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()


def table_to_block(table: pa.Table, settings: StoreSettings, where: str,
                   feature_rows: Sequence[np.ndarray] | None = None, *, part: Path | None = None,
                   first_row: int = 0) -> Block:
    """Decode rows of a part (any number of chunks) into a :class:`Block`.

    Features are not concatenated across chunks (that would copy every byte once more): the block
    holds one zero-copy ``[K, D]`` view per row in ``feature_rows`` — or the ``feature_rows`` given
    (rows read from the mapped file; the table then need not hold the features column). With
    ``part`` (the file, whose rows start at ``first_row`` in the table) decoded features are checked
    against the table's ``feature_checksum`` column when it has one.
    """
    names = set(table.schema.names)
    required = {"image_id", "file", *SCALAR_FIELDS, *settings.present_region_fields()}
    if feature_rows is None:
        required.add("features")
    missing = required - names
    if missing:
        raise StoreCorruptError(f"{where}: columns {sorted(missing)} are missing; the part does not match "
                                "the manifest")
    counts = _column(table, "num_regions").to_numpy(zero_copy_only=False).astype(np.int16, copy=False)
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(stored_counts(counts, settings), out=offsets[1:])  # padded fixed-K rows hold K regions
    regions: dict[str, np.ndarray | None] = {}
    for name, (_, width) in REGION_FIELDS.items():
        regions[name] = (None if name in settings.absent_fields
                         else _decode_region(_column(table, name), name, width, int(offsets[-1]), where))
    if feature_rows is None:
        decoded: list[np.ndarray] = []
        row = 0
        for chunk in table.column("features").chunks:
            n = len(chunk)
            local = offsets[row:row + n + 1] - offsets[row]
            flat = _decode_features(chunk, local, settings.feature_dim, settings.dtype, where)
            decoded.extend(flat[local[i]:local[i + 1]] for i in range(n))
            row += n
        feature_rows = decoded
        if part is not None and CHECKSUM_FIELD in names:
            sums = _column(table, CHECKSUM_FIELD).to_numpy(zero_copy_only=False).tolist()
            feature_rows = CheckedRows(decoded, sums, part, first_row)
    return Block(image_id=_column(table, "image_id").to_pylist(), file=_column(table, "file").to_pylist(),
                 width=_column(table, "width").to_numpy(zero_copy_only=False).astype(np.int32, copy=False),
                 height=_column(table, "height").to_numpy(zero_copy_only=False).astype(np.int32, copy=False),
                 num_regions=counts, offsets=offsets, features=None, regions=regions,  # type: ignore[arg-type]
                 feature_rows=feature_rows)


def _one_page(fd: int, col: Any) -> bool:
    """True when the column chunk is one data page: its header (Thrift, read from the file) plus the
    page's size is the whole chunk. Then the values are the chunk's last bytes. (Comparing header
    sizes across groups is not enough: the page CRC is a varint of 1-5 bytes.)"""
    raw = os.pread(fd, 256, col.data_page_offset)
    reader = _ThriftReader(raw)
    header = reader.struct()
    fields = {f[0]: f[2] for f in header}
    return fields.get(1) in (0, 3) and reader.pos + int(fields.get(3, -1)) == col.total_compressed_size


def _row_bytes(arr: pa.Array, i: int, nbytes: int) -> np.ndarray:
    """The feature bytes of row ``i`` of a decoded features column (v1 bytes or v2 numbers)."""
    if pa.types.is_fixed_size_binary(arr.type):
        return np.frombuffer(arr[i].as_py(), dtype=np.uint8)
    one = arr.slice(i, 1)
    storage = one.storage if isinstance(one, pa.ExtensionArray) else one
    size = storage.type.list_size
    values = storage.values.slice(storage.offset * size, size).to_numpy(zero_copy_only=False)
    return values.view(np.uint8)


class ParquetPartReader:
    """Reads one Parquet part: ids, a row by index (row-group cache of one), blocks in order."""

    def __init__(self, path: str | os.PathLike[str], settings: StoreSettings) -> None:
        self.path = Path(path)
        self.settings = settings
        try:
            # pre_buffer off: pyarrow's read-ahead cache costs ~60 µs per row group on every read
            # of the small columns (measured: 2.0 ms against 0.09 ms for a 32-group part), and a
            # mapped file has nothing to pre-buffer. Page checksums are checked where pages have them.
            self._file = pq.ParquetFile(self.path, memory_map=True, pre_buffer=False,
                                        page_checksum_verification=True)
        except (OSError, pa.ArrowException) as exc:
            raise StoreCorruptError(f"{self.path}: not a readable Parquet file ({exc}); run "
                                    "`itmflow store verify` and re-extract the part's images") from exc
        md = self._file.metadata
        sizes = [md.row_group(g).num_rows for g in range(md.num_row_groups)]
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.num_rows = int(md.num_rows)
        self._cached: tuple[int, Block] | None = None
        self._small = [n for n in self._file.schema_arrow.names if n != "features"]
        #: Rows carry feature checksums: features are then checked per row, not by pyarrow's page CRC.
        self._checked = CHECKSUM_FIELD in self._small
        self._plain: pq.ParquetFile | None = None
        self._raw: RawRows | None = None
        self._map_features()

    def _feature_file(self) -> pq.ParquetFile:
        """The file for reading the features column: without page-CRC checks when the rows carry
        their own checksums (checked instead, at ~1/1000 of the cost), else the checking one."""
        if not self._checked:
            return self._file
        if self._plain is None:
            self._plain = pq.ParquetFile(self.path, memory_map=True, pre_buffer=False,
                                         metadata=self._file.metadata)
        return self._plain

    def _map_features(self) -> None:
        """For fixed K, find every row's feature bytes in the file (read with :class:`RawRows`).

        A part written by :func:`write_part` keeps each row group's features in one uncompressed,
        PLAIN-encoded data page (schema 1: a required FIXED_LEN_BYTE_ARRAY column of one value per
        row; schema 2: a list of FLOAT16 / FLOAT values, whose RLE levels precede the values in the
        page): the values are the last ``rows x K*D*itemsize`` bytes of the column chunk. Reading
        them is one ``pread`` per image instead of pyarrow's page decode (measured ~2x less read
        CPU, and lookups skip the feature decode). Anything else, or a spot check that disagrees
        (with the rows' checksums, or for parts without them with pyarrow), keeps the pyarrow path.
        """
        k, dim = self.settings.fixed_k, self.settings.feature_dim
        md = self._file.metadata
        if k is None or self.num_rows == 0:
            return
        vb = k * dim * self.settings.dtype.itemsize
        leaf = next((j for j in range(md.num_columns)
                     if md.row_group(0).column(j).path_in_schema.split(".")[0] == "features"), None)
        if leaf is None:
            return
        offs = np.empty(self.num_rows, dtype=np.int64)
        size = self.path.stat().st_size
        if md.row_group(0).column(leaf).path_in_schema == "features":  # v1: one K*D*itemsize byte value per row
            physical, header_limit = {"FIXED_LEN_BYTE_ARRAY"}, 4096
        else:  # v2: a list of numbers; the page also holds the rows' repetition/definition levels (RLE)
            physical, header_limit = {"FIXED_LEN_BYTE_ARRAY", "FLOAT"}, 4096 + 64 * FIXED_K_ROW_GROUP_ROWS * 8
        fd = os.open(self.path, os.O_RDONLY)
        try:
            pages_ok = all(_one_page(fd, md.row_group(g).column(leaf)) for g in range(md.num_row_groups))
        except (OSError, SpliceError, IndexError):
            pages_ok = False
        finally:
            os.close(fd)
        if not pages_ok:
            return
        for g in range(md.num_row_groups):
            col = md.row_group(g).column(leaf)
            n = md.row_group(g).num_rows
            header = col.total_compressed_size - n * vb
            if (col.compression != "UNCOMPRESSED" or col.physical_type not in physical
                    or col.has_dictionary_page or not 0 < header <= header_limit
                    or not set(col.encodings) <= {"PLAIN", "RLE", "BIT_PACKED"}
                    or col.data_page_offset + col.total_compressed_size > size):
                return
            start = int(self._starts[g])
            offs[start:start + n] = col.data_page_offset + header + np.arange(n, dtype=np.int64) * vb
        checksums = None
        if self._checked:
            try:
                checksums = self._file.read(columns=[CHECKSUM_FIELD], use_threads=False).column(0).to_numpy()
            except (OSError, pa.ArrowException) as exc:
                raise corrupt(self.path, f"column {CHECKSUM_FIELD!r} cannot be read ({exc})") from exc
        raw = RawRows(self.path, offs, vb, self.settings.dtype, (k, dim))
        if checksums is not None:
            # Spot check against the rows' own checksums: first and last row of the first and last
            # group. A wrong layout (or damage there) keeps pyarrow's decode, which checks every
            # row itself and names a damaged one. (Decoding the groups instead cost ~25 ms each for
            # schema-2 float16 features: ~0.5 s to open a 10,000-image store.)
            spots = sorted({0, int(self._starts[1]) - 1, int(self._starts[-2]), self.num_rows - 1})
            for row in spots:
                if feature_checksum(raw.read_bytes(row, row + 1)[0]) != int(checksums[row]):
                    raw.close()
                    return
            raw.set_checksums(checksums)
            self._raw = raw
            return
        # Without checksums (older parts), a spot check against pyarrow: first and last row of the
        # first and last group (a wrong layout must fall back to pyarrow, not look like damage).
        for g in {0, md.num_row_groups - 1}:
            try:
                table = self._feature_file().read_row_group(g, columns=["features"], use_threads=False)
            except (OSError, pa.ArrowException) as exc:
                raw.close()
                raise corrupt(self.path, f"row group {g} cannot be read ({exc})") from exc
            arr = table.column(0).chunk(0)
            for local in {0, len(arr) - 1}:
                row = int(self._starts[g]) + local
                if not np.array_equal(_row_bytes(arr, local, vb), raw.read_bytes(row, row + 1)[0]):
                    raw.close()
                    return
        raw.set_checksums(checksums)
        self._raw = raw

    def _read(self, groups: list[int], threads: bool) -> Block:
        what = f"row groups {groups[0]}-{groups[-1]}"
        where = f"{self.path} {what}"
        mapped = self._raw is not None
        try:
            if mapped or not self._checked:
                table = self._file.read_row_groups(groups, columns=self._small if mapped else None,
                                                   use_threads=threads)
            else:  # small columns with their page CRCs, features checked per row below
                table = self._file.read_row_groups(groups, columns=self._small, use_threads=threads)
                feats = self._feature_file().read_row_groups(groups, columns=["features"], use_threads=threads)
                table = table.append_column(feats.schema.field(0), feats.column(0))
        except (OSError, pa.ArrowException) as exc:
            raise corrupt(self.path, f"{what} cannot be read ({exc})") from exc
        rows = None
        start = int(self._starts[groups[0]])
        if mapped:
            rows = LazyRows(self._raw, start, int(self._starts[groups[-1] + 1]))  # type: ignore[arg-type]
        return table_to_block(table, self.settings, where, rows, part=self.path, first_row=start)

    def ids(self) -> list[str]:
        """The image ids in row order (reads the id column only)."""
        try:
            return self._file.read(columns=["image_id"]).column(0).to_pylist()
        except (OSError, KeyError, pa.ArrowException) as exc:
            raise corrupt(self.path, f"column 'image_id' cannot be read ({exc})") from exc

    def _small_block(self) -> Block:
        """With mapped features: the whole part's other columns, decoded once and kept (~1.8 KB per
        image at K=36), so a lookup is a list index plus one memcpy — no Parquet decode at all."""
        if self._cached is None:
            self._cached = (-1, self._read(list(range(len(self._starts) - 1)), threads=False))
        return self._cached[1]

    def _group(self, g: int) -> Block:
        if self._cached is not None and self._cached[0] == g:
            return self._cached[1]
        # One small group: worker threads cost more than they save (measured ~25% CPU).
        block = self._read([g], threads=False)
        self._cached = (g, block)
        return block

    def row(self, i: int) -> dict[str, Any]:
        """Row ``i`` of the part."""
        if self._raw is not None:
            return self._small_block().row(i)
        g = bisect_right(self._starts, i) - 1
        return self._group(g).row(i - int(self._starts[g]))

    def blocks(self, rows_per_block: int = 256) -> Iterator[Block]:
        """Blocks covering the part in order (whole row groups, about ``rows_per_block`` rows each)."""
        if self._raw is not None:
            if self.num_rows:
                yield self._small_block()
            return
        n_groups = len(self._starts) - 1
        per = max(1, rows_per_block // max(1, int(self._starts[1] - self._starts[0]) if n_groups else 1))
        for g0 in range(0, n_groups, per):
            yield self._read(list(range(g0, min(n_groups, g0 + per))), threads=True)

    def features(self, i: int) -> np.ndarray:
        """Only the features of row ``i`` (one ``pread`` on the fast path)."""
        return self._raw(i) if self._raw is not None else self.row(i)["features"]

    def close(self) -> None:
        """Drop the file handle."""
        self._file = None  # type: ignore[assignment]
        self._plain = None
        self._cached = None
        if self._raw is not None:
            self._raw.close()
