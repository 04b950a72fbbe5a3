"""One entry point over the adapters: ``read_source(format, source, ...)``."""

from __future__ import annotations

from pathlib import Path

from itmflow.errors import ConfigError
from pipeline.collections.builder import AdapterResult
from pipeline.collections.coco import read_coco
from pipeline.collections.flickr30k import read_flickr30k
from pipeline.collections.folder import read_folder
from pipeline.collections.karpathy import read_karpathy

FORMATS = ("karpathy", "coco", "flickr30k", "folder")


def read_source(fmt: str, source: str | Path, *, images_root: str | Path | None = None,
                captions: str | Path | None = None, karpathy: str | Path | None = None) -> AdapterResult:
    """Read ``source`` in format ``fmt``; options that do not apply to the format are refused."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown collection format {fmt!r}; choose one of {list(FORMATS)}")
    if captions is not None and fmt != "folder":
        raise ConfigError(f"--captions applies to --format folder; for {fmt} the captions are in SOURCE")
    if karpathy is not None and fmt not in ("coco", "flickr30k"):
        raise ConfigError("--karpathy (split file) applies to --format coco and flickr30k")
    if fmt == "karpathy":
        return read_karpathy(source, images_root)
    if fmt == "coco":
        return read_coco(source, images_root, karpathy)
    if fmt == "flickr30k":
        return read_flickr30k(source, images_root, karpathy)
    if images_root is not None and Path(images_root).resolve() != Path(source).resolve():
        raise ConfigError("for --format folder SOURCE is the images root; leave out --images")
    return read_folder(source, captions)
