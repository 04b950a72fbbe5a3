"""Checks the driver makes before Ray starts, so a bad input ends in one line, not after the
detector actors failed to start (70-85 lines of Ray output before the real message)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from itmflow.errors import CheckpointLayoutError, ConfigError, ItmflowError


def _named(exc: ItmflowError, path: Path) -> ItmflowError:
    """``exc`` with the weights file named in its message (some layout messages do not)."""
    text = str(exc)
    if str(path) in text or path.name in text:
        return exc
    return type(exc)(f"{path}: {text}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _keys_of_torch_file(file: Path) -> Any:
    """The object in a torch file through ``torch.load(weights_only=True)``, memory-mapped where
    the file is a zip archive (then only the pickled header and key names are read)."""
    import torch

    try:
        try:
            return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            # a legacy (non-zip) torch file or a bare pickle cannot be mapped: read it whole
            return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError of a hostile or foreign pickle, a torn file
        raise CheckpointLayoutError(
            f"{file}: refused by torch.load(weights_only=True) ({_first_line(exc)}); only plain "
            "state dicts of tensors are accepted") from None


def check_weights(spec: str) -> str:
    """Find ``spec``, read its keys only (no model, no conversion) and recognise the layout.

    Hostile pickles are refused by ``torch.load(weights_only=True)`` / the restricted unpickler
    without running them; a missing file, a foreign layout and an unreadable file raise an
    :class:`ItmflowError` whose message names the file. Returns the layout name.
    """
    from detectors.butd.weights import (HF_CONFIG, HF_WEIGHTS, _unwrap, detect_layout,
                                        read_pickle_checkpoint, resolve_weights)

    path = resolve_weights(spec)  # a missing local path: InputFileError naming it
    try:
        if path.is_dir():
            for need in (path / HF_WEIGHTS, path / HF_CONFIG):
                if not need.is_file():
                    raise CheckpointLayoutError(
                        f"{path} is a directory but lacks {need.name}; a Hugging Face BUTD checkpoint "
                        f"holds {HF_WEIGHTS} and {HF_CONFIG}")
            file = path / HF_WEIGHTS
            obj = _keys_of_torch_file(file)
        elif path.suffix == ".pkl":
            file = path
            obj = read_pickle_checkpoint(path)
        else:
            file = path
            obj = _keys_of_torch_file(path)
        return detect_layout(_unwrap(obj, file))
    except ItmflowError as exc:
        raise _named(exc, path) from None


def check_local_cuda(device: str) -> None:
    """``--device cuda`` on this machine (embedded Ray): refuse at once when torch sees no GPU."""
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: torch sees no CUDA GPU on this machine (and no "
                          "--address names a cluster that has one); use --device cpu or auto")
