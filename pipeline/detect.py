"""``detect``: run the BUTD detector on a few image files, keep each image's regions (store field
names), and optionally save them as ``.npz`` and draw them as PNGs. ``itmflow detect`` wraps it;
``itmflow extract`` is the job for whole collections.

    from pathlib import Path
    from pipeline.detect import DetectConfig, detect

    result = detect(DetectConfig(images=sorted(Path("photos").glob("*.jpg")), weights="butd.pth"))
    for image in result.images:
        print(image.path.name, image.regions["num_regions"] if image.regions else image.error)
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from detectors.butd.settings import BUTDSettings
from itmflow.errors import ConfigError
from itmflow.regions import DetectedRegions

if TYPE_CHECKING:
    from detectors.butd.model import BUTDDetector

PathLike = str | os.PathLike[str]


@dataclass
class DetectConfig:
    """The images, the detector and its settings, and what to write (defaults: ``itmflow detect``'s)."""

    images: list[PathLike]
    weights: str | None = None
    """BUTD checkpoint: MILVLG .pth, airsplay .pkl, HF directory, a URL or a hub id."""
    random_init: bool = False
    """Seeded random weights instead of a checkpoint (smoke runs: the regions are meaningless)."""
    seed: int = 0
    vocab: PathLike | None = None
    """Directory with objects_vocab.txt and attributes_vocab.txt (default: next to the weights,
    else the shipped VG lists)."""
    detector: BUTDSettings = field(default_factory=BUTDSettings)
    """Everything that changes the regions: ``regions`` (fixed K 36 or adaptive MIN-MAX 10-100),
    ``selection`` (caffe or maxnms), ``precision``, ``min_size`` / ``max_size``, proposals."""
    device: str = "auto"
    """auto (CUDA when torch sees one, else CPU), cpu, cuda, cuda:1, ..."""
    out: PathLike | None = None
    """Write ``{image stem}.npz`` per image (store field names)."""
    visualize: PathLike | None = None
    """Write ``{image stem}.png`` with boxes and labels."""

    def validate(self) -> DetectConfig:
        stems: dict[str, Path] = {}
        for path in map(Path, self.images):
            if path.stem in stems and (self.out or self.visualize):
                raise ConfigError(f"{path} and {stems[path.stem]} have the same stem {path.stem!r}; "
                                  "their output files would collide: rename one or run them separately")
            stems[path.stem] = path
        self.detector.validate()
        return self


@dataclass
class ImageRegions:
    """One image's regions (``num_regions``, ``boxes``, ``features``, ``object_ids`` ... as in a
    region store row), or why it could not be read."""

    path: Path
    regions: DetectedRegions | None = None
    error: str | None = None


@dataclass
class DetectResult:
    """The detector used (``label(object_id, attr_id)`` names regions) and one entry per image."""

    detector: BUTDDetector
    source: str
    """The weights (file, layout, sha256), or RANDOM WEIGHTS."""
    images: list[ImageRegions] = field(default_factory=list)

    @property
    def failures(self) -> list[str]:
        return [image.error for image in self.images if image.error is not None]


def detect(config: DetectConfig) -> DetectResult:
    """Detect regions in every image (an unreadable image is recorded, not raised)."""
    import numpy as np

    from detectors.butd import build_detector
    from detectors.butd.preprocess import load_image
    from detectors.visualize import save_regions_png
    from itmflow.errors import ImageDecodeError
    from itmflow.files import atomic_write_bytes

    config.validate()
    device = config.device
    if device == "auto":
        from itmflow.devices import resolve_device

        device = str(resolve_device(device))
    detector = build_detector(config.weights, config.detector, random_init=config.random_init,
                              seed=config.seed, device=device, vocab_dir=config.vocab)
    source = "RANDOM WEIGHTS (seed %d)" % config.seed if config.random_init else \
        f"{detector.weights_file} ({detector.weights_layout}, sha256 {detector.weights_sha256[:12]}…)"
    result = DetectResult(detector=detector, source=source)
    out = Path(config.out) if config.out is not None else None
    visualize = Path(config.visualize) if config.visualize is not None else None
    for path in map(Path, config.images):
        try:
            rgb = load_image(path)
        except ImageDecodeError as exc:
            result.images.append(ImageRegions(path, error=str(exc)))
            continue
        region = detector.detect([detector.preprocessing(rgb)])[0]
        result.images.append(ImageRegions(path, regions=region))
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            np.savez(buf, **{k: np.asarray(v) for k, v in region.items()})
            atomic_write_bytes(out / f"{path.stem}.npz", buf.getvalue())
        if visualize is not None:
            save_regions_png(rgb, region, visualize / f"{path.stem}.png", detector.label,
                             random_init=config.random_init)
    return result


__all__ = ["DetectConfig", "DetectResult", "ImageRegions", "detect"]
