"""Per-image feature bytes read straight from a part file at known offsets.

Both part formats keep a fixed-K image's features as one contiguous run of bytes (an HDF5 chunk;
the tail of a Parquet data page). When the offsets are known, a row is one ``pread`` into a fresh
array: the kernel copies from the page cache, as for a raw memmap, with no decoder in between and
no page-table faults of a mapping (measured: a mapping made the first pass over a file ~2x slower).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from itmflow.errors import StoreCorruptError


class RawRows:
    """Row ``i`` = ``nbytes`` at ``offsets[i]`` of ``path``, viewed as ``dtype`` of ``shape``."""

    def __init__(self, path: Path, offsets: np.ndarray, nbytes: int, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        self.path, self.nbytes, self.dtype, self.shape = path, nbytes, dtype, shape
        self.offsets: list[int] = [int(o) for o in offsets]  # Python ints: cheaper per row
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
        fd = self._fd if self._pid == os.getpid() else self._descriptor()
        got = os.preadv(fd, [buf], self.offsets[i])
        if got != self.nbytes:
            raise StoreCorruptError(f"{self.path}: row {i} needs {self.nbytes} bytes at offset {self.offsets[i]}, "
                                    f"the file gave {got} (truncated?); run `itmflow store verify`")
        return buf.view(self.dtype).reshape(self.shape)

    def close(self) -> None:
        """Close this process's descriptor."""
        if self._fd >= 0 and self._pid == os.getpid():
            os.close(self._fd)
        self._fd, self._pid = -1, -1
