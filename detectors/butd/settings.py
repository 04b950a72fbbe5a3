"""Every setting that changes the BUTD detector's output, as one picklable object (no torch).

:class:`BUTDSettings` travels whole: ``itmflow detect`` and ``itmflow extract`` fill one in,
:func:`detectors.butd.build_detector` builds the model from it, and its :meth:`~BUTDSettings.preprocessing`
is what decode tasks run, so the image sizes of the decode step and of the model cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from itmflow.errors import ConfigError
from itmflow.regions import RegionPolicy

if TYPE_CHECKING:
    from detectors.butd.preprocess import Preprocessing

#: Region selections: ``caffe`` (generate_tsv.py, proposal boxes), ``maxnms`` (airsplay / HF).
SELECTIONS = ("caffe", "maxnms")
#: Inference precisions: fp32 (TF32 off on CUDA), tf32 (TF32 allowed), bf16 / fp16 autocast; see
#: docs/guide/detector.md "Precision and devices" (and why ``mixed`` is not one of them yet).
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


@dataclass(frozen=True)
class BUTDSettings:
    """Everything that changes the detector's output (defaults: the Caffe BUTD test settings)."""

    min_size: int = 600
    max_size: int = 1000
    regions: str = "36"
    selection: str = "caffe"
    pre_nms_topk: int = 6000
    post_nms_topk: int = 300
    rpn_nms_thresh: float = 0.7
    rpn_min_size: float = 16.0
    class_nms_thresh: float = 0.3
    conf_thresh: float = 0.2
    precision: str = "fp32"

    def validate(self) -> "BUTDSettings":
        """Raise :class:`ConfigError` naming the first impossible value (and its option)."""
        if self.selection not in SELECTIONS:
            raise ConfigError(f"--selection {self.selection!r}: selection is not one of {SELECTIONS}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision {self.precision!r}: precision is not one of {PRECISIONS}")
        for name in ("min_size", "max_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.min_size > self.max_size:
            raise ConfigError(f"--min-size {self.min_size} is larger than --max-size {self.max_size}")
        if self.post_nms_topk < 1:
            raise ConfigError(f"--proposals must be at least 1, got {self.post_nms_topk}")
        if self.pre_nms_topk < self.post_nms_topk:
            raise ConfigError("need 1 <= post_nms_topk (--proposals) <= pre_nms_topk, got "
                              f"{self.post_nms_topk}, {self.pre_nms_topk}")
        self.policy()
        return self

    def policy(self) -> RegionPolicy:
        """The region policy ``regions`` describes, with this confidence bar."""
        return RegionPolicy.parse(self.regions, self.conf_thresh)

    def preprocessing(self) -> "Preprocessing":
        """The image preparation this detector expects (picklable; decode tasks run it)."""
        from detectors.butd.preprocess import Preprocessing

        return Preprocessing(min_size=self.min_size, max_size=self.max_size)


__all__ = ["BUTDSettings", "PRECISIONS", "SELECTIONS"]
