"""Export a region store to the feature formats the original tools read.

* ``scan-precomp`` (SCAN / SGRAF): ``{split}_ims.npy`` float32 ``[N, K, D]`` written through a
  memmap (never the whole array in RAM), ``{split}_ids.txt`` (one image id per line) and, with a
  caption store, ``{split}_caps.txt`` (the first five captions of each image, in order).
* ``tern`` (TERN / TERAN): ``bu_att/{image_id}.npz`` with key ``feat`` float32 ``[K, D]`` and
  ``bu_box/{image_id}.npy`` float32 ``[K, 4]`` (x1, y1, x2, y2 pixels).
* ``butd-tsv`` (bottom-up-attention ``generate_tsv.py``): ``{split}.tsv``, tab-separated, no header:
  ``image_id, image_w, image_h, num_boxes, boxes, features`` (w before h; boxes and features are
  base64 of C-order float32; text is UTF-8 whatever the locale, so ``café.jpg`` is written as is).
* ``milvlg-npz`` (MILVLG bottom-up-attention.pytorch): ``{image_id}.npz`` with ``x`` float32 [K, D],
  ``bbox`` float32 [K, 4], ``num_bbox``, ``image_h``, ``image_w`` and ``info`` (a pickled dict with
  image_id, image_h, image_w, num_boxes and, when the store has labels, objects_id / objects_conf /
  attrs_id / attrs_conf).

A fixed-K store row whose detector kept fewer than K regions (``num_regions`` < K, padded in the
store) is written with its real regions only by ``tern``, ``butd-tsv`` and ``milvlg-npz`` (formats
with a per-image count), and padded to K with zero features by ``scan-precomp`` (one fixed-shape
array; SCAN / SGRAF see the zero rows as regions).

Every output file is written through :func:`itmflow.files.atomic_path` (a temporary name, renamed
when complete; the per-image files of tern and milvlg-npz without an fsync each); a read that fails
(a part that fails its checksums raises ``StoreCorruptError`` naming store and part) removes the
file being written, and files already complete stay.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from itmflow.errors import StoreError
from itmflow.files import atomic_path, safe_join
from stores.reader import RegionStoreReader, open_region_store
from stores.schema import ARRAY_FIELDS

EXPORT_FORMATS: tuple[str, ...] = ("scan-precomp", "tern", "butd-tsv", "milvlg-npz")
#: SCAN split names -> the collection splits they hold.
SCAN_SPLITS: dict[str, tuple[str, ...]] = {"train": ("train", "restval"), "dev": ("val",), "val": ("val",),
                                            "test": ("test",), "testall": ("test",), "restval": ("restval",)}
CAPTIONS_PER_IMAGE = 5


def _rows(reader: RegionStoreReader, wanted: set[str] | None) -> Iterator[dict[str, Any]]:
    for _, block in reader.blocks():
        for row in block.rows():
            if wanted is None or row["image_id"] in wanted:
                yield row


def _real_regions(rows: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Rows cut to their real regions: a fixed-K row whose detector kept fewer than K regions is
    padded in the store; the variable-K formats (tern, butd-tsv, milvlg-npz) get the real ones."""
    for row in rows:
        n = int(row["num_regions"])
        if len(row["features"]) != n:
            row = {**row, **{name: None if row.get(name) is None else row[name][:n] for name in ARRAY_FIELDS}}
        yield row


def _captions_by_image(captions: str | os.PathLike[str], split: str) -> dict[str, list[str]]:
    """image_id -> its captions (in store order) for the images of ``split``."""
    from stores.captions import read_caption_store

    table, _ = read_caption_store(captions)
    splits = SCAN_SPLITS.get(split)
    out: dict[str, list[str]] = {}
    for image_id, cap_split, raw in zip(table.column("image_id").to_pylist(), table.column("split").to_pylist(),
                                        table.column("raw").to_pylist()):
        if splits is None or cap_split in splits:
            out.setdefault(image_id, []).append(" ".join(raw.split()))
    return out


def _need_boxes(reader: RegionStoreReader, fmt: str) -> None:
    if "boxes" in reader.settings.absent_fields:
        raise StoreError(f"{reader.path}: the store has no boxes (imported without them); {fmt} needs boxes. "
                         "Export to scan-precomp instead, or re-extract the images")


def export_store(store: str | os.PathLike[str], fmt: str, out: str | os.PathLike[str], *,
                 captions: str | os.PathLike[str] | None = None, split: str = "train",
                 progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Export ``store`` as ``fmt`` into directory ``out``; returns a summary (files, rows).

    ``split`` names the files of scan-precomp / butd-tsv; with ``captions`` only the images whose
    captions belong to ``split`` (SCAN names: train = train+restval, dev = val, test/testall = test)
    are exported, in store order.
    """
    if fmt not in EXPORT_FORMATS:
        raise StoreError(f"export format {fmt!r} is unknown; use one of {', '.join(EXPORT_FORMATS)}")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open_region_store(store) as reader:
        caps = _captions_by_image(captions, split) if captions is not None else None
        if caps is not None:
            ids = [i for i in reader.ids() if i in caps]
            if not ids:
                raise StoreError(f"no image of {reader.path} has captions of split {split!r} in {captions}")
        else:
            ids = reader.ids()
        wanted = set(ids) if len(ids) != len(reader) else None
        if fmt == "scan-precomp":
            files = _export_scan(reader, ids, wanted, caps, out_dir, split, progress)
        elif fmt == "tern":
            files = _export_tern(reader, wanted, out_dir, progress)
        elif fmt == "butd-tsv":
            files = _export_tsv(reader, wanted, out_dir, split, progress)
        else:
            files = _export_milvlg(reader, wanted, out_dir, progress)
    return {"format": fmt, "out": str(out_dir), "rows": len(ids), "files": files}


def _export_scan(reader: RegionStoreReader, ids: list[str], wanted: set[str] | None,
                 caps: dict[str, list[str]] | None, out_dir: Path, split: str,
                 progress: Callable[[int], None] | None) -> int:
    k = reader.fixed_k
    if k is None:
        policy = reader.settings.region_policy.to_manifest()
        raise StoreError(f"{reader.path}: the store has a variable number of regions per image (region policy "
                         f"{policy}); scan-precomp holds one fixed-shape [N, K, D] array. "
                         "Export to tern, butd-tsv or milvlg-npz, or extract with a fixed K (--regions 36)")
    lines: list[str] = []
    if caps is not None:
        for image_id in ids:
            have = caps[image_id]
            if len(have) < CAPTIONS_PER_IMAGE:
                raise StoreError(f"image_id {image_id!r} has {len(have)} caption(s) in the caption store; "
                                 f"scan-precomp needs {CAPTIONS_PER_IMAGE} per image")
            lines.extend(have[:CAPTIONS_PER_IMAGE])
    ims = out_dir / f"{split}_ims.npy"
    position = {image_id: i for i, image_id in enumerate(ids)}
    with atomic_path(ims) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                          shape=(len(ids), k, reader.settings.feature_dim))
        try:
            for row in _rows(reader, wanted):
                array[position[row["image_id"]]] = row["features"]
                if progress is not None:
                    progress(1)
            array.flush()
        finally:
            del array  # unmapped before the rename (or the removal of the temporary file)
    _write_text(out_dir / f"{split}_ids.txt", ids)
    files = 2
    if caps is not None:
        _write_text(out_dir / f"{split}_caps.txt", lines)
        files += 1
    return files


def _write_text(path: Path, lines: list[str]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as handle:
        for line in lines:
            handle.write(line + "\n")


def _export_tern(reader: RegionStoreReader, wanted: set[str] | None, out_dir: Path,
                 progress: Callable[[int], None] | None) -> int:
    _need_boxes(reader, "tern")
    files = 0
    for row in _real_regions(_rows(reader, wanted)):
        att = safe_join(out_dir / "bu_att", f"{row['image_id']}.npz", what="image_id")
        box = safe_join(out_dir / "bu_box", f"{row['image_id']}.npy", what="image_id")
        att.parent.mkdir(parents=True, exist_ok=True)
        box.parent.mkdir(parents=True, exist_ok=True)
        # Two small files per image: not fsynced one by one (see atomic_path); rerun after a power cut.
        with atomic_path(att, durable=False) as tmp, open(tmp, "wb") as handle:
            np.savez_compressed(handle, feat=np.asarray(row["features"], dtype=np.float32))
        with atomic_path(box, durable=False) as tmp, open(tmp, "wb") as handle:
            np.save(handle, np.asarray(row["boxes"], dtype=np.float32))
        files += 2
        if progress is not None:
            progress(1)
    return files


def _export_tsv(reader: RegionStoreReader, wanted: set[str] | None, out_dir: Path, split: str,
                progress: Callable[[int], None] | None) -> int:
    _need_boxes(reader, "butd-tsv")
    path = out_dir / f"{split}.tsv"
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as handle:
        for row in _real_regions(_rows(reader, wanted)):
            image_id = row["image_id"]
            if any(c in image_id for c in "\t\r\n"):
                raise StoreError(f"image_id {image_id!r} contains a tab or newline and cannot be written to "
                                 "a TSV")
            boxes = base64.b64encode(np.ascontiguousarray(row["boxes"], dtype=np.float32).tobytes()).decode()
            feats = base64.b64encode(np.ascontiguousarray(row["features"], dtype=np.float32).tobytes()).decode()
            handle.write(f"{image_id}\t{row['width']}\t{row['height']}\t{row['num_regions']}\t{boxes}\t"
                         f"{feats}\n")
            if progress is not None:
                progress(1)
    return 1


def _export_milvlg(reader: RegionStoreReader, wanted: set[str] | None, out_dir: Path,
                   progress: Callable[[int], None] | None) -> int:
    _need_boxes(reader, "milvlg-npz")
    has_labels = "object_ids" not in reader.settings.absent_fields
    files = 0
    for row in _real_regions(_rows(reader, wanted)):
        info: dict[str, Any] = {"image_id": row["image_id"], "image_h": row["height"], "image_w": row["width"],
                                "num_boxes": row["num_regions"]}
        if has_labels:
            info.update(objects_id=row["object_ids"].astype(np.int64), objects_conf=np.array(row["object_conf"]),
                        attrs_id=row["attr_ids"].astype(np.int64), attrs_conf=np.array(row["attr_conf"]))
        path = safe_join(out_dir, f"{row['image_id']}.npz", what="image_id")
        path.parent.mkdir(parents=True, exist_ok=True)
        # One small file per image: not fsynced one by one (see atomic_path); rerun after a power cut.
        with atomic_path(path, durable=False) as tmp, open(tmp, "wb") as handle:
            np.savez_compressed(handle, x=np.asarray(row["features"], dtype=np.float32),
                                bbox=np.asarray(row["boxes"], dtype=np.float32), num_bbox=row["num_regions"],
                                image_h=row["height"], image_w=row["width"], info=np.array(info, dtype=object))
        files += 1
        if progress is not None:
            progress(1)
    return files
