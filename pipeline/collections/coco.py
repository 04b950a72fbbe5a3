"""Official COCO caption files (``captions_train2014.json``, ``captions_val2014.json``).

``{"images": [{"id", "file_name"}], "annotations": [{"id", "image_id", "caption"}]}``. Image id =
COCO image id, caption id = annotation id. A file is ``<subset>/<file_name>`` when the images root
has the subset folder named in the caption file (``captions_val2014.json`` → ``val2014/``),
otherwise ``file_name``. With a Karpathy JSON the splits come from it and each image's captions
are put in Karpathy's ``sentids`` order, so the first five match the evaluation captions.
"""

from __future__ import annotations

import re
from pathlib import Path

from itmflow.errors import InputFileError
from pipeline.collections.builder import AdapterResult, CollectionBuilder
from pipeline.collections.karpathy import karpathy_entries, karpathy_image_id
from pipeline.collections.sources import field, load_json

_SUBSET = re.compile(r"captions_(\w+)\.json$")


def coco_caption_files(source: Path) -> list[Path]:
    """``source`` itself, or the ``captions_*.json`` files in it or in its ``annotations/`` folder."""
    if source.is_file():
        return [source]
    if source.is_dir():
        for folder in (source, source / "annotations"):
            found = sorted(folder.glob("captions_*.json"))
            if found:
                return found
        raise InputFileError(f"no captions_*.json in {source} or {source / 'annotations'}; "
                             "give the COCO caption file itself")
    raise InputFileError(f"COCO caption file {source} does not exist")


def karpathy_order(path: Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    """image_id -> split and image_id -> sentids (as strings) from a Karpathy JSON."""
    entries, dataset = karpathy_entries(path)
    splits: dict[str, str] = {}
    order: dict[str, list[str]] = {}
    for i, entry in enumerate(entries):
        where = f"{path.name} images[{i}]"
        image_id = karpathy_image_id(entry, dataset or "coco", where)
        splits[image_id] = field(entry, "split", str, where)
        order[image_id] = [str(field(s, "sentid", (int, str), f"{where}.sentences[{j}]"))
                           for j, s in enumerate(field(entry, "sentences", list, where))]
    return splits, order


def looks_like_karpathy(doc: object) -> bool:
    """A Karpathy split file (``dataset_coco.json``: images with sentences / split / filepath, no
    annotations) rather than an official COCO caption file."""
    if not isinstance(doc, dict) or "annotations" in doc:
        return False
    images = doc.get("images")
    first = images[0] if isinstance(images, list) and images else None
    return isinstance(first, dict) and "sentences" in first and ("split" in first or "filepath" in first)


def _refuse_karpathy(doc: object, path: Path) -> None:
    if looks_like_karpathy(doc):
        raise InputFileError(f"{path}: this looks like a Karpathy split file: use --format karpathy "
                             "(its images carry sentences, split and filepath; a COCO caption "
                             "file has annotations)")


def read_coco(source: str | Path, images_root: str | Path | None = None,
              karpathy: str | Path | None = None) -> AdapterResult:
    """Read one COCO caption file or a folder of them; ``karpathy`` assigns splits and order."""
    files = coco_caption_files(Path(source))
    root = Path(images_root) if images_root is not None else files[0].parent
    if images_root is None and files[0].parent.name == "annotations":
        root = files[0].parent.parent  # the usual layout: <root>/annotations, <root>/train2014, ...
    builder = CollectionBuilder()
    splits: dict[str, str] = {}
    order: dict[str, list[str]] = {}
    notes: list[str] = []
    if karpathy is not None:
        splits, order = karpathy_order(Path(karpathy))
        notes.append(f"splits from {Path(karpathy).name} ({len(splits)} images)")
    captions: list[tuple[str, str, str, str]] = []
    for path in files:
        doc = load_json(path, what="COCO caption file")
        name = path.name
        _refuse_karpathy(doc, path)
        match = _SUBSET.search(name)
        subset = match.group(1) if match and (root / match.group(1)).is_dir() else ""
        for i, image in enumerate(field(doc, "images", list, name)):
            where = f"{name} images[{i}]"
            image_id = str(field(image, "id", (int, str), where))
            file_name = field(image, "file_name", str, where)
            split = builder.normalize_split(splits[image_id], where) if image_id in splits else ""
            added = builder.add_image(image_id, f"{subset}/{file_name}" if subset else file_name, split, where)
            if added and karpathy is not None and image_id not in splits:
                builder.problem("no_split", where, f"image {image_id} is not in the Karpathy file",
                                "image kept with no split", image_id=image_id)
        for i, ann in enumerate(field(doc, "annotations", list, name)):
            where = f"{name} annotations[{i}]"
            captions.append((str(field(ann, "id", (int, str), where)),
                             str(field(ann, "image_id", (int, str), where)),
                             field(ann, "caption", str, where), where))
    if order:
        # Karpathy's sentid order first (sentid == annotation id), any other caption after it.
        rank = {sid: k for sids in order.values() for k, sid in enumerate(sids)}
        captions.sort(key=lambda c: rank.get(c[0], 1 << 30))  # stable: ties keep file order
    for caption_id, image_id, raw, where in captions:
        builder.add_caption(caption_id, image_id, raw, where)
    return AdapterResult("coco", root, builder, files, notes)
