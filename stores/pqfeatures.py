"""Writing a schema-2 Parquet part's feature column straight from the rows' buffers.

pyarrow cannot write a list column from the buffer as it is: it computes a repetition and a
definition level per value (73,728 per image at K=36, D=2048), RLE-encodes them and copies each
2-byte float16 value on its own — ~250 MB per CPU-second, against ~1,300 for v1's byte column.
Yet the page it produces is simple: a data page header, the RLE levels (one run per row for the
repetition levels, one run for the definition levels) and the PLAIN values, which are exactly the
rows' little-endian bytes. So a part is written in two steps:

1. pyarrow writes the part with every column but with a one-value placeholder per row in place of
   the features (same Parquet type: a LIST of optional FLOAT16 / FLOAT);
2. the footer is parsed (Thrift compact protocol), the placeholder's column chunks are replaced by
   chunks written here — header, levels and the rows' buffers with one ``pwritev`` per row group,
   page CRC32 included — appended after the other columns; the footer is rewritten with their
   offsets and sizes and with the ``ARROW:schema`` of the real table. The placeholder's few bytes
   stay in the file, unreferenced.

Readers see an ordinary Parquet file (pyarrow, DuckDB, polars read it: tests/stores); the bytes
are deterministic. Anything unexpected in the footer raises :class:`SpliceError`, and the caller
writes the part with pyarrow alone instead.
"""

from __future__ import annotations

import errno
import io
import os
import struct
import zlib
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# -- Thrift compact protocol (just what a Parquet footer uses) ---------------------------------------
_STOP, _TRUE, _FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT = range(13)


class SpliceError(ValueError):
    """The footer is not what the splice expects: write the part with pyarrow alone."""


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _zz(n: int) -> int:
    return (n << 1) ^ (n >> 63)


class ThriftReader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def byte(self) -> int:
        b = self.data[self.pos]
        self.pos += 1
        return b

    def varint(self) -> int:
        shift = out = 0
        while True:
            b = self.byte()
            out |= (b & 0x7F) << shift
            if not b & 0x80:
                return out
            shift += 7

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def value(self, t: int) -> Any:
        if t in (_TRUE, _FALSE):
            return t == _TRUE
        if t == _BYTE:
            return struct.unpack("b", bytes([self.byte()]))[0]
        if t in (_I16, _I32, _I64):
            return self.zigzag()
        if t == _DOUBLE:
            v = struct.unpack("<d", self.data[self.pos:self.pos + 8])[0]
            self.pos += 8
            return v
        if t == _BINARY:
            n = self.varint()
            v = self.data[self.pos:self.pos + n]
            self.pos += n
            return v
        if t in (_LIST, _SET):
            h = self.byte()
            size, et = h >> 4, h & 0x0F
            if size == 15:
                size = self.varint()
            if et in (_TRUE, _FALSE):
                return (et, [self.byte() == 1 for _ in range(size)])
            return (et, [self.value(et) for _ in range(size)])
        if t == _STRUCT:
            return self.struct()
        raise SpliceError(f"thrift type {t} not supported")

    def struct(self) -> list[list[Any]]:
        fields: list[list[Any]] = []
        last = 0
        while True:
            h = self.byte()
            if h == _STOP:
                return fields
            t, delta = h & 0x0F, h >> 4
            fid = last + delta if delta else self.zigzag()
            fields.append([fid, t, self.value(t)])
            last = fid


def _write_value(out: bytearray, t: int, v: Any) -> None:
    if t in (_TRUE, _FALSE):
        return
    if t == _BYTE:
        out += struct.pack("b", v)
    elif t in (_I16, _I32, _I64):
        out += _varint(_zz(v) & ((1 << 64) - 1))
    elif t == _DOUBLE:
        out += struct.pack("<d", v)
    elif t == _BINARY:
        out += _varint(len(v)) + bytes(v)
    elif t in (_LIST, _SET):
        et, items = v
        out.append((len(items) << 4 | et) if len(items) < 15 else (0xF0 | et))
        if len(items) >= 15:
            out += _varint(len(items))
        for item in items:
            if et in (_TRUE, _FALSE):
                out.append(1 if item else 2)
            else:
                _write_value(out, et, item)
    elif t == _STRUCT:
        _write_struct(out, v)
    else:
        raise SpliceError(f"thrift type {t} not supported")


def _write_struct(out: bytearray, fields: list[list[Any]]) -> None:
    last = 0
    for fid, t, v in fields:
        wt = (_TRUE if v else _FALSE) if t in (_TRUE, _FALSE) else t
        if 0 < fid - last <= 15:
            out.append((fid - last) << 4 | wt)
        else:
            out.append(wt)
            out += _varint(_zz(fid))
        _write_value(out, t, v)
        last = fid
    out.append(_STOP)


def _get(fields: list[list[Any]], fid: int) -> list[Any]:
    for f in fields:
        if f[0] == fid:
            return f
    raise SpliceError(f"thrift field {fid} missing")


def _set(fields: list[list[Any]], fid: int, t: int, v: Any) -> None:
    for f in fields:
        if f[0] == fid:
            f[1], f[2] = t, v
            return
    fields.append([fid, t, v])
    fields.sort(key=lambda f: f[0])


def _drop(fields: list[list[Any]], *fids: int) -> None:
    fields[:] = [f for f in fields if f[0] not in fids]


def _pwrite_all(fd: int, bufs: list[Any], pos: int) -> int:
    """Write ``bufs`` at ``pos`` (one ``pwritev``; a short write is continued piece by piece, so a
    full disk or a file-size limit raises its own OSError: ENOSPC, EFBIG). Returns the end offset."""
    want = sum(len(b) for b in bufs)
    done = os.pwritev(fd, bufs, pos)
    if done == want:
        return pos + want
    skip = done
    for b in bufs:
        view = memoryview(b).cast("B")
        if skip >= len(view):
            skip -= len(view)
            continue
        view, skip = view[skip:], 0
        while len(view):
            n = os.pwrite(fd, view, pos + done)
            if n <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            view, done = view[n:], done + n
    return pos + want


# -- the feature pages --------------------------------------------------------------------------------
def _rle(run: int, value: int) -> bytes:
    """One RLE run of the hybrid encoding (bit width <= 8: the value takes one byte)."""
    return _varint(run << 1) + bytes([value])


def _page(rows: Sequence[np.ndarray], per_row: Sequence[int], max_def: int) -> tuple[bytes, list[Any], int]:
    """Header + levels of one data page over ``rows`` (values follow, not copied), and its size."""
    total = int(sum(per_row))
    rep = b"".join(_rle(1, 0) + (_rle(n - 1, 1) if n > 1 else b"") for n in per_row)
    deflv = _rle(total, max_def)
    levels = struct.pack("<I", len(rep)) + rep + struct.pack("<I", len(deflv)) + deflv
    crc = zlib.crc32(levels)
    nbytes = len(levels)
    for r in rows:
        crc = zlib.crc32(memoryview(r).cast("B"), crc)
        nbytes += r.nbytes
    header = bytearray()
    _write_struct(header, [[1, _I32, 0], [2, _I32, nbytes], [3, _I32, nbytes],
                           [4, _I32, struct.unpack("<i", struct.pack("<I", crc))[0]],
                           [5, _STRUCT, [[1, _I32, total], [2, _I32, 0], [3, _I32, 3], [4, _I32, 3]]]])
    return bytes(header) + levels, [], len(header) + nbytes


def write_with_features(table: pa.Table, features_type: pa.DataType, rows: Sequence[np.ndarray],
                        path: str | os.PathLike[str], row_group_rows: int, **write_kw: Any) -> None:
    """Write ``table`` (its last column a one-value-per-row placeholder for the features) to ``path``
    with pyarrow, then splice in the real feature column (``features_type``; row ``i``'s values are
    ``rows[i]``, C-contiguous). Raises :class:`SpliceError` when the footer is not as expected."""
    if table.schema.names[-1] != "features" or any(r.size == 0 for r in rows):
        raise SpliceError("features must be the last column and every row non-empty")
    pq.write_table(table, path, row_group_size=row_group_rows, **write_kw)
    real = table.schema.set(len(table.schema) - 1, table.schema.field("features").with_type(features_type))
    buf = io.BytesIO()
    pq.write_table(real.empty_table(), buf, **write_kw)
    arrow_schema = pq.read_metadata(io.BytesIO(buf.getvalue())).metadata[b"ARROW:schema"]

    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        tail = os.pread(fd, 8, size - 8)
        if tail[4:] != b"PAR1":
            raise SpliceError("not a Parquet file")
        flen = struct.unpack("<I", tail[:4])[0]
        start = size - 8 - flen
        meta = ThriftReader(os.pread(fd, flen, start)).struct()
        groups = _get(meta, 4)[2][1]
        n_cols = len(_get(groups[0], 1)[2][1])
        if any(len(_get(g, 1)[2][1]) != n_cols for g in groups):
            raise SpliceError("row groups differ in columns")
        schema = _get(meta, 2)[2][1]
        names = [bytes(_get(e, 4)[2]) for e in schema[-3:]]
        leaf_type = [f[2] for f in schema[-1] if f[0] == 1]
        if names[0] != b"features" or leaf_type not in ([7], [4]):  # FIXED_LEN_BYTE_ARRAY(2) / FLOAT
            raise SpliceError(f"unexpected feature schema {names} {leaf_type}")
        # definition level of a present value: one per non-required level on the path
        max_def = sum(1 for e in schema[-3:] if [f[2] for f in e if f[0] == 3] != [0])
        offset, first = start, 0
        for g in groups:
            n = _get(g, 3)[2]
            chunk = _get(g, 1)[2][1][-1]
            cmd = _get(chunk, 3)[2]
            if _get(cmd, 3)[2][1][0] != b"features" or _get(cmd, 4)[2] != 0:
                raise SpliceError("last column is not an uncompressed 'features'")
            group_rows = rows[first:first + n]
            per_row = [int(r.size) for r in group_rows]
            head, _, chunk_bytes = _page(group_rows, per_row, max_def)
            parts = [head] + [memoryview(r).cast("B") for r in group_rows]
            pos = offset
            for i in range(0, len(parts), 512):  # IOV_MAX is 1024
                pos = _pwrite_all(fd, parts[i:i + 512], pos)
            old = _get(cmd, 7)[2]
            _set(cmd, 5, _I64, int(sum(per_row)))
            _set(cmd, 6, _I64, chunk_bytes)
            _set(cmd, 7, _I64, chunk_bytes)
            _set(cmd, 9, _I64, offset)
            _drop(cmd, 11, 12, 16)  # no dictionary page; statistics and size statistics were the placeholder's
            _set(chunk, 2, _I64, offset)
            _drop(chunk, 4, 5, 6, 7)  # page index entries (not written) would point at the placeholder
            for fid in (2, 6):  # the row group's sizes
                f = [x for x in g if x[0] == fid]
                if f:
                    f[0][2] += chunk_bytes - old
            offset += chunk_bytes
            first += n
        if first != len(rows):
            raise SpliceError("row groups do not cover the rows")
        for kv in _get(meta, 5)[2][1]:
            if _get(kv, 1)[2] == b"ARROW:schema":
                _set(kv, 2, _BINARY, arrow_schema)
        footer = bytearray()
        _write_struct(footer, meta)
        footer += struct.pack("<I", len(footer) - 0) + b"PAR1"
        _pwrite_all(fd, [memoryview(bytes(footer))], offset)
        os.ftruncate(fd, offset + len(footer))
    finally:
        os.close(fd)
