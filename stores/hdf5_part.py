"""HDF5 part files.

Layout of ``part-NNNNN.h5`` (``data/part-NNNNN.h5`` in a schema-2 store, the same file layout as
version 1; root group; ``R`` = total regions of the part):

* ``image_id``, ``file``: variable-length UTF-8 strings ``[n]`` (h5py hands them out as ``bytes``;
  ``f["image_id"].asstr()[()]`` gives ``str``); ``width``, ``height`` int32 ``[n]``;
  ``num_regions`` int16 ``[n]``; ``offsets`` int64 ``[n+1]`` (row i owns regions ``offsets[i]:offsets[i+1]``).
* ``features`` ``[R, D]`` float16/float32, chunked ``(K, D)`` so that for fixed K one chunk is one
  image (a lookup touches exactly one chunk and fits h5py's 1 MiB chunk cache); variable K uses
  36-region chunks. ``boxes`` ``[R,4]``, ``geometry`` ``[R,5]``, ``object_ids``/``attr_ids`` int16 ``[R]``,
  ``object_conf``/``attr_conf`` float32 ``[R]`` (contiguous: they are small).
* No compression: float features compress by 0-25% and any filter costs read time (docs/reference/region-store.md).
* Checks on read (:mod:`stores.integrity`): ``feature_checksum`` uint64 ``[n]``, one per image, checked
  after every read of a row's features; every other dataset carries the CRC32 of its values as the
  attribute ``itmflow.crc32``, checked when the reader loads it (whole, once per part and process).
  Parts without them (older ones) are read unchecked.

The part is written under a temporary name, closed, fsynced, hashed and only then renamed, so no
half-written HDF5 file can ever be named a part.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from itmflow.errors import StoreCorruptError, StoreError
from stores.block import Block, LazyRows
from stores.integrity import CHECKSUM_FIELD, CRC_ATTR, check_dataset, check_row, corrupt, dataset_crc
from stores.rawrows import RawRows, contiguous_runs
from stores.schema import FORMAT, REGION_FIELDS, SCALAR_FIELDS, SCHEMA_VERSION, StoreSettings, stored_counts

_VARIABLE_CHUNK_REGIONS = 36


def write_part(block: Block, settings: StoreSettings, path: str | os.PathLike[str], *,
               version: int = SCHEMA_VERSION) -> None:
    """Write ``block`` as an HDF5 part file at ``path`` (the committer fsyncs, hashes and renames it).

    For fixed K the feature chunks (one image each, no filters) are allocated when the dataset is
    created and their bytes are then written by :func:`_write_chunks` in a few large ``pwritev``
    calls, straight from the rows. libhdf5 writes one small ``pwrite`` per chunk, and the page
    cache then holds the part in small pages: reading it back cost ~12.5 µs per 147 KB image
    against ~8.6 µs for the same bytes written in large pieces (measured on ext4, kernel 6.18,
    2 cores). The file is an ordinary HDF5 file either way (h5py reads the same values; tested).
    The committer only ever renames a complete, closed file.
    """
    n_regions = int(block.offsets[-1])
    dim = settings.feature_dim
    k = settings.fixed_k
    raw_rows = k is not None and n_regions > 0 and block.feature_rows is not None
    chunk_offsets = None

    def small(fid: h5py.File, name: str, data: Any, **kw: Any) -> None:
        fid.create_dataset(name, data=data, **kw).attrs[CRC_ATTR] = np.uint32(dataset_crc(data))

    with h5py.File(path, "w", track_order=False) as fid:
        fid.attrs["format"] = FORMAT
        fid.attrs["schema_version"] = version
        fid.attrs["feature_dim"] = dim
        fid.attrs["feature_dtype"] = settings.feature_dtype
        str_type = h5py.string_dtype("utf-8")
        small(fid, "image_id", np.array(block.image_id, dtype=object), dtype=str_type)
        small(fid, "file", np.array(block.file, dtype=object), dtype=str_type)
        for name in SCALAR_FIELDS:
            small(fid, name, getattr(block, name))
        small(fid, "offsets", block.offsets.astype(np.int64))
        for name, arr in block.regions.items():
            if arr is not None:
                small(fid, name, arr)
        small(fid, CHECKSUM_FIELD, block.feature_checksums())
        if raw_rows:
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)  # every chunk placed now, so offsets are known
            ds = fid.create_dataset("features", shape=(n_regions, dim), dtype=settings.dtype, chunks=(k, dim),
                                    dcpl=dcpl, fill_time="never")
            chunk_offsets = _chunk_offsets(ds, k, len(block), k * dim * settings.dtype.itemsize)
        else:
            features = block.features if block.feature_rows is None else (
                np.concatenate(block.feature_rows, axis=0) if block.feature_rows
                else np.zeros((0, dim), dtype=settings.dtype))
            chunk_rows = k or _VARIABLE_CHUNK_REGIONS
            chunks = (min(chunk_rows, n_regions), dim) if n_regions else None
            fid.create_dataset("features", data=features, chunks=chunks)
    if chunk_offsets is not None:
        _write_chunks(Path(path), chunk_offsets, [np.ascontiguousarray(r, dtype=settings.dtype)
                                                  for r in block.feature_rows])  # type: ignore[union-attr]


def _chunk_offsets(ds: Any, k: int, n: int, nbytes: int) -> np.ndarray:
    """File offset of every image's chunk of a fixed-K features dataset; raises
    :class:`StoreCorruptError` for a chunk of another size, a filtered chunk or a missing chunk."""
    offs = np.full(n, -1, dtype=np.int64)

    def visit(info: Any) -> None:
        if info.size != nbytes or info.filter_mask or info.chunk_offset[1] != 0:
            raise StoreCorruptError(f"unexpected HDF5 chunk {info.chunk_offset} of {info.size} bytes")
        offs[info.chunk_offset[0] // k] = info.byte_offset

    ds.id.chunk_iter(visit)
    if (offs < 0).any():
        raise StoreCorruptError("not every feature chunk of the HDF5 part is allocated")
    return offs


#: Rows per ``pwritev`` (IOV_MAX is 1024 on Linux; 256 rows is ~38 MB at K=36, float16).
_ROWS_PER_WRITE = 256


def _write_chunks(path: Path, offsets: np.ndarray, rows: list[np.ndarray]) -> None:
    """Write each row's bytes at its chunk offset, one ``pwritev`` per run of adjacent chunks."""
    nbytes = rows[0].nbytes if rows else 0
    offs = offsets.tolist()
    fd = os.open(path, os.O_WRONLY)
    try:
        for i, j in contiguous_runs(offs, nbytes, 0, len(rows), _ROWS_PER_WRITE):
            want = nbytes * (j - i)
            done = os.pwritev(fd, rows[i:j], offs[i])
            if done != want:  # a short write: finish it byte-exactly, or say why not
                data = b"".join(r.tobytes() for r in rows[i:j])
                while done < want:
                    wrote = os.pwrite(fd, data[done:], offs[i] + done)
                    if wrote <= 0:
                        raise StoreError(f"{path}: the file system took only {done} of {want} bytes at offset "
                                         f"{offs[i]}; free some space and run again (the part is not committed)")
                    done += wrote
    finally:
        os.close(fd)


class HDF5PartReader:
    """Reads one HDF5 part; the file opens on first use (so a reader can be built, then forked).

    Every dataset other than the features is read whole once per process and checked against its
    CRC32 (~1.8 KB per image at K=36, kept; a lookup is then an index plus one ``pread``); each
    row's features are checked against their checksum whenever they are read.
    """

    def __init__(self, path: str | os.PathLike[str], settings: StoreSettings) -> None:
        self.path = Path(path)
        self.settings = settings
        self._fid: h5py.File | None = None
        self._pid = -1
        self._id_list: list[str] | None = None
        self._open()
        self.num_rows = len(self._offsets) - 1

    def _load(self, fid: h5py.File, name: str) -> Any:
        """Dataset ``name`` read whole and checked against its CRC32 attribute (when it has one)."""
        ds = fid[name]
        try:
            values = list(ds.asstr()[()]) if ds.dtype.kind == "O" else ds[()]
            expected = ds.attrs.get(CRC_ATTR)
        except (OSError, KeyError, ValueError, UnicodeDecodeError) as exc:
            raise corrupt(self.path, f"dataset {name!r} cannot be read ({exc})") from exc
        check_dataset(self.path, name, values, expected)
        return values

    def _open(self) -> h5py.File:
        # A handle inherited through fork shares libhdf5 state with the parent and can return wrong
        # data (pytorch #11929); reopen in every process.
        if self._fid is None or self._pid != os.getpid():
            try:
                # No chunk cache: a fixed-K chunk is exactly one image, read once, so HDF5 can copy it
                # straight into the result (the default 1 MiB cache adds a copy; measured 1.5-2x).
                self._fid = h5py.File(self.path, "r", rdcc_nbytes=0)
                self._fid["offsets"]
            except (OSError, KeyError) as exc:
                raise StoreCorruptError(f"{self.path}: not a readable region part ({exc}); run "
                                        "`itmflow store verify`") from exc
            self._pid = os.getpid()
            missing = [n for n in ("image_id", "file", *SCALAR_FIELDS, "features",
                                   *self.settings.present_region_fields()) if n not in self._fid]
            if missing:
                raise StoreCorruptError(f"{self.path}: datasets {missing} are missing; the part does not "
                                        "match the manifest")
            self._offsets = self._load(self._fid, "offsets")
            self._scalars = {n: self._load(self._fid, n) for n in SCALAR_FIELDS}
            # Per-image feature checksums; None for a part written before they existed.
            self._sums: list[int] | None = (self._load(self._fid, CHECKSUM_FIELD).tolist()
                                            if CHECKSUM_FIELD in self._fid else None)
            if self._sums is not None and len(self._sums) != len(self._offsets) - 1:
                raise corrupt(self.path, f"{len(self._sums)} feature checksums for {len(self._offsets) - 1} rows")
            # Dataset objects looked up once: a name lookup per read costs as much as a small read.
            self._ds = {n: self._fid[n] for n in ("features", *self.settings.present_region_fields())}
            self._map_chunks()
            self._files: list[str] | None = None
            self._regions: dict[str, np.ndarray | None] | None = None
        return self._fid

    def _map_chunks(self) -> None:
        """For fixed K without filters, find each image's chunk in the file.

        Every chunk is then one plain run of bytes: a row is one ``pread`` (:class:`RawRows`),
        without libhdf5's per-chunk B-tree lookup (which dominated sequential-read CPU). Anything
        unexpected (filters, other chunk shapes, byte order, a short file) keeps the h5py path.
        """
        self._raw: RawRows | None = None
        ds, k, dim = self._ds["features"], self.settings.fixed_k, self.settings.feature_dim
        n = len(self._offsets) - 1
        if (k is None or n == 0 or ds.chunks != (k, dim) or ds.dtype != self.settings.dtype
                or ds.id.get_create_plist().get_nfilters() or not hasattr(ds.id, "chunk_iter")):
            return
        nbytes = k * dim * ds.dtype.itemsize
        try:
            offs = _chunk_offsets(ds, k, n, nbytes)
        except Exception:  # old HDF5 without H5Dchunk_iter, or an unexpected layout
            return
        if int(offs.max()) + nbytes > self.path.stat().st_size:
            return
        self._raw = RawRows(self.path, offs, nbytes, self.settings.dtype, (k, dim), self._sums)

    def _load_names(self) -> None:
        fid = self._open()
        if self._files is None:
            self._ids = self.ids()
            self._files = self._load(fid, "file")

    def ids(self) -> list[str]:
        """The image ids in row order (read once; the store reader asks when it opens)."""
        if self._id_list is None:
            self._id_list = self._load(self._open(), "image_id")
        return list(self._id_list)

    def _region_arrays(self) -> dict[str, np.ndarray | None]:
        """Every per-region dataset of the part, read whole, checked and kept (read-only)."""
        self._open()
        if self._regions is None:
            regions: dict[str, np.ndarray | None] = {}
            for name in REGION_FIELDS:
                if name in self.settings.absent_fields:
                    regions[name] = None
                    continue
                arr = self._read_region(name)
                check_dataset(self.path, name, arr, self._ds[name].attrs.get(CRC_ATTR))
                arr.flags.writeable = False  # rows hand out views of it
                regions[name] = arr
            self._regions = regions
        return self._regions

    def _read_region(self, name: str) -> np.ndarray:
        """A per-region dataset, whole; read straight from the file (one ``pread``, no GIL) when it is
        an unfiltered contiguous little-endian dataset, as this writer makes them."""
        ds = self._ds[name]
        offset = ds.id.get_offset() if self._raw is not None else None
        dtype = ds.dtype
        if (offset is None or ds.chunks is not None or dtype.byteorder == ">"
                or ds.id.get_create_plist().get_nfilters()):
            try:
                return ds[()]
            except OSError as exc:
                raise corrupt(self.path, f"dataset {name!r} cannot be read ({exc})") from exc
        count = int(np.prod(ds.shape, dtype=np.int64))
        return self._raw.read_span(offset, count, dtype).reshape(ds.shape)  # type: ignore[union-attr]

    def _checked_features(self, a: int, b: int, start: int, stop: int) -> np.ndarray:
        """Regions ``a:b`` (rows ``start:stop``) of the features through h5py, each row checked."""
        try:
            feats = self._ds["features"][a:b]
        except OSError as exc:
            raise corrupt(self.path, f"features of rows {start}-{stop - 1} cannot be read ({exc})") from exc
        if self._sums is not None:
            for i in range(start, stop):
                check_row(self.path, i, feats[int(self._offsets[i]) - a:int(self._offsets[i + 1]) - a],
                          self._sums[i])
        return feats

    def row(self, i: int) -> dict[str, Any]:
        """Row ``i`` of the part."""
        self._load_names()
        a, b = int(self._offsets[i]), int(self._offsets[i + 1])
        out: dict[str, Any] = {"image_id": self._ids[i], "file": self._files[i]}
        for name in SCALAR_FIELDS:
            out[name] = int(self._scalars[name][i])
        for name, arr in self._region_arrays().items():
            out[name] = None if arr is None else arr[a:b]
        out["features"] = self._raw(i) if self._raw is not None else self._checked_features(a, b, i, i + 1)
        return out

    def read_block(self, start: int, stop: int) -> Block:
        """Rows ``start:stop`` as a block."""
        self._open()
        a, b = int(self._offsets[start]), int(self._offsets[stop])
        where = f"{self.path} rows {start}-{stop - 1}"
        feats, feature_rows = None, None
        if self._raw is not None:
            # Copied row by row when a row is taken, not for the whole block up front: the consumer
            # usually drops a row before taking the next, so the allocator recycles one buffer.
            feature_rows = LazyRows(self._raw, start, stop)
        else:
            feats = self._checked_features(a, b, start, stop)
        if feats is not None and (feats.shape[1:] != (self.settings.feature_dim,) or feats.dtype != self.settings.dtype):
            raise StoreCorruptError(f"{where}: features are {feats.dtype}{list(feats.shape)}, the manifest "
                                    f"says {self.settings.feature_dtype}[*, {self.settings.feature_dim}]")
        regions = {name: None if arr is None else arr[a:b] for name, arr in self._region_arrays().items()}
        counts = self._scalars["num_regions"][start:stop]
        if not np.array_equal(np.diff(self._offsets[start:stop + 1]), stored_counts(counts, self.settings)):
            raise StoreCorruptError(f"{where}: offsets disagree with num_regions")
        self._load_names()
        return Block(image_id=self._ids[start:stop], file=self._files[start:stop],
                     width=self._scalars["width"][start:stop], height=self._scalars["height"][start:stop],
                     num_regions=counts, offsets=self._offsets[start:stop + 1] - a,
                     features=feats, regions=regions, feature_rows=feature_rows)

    def blocks(self, rows_per_block: int = 256) -> Iterator[Block]:
        """Blocks covering the part in order (the whole part as one block when the features are read
        from their chunks: the block then holds ~1.8 KB per image, and each dataset is read once)."""
        step = self.num_rows if self._raw is not None else rows_per_block
        for start in range(0, self.num_rows, max(1, step)):
            yield self.read_block(start, min(self.num_rows, start + step))

    def features(self, i: int) -> np.ndarray:
        """Only the features of row ``i`` (one ``pread`` on the fast path)."""
        return self._raw(i) if self._raw is not None else self.row(i)["features"]

    def close(self) -> None:
        """Close the file (if this process opened it)."""
        if self._fid is not None and self._pid == os.getpid():
            self._fid.close()
        self._fid = None
        self._regions = None
        if self._raw is not None:
            self._raw.close()
