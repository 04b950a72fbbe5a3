"""The collection table: one Parquet file, one row per image (the contract `itmflow ingest` writes).

Columns: ``image_id: string, file: string`` (POSIX, relative to the images root),
``split: string`` (train | restval | val | test | "" unknown), ``caption_ids: list<string>``,
``captions: list<string>`` (empty lists for feature-only images). The schema metadata key
``itmflow.collection`` holds JSON ``{"format": "itmflow.collection", "schema_version": 1,
"source_format": ..., "images_root": <relative to the parquet's directory>, "provenance": {...}}``.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Iterable

from itmflow.errors import CollectionError, InputFileError
from itmflow.files import atomic_write_bytes, check_relative
from itmflow.provenance import provenance
from pipeline.collections.records import SPLITS, CaptionRecord, Collection, ImageRecord

META_KEY = b"itmflow.collection"
FORMAT = "itmflow.collection"
SCHEMA_VERSION = 1
COLUMNS = ("image_id", "file", "split", "caption_ids", "captions")


def _schema():
    import pyarrow as pa

    return pa.schema([
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("file", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("caption_ids", pa.list_(pa.string()), nullable=False),
        pa.field("captions", pa.list_(pa.string()), nullable=False),
    ])


def _group_captions(images: list[ImageRecord], captions: Iterable[CaptionRecord]
                    ) -> tuple[list[list[str]], list[list[str]]]:
    """Caption ids and texts per image, in image order; refuses unknown images and repeated ids."""
    index: dict[str, int] = {}
    for row, im in enumerate(images):
        if not isinstance(im.image_id, str) or not im.image_id:
            raise CollectionError(f"image record {row} has an empty or non-string image_id {im.image_id!r}")
        if im.image_id in index:
            raise CollectionError(
                f"image_id {im.image_id!r} appears twice (records {index[im.image_id]} and {row}); "
                "image ids must be unique — fix the source or let the adapter report the duplicate")
        index[im.image_id] = row
        check_relative(im.file, what=f"file of image {im.image_id!r}")
        if im.split not in SPLITS:
            raise CollectionError(
                f"image {im.image_id!r} has split {im.split!r}; expected one of {list(SPLITS)}")
    ids: list[list[str]] = [[] for _ in images]
    texts: list[list[str]] = [[] for _ in images]
    seen: set[str] = set()
    for cap in captions:
        row = index.get(cap.image_id)
        if row is None:
            raise CollectionError(
                f"caption {cap.caption_id!r} refers to image {cap.image_id!r}, which is not in the collection")
        if cap.caption_id in seen:
            raise CollectionError(f"caption id {cap.caption_id!r} appears twice; caption ids must be unique")
        seen.add(cap.caption_id)
        ids[row].append(cap.caption_id)
        texts[row].append(cap.raw)
    return ids, texts


def write_collection(path: str | os.PathLike[str], images: list[ImageRecord],
                     captions: Iterable[CaptionRecord], *, source_format: str,
                     images_root: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> Path:
    """Write the collection table to ``path`` atomically (readers see the old file or the new one).

    ``images_root`` is stored relative to the directory holding ``path`` so the pair can be moved
    together. ``extra`` (source files, their hashes, the problem counts) goes into the metadata.
    Raises :class:`CollectionError` for duplicate ids, captions of unknown images or bad splits and
    :class:`UnsafePathError` for files escaping the root.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    target = Path(path)
    if target.suffix != ".parquet":
        raise CollectionError(f"collection output {target} must end in .parquet")
    target.parent.mkdir(parents=True, exist_ok=True)
    cap_ids, cap_texts = _group_captions(images, captions)
    rel_root = os.path.relpath(Path(images_root).resolve(), target.parent.resolve())
    meta = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "source_format": source_format,
            "images_root": Path(rel_root).as_posix(), "provenance": provenance(), **(extra or {})}
    schema = _schema().with_metadata({META_KEY: json.dumps(meta, sort_keys=True).encode("utf-8")})
    table = pa.table({
        "image_id": [im.image_id for im in images],
        "file": [check_relative(im.file) for im in images],
        "split": [im.split for im in images],
        "caption_ids": cap_ids,
        "captions": cap_texts,
    }, schema=schema)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    atomic_write_bytes(target, buffer.getvalue())
    return target


def read_collection_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``itmflow.collection`` metadata of a collection table, checked (format, schema version)."""
    import pyarrow.parquet as pq

    source = Path(path)
    if not source.is_file():
        raise InputFileError(f"collection table {source} does not exist; create it with `itmflow ingest`")
    try:
        schema = pq.read_schema(source)
    except Exception as exc:  # pyarrow raises several types for a non-Parquet file
        raise InputFileError(f"{source} is not a readable Parquet file ({exc}); re-run `itmflow ingest`") from exc
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise CollectionError(
            f"{source} has no '{META_KEY.decode()}' metadata: it is not a collection table written by `itmflow ingest`")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CollectionError(f"{source}: collection metadata is not valid JSON ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise CollectionError(f"{source}: metadata format is {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise CollectionError(
            f"{source}: collection schema_version {meta.get('schema_version')!r} is not supported by this "
            f"release (reads {SCHEMA_VERSION}); re-run `itmflow ingest` with this version")
    missing = [c for c in COLUMNS if c not in schema.names]
    if missing:
        raise CollectionError(f"{source}: collection table lacks columns {missing}")
    return meta


def read_collection(path: str | os.PathLike[str],
                    images_root: str | os.PathLike[str] | None = None) -> Collection:
    """Read a collection table. ``images_root`` overrides the root stored in the metadata.

    Every file name is checked again (the table may come from elsewhere): a path escaping the root
    raises :class:`UnsafePathError` naming the row.
    """
    import pyarrow.parquet as pq

    source = Path(path)
    meta = read_collection_meta(source)
    root = Path(images_root) if images_root is not None else source.parent / meta["images_root"]
    columns = pq.read_table(source, columns=list(COLUMNS)).to_pydict()
    images: list[ImageRecord] = []
    captions: list[CaptionRecord] = []
    for row, (image_id, file, split, cap_ids, texts) in enumerate(zip(*(columns[c] for c in COLUMNS))):
        clean = check_relative(file, what=f"{source} row {row} file")
        images.append(ImageRecord(image_id, clean, split or ""))
        for cap_id, text in zip(cap_ids or [], texts or []):
            captions.append(CaptionRecord(cap_id, image_id, text))
    return Collection(path=source.resolve(), images_root=root.resolve(), images=images,
                      captions=captions, source_format=meta.get("source_format", ""), meta=meta)
