"""Per-image feature bytes read straight from a part file at known offsets.

Both part formats keep a fixed-K image's features as one contiguous run of bytes (an HDF5 chunk;
the tail of a Parquet data page). When the offsets are known, a row is one ``pread`` into a fresh
array: the kernel copies from the page cache, as for a raw memmap, with no decoder in between and
no page-table faults of a mapping (measured: a mapping made the first pass over a file ~2x slower).
Rows read in order go several per ``preadv`` into separate arrays (:meth:`RawRows.read`): measured
on 147 KB rows, 8 rows per call cost 7.8 µs per row against 11 µs for one call per row.

With ``checksums`` (one per row, :mod:`stores.integrity`) every row is checked before it is handed
out; a mismatch raises ``StoreCorruptError``. :meth:`RawRows.read_bytes` reads without checking, for
a caller that checks each row itself as it hands it out (:class:`stores.block.LazyRows`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

from itmflow.errors import StoreCorruptError
from stores.integrity import check_row


def contiguous_runs(offsets: list[int], nbytes: int, start: int, stop: int,
                    limit: int | None = None) -> list[tuple[int, int]]:
    """``(i, j)`` runs of rows ``start:stop`` that lie back to back in the file (row ``r`` is
    ``nbytes`` at ``offsets[r]``), each at most ``limit`` rows long: one ``preadv``/``pwritev`` each."""
    runs, i = [], start
    while i < stop:
        j = i + 1
        while j < stop and (limit is None or j - i < limit) and offsets[j] == offsets[j - 1] + nbytes:
            j += 1
        runs.append((i, j))
        i = j
    return runs


_WORD = np.dtype("<u8")
_SUM = np.add.reduce


class RawRows:
    """Row ``i`` = ``nbytes`` at ``offsets[i]`` of ``path``, viewed as ``dtype`` of ``shape``; checked
    against ``checksums[i]`` on every read when ``checksums`` is given."""

    def __init__(self, path: Path, offsets: np.ndarray, nbytes: int, dtype: np.dtype, shape: tuple[int, ...],
                 checksums: np.ndarray | None = None) -> None:
        self.path, self.nbytes, self.dtype, self.shape = path, nbytes, dtype, shape
        self.offsets: list[int] = [int(o) for o in offsets]  # Python ints: cheaper per row
        # The sum of little-endian words is taken on the buffer itself when the row is whole words
        # (always at K=36); otherwise the general function pads the tail.
        self._words = nbytes % 8 == 0
        self.checksums: list[int] | None = None
        self.set_checksums(checksums)

    def set_checksums(self, checksums: np.ndarray | None) -> None:
        """Check every row read from now on against ``checksums`` (None: no checks)."""
        if checksums is not None and len(checksums) != len(self.offsets):
            raise StoreCorruptError(f"{self.path}: {len(checksums)} feature checksums for {len(self.offsets)} rows; "
                                    "run `itmflow store verify`")
        self.checksums = None if checksums is None else [int(c) for c in checksums]
        self._fd = -1
        self._pid = -1

    def _descriptor(self) -> int:
        # A descriptor inherited through fork shares its file position, harmless for pread, but a
        # worker must not close the parent's: every process opens its own.
        if self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDONLY)
            self._pid = os.getpid()
        return self._fd

    def __call__(self, i: int) -> np.ndarray:
        buf = np.empty(self.nbytes, dtype=np.uint8)
        self._fill([buf], i)
        self.check(buf, i)
        return self.view(buf)

    def view(self, buf: np.ndarray) -> np.ndarray:
        """A row's bytes (as read by :meth:`read_bytes`) viewed as ``dtype`` of ``shape``."""
        return buf.view(self.dtype).reshape(self.shape)

    def check(self, buf: np.ndarray, i: int) -> None:
        """Raise ``StoreCorruptError`` naming store, part and row when row ``i``'s bytes ``buf`` fail
        their checksum (nothing to check without checksums)."""
        if self.checksums is None:
            return
        want = self.checksums[i]
        if not self._words or int(buf.view(_WORD).sum()) != want:
            check_row(self.path, i, buf, want)  # the general sum; raises naming store, part and row

    def in_order(self, start: int, stop: int, per_call: int) -> Iterator[np.ndarray]:
        """Rows ``start:stop`` in order, ``per_call`` rows per ``preadv``, each checked as it is
        handed out: the rows before a damaged one are handed out, then it raises. Only the rows of
        the current call that are not yet handed out are held here.

        The sequential read path, kept to one loop: measured at K=36 it costs ~19 µs per 147 KB
        row on this box (copy ~15, checksum ~3.5), where the same steps through per-row method
        calls cost ~2 µs more. The checks run in this thread, not in a helper: a helper reading
        while this thread checks cost ~7 µs more CPU per row (GIL hand-overs, the bytes in the
        other core's cache), and a helper that reads and checks was slower in wall time too.
        """
        offsets, nbytes, shape, dtype = self.offsets, self.nbytes, self.shape, self.dtype
        sums = self.checksums
        # The sum is taken on the row itself when its last axis is whole words (always at D=2048).
        fast = sums is not None and (shape[-1] * np.dtype(dtype).itemsize) % 8 == 0 if shape else False
        for a in range(start, stop, per_call):
            b = min(stop, a + per_call)
            bufs = [np.empty(shape, dtype) for _ in range(b - a)]
            if offsets[b - 1] - offsets[a] == (b - 1 - a) * nbytes:  # back to back: one call
                self._pread(bufs, offsets[a], f"rows {a}-{b - 1}")
            else:
                for i, j in contiguous_runs(offsets, nbytes, a, b):
                    self._pread(bufs[i - a:j - a], offsets[i], f"rows {i}-{j - 1}")
            bufs.reverse()
            for i in range(a, b):
                buf = bufs.pop()  # popped: a row handed out is no longer held here
                if fast:
                    if int(_SUM(buf.view(_WORD), axis=None)) != sums[i]:  # type: ignore[index]
                        check_row(self.path, i, buf, sums[i])  # type: ignore[index]
                elif sums is not None:
                    check_row(self.path, i, buf, sums[i])
                yield buf

    def read(self, start: int, stop: int) -> list[np.ndarray]:
        """Rows ``start:stop``, each its own array and checked, with one ``preadv`` per run of rows that
        lie back to back in the file (rows of one Parquet row group; HDF5 chunks in write order)."""
        bufs = self.read_bytes(start, stop)
        for i, buf in enumerate(bufs, start):
            self.check(buf, i)
        return [self.view(b) for b in bufs]

    def read_bytes(self, start: int, stop: int) -> list[np.ndarray]:
        """The bytes of rows ``start:stop`` (uint8, one array each), not yet checked: pass each to
        :meth:`check` before use."""
        bufs = [np.empty(self.nbytes, dtype=np.uint8) for _ in range(stop - start)]
        for i, j in contiguous_runs(self.offsets, self.nbytes, start, stop):
            self._pread(bufs[i - start:j - start], self.offsets[i], f"rows {i}-{j - 1}")
        return bufs

    def read_span(self, offset: int, count: int, dtype: np.dtype) -> np.ndarray:
        """``count`` values of ``dtype`` at byte ``offset`` of the same file (a contiguous dataset)."""
        out = np.empty(count, dtype=dtype)
        if out.nbytes:
            self._pread([out], offset, f"{out.nbytes} bytes")
        return out

    def _fill(self, bufs: list[np.ndarray], i: int) -> None:
        self._pread(bufs, self.offsets[i], f"rows {i}-{i + len(bufs) - 1}")

    def _pread(self, bufs: list[np.ndarray], offset: int, what: str) -> None:
        fd = self._fd if self._pid == os.getpid() else self._descriptor()
        want = sum(b.nbytes for b in bufs)
        got = os.preadv(fd, bufs, offset)
        if got != want:
            raise StoreCorruptError(f"{self.path}: {what} need {want} bytes at offset {offset}, the file "
                                    f"gave {got} (truncated?); run `itmflow store verify`")

    def close(self) -> None:
        """Close this process's descriptor."""
        if self._fd >= 0 and self._pid == os.getpid():
            os.close(self._fd)
        self._fd, self._pid = -1, -1
