"""A plain folder of images (searched recursively), with an optional captions file.

Images: ``.jpg .jpeg .png .webp .bmp .gif`` (any case; hidden files and folders skipped). Image id =
the path relative to the root (POSIX). Captions file (``--captions``, else ``captions.jsonl`` /
``captions.csv`` in the root when present):

- JSONL, one object per line: ``{"file": "a/b.jpg", "captions": ["...", ...], "split": "train"}``
  (``"caption": "..."`` for one caption; ``split`` optional; a file may appear on several lines);
- CSV with a header: ``file,caption[,split]`` (``image`` / ``filename`` also accepted for ``file``).

Images without captions are kept (feature-only collections). Caption id = ``<image_id>#<n>``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

from itmflow.errors import CollectionError, InputFileError, UnsafePathError
from itmflow.files import check_relative, safe_join
from pipeline.collections.builder import AdapterResult, CollectionBuilder
from pipeline.collections.sources import column_index, csv_rows, iter_lines

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})
DEFAULT_CAPTION_FILES = ("captions.jsonl", "captions.csv")


def scan_images(root: Path) -> list[str]:
    """Relative POSIX paths of the image files under ``root``, sorted, hidden entries skipped."""
    found: list[str] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        base = Path(folder).relative_to(root)
        found.extend((base / name).as_posix() for name in files
                     if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES)
    return sorted(found)


def _jsonl_rows(path: Path, builder: CollectionBuilder) -> Iterator[tuple[str, list[str], str | None, str]]:
    """(file, captions, split, where) per JSONL line; bad JSON or fields raise, bad bytes are reported."""
    for number, text in iter_lines(path, what="captions file"):
        where = f"{path.name} line {number}"
        if text is None:
            builder.problem("non_utf8", where, "line is not valid UTF-8", "line dropped")
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputFileError(f"{path} line {number} column {exc.colno}: malformed JSON ({exc.msg})") from exc
        if not isinstance(obj, dict):
            raise CollectionError(f"{where}: expected a JSON object, found {type(obj).__name__}")
        file = obj.get("file")
        if not isinstance(file, str) or not file:
            raise CollectionError(f"{where}: field 'file' is missing or not a string")
        if "captions" in obj:
            captions = obj["captions"]
            if not isinstance(captions, list):
                raise CollectionError(f"{where}: field 'captions' must be a list of strings")
        elif "caption" in obj:
            captions = [obj["caption"]]
        else:
            captions = []
        for j, caption in enumerate(captions):
            if not isinstance(caption, str):
                raise CollectionError(f"{where}: field 'captions[{j}]' must be a string, found "
                                      f"{type(caption).__name__}")
        split = obj.get("split")
        if split is not None and not isinstance(split, str):
            raise CollectionError(f"{where}: field 'split' must be a string")
        yield file, captions, split, where


def _csv_rows(path: Path, builder: CollectionBuilder) -> Iterator[tuple[str, list[str], str | None, str]]:
    """(file, [caption], split, where) per CSV row."""
    columns, header_no, lines = csv_rows(path, what="captions file", report=builder.problem)
    i_file = column_index(columns, ("file", "image", "filename"))
    i_caption = column_index(columns, ("caption",))
    if i_file is None or i_caption is None:
        raise CollectionError(f"{path} line {header_no}: header {columns} needs columns 'file' and 'caption'")
    i_split = column_index(columns, ("split",))
    for where, cells in lines:
        if len(cells) <= max(i_file, i_caption):
            builder.problem("malformed_line", where, f"expected {len(columns)} fields, found {len(cells)}",
                            "line dropped")
            continue
        split = cells[i_split] if i_split is not None and i_split < len(cells) else None
        yield cells[i_file].strip(), [cells[i_caption]], split, where


def read_folder(root: str | Path, captions: str | Path | None = None) -> AdapterResult:
    """Scan ``root`` for images and attach the captions of ``captions`` (or the default file)."""
    base = Path(root)
    if not base.is_dir():
        raise InputFileError(f"image folder {base} does not exist or is not a folder")
    builder = CollectionBuilder()
    notes: list[str] = []
    for rel in scan_images(base):
        try:
            safe_join(base, rel, what=f"image {rel}")  # a symlink may point outside the root
        except UnsafePathError as exc:
            builder.problem("unsafe_path", rel, str(exc), "image dropped", image_id=rel)
            continue
        builder.add_image(rel, rel, "", rel)
    notes.append(f"{len(builder.images)} images found under {base}")
    caption_file = Path(captions) if captions is not None else next(
        (base / n for n in DEFAULT_CAPTION_FILES if (base / n).is_file()), None)
    files = []
    if caption_file is not None:
        files.append(caption_file)
        notes.append(f"captions from {caption_file.name}")
        suffix = caption_file.suffix.lower()
        if suffix not in (".jsonl", ".csv"):
            raise CollectionError(f"captions file {caption_file} must be .jsonl or .csv")
        rows = _jsonl_rows(caption_file, builder) if suffix == ".jsonl" else _csv_rows(caption_file, builder)
        _attach(builder, rows)
    else:
        notes.append("no captions file: feature-only collection")
    return AdapterResult("folder", base, builder, files, notes)


def _attach(builder: CollectionBuilder, rows: Iterator[tuple[str, list[str], str | None, str]]) -> None:
    """Add captions and splits to the scanned images."""
    index = {im.image_id: k for k, im in enumerate(builder.images)}
    counts: dict[str, int] = {}
    split_where: dict[str, str] = {}
    for file, texts, split, where in rows:
        try:
            image_id = check_relative(file, what=f"file in {where}")
        except UnsafePathError as exc:
            builder.problem("unsafe_path", where, str(exc), "captions dropped")
            continue
        if image_id not in index:
            builder.problem("unknown_image", where, f"{file!r} is not an image file under the root",
                            f"{len(texts)} caption(s) dropped", image_id=image_id)
            continue
        if split is not None and split.strip():
            name = builder.normalize_split(split, where)
            record = builder.images[index[image_id]]
            if image_id in split_where and record.split != name:
                builder.problem("conflicting_split", where, f"split {name!r} differs from {record.split!r} "
                                f"given at {split_where[image_id]}", "first split kept", image_id=image_id)
            elif image_id not in split_where:
                split_where[image_id] = where
                builder.images[index[image_id]] = type(record)(record.image_id, record.file, name)
        for text in texts:
            n = counts.get(image_id, 0)
            counts[image_id] = n + 1
            builder.add_caption(f"{image_id}#{n}", image_id, text, where)
