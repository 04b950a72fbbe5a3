"""What produced an output: tool version, library versions, machine. Written beside every output."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
from typing import Any

from itmflow import __version__

_LIBRARIES = ("torch", "torchvision", "transformers", "tokenizers", "pyarrow", "h5py", "ray", "numpy")


def library_versions(names: tuple[str, ...] = _LIBRARIES) -> dict[str, str]:
    """Installed versions of the libraries that change our outputs (missing ones are left out)."""
    versions = {"python": platform.python_version(), "itmflow": __version__}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or platform.processor())."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """CPU model, core count and GPU (if torch sees one)."""
    info: dict[str, Any] = {"cpu": cpu_model(), "cores": os.cpu_count(), "gpu": None}
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception:  # torch missing or broken CUDA: report no GPU
        pass
    return info


def now_iso() -> str:
    """UTC time in ISO 8601, seconds precision."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def provenance(**extra: Any) -> dict[str, Any]:
    """The block written into manifests and run directories."""
    return {"tool": "itmflow", "version": __version__, "created": now_iso(),
            "versions": library_versions(), **extra}
