"""Import features in the formats of the original tools into a region store.

The four formats of :mod:`stores.exports` read back: SCAN precomp (``{split}_ims.npy`` read through a
memmap, plus ``{split}_ids.txt`` and ``{split}_caps.txt`` when present), TERN ``bu_att``/``bu_box``,
the Caffe bottom-up-attention TSV and MILVLG npz. The files are untrusted: arrays are read with
``allow_pickle=False``; the one pickled object, MILVLG's ``info`` dict, is parsed from the raw
``.npy`` bytes inside the zip by :func:`itmflow.safe_pickle.restricted_load` (numpy arrays and
plain containers only), never by ``np.load(allow_pickle=True)``.

Each importer first scans its source cheaply (headers, ``num_boxes`` columns) to learn the region
counts and the feature dimension, so the store's region policy is known before the first row:
``fixed`` when every image has the same K, else ``variable`` with the observed min/max.
"""

from __future__ import annotations

import base64
import binascii
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import numpy as np

from itmflow.errors import InputFileError, ItmflowError, StoreError
from itmflow.safe_pickle import restricted_load
from stores.exports import EXPORT_FORMATS
from stores.schema import LABEL_FIELDS, REGION_FIELDS, RegionPolicy, geometry_from_boxes
from stores.writer import DEFAULT_ROWS_PER_PART, RegionStoreWriter

IMPORT_FORMATS = EXPORT_FORMATS
#: SCAN split names -> collection split names.
SCAN_TO_COLLECTION_SPLIT = {"train": "train", "restval": "restval", "dev": "val", "val": "val", "test": "test",
                            "testall": "test"}


@dataclass
class ImportSource:
    """A source scanned and ready to stream rows into a store."""

    format: str
    path: Path
    feature_dim: int
    counts: list[int]
    absent_fields: tuple[str, ...]
    rows: Callable[[], Iterator[dict[str, Any]]]
    images: list[tuple[str, str, str]] = field(default_factory=list)  # (image_id, file, split)
    captions: list[tuple[str, str, str]] | None = None  # (caption_id, image_id, raw)

    @property
    def region_policy(self) -> RegionPolicy:
        """``fixed`` K when all images agree, else ``variable`` with the observed range."""
        lo, hi = (min(self.counts), max(self.counts)) if self.counts else (0, 0)
        if lo == hi and lo > 0:
            return RegionPolicy.fixed(lo)
        return RegionPolicy.variable(lo, hi)

    @property
    def detector(self) -> dict[str, Any]:
        """The manifest's detector block for imported features."""
        return {"name": f"imported:{self.format}", "source": self.path.name, "source_format": self.format}


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise InputFileError(f"{path} does not exist; {what}")
    return path


def _npy_header(handle: IO[bytes], where: str) -> tuple[tuple[int, ...], np.dtype]:
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
    except (ValueError, OSError, SyntaxError) as exc:
        raise InputFileError(f"{where}: not a valid .npy array ({exc})") from exc
    return tuple(shape), dtype


def _read_npy(handle: IO[bytes], where: str) -> np.ndarray:
    try:
        return np.lib.format.read_array(handle, allow_pickle=False)
    except ValueError as exc:
        raise InputFileError(f"{where}: cannot read the array without unpickling ({exc}); itmflow does not "
                             "load pickled arrays from untrusted files") from exc


# -- SCAN precomp ---------------------------------------------------------------------------------
def scan_precomp(src: Path, split: str) -> ImportSource:
    """``{split}_ims.npy`` [+ ``{split}_ids.txt``, ``{split}_caps.txt``] in directory ``src``."""
    ims_path = _need(src / f"{split}_ims.npy", f"a SCAN precomp folder holds {split}_ims.npy (pass --split)")
    try:
        ims = np.load(ims_path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise InputFileError(f"{ims_path}: not a plain .npy array ({exc})") from exc
    if ims.ndim != 3 or ims.dtype.kind != "f":
        raise InputFileError(f"{ims_path}: expected a float array [N, K, D], got {ims.dtype}{list(ims.shape)}")
    n, k, dim = ims.shape
    ids_path = src / f"{split}_ids.txt"
    if ids_path.exists():
        ids = [line.strip() for line in ids_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if len(ids) != n:
            raise InputFileError(f"{ids_path}: {len(ids)} ids for {n} images in {ims_path.name}")
        seen: set[str] = set()
        for i, image_id in enumerate(ids):
            if image_id in seen:
                raise InputFileError(f"{ids_path} line {i + 1}: duplicate image id {image_id!r}")
            seen.add(image_id)
    else:
        ids = [f"{split}_{i}" for i in range(n)]
    coll_split = SCAN_TO_COLLECTION_SPLIT.get(split, "")
    images = [(image_id, image_id, coll_split) for image_id in ids]
    captions = None
    caps_path = src / f"{split}_caps.txt"
    if caps_path.exists():
        with open(caps_path, "rb") as handle:
            lines = [line.strip().decode("utf-8", errors="replace") for line in handle]
        while lines and not lines[-1]:
            lines.pop()
        if len(lines) == n:
            per = 1
        elif len(lines) == 5 * n:
            per = 5
        else:
            raise InputFileError(f"{caps_path}: {len(lines)} captions for {n} images; SCAN expects 5 per image "
                                 "(or one)")
        captions = [(f"{ids[j // per]}#{j % per}", ids[j // per], text) for j, text in enumerate(lines)]

    def rows() -> Iterator[dict[str, Any]]:
        for i in range(n):
            yield {"image_id": ids[i], "file": ids[i], "width": 0, "height": 0,
                   "features": np.asarray(ims[i]), "num_regions": k}

    return ImportSource("scan-precomp", src, dim, [k] * n, tuple(REGION_FIELDS), rows, images, captions)


# -- image sizes for formats that carry none ----------------------------------------------------------
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


def _size_keys(name: str) -> list[str]:
    """Names an image is looked up by: the id / path as given, its stem, and for COCO-style names
    (``COCO_val2014_000000391895``) the trailing number without zeros (``391895``: TERN's ids)."""
    stem = Path(name).stem if Path(name).suffix.lower() in _IMAGE_SUFFIXES else Path(name).name
    keys = [name, Path(name).as_posix(), stem]
    digits = len(stem) - len(stem.rstrip("0123456789"))
    if digits:
        keys.append(str(int(stem[len(stem) - digits:])))
    return keys


def _lookup(table: dict[str, tuple[int, int]], ids: list[str], source: str, hint: str) -> dict[str, tuple[int, int]]:
    out, missing = {}, []
    for image_id in ids:
        found = next((table[k] for k in _size_keys(image_id) if k in table), None)
        if found is None:
            missing.append(image_id)
        else:
            out[image_id] = found
    if missing:
        raise InputFileError(f"{len(missing)} of {len(ids)} images have no size in {source} (first: "
                             f"{', '.join(repr(m) for m in missing[:3])}); {hint}")
    return out


def image_sizes_from_folder(root: str | os.PathLike[str], ids: list[str]) -> dict[str, tuple[int, int]]:
    """(width, height) of every id from the image files under ``root`` (header only; EXIF orientation
    applied, as extraction does), matched by path, stem or COCO number."""
    from PIL import Image

    root = Path(root)
    if not root.is_dir():
        raise InputFileError(f"--images {root} is not a folder of images")
    files: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in _IMAGE_SUFFIXES and path.is_file():
            rel = path.relative_to(root).as_posix()
            for key in [rel, rel[: -len(path.suffix)], *_size_keys(path.name)]:
                files.setdefault(key, path)
    wanted: dict[str, Path] = {}
    for image_id in ids:
        hit = next((files[k] for k in _size_keys(image_id) if k in files), None)
        if hit is not None:
            wanted[image_id] = hit
    sizes: dict[str, tuple[int, int]] = {}
    for image_id, path in wanted.items():
        try:
            with Image.open(path) as image:
                w, h = image.size
                if image.getexif().get(0x0112) in (5, 6, 7, 8):  # rotated 90°: width and height swap
                    w, h = h, w
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise InputFileError(f"{path}: cannot read the image size ({exc})") from exc
        sizes[image_id] = (int(w), int(h))
    return _lookup(sizes, ids, f"the images under {root}",
                   "the image files are matched by file name (or COCO number); check --images")


def image_sizes_from_captions_json(path: str | os.PathLike[str], ids: list[str]) -> dict[str, tuple[int, int]]:
    """(width, height) of every id from a COCO annotation file (``images[].width/height``, matched by
    ``id`` or ``file_name``), as TERN's own COCO loader reads them."""
    import json

    path = Path(path)
    try:
        doc = json.loads(_need(path, "pass the COCO captions/instances JSON").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputFileError(f"--captions-json {path}: not JSON ({exc})") from exc
    images = doc.get("images") if isinstance(doc, dict) else None
    if not isinstance(images, list) or not images:
        raise InputFileError(f"--captions-json {path}: no images[] list; pass a COCO annotation file, or the "
                             "images with --images ROOT")
    table: dict[str, tuple[int, int]] = {}
    for entry in images:
        w, h = entry.get("width"), entry.get("height")
        if not (isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0):
            raise InputFileError(f"--captions-json {path}: images[] carry no width/height (a Karpathy / "
                                 "Flickr30k dataset json has none); read the sizes from the images with "
                                 "--images ROOT instead")
        for name in (entry.get("id"), entry.get("file_name"), entry.get("filename")):
            if name is not None:
                for key in _size_keys(str(name)):
                    table.setdefault(key, (w, h))
    return _lookup(table, ids, str(path), "pass the annotation file of these images, or --images ROOT")


# -- TERN bu_att / bu_box -------------------------------------------------------------------------
def tern(src: Path, split: str, *, images: str | os.PathLike[str] | None = None,
         captions_json: str | os.PathLike[str] | None = None) -> ImportSource:
    """``bu_att/{id}.npz`` (key ``feat``) and ``bu_box/{id}.npy`` under ``src``.

    TERN's files carry no image size, which the box geometry (x/W, y/H: TERN eq. 2) needs: the sizes
    come from the images (``images``) or a COCO annotation file (``captions_json``), as TERN's own
    loader takes them; with neither the import is refused.
    """
    att_dir = _need(src / "bu_att", "a TERN feature folder holds bu_att/ and bu_box/")
    box_dir = _need(src / "bu_box", "a TERN feature folder holds bu_att/ and bu_box/")
    att_files = sorted(att_dir.rglob("*.npz"))
    if not att_files:
        raise InputFileError(f"{att_dir} holds no .npz files")
    ids = [p.relative_to(att_dir).with_suffix("").as_posix() for p in att_files]
    counts = []
    for image_id in ids:
        box = _need(box_dir / f"{image_id}.npy", f"every bu_att/{image_id}.npz needs its box file")
        with open(box, "rb") as handle:
            shape, _ = _npy_header(handle, str(box))
        if len(shape) != 2 or shape[1] != 4:
            raise InputFileError(f"{box}: boxes must be [K, 4], got {list(shape)}")
        counts.append(shape[0])
    with np.load(att_files[0], allow_pickle=False) as first:
        if "feat" not in first:
            raise InputFileError(f"{att_files[0]}: key 'feat' is missing (keys: {sorted(first.files)})")
        dim = int(first["feat"].shape[-1])
    split_name = SCAN_TO_COLLECTION_SPLIT.get(split, "")
    if images is not None:
        sizes = image_sizes_from_folder(images, ids)
    elif captions_json is not None:
        sizes = image_sizes_from_captions_json(captions_json, ids)
    else:
        raise InputFileError(
            f"{src}: TERN feature files carry no image sizes, and the box geometry TERN/TERAN use "
            "(x/W, y/H) needs them: pass --images ROOT (sizes read from the image files) or "
            "--captions-json FILE (a COCO annotation file: images[].width/height; the Flickr30k / "
            "Karpathy dataset json has no sizes, use --images)")

    def rows() -> Iterator[dict[str, Any]]:
        for image_id, att in zip(ids, att_files):
            try:
                with np.load(att, allow_pickle=False) as data:
                    feats = data["feat"]
            except (ValueError, KeyError, OSError, zipfile.BadZipFile) as exc:
                raise InputFileError(f"{att}: cannot read key 'feat' ({exc})") from exc
            with open(box_dir / f"{image_id}.npy", "rb") as handle:
                boxes = _read_npy(handle, str(box_dir / f"{image_id}.npy"))
            w, h = sizes[image_id]
            yield {"image_id": image_id, "file": image_id, "width": w, "height": h, "features": feats,
                   "boxes": boxes, "geometry": geometry_from_boxes(np.asarray(boxes).reshape(-1, 4), w, h)}

    absent = LABEL_FIELDS
    return ImportSource("tern", src, dim, counts, absent, rows,
                        [(i, i, split_name) for i in ids])


# -- Caffe bottom-up-attention TSV ----------------------------------------------------------------
def _tsv_files(src: Path) -> list[Path]:
    if src.is_dir():
        files = sorted(p for p in src.iterdir() if p.suffix == ".tsv" or ".tsv." in p.name)
        if not files:
            raise InputFileError(f"{src} holds no .tsv files")
        return files
    return [_need(src, "pass the TSV file or the folder holding it")]


def _b64_len(text: str) -> int:
    return len(text) * 3 // 4 - (2 if text.endswith("==") else 1 if text.endswith("=") else 0)


def _tsv_lines(files: list[Path]) -> Iterator[tuple[str, int, list[str]]]:
    for path in files:
        with open(path, encoding="utf-8", errors="replace", newline="\n") as handle:
            for line_no, line in enumerate(handle, start=1):
                line = line.rstrip("\r\n")
                if not line:
                    continue
                fields = line.split("\t")
                if len(fields) != 6:
                    raise InputFileError(f"{path} line {line_no}: {len(fields)} tab-separated fields, expected 6 "
                                         "(image_id, image_w, image_h, num_boxes, boxes, features)")
                yield str(path), line_no, fields


def butd_tsv(src: Path, split: str) -> ImportSource:
    """One TSV file (or a folder of ``*.tsv`` / ``*.tsv.N``)."""
    files = _tsv_files(src)
    counts: list[int] = []
    ids: list[str] = []
    dim = None
    for where, line_no, fields in _tsv_lines(files):
        try:
            k = int(fields[3])
            int(fields[1]), int(fields[2])
        except ValueError:
            raise InputFileError(f"{where} line {line_no} (image_id {fields[0]!r}): image_w, image_h and "
                                 "num_boxes must be integers") from None
        if k <= 0:
            raise InputFileError(f"{where} line {line_no} (image_id {fields[0]!r}): num_boxes is {k}")
        nbytes = _b64_len(fields[5])
        if dim is None:
            if nbytes % (4 * k):
                raise InputFileError(f"{where} line {line_no} (image_id {fields[0]!r}): features decode to "
                                     f"{nbytes} bytes, not a multiple of num_boxes x 4 = {4 * k}")
            dim = nbytes // (4 * k)
        counts.append(k)
        ids.append(fields[0])
    if dim is None:
        raise InputFileError(f"{src} holds no rows")
    split_name = SCAN_TO_COLLECTION_SPLIT.get(split, "")

    def decode(text: str, expect: int, what: str, where: str, line_no: int, image_id: str) -> np.ndarray:
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InputFileError(f"{where} line {line_no} (image_id {image_id!r}): field {what!r} is not valid "
                                 f"base64 ({exc})") from exc
        if len(raw) != expect:
            raise InputFileError(f"{where} line {line_no} (image_id {image_id!r}): field {what!r} decodes to "
                                 f"{len(raw)} bytes, expected {expect} ({expect // 4} float32 values); the row is "
                                 "truncated, edited or has another feature dimension")
        return np.frombuffer(raw, dtype=np.float32)

    def rows() -> Iterator[dict[str, Any]]:
        for where, line_no, fields in _tsv_lines(files):
            image_id, w, h, k = fields[0], int(fields[1]), int(fields[2]), int(fields[3])
            if w <= 0 or h <= 0:
                raise InputFileError(f"{where} line {line_no} (image_id {image_id!r}): image size {w}x{h} is "
                                     "not positive")
            boxes = decode(fields[4], k * 16, "boxes", where, line_no, image_id).reshape(k, 4)
            feats = decode(fields[5], k * dim * 4, "features", where, line_no, image_id).reshape(k, dim)
            yield {"image_id": image_id, "file": image_id, "width": w, "height": h, "features": feats,
                   "boxes": boxes, "geometry": geometry_from_boxes(boxes, w, h)}

    return ImportSource("butd-tsv", src, dim, counts, LABEL_FIELDS, rows, [(i, i, split_name) for i in ids])


# -- MILVLG npz -----------------------------------------------------------------------------------
def read_npz_safely(path: Path) -> dict[str, Any]:
    """Arrays of an ``.npz``; a pickled object member (MILVLG ``info``) is unpickled by the restricted
    unpickler (numpy arrays and plain containers only) and returned as its Python object."""
    out: dict[str, Any] = {}
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputFileError(f"{path}: not a readable .npz ({exc})") from exc
    with archive:
        for name in archive.namelist():
            if not name.endswith(".npy"):
                continue
            where = f"{path}:{name}"
            with archive.open(name) as handle:
                shape, dtype = _npy_header(handle, where)
                if dtype.hasobject:
                    try:
                        obj = restricted_load(handle)
                    except ItmflowError:
                        raise
                    except Exception as exc:  # a malformed pickle raises many types
                        raise InputFileError(f"{where}: cannot unpickle the object array ({exc})") from exc
                    if isinstance(obj, np.ndarray) and obj.dtype.hasobject and obj.shape == ():
                        obj = obj.item()
                    out[name[:-4]] = obj
                else:
                    with archive.open(name) as again:
                        out[name[:-4]] = _read_npy(again, where)
    return out


def milvlg_npz(src: Path, split: str) -> ImportSource:
    """A folder of MILVLG ``{image}.npz`` files (searched recursively)."""
    if not src.is_dir():
        raise InputFileError(f"{src} is not a folder; pass the folder holding the MILVLG .npz files")
    files = sorted(src.rglob("*.npz"))
    if not files:
        raise InputFileError(f"{src} holds no .npz files")
    counts, ids = [], []
    first = read_npz_safely(files[0])
    for key in ("x", "bbox", "num_bbox", "image_h", "image_w"):
        if key not in first:
            raise InputFileError(f"{files[0]}: key {key!r} is missing; not a MILVLG feature file")
    dim = int(first["x"].shape[-1])
    has_labels = isinstance(first.get("info"), dict) and "objects_id" in first["info"]
    for path in files:
        with zipfile.ZipFile(path) as archive, archive.open("num_bbox.npy") as handle:
            counts.append(int(_read_npy(handle, f"{path}:num_bbox.npy")))
        ids.append(path.relative_to(src).with_suffix("").as_posix())
    split_name = SCAN_TO_COLLECTION_SPLIT.get(split, "")

    def rows() -> Iterator[dict[str, Any]]:
        for path, image_id in zip(files, ids):
            data = read_npz_safely(path)
            # The file name is the id (MILVLG names files after the image); info may repeat it.
            info = data.get("info") if isinstance(data.get("info"), dict) else {}
            try:
                w, h, k = int(data["image_w"]), int(data["image_h"]), int(data["num_bbox"])
                boxes = np.asarray(data["bbox"], dtype=np.float32)
                feats = data["x"]
            except KeyError as exc:
                raise InputFileError(f"{path}: key {exc} is missing; not a MILVLG feature file") from None
            if w <= 0 or h <= 0:
                raise InputFileError(f"{path}: image size {w}x{h} is not positive")
            row: dict[str, Any] = {"image_id": image_id, "file": path.relative_to(src).as_posix(), "width": w,
                                   "height": h, "features": feats, "boxes": boxes, "num_regions": k,
                                   "geometry": geometry_from_boxes(boxes.reshape(-1, 4), w, h)}
            if has_labels:
                try:
                    row.update(object_ids=np.asarray(info["objects_id"]).astype(np.int16),
                               object_conf=np.asarray(info["objects_conf"], dtype=np.float32),
                               attr_ids=np.asarray(info["attrs_id"]).astype(np.int16),
                               attr_conf=np.asarray(info["attrs_conf"], dtype=np.float32))
                except KeyError as exc:
                    raise InputFileError(f"{path}: info lacks {exc}; the first file had labels, all must") from None
            yield row

    absent = () if has_labels else LABEL_FIELDS
    return ImportSource("milvlg-npz", src, dim, counts, absent, rows, [(i, i, split_name) for i in ids])


_IMPORTERS = {"scan-precomp": scan_precomp, "tern": tern, "butd-tsv": butd_tsv, "milvlg-npz": milvlg_npz}


def open_import(src: str | os.PathLike[str], fmt: str, *, split: str = "train",
                images: str | os.PathLike[str] | None = None,
                captions_json: str | os.PathLike[str] | None = None) -> ImportSource:
    """Scan ``src`` in format ``fmt``; ``images`` / ``captions_json`` give the image sizes a TERN
    folder lacks (the other formats carry them, or no boxes)."""
    if fmt not in _IMPORTERS:
        raise StoreError(f"import format {fmt!r} is unknown; use one of {', '.join(IMPORT_FORMATS)}")
    if fmt == "tern":
        return tern(Path(src), split, images=images, captions_json=captions_json)
    if images is not None or captions_json is not None:
        raise StoreError(f"--images / --captions-json give the image sizes of a TERN folder; {fmt} carries "
                         "its own (or has no boxes)")
    return _IMPORTERS[fmt](Path(src), split)


def import_store(src: str | os.PathLike[str], fmt: str, out: str | os.PathLike[str], *,
                 storage: str = "parquet", feature_dtype: str = "float32", split: str = "train",
                 rows_per_part: int = DEFAULT_ROWS_PER_PART,
                 progress: Callable[[int], None] | None = None, images: str | os.PathLike[str] | None = None,
                 captions_json: str | os.PathLike[str] | None = None) -> ImportSource:
    """Import ``src`` into the store ``out`` (resumable: committed image ids are skipped).

    Returns the scanned source (its ``images`` and ``captions`` feed a collection table).
    """
    source = open_import(src, fmt, split=split, images=images, captions_json=captions_json)
    with RegionStoreWriter(out, storage=storage, feature_dim=source.feature_dim, feature_dtype=feature_dtype,
                           region_policy=source.region_policy, detector=source.detector,
                           rows_per_part=rows_per_part, absent_fields=source.absent_fields,
                           extra={"imported_from": {"format": fmt, "split": split}}) as writer:
        done = writer.committed_ids()
        for row in source.rows():
            if row["image_id"] not in done:
                writer.add(row)
            if progress is not None:
                progress(1)
    return source
