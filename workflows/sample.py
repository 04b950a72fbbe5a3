"""The bundled sample collection: a dozen real photos taken at run time from scikit-image and
scikit-learn (no image is committed), with five captions each written by us
(``examples/sample/captions.jsonl``). The photos cover the image modes the decoder must handle:
RGB JPEG, greyscale PNG, 16-bit PNG, RGBA PNG and a palette GIF.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from itmflow.files import atomic_path

CAPTIONS_FILE = Path(__file__).resolve().parent.parent / "examples" / "sample" / "captions.jsonl"


def _photos() -> dict[str, tuple[np.ndarray, str]]:
    """File name -> (pixels, Pillow mode to save in)."""
    import skimage.data as data
    from sklearn.datasets import load_sample_image

    coins = data.coins().astype(np.uint16) * 257  # 16-bit greyscale, full range
    return {
        "astronaut.jpg": (data.astronaut(), "RGB"),
        "chelsea.jpg": (data.chelsea(), "RGB"),
        "coffee.jpg": (data.coffee(), "RGB"),
        "rocket.jpg": (data.rocket(), "RGB"),
        "motorcycle.jpg": (data.stereo_motorcycle()[0], "RGB"),
        "camera.png": (data.camera(), "L"),
        "coins.png": (coins, "I;16"),
        "hubble.jpg": (data.hubble_deep_field(), "RGB"),
        "logo.png": (data.logo(), "RGBA"),
        "china.jpg": (load_sample_image("china.jpg"), "RGB"),
        "flower.jpg": (load_sample_image("flower.jpg"), "RGB"),
        "clock.gif": (data.clock(), "P"),
    }


def materialize_sample(dest: str | Path) -> Path:
    """Write the sample photos and ``captions.jsonl`` into ``dest`` (idempotent); return ``dest``."""
    from PIL import Image

    root = Path(dest)
    root.mkdir(parents=True, exist_ok=True)
    for name, (pixels, mode) in _photos().items():
        path = root / name
        if path.exists():
            continue
        if mode == "I;16":
            image = Image.fromarray(pixels.astype(np.uint16))
        elif mode == "P":
            image = Image.fromarray(pixels).convert("P")
        else:
            image = Image.fromarray(pixels)
        with atomic_path(path) as tmp:
            image.save(tmp, format=Image.registered_extensions()[path.suffix])
    target = root / "captions.jsonl"
    if not target.exists():
        target.write_text(CAPTIONS_FILE.read_text(encoding="utf-8"), encoding="utf-8")
    return root
