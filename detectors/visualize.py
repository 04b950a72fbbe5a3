"""Draw a detector's regions on the image and save a PNG (Pillow only)."""

from __future__ import annotations

import colorsys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from itmflow.files import atomic_write_bytes


def _colour(i: int) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_regions(rgb: np.ndarray, region: dict[str, Any], label: Callable[[int, int], str],
                 max_labels: int | None = None) -> Image.Image:
    """The image with every box outlined and labelled ``label(object_id, attr_id)``."""
    image = Image.fromarray(rgb).convert("RGB")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    boxes = region["boxes"]
    width = max(1, round(max(image.size) / 400))
    for i, box in enumerate(boxes):
        colour = _colour(i)
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        if max_labels is not None and i >= max_labels:
            continue
        text = f"{label(int(region['object_ids'][i]), int(region['attr_ids'][i]))} " \
               f"{float(region['object_conf'][i]):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + 4, bottom - top + 2
        tx = max(0.0, min(x1, image.width - tw))  # keep the label inside the picture
        ty = max(0.0, y1 - th)
        draw.rectangle([tx, ty, tx + tw, ty + th], fill=colour)
        draw.text((tx + 2, ty), text, fill=(0, 0, 0), font=font)
    return image


def save_regions_png(rgb: np.ndarray, region: dict[str, Any], path: str | Path,
                     label: Callable[[int, int], str], max_labels: int | None = None, *,
                     random_init: bool = False) -> Path:
    """Write :func:`draw_regions`'s picture to ``path`` as PNG (atomically); ``random_init`` (a
    detector with random weights) adds the red banner of :func:`itmflow.marks.stamp_image`."""
    import io

    image = draw_regions(rgb, region, label, max_labels)
    if random_init:
        from itmflow.marks import stamp_image

        image = stamp_image(image)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, buf.getvalue())
    return target
