"""The caption store: ``<dir>/captions.parquet`` plus ``<dir>/manifest.json``.

Columns (one row per caption, in collection order — each image's first five captions are its
evaluation captions): ``caption_id``, ``image_id``, ``split``, ``raw`` (string); ``bert_ids``
(list<int32>, null when tokenized with ``--no-bert``); ``bert_length`` (int32); ``word_tokens``
(list<string>, null without a word vocab); ``word_ids`` (list<int32>). The manifest
(``format: itmflow.captions``, ``schema_version: 1``) carries the caller's ``meta`` (tokenizer name,
vocab path and sha256, ...), the counts, the sha256 of the Parquet file and provenance.

Writing holds ``<dir>/writer.lock`` (stores/lock.py: one writer per store; a second fails at once),
removes temporary files a crashed writer left, and turns a full disk into :class:`DiskFullError`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from itmflow.errors import DiskFullError, SchemaVersionError, StoreCorruptError, StoreError
from itmflow.files import atomic_write_json, disk_full_reason, fsync_dir
from itmflow.provenance import provenance
from stores.lock import StoreLock
from stores.manifest import read_manifest_json
from stores.writer import write_part_file

FORMAT = "itmflow.captions"
SCHEMA_VERSION = 1
TABLE_NAME = "captions.parquet"
MANIFEST_NAME = "manifest.json"
SCHEMA = pa.schema([
    pa.field("caption_id", pa.string(), nullable=False),
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("raw", pa.string(), nullable=False),
    pa.field("bert_ids", pa.list_(pa.int32())),
    pa.field("bert_length", pa.int32()),
    pa.field("word_tokens", pa.list_(pa.string())),
    pa.field("word_ids", pa.list_(pa.int32())),
])
_REQUIRED = ("caption_id", "image_id", "split", "raw")


def _to_table(table_or_rows: pa.Table | Iterable[Mapping[str, Any]]) -> pa.Table:
    if isinstance(table_or_rows, pa.Table):
        table = table_or_rows
    else:
        rows = list(table_or_rows)
        table = pa.table({name: [r.get(name) for r in rows] for name in SCHEMA.names})
    missing = [name for name in _REQUIRED if name not in table.column_names]
    if missing:
        raise StoreError(f"caption rows lack the column(s) {missing}; every caption needs "
                         f"{list(_REQUIRED)}")
    columns = []
    for field in SCHEMA:
        if field.name in table.column_names:
            col = table.column(field.name)
            try:
                col = col.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise StoreError(f"caption column {field.name!r} has type {col.type}, expected {field.type} "
                                 f"({exc})") from exc
            if not field.nullable and col.null_count:
                raise StoreError(f"caption column {field.name!r} has {col.null_count} null value(s)")
        else:
            col = pa.nulls(table.num_rows, field.type)
        columns.append(col)
    out = pa.Table.from_arrays(columns, schema=SCHEMA)
    if out.num_rows:
        n_unique = pc.count_distinct(out.column("caption_id")).as_py()
        if n_unique != out.num_rows:
            seen: set[str] = set()
            for i, caption_id in enumerate(out.column("caption_id").to_pylist()):
                if caption_id in seen:
                    raise StoreError(f"caption row {i}: duplicate caption_id {caption_id!r}")
                seen.add(caption_id)
    return out


def write_caption_store(path: str | os.PathLike[str], table_or_rows: pa.Table | Iterable[Mapping[str, Any]],
                        meta: Mapping[str, Any]) -> Path:
    """Write the caption store directory ``path`` (table first, then the manifest, both atomically)."""
    directory = Path(path)
    table = _to_table(table_or_rows)
    directory.mkdir(parents=True, exist_ok=True)
    with StoreLock(directory):
        try:
            _remove_temp_files(directory)
            _write_locked(directory, table, meta)
        except OSError as exc:
            reason = disk_full_reason(exc)
            if reason is None:
                raise
            raise DiskFullError(f"{directory}: the disk is full ({reason}) while writing the caption store; "
                                "it is incomplete until rewritten. Free space and rerun the same command (it "
                                "writes the whole store again)") from exc
    return directory


def _remove_temp_files(directory: Path) -> None:
    """Temporary files of a writer that crashed (``.captions.parquet.tmp-<pid>``, ``.manifest.json.tmp-*``)."""
    removed = False
    for entry in os.listdir(directory):
        if entry.startswith((f".{TABLE_NAME}.tmp", f".{MANIFEST_NAME}.tmp")):
            (directory / entry).unlink(missing_ok=True)
            removed = True
    if removed:
        fsync_dir(directory)


def _write_locked(directory: Path, table: pa.Table, meta: Mapping[str, Any]) -> None:
    sha, size = write_part_file(directory, TABLE_NAME, lambda tmp: pq.write_table(
        table, tmp, compression="zstd", row_group_size=65536))
    splits: dict[str, int] = {}
    for s in table.column("split").to_pylist():
        splits[s] = splits.get(s, 0) + 1
    manifest = {
        "format": FORMAT, "schema_version": SCHEMA_VERSION, **json.loads(json.dumps(dict(meta), default=str)),
        "counts": {"captions": table.num_rows,
                   "images": pc.count_distinct(table.column("image_id")).as_py() if table.num_rows else 0,
                   "splits": splits,
                   "with_bert": table.num_rows - table.column("bert_ids").null_count,
                   "with_words": table.num_rows - table.column("word_ids").null_count},
        "file": TABLE_NAME, "sha256": sha, "bytes": size, "provenance": provenance(),
    }
    atomic_write_json(directory / MANIFEST_NAME, manifest)


def read_caption_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checked manifest of the caption store at ``path``."""
    mpath = Path(path) / MANIFEST_NAME
    manifest = read_manifest_json(path, kind="caption", create_hint="create it with `itmflow tokenize`",
                                  fix_hint="re-run `itmflow tokenize`")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise StoreError(f"{mpath} is not a caption store manifest (format is not {FORMAT!r})")
    version = manifest.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise SchemaVersionError(f"{mpath} has schema_version {version!r}; this itmflow reads "
                                 f"{SCHEMA_VERSION}; upgrade itmflow")
    return manifest


def read_caption_store(path: str | os.PathLike[str]) -> tuple[pa.Table, dict[str, Any]]:
    """Read the caption store at ``path``: (table, manifest). Checks size and row count."""
    manifest = read_caption_manifest(path)
    file = Path(path) / TABLE_NAME
    if not file.is_file():
        raise StoreCorruptError(f"{file} is missing; re-run `itmflow tokenize`")
    if "bytes" in manifest and file.stat().st_size != manifest["bytes"]:
        raise StoreCorruptError(f"{file} has {file.stat().st_size} bytes, the manifest says {manifest['bytes']} "
                                "(truncated or edited); re-run `itmflow tokenize`")
    try:
        table = pq.read_table(file)
    except (OSError, pa.ArrowException) as exc:
        raise StoreCorruptError(f"{file} cannot be read ({exc}); re-run `itmflow tokenize`") from exc
    if table.num_rows != manifest["counts"]["captions"]:
        raise StoreCorruptError(f"{file} holds {table.num_rows} captions, the manifest says "
                                f"{manifest['counts']['captions']}")
    return table, manifest
