"""Helpers shared by the extraction tests: tiny detector settings, collections, bad files."""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import numpy as np

from detectors.butd.settings import BUTDSettings
from pipeline.collections import ImageRecord, write_collection

#: Detector settings small enough for a 2-core test box (a few seconds per image).
TINY = dict(random_init=True, detector=BUTDSettings(regions="10-100", min_size=128, max_size=256, post_nms_topk=4))
TINY_CLI = ["--random-init", "--regions", "10-100", "--min-size", "128", "--max-size", "256",
            "--proposals", "4"]
GOOD = ["astronaut.jpg", "chelsea.jpg", "camera.png", "clock.gif"]


def make_collection(path: Path, root: Path, files: list[str]) -> Path:
    """A collection table over ``files`` (ids = stems, all train) with images under ``root``."""
    images = [ImageRecord(Path(f).stem, f, "train") for f in files]
    return write_collection(path, images, [], source_format="folder", images_root=root)


def copy_photos(photo_dir: Path, dest: Path, names: list[str]) -> Path:
    """Copy some sample photos into ``dest`` (tests then add bad files beside them)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(photo_dir / name, dest / name)
    return dest


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_bad_files(root: Path, good_jpeg: Path) -> dict[str, str]:
    """One file of every bad kind; returns image file -> the word its failure reason must hold."""
    root.mkdir(parents=True, exist_ok=True)
    data = good_jpeg.read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.jpg").write_text("this is a text file, not a JPEG\n")
    # a 30000 x 30000 greyscale PNG header: 900 M pixels, over Pillow's bomb limit (2 x 89.5 M)
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    bomb = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b""))
    (root / "bomb.png").write_bytes(bomb)
    (root / "folder.jpg").mkdir(exist_ok=True)
    outside = root.parent / "outside.jpg"
    shutil.copy(good_jpeg, outside)
    link = root / "escape.jpg"
    if not link.exists():
        link.symlink_to(outside)
    return {"truncated.jpg": "truncated", "empty.jpg": "zero-byte", "notes.jpg": "not an image",
            "bomb.png": "decompression", "folder.jpg": "not a regular file",
            "missing.jpg": "missing", "escape.jpg": "outside the collection root"}


def store_contents(path: Path) -> list[tuple[str, bytes, bytes]]:
    """(image_id, feature bytes, boxes bytes) of every row in commit order."""
    from stores import open_region_store

    with open_region_store(path) as reader:
        return [(row["image_id"], np.ascontiguousarray(row["features"]).tobytes(),
                 np.ascontiguousarray(row["boxes"]).tobytes()) for row in reader]
