"""The bottom-up-attention Faster R-CNN (ResNet-101, Visual Genome) on torchvision ops.

:class:`BUTDSettings` (:mod:`detectors.butd.settings`) imports without torch; the model, the
detector and the loaders are imported on first use, so configuration code stays light.
"""

from __future__ import annotations

from typing import Any

from detectors.butd.settings import BUTDSettings

__all__ = ["BUTDDetector", "BUTDModel", "BUTDSettings", "build_detector", "load_butd_weights"]


def __getattr__(name: str) -> Any:
    # torch is heavy: load the model module only when someone asks for it
    if name in ("BUTDDetector", "BUTDModel", "build_detector", "load_butd_weights"):
        from detectors.butd import model

        return getattr(model, name)
    raise AttributeError(f"module 'detectors.butd' has no attribute {name!r}")
