"""Random weights never travel unmarked.

A region store written by a detector with seeded random weights (``itmflow extract
--random-init``) records ``detector.random_init`` and ``detector.seed`` in its manifest. Everything
made from it — training runs, evaluations, embeddings, search results — records
``random_init_regions: true`` (:data:`KEY`) in its own metadata, prints :func:`warning_line` on
stderr, and every PNG drawn from it carries a red banner (:func:`stamp_image` for Pillow images,
:func:`stamp_figure` for matplotlib figures).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

#: The metadata key every output made from random-weight regions carries.
KEY = "random_init_regions"
#: The banner colour (pure red, so a test can find it in the pixels).
BANNER_RGB = (220, 0, 0)
BANNER_TEXT = "RANDOM WEIGHTS: results are meaningless"  # ASCII: every font has the glyphs


def random_init_of_manifest(manifest: dict[str, Any] | None) -> dict[str, Any] | None:
    """``{"seed": N}`` when a region-store manifest says its detector had random weights, else None.

    ``itmflow extract`` records ``detector.settings.random_init`` / ``.seed``; a top-level
    ``detector.random_init`` (imports, hand-written manifests) counts too.
    """
    detector = (manifest or {}).get("detector") or {}
    if not isinstance(detector, dict):
        return None
    for block in (detector.get("settings"), detector):
        if isinstance(block, dict) and block.get("random_init"):
            return {"seed": block.get("seed")}
    return None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def store_random_init(store: str | os.PathLike[str]) -> dict[str, Any] | None:
    """:func:`random_init_of_manifest` of the region store at ``store`` (None if unreadable)."""
    return random_init_of_manifest(_read_json(Path(store) / "manifest.json"))


def record_random_init(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """``{"seed": N}`` when a metadata record (run.json, metrics.json, an embeddings manifest)
    says it was made from random-weight regions."""
    if record and record.get(KEY):
        return {"seed": record.get("random_init_seed")}
    return None


def run_random_init(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Random-init mark of a training run: ``path`` is a run directory or one of its checkpoint
    directories (``best/``, ``last/``); its ``run.json`` tells (also the recorded region store)."""
    p = Path(path)
    for cand in (p / "run.json", p.parent / "run.json"):
        rec = _read_json(cand)
        if rec is None:
            continue
        mark = record_random_init(rec)
        if mark:
            return mark
        stored = (rec.get("inputs") or {}).get("region_store")
        mark = random_init_of_manifest(stored if isinstance(stored, dict) else None)
        if mark:
            return mark
        return None
    return None


def metadata(mark: dict[str, Any] | None) -> dict[str, Any]:
    """The keys to merge into an output's metadata (empty when not random)."""
    if not mark:
        return {}
    return {KEY: True, "random_init_seed": mark.get("seed")}


def warning_line(what: str, mark: dict[str, Any]) -> str:
    """The one stderr line: ``what`` (e.g. ``region store coco-regions``) came from random weights."""
    seed = mark.get("seed")
    seed_txt = f" (seed {seed})" if seed is not None else ""
    return (f"WARNING: {what} came from a RANDOM-WEIGHT detector{seed_txt} (--random-init): "
            "its features and everything made from them are meaningless")


def warn(console: Any, what: str, mark: dict[str, Any] | None) -> None:
    """Print :func:`warning_line` on ``console`` (a rich Console on stderr) when ``mark`` is set."""
    if not mark:
        return
    line = warning_line(what, mark)
    if console is None:
        import sys

        print(line, file=sys.stderr)
    else:
        console.print(f"[bold red]{line}[/]", soft_wrap=True, markup=True, highlight=False)


def stamp_image(image: Any, text: str = BANNER_TEXT) -> Any:
    """A copy of a Pillow image with a red banner added above it (nothing is covered)."""
    from PIL import Image, ImageDraw, ImageFont

    img = image.convert("RGB")
    height = max(20, img.height // 18)
    out = Image.new("RGB", (img.width, img.height + height), BANNER_RGB)
    out.paste(img, (0, height))
    draw = ImageDraw.Draw(out)
    try:
        font = ImageFont.load_default(size=max(10, height - 8))
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    draw.text((6, 3), text, fill=(255, 255, 255), font=font)
    return out


#: Fraction of a matplotlib figure's height the banner takes (keep the axes below it).
FIGURE_BANNER = 0.07


def stamp_figure(fig: Any, text: str = BANNER_TEXT) -> Any:
    """Draw a red banner across the top of a matplotlib figure (call after ``tight_layout``
    with ``rect=(0, 0, 1, 1 - FIGURE_BANNER)``)."""
    from matplotlib.patches import Rectangle

    colour = tuple(c / 255 for c in BANNER_RGB)
    fig.add_artist(Rectangle((0, 1 - FIGURE_BANNER), 1, FIGURE_BANNER, transform=fig.transFigure,
                             facecolor=colour, edgecolor="none", zorder=10))
    fig.text(0.01, 1 - FIGURE_BANNER / 2, text, color="white", fontsize=12, fontweight="bold",
             va="center", ha="left", zorder=11)
    return fig


__all__ = ["BANNER_RGB", "KEY", "metadata", "random_init_of_manifest", "record_random_init",
           "run_random_init", "stamp_figure", "stamp_image", "store_random_init", "warn",
           "warning_line"]
