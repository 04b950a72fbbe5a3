"""Keep a long-running CPU detector process's memory flat when image sizes vary.

Measured in a plain process calling the BUTD detector on random-size images (docs/guide/extraction.md,
"Memory over a long run"): resident memory rose for as long as new shapes kept coming, for two reasons.

1. Per-shape caches of oneDNN convolutions: ideep's LRU cache (``LRU_CACHE_CAPACITY``, 1024
   entries by default) and oneDNN's primitive cache (``ONEDNN_PRIMITIVE_CACHE_CAPACITY``, 1024).
   With the sizes of a real collection almost every batch brings new shapes, so both fill up
   with entries that are never hit again. Capping them at 64 kept the in-use heap constant at no
   measurable cost in CPU time per image.
2. glibc malloc fragmentation: activations of ever-different sizes leave free chunks in the heap
   that glibc keeps (RSS counts them). ``malloc_trim(0)`` after each batch hands them back
   (about 0.2 ms a call).

:func:`limit_shape_caches` only works if it runs before ``import torch`` in the process (setting
the variables after the import, even before the first convolution, left the growth in place):
the extraction worker module calls it at import, ahead of torch; :class:`detectors.butd.BUTDDetector`
calls it too (effective only where torch is not loaded yet) and :func:`release_free_heap` after
every batch. A value already in the environment is kept.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

#: Entries each shape cache may hold (the libraries' default is 1024).
SHAPE_CACHE_CAPACITY = 64
_CACHE_VARIABLES = ("LRU_CACHE_CAPACITY", "ONEDNN_PRIMITIVE_CACHE_CAPACITY")

_libc: ctypes.CDLL | None = None
_libc_checked = False


def limit_shape_caches(capacity: int = SHAPE_CACHE_CAPACITY) -> dict[str, str]:
    """Cap the oneDNN / ideep per-shape caches of this process (unless the user set them).

    Returns the values set. Takes effect only if torch has not been imported in this process yet.
    """
    for name in _CACHE_VARIABLES:
        os.environ.setdefault(name, str(capacity))
    return {name: os.environ[name] for name in _CACHE_VARIABLES}


def shape_cache_env(capacity: int = SHAPE_CACHE_CAPACITY) -> dict[str, str]:
    """The cache caps as environment variables for a process about to start (a Ray actor's
    ``runtime_env``), keeping any value the user set in this process's environment."""
    return {name: os.environ.get(name, str(capacity)) for name in _CACHE_VARIABLES}


def _glibc() -> ctypes.CDLL | None:
    global _libc, _libc_checked
    if not _libc_checked:
        _libc_checked = True
        if sys.platform.startswith("linux"):
            try:
                lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                if hasattr(lib, "malloc_trim"):  # glibc only (musl has none)
                    _libc = lib
            except OSError:
                _libc = None
    return _libc


def release_free_heap() -> bool:
    """Return the heap's free pages to the OS (glibc ``malloc_trim(0)``); False where unavailable."""
    lib = _glibc()
    if lib is None:
        return False
    lib.malloc_trim(0)
    return True


__all__ = ["SHAPE_CACHE_CAPACITY", "limit_shape_caches", "release_free_heap"]
