"""``resolve_device``: the torch device a ``--device`` option names (one owner for every package)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from itmflow.errors import ConfigError

if TYPE_CHECKING:  # torch is imported when a device is resolved, not when the core is imported
    import torch


def resolve_device(name: str) -> "torch.device":
    """``auto`` → CUDA when available, else CPU; anything else is passed to ``torch.device``.

    A CUDA device asked for on a machine where torch sees none is refused with a
    :class:`~itmflow.errors.ConfigError` that says to use ``--device cpu``.
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device {name!r} is not a valid torch device: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but torch sees no CUDA device; use --device cpu")
    return device
