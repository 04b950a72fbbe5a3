"""Karpathy split JSON (``dataset_coco.json``, ``dataset_flickr30k.json``, ``dataset_flickr8k.json``).

Top level ``{"images": [...], "dataset": ...}``; each image has ``filename``, ``split``
(train/restval/val/test, kept as given), ``sentences`` (``raw``, ``sentid``) and for COCO
``filepath`` and ``cocoid``. Image id: ``cocoid`` for COCO, the file stem otherwise. Caption id:
``sentid`` (for COCO the caption annotation id). All captions are kept in order; the first five
are the evaluation captions.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from itmflow.errors import CollectionError
from pipeline.collections.builder import AdapterResult, CollectionBuilder
from pipeline.collections.sources import field, load_json


def karpathy_entries(path: Path) -> tuple[list[dict[str, Any]], str]:
    """The checked ``images`` list of a Karpathy JSON and its ``dataset`` name ("" if absent)."""
    doc = load_json(path, what="Karpathy split JSON")
    if not isinstance(doc, dict) or "images" not in doc:
        raise CollectionError(f"{path}: expected a JSON object with an 'images' list (Karpathy split format)")
    images = field(doc, "images", list, str(path))
    return images, str(doc.get("dataset", "") or "")


def karpathy_image_id(entry: dict[str, Any], dataset: str, where: str) -> str:
    """COCO: ``cocoid``; every other dataset: the stem of ``filename``."""
    if "cocoid" in entry or dataset == "coco":
        return str(field(entry, "cocoid", (int, str), where))
    return PurePosixPath(field(entry, "filename", str, where)).stem


def karpathy_file(entry: dict[str, Any], where: str) -> str:
    """``filepath/filename`` (COCO) or ``filename`` (Flickr)."""
    name = field(entry, "filename", str, where)
    folder = entry.get("filepath")
    return f"{folder}/{name}" if isinstance(folder, str) and folder else name


def read_karpathy(path: str | Path, images_root: str | Path | None = None) -> AdapterResult:
    """Read a Karpathy split JSON. ``images_root`` defaults to the JSON's directory."""
    source = Path(path)
    entries, dataset = karpathy_entries(source)
    builder = CollectionBuilder()
    name = source.name
    for i, entry in enumerate(entries):
        where = f"{name} images[{i}]"
        image_id = karpathy_image_id(entry, dataset, where)
        split = builder.normalize_split(field(entry, "split", str, where), where)
        sentences = field(entry, "sentences", list, where)
        if not builder.add_image(image_id, karpathy_file(entry, where), split, where):
            continue
        for j, sentence in enumerate(sentences):
            swhere = f"{where}.sentences[{j}]"
            sentid = field(sentence, "sentid", (int, str), swhere)
            if "raw" in sentence:
                raw = field(sentence, "raw", str, swhere)
            else:  # some re-exports keep only the tokens
                raw = " ".join(field(sentence, "tokens", list, swhere))
            builder.add_caption(str(sentid), image_id, raw, swhere)
    root = Path(images_root) if images_root is not None else source.parent
    return AdapterResult("karpathy", root, builder, [source],
                         [f"{len(entries)} entries, dataset {dataset or 'unnamed'}"])
