"""``resolve_device``: the torch device a ``--device`` option names.

It stays here until it moves to the core (:mod:`itmflow`); the training itself is the
:mod:`trainers.training` package.
"""

from __future__ import annotations

import torch

from itmflow.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device {name!r} is not a valid torch device: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but torch sees no CUDA device; use --device cpu")
    return device
