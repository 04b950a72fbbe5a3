"""Accumulates image and caption records while an adapter reads its source, and records every
problem (duplicate ids, captions of unknown images, unsafe paths, bad text) instead of dropping
it silently. The problems end up in the ingest report."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from itmflow.errors import UnsafePathError
from itmflow.files import check_relative
from pipeline.collections.records import SPLITS, CaptionRecord, ImageRecord

#: Lone UTF-16 surrogates: valid in a Python str, not encodable as UTF-8.
_SURROGATE = re.compile("[\ud800-\udfff]")

#: Split spellings other tools use, mapped onto ours (SCAN calls val "dev").
SPLIT_ALIASES = {"dev": "val", "valid": "val", "validation": "val"}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input. ``action`` says what ingest did about it."""

    kind: str
    where: str
    message: str
    action: str
    image_id: str | None = None
    caption_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict without the empty fields."""
        return {k: v for k, v in asdict(self).items() if v is not None}


class CollectionBuilder:
    """Collects records in source order; every refusal becomes a :class:`Problem`."""

    def __init__(self) -> None:
        self.images: list[ImageRecord] = []
        self.captions: list[CaptionRecord] = []
        self.problems: list[Problem] = []
        self._image_ids: dict[str, str] = {}
        self._caption_ids: dict[str, str] = {}

    def problem(self, kind: str, where: str, message: str, action: str, **ids: str | None) -> None:
        """Record one problem."""
        self.problems.append(Problem(kind, where, message, action, **ids))

    def normalize_split(self, split: Any, where: str) -> str:
        """Our split name for ``split``; an unknown name is reported and becomes "" (unassigned)."""
        if split is None:
            return ""
        text = str(split).strip().lower()
        text = SPLIT_ALIASES.get(text, text)
        if text not in SPLITS:
            self.problem("unknown_split", where, f"split {split!r} is not one of {list(SPLITS[:-1])}",
                         "image kept with no split")
            return ""
        return text

    def has_image(self, image_id: str) -> bool:
        """Whether ``image_id`` was added."""
        return image_id in self._image_ids

    def add_image(self, image_id: str, file: str, split: str, where: str) -> bool:
        """Add an image; refuses (and reports) duplicate ids and files escaping the root."""
        if image_id in self._image_ids:
            self.problem("duplicate_image_id", where,
                         f"image id {image_id!r} was already given at {self._image_ids[image_id]}",
                         "later entry and its captions dropped", image_id=image_id)
            return False
        try:
            clean = check_relative(file, what=f"file of {where}")
        except UnsafePathError as exc:
            self.problem("unsafe_path", where, str(exc), "image and its captions dropped", image_id=image_id)
            return False
        self._image_ids[image_id] = where
        self.images.append(ImageRecord(image_id, clean, split))
        return True

    def add_caption(self, caption_id: str, image_id: str, raw: str, where: str) -> bool:
        """Add a caption of a known image; unknown images and repeated caption ids are reported."""
        if image_id not in self._image_ids:
            self.problem("unknown_image", where, f"caption refers to image {image_id!r}, which is not in "
                         "the collection", "caption dropped", image_id=image_id, caption_id=caption_id)
            return False
        if caption_id in self._caption_ids:
            self.problem("duplicate_caption_id", where,
                         f"caption id {caption_id!r} was already given at {self._caption_ids[caption_id]}",
                         "later caption dropped", image_id=image_id, caption_id=caption_id)
            return False
        if _SURROGATE.search(raw):
            # a lone surrogate ("\udcff": bytes mis-decoded upstream, or a JSON "\\udcff" escape)
            # cannot be written as UTF-8; keep the caption with U+FFFD in its place
            self.problem("non_utf8", where, f"caption {raw!r} holds a lone surrogate (not UTF-8 "
                         "text; the file was mis-decoded)", "caption kept with U+FFFD in place of "
                         "each lone surrogate", image_id=image_id, caption_id=caption_id)
            raw = _SURROGATE.sub("\ufffd", raw)
        if not raw.strip():
            self.problem("empty_caption", where, "caption text is empty", "caption kept (tokenizes to "
                         "[CLS][SEP] / <start><end>)", image_id=image_id, caption_id=caption_id)
        self._caption_ids[caption_id] = where
        self.captions.append(CaptionRecord(caption_id, image_id, raw))
        return True



@dataclass
class AdapterResult:
    """What an adapter read: the records, the problems, where the images live, which files it read."""

    source_format: str
    images_root: Path
    builder: CollectionBuilder
    source_files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
