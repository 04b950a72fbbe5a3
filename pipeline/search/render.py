"""PNG pictures of retrieval results: a grid of retrieved images, or a query image with its captions.

Images are read with Pillow (EXIF orientation applied, any mode → RGB, Pillow's decompression-bomb
limit left in place) from paths confined to the images root (``itmflow.files.safe_join``). An image
that cannot be read becomes a grey tile that says so — a picture of results is still written.
"""

from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass
from pathlib import Path

from itmflow.errors import ItmflowError
from itmflow.files import atomic_path, safe_join

TILE = 224
LABEL_H = 44
PAD = 8


@dataclass
class Hit:
    """One retrieved item: rank (1-based), score, id, and image file or caption text."""

    rank: int
    score: float
    item_id: str
    file: str | None = None
    text: str | None = None


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def load_tile(root: str | os.PathLike[str] | None, file: str | None, size: int = TILE):
    """A ``size``×``size`` RGB tile of the image (letterboxed), or a grey 'missing' tile."""
    from PIL import Image, ImageDraw, ImageOps

    tile = Image.new("RGB", (size, size), (235, 235, 235))
    reason = "no images root" if root is None else "no file"
    if root is not None and file:
        try:
            path = safe_join(root, file, what="image file")
            with Image.open(path) as im:
                im = ImageOps.exif_transpose(im)
                if im.mode.startswith("I"):
                    # 16/32-bit greyscale: Pillow's RGB conversion clips it to white; rescale.
                    import numpy as np

                    arr = np.asarray(im, dtype=np.float64)
                    top = 65535.0 if arr.max() > 255 else 255.0
                    im = Image.fromarray((arr * (255.0 / top)).clip(0, 255).astype(np.uint8))
                if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
                    # Composite transparent pixels over white instead of dropping alpha.
                    rgba = im.convert("RGBA")
                    im = Image.new("RGB", rgba.size, "white")
                    im.paste(rgba, mask=rgba.getchannel("A"))
                else:
                    im = im.convert("RGB")
                im.thumbnail((size, size))
                tile.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
                return tile
        except (OSError, ValueError, ItmflowError, Image.DecompressionBombError) as exc:
            reason = f"unreadable: {exc.__class__.__name__}"
    draw = ImageDraw.Draw(tile)
    draw.text((PAD, size // 2 - 8), f"{file or '?'}\n{reason}", fill=(90, 90, 90), font=_font(12))
    return tile


def image_grid(hits: list[Hit], root: str | os.PathLike[str] | None, out: str | os.PathLike[str],
               *, title: str, columns: int = 5, random_init: bool = False) -> Path:
    """Write a grid of the retrieved images, each labelled ``#rank score id``."""
    from PIL import Image, ImageDraw

    cols = max(1, min(columns, len(hits)))
    rows = max(1, (len(hits) + cols - 1) // cols)
    head = 36
    width = cols * (TILE + PAD) + PAD
    height = head + rows * (TILE + LABEL_H + PAD) + PAD
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((PAD, 8), title[:140], fill="black", font=_font(16))
    for n, hit in enumerate(hits):
        x = PAD + (n % cols) * (TILE + PAD)
        y = head + (n // cols) * (TILE + LABEL_H + PAD)
        canvas.paste(load_tile(root, hit.file), (x, y))
        draw.text((x, y + TILE + 2), f"#{hit.rank}  {hit.score:.4f}", fill="black", font=_font(14))
        draw.text((x, y + TILE + 20), hit.item_id[:32], fill=(60, 60, 60), font=_font(12))
    return _save(canvas, out, random_init=random_init)


def captions_panel(query_file: str | None, query_id: str, hits: list[Hit],
                   root: str | os.PathLike[str] | None, out: str | os.PathLike[str], *,
                   random_init: bool = False) -> Path:
    """Write the query image on the left and the retrieved captions with scores on the right."""
    from PIL import Image, ImageDraw

    lines: list[tuple[str, str]] = []
    for hit in hits:
        wrapped = textwrap.wrap(hit.text or "", 60) or [""]
        lines.append((f"#{hit.rank}  {hit.score:.4f}  ({hit.item_id})", wrapped[0]))
        lines.extend(("", w) for w in wrapped[1:])
    text_w = 560
    height = max(TILE + 2 * PAD + 24, 40 + 22 * (len(lines) + len(hits)))
    canvas = Image.new("RGB", (TILE + 3 * PAD + text_w, height), "white")
    draw = ImageDraw.Draw(canvas)
    canvas.paste(load_tile(root, query_file), (PAD, PAD + 24))
    draw.text((PAD, 6), f"query image {query_id}"[:60], fill="black", font=_font(14))
    y = PAD
    x = TILE + 2 * PAD
    for label, text in lines:
        if label:
            y += 6
            draw.text((x, y), label, fill=(30, 30, 140), font=_font(13))
            y += 18
        draw.text((x + 10, y), text, fill="black", font=_font(14))
        y += 20
    return _save(canvas, out, random_init=random_init)


def _save(canvas, out: str | os.PathLike[str], *, random_init: bool = False) -> Path:
    """Write the PNG; ``random_init`` adds the red "random weights" banner (itmflow.marks)."""
    if random_init:
        from itmflow.marks import stamp_image

        canvas = stamp_image(canvas)
    p = Path(out)
    p.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(p) as tmp:
        canvas.save(tmp, format="PNG")
    return p


__all__ = ["Hit", "captions_panel", "image_grid", "load_tile"]
