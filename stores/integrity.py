"""Checks on read: the checksums a part carries and the error a failed check raises.

``itmflow store verify`` hashes whole parts; readers check only what they read, on every read:

* **features**, per image: :func:`feature_checksum` of the row's feature bytes as stored, written
  next to the other columns (Parquet column / HDF5 dataset :data:`CHECKSUM_FIELD`, uint64 ``[n]``)
  and compared after every ``pread`` of a row (or pyarrow / h5py decode of it).
* **everything else**: Parquet page checksums (CRC32 in every page header, checked by pyarrow when
  it decodes a page); for HDF5, :func:`dataset_crc` of each small dataset as its attribute
  :data:`CRC_ATTR`, checked when the reader loads the dataset (whole, once per part and process).

The feature checksum is the sum of the bytes as little-endian 64-bit words, modulo 2**64 (the last
word zero-padded). It changes for every change confined to one 8-byte word — every flipped bit or
byte. Sequential reads sum it in the same pass as the copy (:func:`stores.rawrows.copy_and_checksum`,
nearly free); a lookup sums after its ``pread`` (2-4 µs per 147 KB image with numpy), against ~35 µs
for ``zlib.crc32`` (4.2 GB/s here), more than the read it would check. It is not a CRC: two
changes that cancel (swapped words) pass; the sha256 of ``store verify`` catches those.

A part without checksums (written before they existed, or by another tool) is read as before,
checking what it has.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from itmflow.errors import StoreCorruptError

#: Per-image feature checksums (uint64, one per row) in a Parquet part or an HDF5 part.
CHECKSUM_FIELD = "feature_checksum"
#: HDF5 attribute holding :func:`dataset_crc` of a small dataset.
CRC_ATTR = "itmflow.crc32"
_WORD = np.dtype("<u8")


def feature_checksum(features: np.ndarray) -> int:
    """Sum of the bytes of ``features`` (C order) as little-endian uint64 words, mod 2**64."""
    data = features if features.flags.c_contiguous else np.ascontiguousarray(features)
    flat = data.reshape(-1).view(np.uint8)
    whole = flat.size & ~7
    total = int(flat[:whole].view(_WORD).sum()) if whole else 0  # uint64 sums wrap: mod 2**64
    if whole != flat.size:
        total += int.from_bytes(flat[whole:].tobytes(), "little")
    return total & 0xFFFF_FFFF_FFFF_FFFF


def row_checksums(rows: Iterable[np.ndarray]) -> np.ndarray:
    """:func:`feature_checksum` of each row, as the uint64 array a part stores."""
    return np.array([feature_checksum(r) for r in rows], dtype=np.uint64)


def dataset_crc(values: np.ndarray | Sequence[str]) -> int:
    """CRC32 of a small dataset's values: a numeric array's bytes (C order, as stored); for strings,
    their UTF-8 bytes each followed by a NUL."""
    if isinstance(values, np.ndarray) and values.dtype.kind != "O":
        return zlib.crc32(np.ascontiguousarray(values).view(np.uint8).reshape(-1))
    return zlib.crc32(b"".join(s.encode("utf-8") + b"\0" for s in values))


def store_of(part: Path) -> Path:
    """The store directory of a part file (``<store>/data/part-*`` in a schema-2 store)."""
    parent = Path(part).parent
    if parent.name == "data" and (parent.parent / "manifest.json").is_file():
        return parent.parent
    return parent


def _part_label(part: Path) -> str:
    """The part as the manifest names it (``data/part-00003.parquet`` in a schema-2 store)."""
    return part.name if store_of(part) == part.parent else f"{part.parent.name}/{part.name}"


def corrupt(part: Path, what: str) -> StoreCorruptError:
    """The error for a failed check: one line naming the store, the part and what failed."""
    part = Path(part)
    return StoreCorruptError(f"store {store_of(part)}: part {_part_label(part)}: {what}; the part changed after it was "
                             f"written; run `itmflow store verify {store_of(part)}`")


def check_row(part: Path, row: int, features: np.ndarray, expected: int) -> None:
    """Raise :func:`corrupt` when ``features`` (row ``row`` of ``part``) fail their checksum."""
    got = feature_checksum(features)
    if got != expected:
        raise corrupt(part, f"row {row}: features fail their checksum (read {got:#018x}, stored {expected:#018x})")


def check_dataset(part: Path, name: str, values: np.ndarray | Sequence[str], expected: int | None) -> None:
    """Raise :func:`corrupt` when a small dataset fails its CRC (nothing to check when ``expected`` is None)."""
    if expected is not None and dataset_crc(values) != int(expected):
        raise corrupt(part, f"dataset {name!r} fails its CRC32")
