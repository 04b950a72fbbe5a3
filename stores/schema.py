"""Region store contract (schema versions 1 and 2): field names, dtypes, region policy, manifest
constants and row validation.

Everything that decides what a valid row is lives here, so the Parquet and HDF5 part writers, the
readers, verify and the importers agree on one definition. The names that detectors share with
stores (fields, storages, feature dtypes, :class:`RegionPolicy`, the row types) are defined once in
:mod:`itmflow.regions`, because detectors may not import stores, and re-exported here.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from itmflow.errors import StoreError
from itmflow.regions import (ALL_FIELDS, ARRAY_FIELDS, DEFAULT_CONF, DETECTED_FIELDS, FEATURE_DTYPES, FEATURES,
                             LABEL_FIELDS, POLICY_KINDS, STORAGES, STRING_FIELDS, DetectedRegions, RegionPolicy,
                             RegionRow)
from itmflow.regions import REGION_FIELDS as _REGIONS
from itmflow.regions import SCALAR_FIELDS as _SCALARS

FORMAT = "itmflow.regions"
#: Written by new stores. Version 2 keeps the parts in ``data/`` (nothing else there, so
#: ``pd.read_parquet("store/data")`` and ``'store/data/*.parquet'`` work) and stores Parquet features as
#: numbers (``arrow.fixed_shape_tensor`` / ``large_list`` of halffloat or float), not opaque bytes.
#: Version 1 stores (parts beside the manifest, byte features) are still read, and resumed as v1.
SCHEMA_VERSION = 2
#: Schema versions this itmflow reads.
READABLE_VERSIONS = (1, 2)
#: Folder of the part files in a version-2 store.
DATA_DIR = "data"
MANIFEST_NAME = "manifest.json"
FAILURES_NAME = "failures.jsonl"
#: Held (flock) by the one process writing the store; see stores/lock.py. Not part of the data.
LOCK_NAME = "writer.lock"
PART_PREFIX = "part-"
#: Dtypes of the per-image scalars, as numpy dtypes (names and dtypes: :mod:`itmflow.regions`).
SCALAR_FIELDS: dict[str, np.dtype] = {name: np.dtype(t) for name, t in _SCALARS.items()}
#: Per-region arrays other than the features: numpy dtype and trailing width (None = one value per region).
REGION_FIELDS: dict[str, tuple[np.dtype, int | None]] = {
    name: (np.dtype(t), width) for name, (t, width) in _REGIONS.items()}
#: Fields a store may declare absent (imported features whose source has no boxes or labels).
OPTIONAL_FIELDS: tuple[str, ...] = tuple(REGION_FIELDS)

_PART_RE = re.compile(r"^part-(\d{5,})\.(parquet|h5)$")


def part_name(index: int, storage: str) -> str:
    """File name of part number ``index`` (``part-00003.parquet``)."""
    return f"{PART_PREFIX}{index:05d}{STORAGES[storage]}"


def part_file(index: int, storage: str, version: int = SCHEMA_VERSION) -> str:
    """The manifest's ``file`` of part number ``index``: ``data/part-00003.parquet`` in a version-2
    store, ``part-00003.parquet`` (beside the manifest) in a version-1 store."""
    name = part_name(index, storage)
    return f"{DATA_DIR}/{name}" if version >= 2 else name


def parts_dir(store: str | os.PathLike[str], version: int) -> Path:
    """The directory holding the part files of a store of schema ``version``."""
    return Path(store) / DATA_DIR if version >= 2 else Path(store)


def is_part_name(name: str) -> bool:
    """True for names a writer gives to part files (committed or debris)."""
    return bool(_PART_RE.match(name))


def is_temp_name(name: str) -> bool:
    """True for the temporary names a writer uses before a rename (always debris when found): part
    files (``.part-00003.parquet.tmp-<pid>``) and the manifest (``.manifest.json.tmp-<pid>``)."""
    return (name.startswith(".part-") or name.startswith(f".{MANIFEST_NAME}.")) and ".tmp" in name


@dataclass(frozen=True)
class StoreSettings:
    """Everything that must be equal for two runs to write into the same store."""

    storage: str = "parquet"
    feature_dim: int = 2048
    feature_dtype: str = "float16"
    region_policy: RegionPolicy = field(default_factory=RegionPolicy)
    """A :class:`RegionPolicy`; a manifest record (mapping) is accepted and converted."""
    detector: dict[str, Any] = field(default_factory=dict)
    absent_fields: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.storage not in STORAGES:
            raise StoreError(f"storage {self.storage!r} is unknown; use one of {sorted(STORAGES)}")
        if self.feature_dtype not in FEATURE_DTYPES:
            raise StoreError(f"feature_dtype {self.feature_dtype!r} is unknown; use float16 or float32")
        if not isinstance(self.feature_dim, int) or self.feature_dim <= 0:
            raise StoreError(f"feature_dim must be a positive integer, got {self.feature_dim!r}")
        object.__setattr__(self, "region_policy", RegionPolicy.from_manifest(self.region_policy))
        bad = set(self.absent_fields) - set(OPTIONAL_FIELDS)
        if bad:
            raise StoreError(f"absent_fields {sorted(bad)} cannot be absent; only {OPTIONAL_FIELDS} may be")
        object.__setattr__(self, "absent_fields", tuple(sorted(set(self.absent_fields))))

    @property
    def fixed_k(self) -> int | None:
        """K when every row has the same number of regions, else None."""
        return self.region_policy.fixed_k

    @property
    def max_k(self) -> int | None:
        """Upper bound on K from the policy (None when unbounded)."""
        return self.region_policy.max_k

    @property
    def dtype(self) -> np.dtype:
        """The numpy dtype of stored features."""
        return np.dtype(self.feature_dtype)

    def present_region_fields(self) -> tuple[str, ...]:
        """The per-region fields (other than features) this store holds."""
        return tuple(f for f in REGION_FIELDS if f not in self.absent_fields)

    def to_manifest(self) -> dict[str, Any]:
        """The manifest keys these settings own."""
        return {"storage": self.storage, "feature_dim": self.feature_dim,
                "feature_dtype": self.feature_dtype, "region_policy": self.region_policy.to_manifest(),
                "detector": dict(self.detector), "absent_fields": list(self.absent_fields)}

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> "StoreSettings":
        """Settings recorded in a manifest."""
        return cls(storage=manifest["storage"], feature_dim=int(manifest["feature_dim"]),
                   feature_dtype=manifest["feature_dtype"], region_policy=RegionPolicy.from_manifest(manifest["region_policy"]),
                   detector=dict(manifest.get("detector") or {}),
                   absent_fields=tuple(manifest.get("absent_fields") or ()))


#: Label id of a padded region (a fixed-K row whose detector kept fewer than K regions): no class.
PAD_ID = -1


def stored_counts(num_regions: np.ndarray, settings: StoreSettings) -> np.ndarray:
    """Regions each row's arrays hold: K for every row of a fixed-K store (rows with fewer real
    regions are padded to K, ``num_regions`` keeps the real count), else ``num_regions``."""
    counts = np.asarray(num_regions, dtype=np.int64)
    if settings.fixed_k is not None:
        return np.full(counts.shape, settings.fixed_k, dtype=np.int64)
    return counts


def region_mask(num_regions: int, k: int) -> np.ndarray:
    """``[k]`` bool, True for the real regions of a row (the first ``num_regions``)."""
    return np.arange(k) < int(num_regions)


def geometry_from_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """TERN eq. 2: x1/W, y1/H, x2/W, y2/H, area/(W·H) as float32 [K,5].

    Raises :class:`StoreError` for a width or height that is not positive (imported features without
    image sizes): geometry is never computed from a zero size (it would be inf/NaN)."""
    if not (int(width) > 0 and int(height) > 0):
        raise StoreError(f"image size {width}x{height} is unknown, so box geometry (x/W, y/H) cannot be computed")
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    w, h = float(width), float(height)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) / (w * h)
    return np.stack([b[:, 0] / w, b[:, 1] / h, b[:, 2] / w, b[:, 3] / h, area], axis=1).astype(np.float32)


def all_finite(arr: np.ndarray) -> bool:
    """True when no value is NaN or inf. For float16 this tests the exponent bits as integers,
    ~5x faster than ``np.isfinite`` (numpy has no SIMD float16 path)."""
    if arr.dtype == np.float16:
        # exponent all ones (0x7C00) = inf or NaN; |x| bits >= 0x7C00 exactly then
        return arr.size == 0 or int((arr.view(np.uint16) & 0x7FFF).max()) < 0x7C00
    return bool(np.isfinite(arr).all())


def _as_int(value: Any, name: str, where: str) -> int:
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise StoreError(f"{where}: field {name!r} must be an integer, got {value!r}") from None
    if out != value and not isinstance(value, (np.integer, int)):
        raise StoreError(f"{where}: field {name!r} must be an integer, got {value!r}")
    return out


def validate_row(row: Mapping[str, Any], settings: StoreSettings, *, where: str = "row") -> RegionRow:
    """Check ``row`` against the contract and return it normalised (stored dtypes, C-contiguous).

    Float32 features are cast to the store's feature dtype. Raises :class:`StoreError` naming the
    image_id and the field for a missing field, a wrong shape, a wrong feature dimension, a K that
    breaks the region policy, or non-finite features.

    In a fixed-K store a row with fewer regions than K (the detector kept fewer) is padded to K:
    features, boxes, geometry and confidences zero, label ids :data:`PAD_ID`; ``num_regions`` keeps
    the real count. A row already padded (K rows, ``num_regions`` < K) is taken as it is.
    """
    image_id = row.get("image_id")
    if not isinstance(image_id, str) or not image_id:
        raise StoreError(f"{where}: image_id must be a non-empty string, got {image_id!r}")
    where = f"{where} (image_id {image_id!r})"
    file = row.get("file")
    if not isinstance(file, str):
        raise StoreError(f"{where}: field 'file' must be a string (path relative to the collection root)")
    feats = row.get(FEATURES)
    if feats is None:
        raise StoreError(f"{where}: field 'features' is missing")
    feats = np.asarray(feats)
    if feats.ndim != 2:
        raise StoreError(f"{where}: features must be [K, {settings.feature_dim}], got shape {feats.shape}")
    if feats.shape[1] != settings.feature_dim:
        raise StoreError(f"{where}: features have dimension {feats.shape[1]} but the store's feature_dim is "
                         f"{settings.feature_dim}; write to a store created with feature_dim={feats.shape[1]}")
    if feats.dtype.kind != "f":
        raise StoreError(f"{where}: features must be floating point, got {feats.dtype}")
    k = feats.shape[0]  # regions the arrays hold
    real = k if row.get("num_regions") is None else _as_int(row["num_regions"], "num_regions", where)
    fixed = settings.fixed_k
    if real > k or (real < k and k != fixed):
        raise StoreError(f"{where}: num_regions is {row['num_regions']} but features have {k} rows")
    if fixed is not None and k > fixed:
        raise StoreError(f"{where}: {k} regions but the store's region policy is fixed K={fixed}")
    if fixed is not None and real < 1:
        raise StoreError(f"{where}: the detector kept no region; a fixed-K store needs at least one")
    if settings.max_k is not None and k > settings.max_k:
        raise StoreError(f"{where}: {k} regions exceed the policy's max {settings.max_k}")
    if k > np.iinfo(np.int16).max:
        raise StoreError(f"{where}: {k} regions do not fit num_regions (int16)")
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below, naming the row
        stored = np.ascontiguousarray(feats, dtype=settings.dtype)
    if not all_finite(stored):
        bad = int(np.argwhere(~np.isfinite(stored))[0][0])
        raise StoreError(f"{where}: features of region {bad} are not finite (NaN/inf, or too large for "
                         f"{settings.feature_dtype}); fix the extractor or store float32")
    pad = 0 if fixed is None else fixed - k  # fewer regions than K: padded, num_regions keeps the real count
    if pad:
        stored = np.concatenate([stored, np.zeros((pad, stored.shape[1]), dtype=stored.dtype)])
    out: dict[str, Any] = {"image_id": image_id, "file": file}  # a RegionRow once complete
    for name, dtype in SCALAR_FIELDS.items():
        value = real if name == "num_regions" else row.get(name)
        if value is None:
            raise StoreError(f"{where}: field {name!r} is missing")
        value = _as_int(value, name, where)
        if value < 0 or value > np.iinfo(dtype).max:
            raise StoreError(f"{where}: field {name!r} = {value} is out of range for {dtype}")
        out[name] = value
    for name, (dtype, width) in REGION_FIELDS.items():
        value = row.get(name)
        if name in settings.absent_fields:
            out[name] = None
            continue
        if value is None:
            raise StoreError(f"{where}: field {name!r} is missing (the store's manifest does not list it "
                             "as absent)")
        arr = np.asarray(value)
        want = (k, width) if width is not None else (k,)
        if arr.shape != want:
            raise StoreError(f"{where}: field {name!r} has shape {arr.shape}, expected {want}")
        if dtype.kind == "i" and arr.dtype.kind == "f":
            raise StoreError(f"{where}: field {name!r} must hold integers, got {arr.dtype}")
        arr = np.ascontiguousarray(arr, dtype=dtype)
        if pad:
            fill = np.full((pad, *arr.shape[1:]), PAD_ID if dtype.kind == "i" else 0, dtype=dtype)
            arr = np.concatenate([arr, fill])
        out[name] = arr
    out[FEATURES] = stored
    return out  # type: ignore[return-value]


__all__ = ["ALL_FIELDS", "ARRAY_FIELDS", "DATA_DIR", "DEFAULT_CONF", "DETECTED_FIELDS", "DetectedRegions",
           "FAILURES_NAME", "FEATURES", "FEATURE_DTYPES", "FORMAT", "LABEL_FIELDS", "LOCK_NAME",
           "MANIFEST_NAME", "OPTIONAL_FIELDS", "PAD_ID", "PART_PREFIX", "POLICY_KINDS", "READABLE_VERSIONS",
           "REGION_FIELDS", "RegionPolicy", "RegionRow", "SCALAR_FIELDS", "SCHEMA_VERSION", "STORAGES",
           "STRING_FIELDS", "StoreSettings", "all_finite", "geometry_from_boxes", "is_part_name",
           "is_temp_name", "part_file", "part_name", "parts_dir", "region_mask", "stored_counts",
           "validate_row"]
