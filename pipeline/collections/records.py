"""The in-memory shape of an image collection: image records, caption records, the collection.

Every adapter (Karpathy, COCO, Flickr30k, folder) produces these; the collection table
(:mod:`pipeline.collections.table`) stores them; extraction and tokenization read them back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Split names the collection table accepts; "" means "not assigned" (e.g. a folder without splits).
SPLITS: tuple[str, ...] = ("train", "restval", "val", "test", "")


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """One image: its id (unique in the collection), its file relative to the images root, its split."""

    image_id: str
    file: str
    split: str = ""


@dataclass(frozen=True, slots=True)
class CaptionRecord:
    """One caption of an image. Its split is the split of its image."""

    caption_id: str
    image_id: str
    raw: str


@dataclass(slots=True)
class Collection:
    """A collection read back from its table.

    ``images_root`` is resolved (absolute); image files are ``images_root / record.file``, joined
    with :func:`itmflow.files.safe_join` by whoever opens them. ``captions`` are grouped by image in
    table order, each image's captions in their original order (the first five are the evaluation
    captions).
    """

    path: Path
    images_root: Path
    images: list[ImageRecord]
    captions: list[CaptionRecord]
    source_format: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def split_of(self) -> dict[str, str]:
        """image_id -> split."""
        return {im.image_id: im.split for im in self.images}

    def captions_by_image(self) -> dict[str, list[CaptionRecord]]:
        """image_id -> its captions in order (images without captions map to an empty list)."""
        out: dict[str, list[CaptionRecord]] = {im.image_id: [] for im in self.images}
        for cap in self.captions:
            out[cap.image_id].append(cap)
        return out

    def split_sizes(self) -> dict[str, int]:
        """Number of images per split name ("" = unassigned)."""
        sizes: dict[str, int] = {}
        for im in self.images:
            sizes[im.split] = sizes.get(im.split, 0) + 1
        return sizes
