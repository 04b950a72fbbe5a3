"""Our checkpoint format: a directory with ``model.safetensors`` and ``config.json``.

``model.safetensors`` holds every weight (BERT included); ``config.json`` holds ``format:
itmflow.model``, the model kind, its config dataclass, the weights' sha256 and provenance.
:func:`from_pretrained` rebuilds the model from those two files alone: the BERT architecture is part
of the config, so no hub access is needed. No training state is stored there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from itmflow.config import to_dict
from itmflow.errors import CheckpointLayoutError, InputFileError
from itmflow.files import atomic_path, atomic_write_json, sha256_file
from itmflow.provenance import provenance
from trainers.models import MODEL_CLASSES, config_from_dict
from trainers.models.common import MatchingModel

FORMAT = "itmflow.model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def save_pretrained(model: MatchingModel, directory: str | os.PathLike[str], *,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` into ``directory`` (created if needed).

    The weights are written first and the config last (both atomically), so a directory with a
    config always has complete weights. ``extra`` (epoch, metrics, ...) is stored in the config.
    """
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT, "kind": model.kind})
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": model.kind,
        "config": to_dict(model.config),
        "weights_file": WEIGHTS_FILE,
        "weights_sha256": sha256_file(out / WEIGHTS_FILE),
        "extra": extra or {},
        "provenance": provenance(),
    }
    atomic_write_json(out / CONFIG_FILE, meta)
    return out


def read_model_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``config.json`` of one of our model directories, validated."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise InputFileError(f"{directory}: no {CONFIG_FILE}; is this a model directory written by "
                             "itmflow (save_pretrained / a run's best/ or last/)?")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputFileError(f"{path}: not valid JSON ({exc})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointLayoutError(f"{path}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointLayoutError(f"{path}: format_version {meta['format_version']} is newer "
                                    f"than this release reads ({FORMAT_VERSION}); upgrade itmflow")
    if meta.get("kind") not in MODEL_CLASSES:
        raise CheckpointLayoutError(f"{path}: unknown model kind {meta.get('kind')!r}")
    return meta


def from_pretrained(directory: str | os.PathLike[str], *, device: str | torch.device = "cpu",
                    verify: bool = False, dtype: torch.dtype | None = None) -> MatchingModel:
    """Rebuild a model saved by :func:`save_pretrained`, in eval mode, without training state.

    ``verify`` checks the weights file against the sha256 in the config first. The model is built
    in float32 and the file's floating tensors are cast into it — float64 weights (a run trained
    with ``dtype: float64``) are rounded — unless ``dtype`` names the model's floating dtype
    (``--resume`` of such a run passes float64 and loads them exactly).
    """
    from safetensors.torch import load_file

    meta = read_model_config(directory)
    weights = Path(directory) / meta.get("weights_file", WEIGHTS_FILE)
    if not weights.is_file():
        raise InputFileError(f"{directory}: {weights.name} is missing")
    if verify and meta.get("weights_sha256") and sha256_file(weights) != meta["weights_sha256"]:
        raise CheckpointLayoutError(f"{weights}: sha256 does not match config.json; the file is "
                                    "damaged or was replaced")
    kind = meta["kind"]
    config = config_from_dict(kind, meta["config"], where=f"{directory}/{CONFIG_FILE}:config")
    model = MODEL_CLASSES[kind][1](config)
    if dtype is not None:
        model = model.to(dtype=dtype)
    try:
        state = load_file(str(weights))
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise CheckpointLayoutError(f"{weights}: cannot read safetensors ({exc})") from None
    load_strict(model, state, source=str(weights))
    return model.to(device).eval()


def load_strict(model: torch.nn.Module, state: dict[str, Tensor], *, source: str,
                allow_missing: tuple[str, ...] = ()) -> list[str]:
    """``load_state_dict`` that names every missing / unexpected key and every shape mismatch.

    Keys ending with one of ``allow_missing`` may be absent (they keep the model's value); the
    list of those is returned.
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    filled = [k for k in missing if k.endswith(allow_missing)] if allow_missing else []
    missing = [k for k in missing if k not in filled]
    unexpected = sorted(set(state) - set(own))
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in sorted(set(state) & set(own)) if tuple(state[k].shape) != tuple(own[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {key_list(missing)}")
    if unexpected:
        problems.append(f"unused keys ({len(unexpected)}): {key_list(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {key_list(mismatched)}")
    if problems:
        raise CheckpointLayoutError(f"{source}: the weights do not fit the model — "
                                    + "; ".join(problems))
    merged = {**{k: own[k] for k in filled}, **state}
    model.load_state_dict(merged, strict=True)
    return filled


def key_list(keys: list[str], limit: int = 40) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … ({len(keys) - limit} more)" if len(keys) > limit else "")


__all__ = ["CONFIG_FILE", "FORMAT", "FORMAT_VERSION", "WEIGHTS_FILE", "from_pretrained", "key_list",
           "load_strict", "read_model_config", "save_pretrained"]
