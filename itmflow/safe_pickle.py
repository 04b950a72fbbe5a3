"""A restricted unpickler for checkpoints distributed as pickles (e.g. the airsplay ``.pkl``).

Only numpy arrays, numpy scalars/dtypes and plain containers are admitted; any other global a
pickle asks for raises :class:`UnsafeCheckpointError` naming it, so a hostile file cannot run code.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
from typing import Any, BinaryIO

from itmflow.errors import UnsafeCheckpointError

_ALLOWED: dict[tuple[str, str], Any] = {}


def _allow() -> None:
    import numpy as np

    import codecs

    allowed = {
        # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(text, "latin1"); it is a
        # pure conversion, so admitting it lets py3-written detectron2 .pkl files load.
        ("_codecs", "encode"): codecs.encode,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "dict"): dict,
        ("builtins", "list"): list,
        ("builtins", "tuple"): tuple,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "slice"): slice,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    # numpy moved its reconstruct helpers from numpy.core to numpy._core in 2.0; pickles written by
    # either version name one of the two modules.
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]

    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    # Protocol 5 pickles rebuild arrays from a raw buffer (no code runs).
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(module, "_frombuffer")] = numeric._frombuffer
    _ALLOWED.update(allowed)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that admits numpy arrays and plain containers only."""

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        if not _ALLOWED:
            _allow()
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"the pickle asks for {module}.{name}, which is not allowed (only numpy arrays and "
                "plain containers are); convert the checkpoint to .pth/.safetensors or check its origin"
            ) from None


def restricted_load(source: str | os.PathLike[str] | BinaryIO | bytes) -> Any:
    """Load a pickle through :class:`RestrictedUnpickler` (latin1 for Python 2 pickles)."""
    if isinstance(source, bytes):
        return RestrictedUnpickler(io.BytesIO(source), encoding="latin1").load()
    if hasattr(source, "read"):
        return RestrictedUnpickler(source, encoding="latin1").load()  # type: ignore[arg-type]
    with open(source, "rb") as handle:
        return RestrictedUnpickler(handle, encoding="latin1").load()
