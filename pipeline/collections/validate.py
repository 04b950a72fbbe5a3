"""Checks a collection after its adapter has read it: files present, images decodable, and the
numbers a person looks at first (images, captions per image, split sizes, problem counts)."""

from __future__ import annotations

import json
import os
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from itmflow.errors import UnsafePathError
from itmflow.files import atomic_write_bytes, safe_join
from pipeline.collections.builder import AdapterResult, Problem

#: Problem kinds whose counts the summary always shows (others are counted under "problems").
SUMMARY_KINDS = {"missing_file": "missing_files", "duplicate_image_id": "duplicate_image_ids",
                 "duplicate_caption_id": "duplicate_caption_ids", "empty_caption": "empty_captions",
                 "unknown_image": "captions_of_unknown_images", "unsafe_path": "unsafe_paths",
                 "non_utf8": "non_utf8_lines", "unreadable_image": "unreadable_images"}


def _decoder() -> Callable[[Path], Any]:
    """The detector's image loader when it is installed (same decoding as extraction), else Pillow."""
    try:
        from detectors.butd.preprocess import load_image
    except ImportError:  # torch is not installed: Pillow alone still finds undecodable files
        return _pillow_decode
    return load_image


def _pillow_decode(path: Path) -> None:
    """Verify the container, then decode all pixels (first frame); Pillow's bomb limit stays on."""
    from PIL import Image

    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        image.load()


def check_files(result: AdapterResult, *, check_images: bool = False, workers: int | None = None,
                progress: bool = True) -> None:
    """Report missing files (and, with ``check_images``, undecodable ones) as problems; records stay."""
    builder = result.builder
    root = result.images_root
    present: list[tuple[str, Path]] = []
    for im in builder.images:
        try:
            path = safe_join(root, im.file, what=f"file of image {im.image_id!r}")
        except UnsafePathError as exc:  # a symlink inside the root that points out of it
            builder.problem("unsafe_path", im.file, str(exc), "image kept; extraction will refuse it",
                            image_id=im.image_id)
            continue
        if path.is_file():
            present.append((im.image_id, path))
        else:
            builder.problem("missing_file", im.file, f"no file at {path}", "image kept; extraction "
                            "will record it as a failure", image_id=im.image_id)
    if not check_images or not present:
        return
    decode = _decoder()

    def one(item: tuple[str, Path]) -> tuple[str, Path, str | None]:
        image_id, path = item
        try:
            decode(path)
            return image_id, path, None
        except Exception as exc:  # noqa: BLE001 — truncated data, bombs, odd modes: one bad file, not a crash
            return image_id, path, f"{type(exc).__name__}: {exc}"

    from rich.progress import Progress

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool, \
            Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("decoding images", total=len(present))
        for image_id, path, error in pool.map(one, present):
            bar.advance(task)
            if error is not None:
                rel = path.relative_to(root.resolve()).as_posix()
                builder.problem("unreadable_image", rel, error, "image kept; extraction will record it "
                                "as a failure", image_id=image_id)


def summarize(result: AdapterResult, *, checked_images: bool = False) -> dict[str, Any]:
    """The ingest summary: counts, captions per image, split sizes, problem counts."""
    builder = result.builder
    per_image: dict[str, int] = {im.image_id: 0 for im in builder.images}
    for cap in builder.captions:
        per_image[cap.image_id] += 1
    counts = sorted(per_image.values())
    splits: dict[str, int] = {}
    for im in builder.images:
        key = im.split or "(none)"
        splits[key] = splits.get(key, 0) + 1
    kinds: dict[str, int] = {}
    for p in builder.problems:
        kinds[p.kind] = kinds.get(p.kind, 0) + 1
    summary: dict[str, Any] = {
        "source_format": result.source_format,
        "images_root": str(result.images_root),
        "images": len(builder.images),
        "captions": len(builder.captions),
        "captions_per_image": {"min": counts[0] if counts else 0,
                               "median": statistics.median(counts) if counts else 0,
                               "max": counts[-1] if counts else 0},
        "images_without_captions": sum(1 for c in counts if c == 0),
        "split_sizes": splits,
    }
    for kind, key in SUMMARY_KINDS.items():
        summary[key] = kinds.get(kind, 0)
    if not checked_images:
        summary["unreadable_images"] = None  # not checked (use --check-images)
    summary["problems"] = kinds
    summary["notes"] = list(result.notes)
    return summary


def write_report(path: str | os.PathLike[str], summary: dict[str, Any], problems: list[Problem]) -> Path:
    """Write the problem report: ``.jsonl`` = one problem per line, otherwise JSON with the summary."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.suffix == ".jsonl":
        text = "".join(json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in problems)
    else:
        text = json.dumps({"summary": summary, "problems": [p.to_dict() for p in problems]},
                          indent=2, ensure_ascii=False) + "\n"
    atomic_write_bytes(target, text.encode("utf-8"))
    return target
