"""Checkpoints: our format (:mod:`~trainers.checkpoints.ours`: safetensors + JSON config) and
import of the authors' releases (:mod:`~trainers.checkpoints.authors`), behind one
:func:`load_model`."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from trainers.checkpoints.authors import (
    ImportReport,
    detect_kind,
    load_authors_checkpoint,
    read_torch_checkpoint,
)
from trainers.checkpoints.ours import (
    CONFIG_FILE,
    FORMAT,
    WEIGHTS_FILE,
    from_pretrained,
    load_strict,
    read_model_config,
    save_pretrained,
)
from trainers.models import MatchingModel


def load_model(source: str | os.PathLike[str], kind: str | None = None, *,
               device: str | torch.device = "cpu", bert: str | None = None) -> MatchingModel:
    """One entry point: our model directory (``config.json``) or an authors' checkpoint file
    (also as a catalog name of ``itmflow weights list`` or a URL, resolved through the cache)."""
    p = Path(source)
    if not p.exists():
        from itmflow.weights import check_checkpoint_source, resolve

        check_checkpoint_source(source)  # else a name of `itmflow weights list`, or a URL
        p = resolve(str(source)) or p
    if p.is_dir():
        return from_pretrained(p, device=device)
    return load_authors_checkpoint(p, kind, bert=bert, device=device)


__all__ = [
    "CONFIG_FILE", "FORMAT", "ImportReport", "WEIGHTS_FILE", "detect_kind", "from_pretrained",
    "load_authors_checkpoint", "load_model", "load_strict", "read_model_config",
    "read_torch_checkpoint", "save_pretrained",
]
