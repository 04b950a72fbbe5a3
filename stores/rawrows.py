"""Per-image feature bytes read straight from a part file at known offsets.

Both part formats keep a fixed-K image's features as one contiguous run of bytes (an HDF5 chunk;
the tail of a Parquet data page). When the offsets are known, no decoder is needed:

* a lookup is one ``pread`` into a fresh array (the kernel copies from the page cache);
* rows read in order (:meth:`RawRows.in_order`) are copied out of a read-only mapping of the
  part, and each row's checksum (:mod:`stores.integrity`) is summed *in the same pass* as the copy
  (:func:`copy_and_checksum`, compiled with numba), so checking costs almost nothing on top of the
  copy: measured at K=36, float16, ~16.5 µs per 147 KB row against ~14.4 µs for a raw memmap copy,
  where a copy and then a separate sum cost ~19 µs (the sum re-reads the row). Without numba the
  rows go 4 per ``preadv`` and are summed after the copy.

With ``checksums`` (one per row) every row is checked before it is handed out; a mismatch raises
``StoreCorruptError``. :meth:`RawRows.read_bytes` reads without checking, for a caller that checks
each row itself.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from itmflow.errors import StoreCorruptError
from stores.integrity import check_row


def _copy_and_sum_words(src: np.ndarray, dst: np.ndarray) -> int:
    """Copy ``src`` (uint64 words) into ``dst`` and return their sum modulo 2**64, in one pass
    (plain Python here; :func:`copy_and_checksum` compiles it)."""
    total = np.uint64(0)
    for i in range(src.shape[0]):
        word = src[i]
        dst[i] = word
        total += word
    return total


_KERNEL: list[Callable[[np.ndarray, np.ndarray], int]] = []


def copy_and_checksum() -> Callable[[np.ndarray, np.ndarray], int] | None:
    """The compiled one-pass copy + :func:`stores.integrity.feature_checksum` over uint64 words
    (numba, compiled on first use in a process, ~0.2 s; cached on disk where numba can), or None
    when numba is not installed (the rows are then copied, then summed)."""
    if not _KERNEL:
        try:
            import numba
        except ImportError:  # an optional speed-up: the two-pass path reads the same bytes
            return None
        _KERNEL.append(numba.njit(nogil=True, cache=True)(_copy_and_sum_words))
    return _KERNEL[0]


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
        self._fill_rows([buf], i)
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
        if not self._words or int(_SUM(buf.reshape(-1).view(_WORD))) != want:
            check_row(self.path, i, buf, want)  # the general sum; raises naming store, part and row

    def in_order(self, start: int, stop: int, per_call: int) -> Iterator[np.ndarray]:
        """Rows ``start:stop`` in order, each a fresh array checked as it is handed out: the rows
        before a damaged one are handed out, then it raises.

        With checksums and numba, from a read-only mapping of the part, copied and summed in one
        pass (module docstring), the mapping closed when the rows are done; otherwise ``per_call``
        rows per ``preadv``, summed after the copy (4 rows stay in L2 for the sum). Either way the
        checks run in this thread: a helper thread reading while this one checks cost ~7 µs more
        CPU per row (GIL hand-overs, the bytes in the other core's cache).
        """
        kernel = copy_and_checksum() if self.checksums is not None and self.nbytes % 8 == 0 else None
        if kernel is not None and stop > start:
            return self._mapped_in_order(start, stop, kernel)
        return self._preadv_in_order(start, stop, per_call)

    def _mapped_in_order(self, start: int, stop: int,
                         kernel: Callable[[np.ndarray, np.ndarray], int]) -> Iterator[np.ndarray]:
        offsets, nbytes, shape, dtype = self.offsets, self.nbytes, self.shape, self.dtype
        sums: list[int] = self.checksums  # type: ignore[assignment]
        with open(self.path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            end = max(offsets[start:stop]) + nbytes
            if end > size:  # mapped bytes past the end would be a SIGBUS, not an error
                raise StoreCorruptError(f"{self.path}: rows {start}-{stop - 1} need {end} bytes, the file "
                                        f"has {size} (truncated?); run `itmflow store verify`")
            mapping = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        words = np.frombuffer(mapping, dtype=np.uint8)
        try:
            for i in range(start, stop):
                row = np.empty(shape, dtype)
                a = offsets[i]
                if int(kernel(words[a:a + nbytes].view(_WORD), row.reshape(-1).view(_WORD))) != sums[i]:
                    check_row(self.path, i, row, sums[i])  # raises naming store, part and row
                yield row
        finally:
            del words
            try:
                mapping.close()
            except BufferError:  # a view still held (a traceback being handled): closed when collected
                pass

    def _preadv_in_order(self, start: int, stop: int, per_call: int) -> Iterator[np.ndarray]:
        for a in range(start, stop, per_call):
            bufs = [np.empty(self.shape, self.dtype) for _ in range(min(stop, a + per_call) - a)]
            self._fill_rows(bufs, a)
            bufs.reverse()
            i = a
            while bufs:
                buf = bufs.pop()  # popped: a row handed out is no longer held here
                self.check(buf, i)
                i += 1
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
        self._fill_rows(bufs, start)
        return bufs

    def _fill_rows(self, bufs: list[np.ndarray], start: int) -> None:
        """Read rows ``start:start + len(bufs)`` into ``bufs``, one ``preadv`` per run of rows that
        lie back to back in the file."""
        for i, j in contiguous_runs(self.offsets, self.nbytes, start, start + len(bufs)):
            self._pread(bufs[i - start:j - start], self.offsets[i], f"rows {i}-{j - 1}")

    def read_span(self, offset: int, count: int, dtype: np.dtype) -> np.ndarray:
        """``count`` values of ``dtype`` at byte ``offset`` of the same file (a contiguous dataset)."""
        out = np.empty(count, dtype=dtype)
        if out.nbytes:
            self._pread([out], offset, f"{out.nbytes} bytes")
        return out

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
