"""The vocabulary of the region-store contract that detectors and stores share.

:mod:`stores.schema` is the contract (what a valid row and a valid manifest are); it re-exports
everything here. These definitions live in the core because detectors produce what stores hold and
neither may import the other (design.md, "Layout"): the field names and their dtypes, the storages,
the feature dtypes, the region policy, and the typed region dicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, TypedDict

from itmflow.errors import ConfigError, StoreError

if TYPE_CHECKING:  # numpy stays an import-time-free dependency of the core
    import numpy as np

#: storage name -> part file suffix
STORAGES: dict[str, str] = {"parquet": ".parquet", "hdf5": ".h5"}
FEATURE_DTYPES: tuple[str, ...] = ("float16", "float32")

#: Per-image strings (the collection's names for the image).
STRING_FIELDS: tuple[str, ...] = ("image_id", "file")
#: Per-image scalars and their stored dtypes.
SCALAR_FIELDS: dict[str, str] = {"width": "int32", "height": "int32", "num_regions": "int16"}
#: Per-region arrays other than the features: dtype and trailing width (None = one value per region).
REGION_FIELDS: dict[str, tuple[str, int | None]] = {
    "boxes": ("float32", 4),
    "geometry": ("float32", 5),
    "object_ids": ("int16", None),
    "object_conf": ("float32", None),
    "attr_ids": ("int16", None),
    "attr_conf": ("float32", None),
}
#: The per-region features ([K, feature_dim], float16 or float32 in a store).
FEATURES = "features"
#: The per-region label fields (argmax ids over the VG vocabularies and their probabilities).
LABEL_FIELDS: tuple[str, ...] = ("object_ids", "object_conf", "attr_ids", "attr_conf")
#: Per-region arrays a row holds: the region fields and the features.
ARRAY_FIELDS: tuple[str, ...] = tuple(REGION_FIELDS) + (FEATURES,)
#: What a detector returns per image: every store field but the collection's names.
DETECTED_FIELDS: tuple[str, ...] = ARRAY_FIELDS + tuple(SCALAR_FIELDS)
#: Every field of a store row, in the stored column order.
ALL_FIELDS: tuple[str, ...] = STRING_FIELDS + tuple(SCALAR_FIELDS) + tuple(REGION_FIELDS) + (FEATURES,)


class DetectedRegions(TypedDict):
    """One image's regions as a detector returns them (numpy values; K regions)."""

    boxes: "np.ndarray"
    geometry: "np.ndarray"
    features: "np.ndarray"
    object_ids: "np.ndarray"
    object_conf: "np.ndarray"
    attr_ids: "np.ndarray"
    attr_conf: "np.ndarray"
    num_regions: int
    width: int
    height: int


class RegionRow(TypedDict):
    """One store row. Region fields a store declares absent (imported features) are None."""

    image_id: str
    file: str
    width: int
    height: int
    num_regions: int
    boxes: "np.ndarray | None"
    geometry: "np.ndarray | None"
    object_ids: "np.ndarray | None"
    object_conf: "np.ndarray | None"
    attr_ids: "np.ndarray | None"
    attr_conf: "np.ndarray | None"
    features: "np.ndarray"


# the typed dicts spell the field names for type checkers; the tables above are the truth
assert set(DetectedRegions.__annotations__) == set(DETECTED_FIELDS)
assert tuple(RegionRow.__annotations__) == ALL_FIELDS

#: Region-policy kinds. ``fixed``: every row has exactly ``k`` regions (detector, 36 boxes).
#: ``adaptive``: the BUTD 10-100 rule. ``variable``: imported features whose K varies.
POLICY_KINDS: tuple[str, ...] = ("fixed", "adaptive", "variable")
#: The confidence bar of the BUTD selection (``generate_tsv.py``'s ``conf_thresh``).
DEFAULT_CONF = 0.2


@dataclass(frozen=True)
class RegionPolicy:
    """How many regions a row holds: ``fixed`` K, ``adaptive`` min–max with a confidence bar, or
    ``variable`` (imported features; the observed range, when known).

    ``conf_thresh`` also matters to a fixed policy's selection (it decides the order of the kept
    regions) but a fixed policy's manifest record holds K only. The constructor raises
    :class:`ConfigError` for an impossible policy; :meth:`from_manifest` raises
    :class:`StoreError`.
    """

    kind: str = "fixed"
    min_regions: int | None = 36
    max_regions: int | None = 36
    conf_thresh: float | None = DEFAULT_CONF

    def __post_init__(self) -> None:
        if self.kind not in POLICY_KINDS:
            raise ConfigError(f"region_policy kind {self.kind!r} is unknown; use one of {POLICY_KINDS}")
        lo, hi = self.min_regions, self.max_regions
        if self.kind == "fixed":
            if not (isinstance(lo, int) and lo > 0 and lo == hi):
                raise ConfigError(f"region_policy {self.to_manifest()} needs a positive integer 'k'")
        elif self.kind == "adaptive":
            if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
                raise ConfigError(f"region_policy {self.to_manifest()}: need integers 1 <= min <= max")

    @classmethod
    def fixed(cls, k: int, conf_thresh: float | None = DEFAULT_CONF) -> "RegionPolicy":
        """Exactly ``k`` regions per image."""
        return cls("fixed", k, k, conf_thresh)

    @classmethod
    def adaptive(cls, min_regions: int, max_regions: int,
                 conf_thresh: float | None = DEFAULT_CONF) -> "RegionPolicy":
        """``min_regions`` to ``max_regions`` regions, those above ``conf_thresh`` (BUTD 10-100)."""
        return cls("adaptive", min_regions, max_regions, conf_thresh)

    @classmethod
    def variable(cls, min_regions: int | None = None, max_regions: int | None = None) -> "RegionPolicy":
        """Imported features whose K varies (the observed range, when known)."""
        return cls("variable", min_regions, max_regions, None)

    @classmethod
    def parse(cls, text: str | int, conf_thresh: float | None = DEFAULT_CONF) -> "RegionPolicy":
        """The command line's ``--regions``: ``"36"`` → fixed 36; ``"10-100"`` → adaptive 10 to 100."""
        s = str(text).strip()
        try:
            if "-" in s:
                lo, hi = (int(v) for v in s.split("-", 1))
            else:
                lo = hi = int(s)
        except ValueError:
            raise ConfigError(f"regions {text!r} is not 'K' or 'MIN-MAX' (e.g. 36 or 10-100)") from None
        if lo < 1 or hi < lo:
            raise ConfigError(f"regions {text!r}: need 1 <= MIN <= MAX")
        return cls.fixed(lo, conf_thresh) if lo == hi else cls.adaptive(lo, hi, conf_thresh)

    @property
    def fixed_k(self) -> int | None:
        """K when every row has the same number of regions, else None."""
        return self.min_regions if self.kind == "fixed" else None

    @property
    def max_k(self) -> int | None:
        """Upper bound on K (None when unbounded)."""
        return self.max_regions

    def to_manifest(self) -> dict[str, Any]:
        """The store manifest's ``region_policy`` record."""
        if self.kind == "fixed":
            return {"kind": "fixed", "k": self.min_regions}
        out: dict[str, Any] = {"kind": self.kind}
        if self.min_regions is not None:
            out["min"] = self.min_regions
        if self.max_regions is not None:
            out["max"] = self.max_regions
        if self.kind == "adaptive" and self.conf_thresh is not None:
            out["conf"] = self.conf_thresh
        return out

    @classmethod
    def from_manifest(cls, record: "Mapping[str, Any] | RegionPolicy") -> "RegionPolicy":
        """The policy a manifest records (a policy passes through unchanged)."""
        if isinstance(record, RegionPolicy):
            return record
        if not isinstance(record, Mapping):
            raise StoreError(f"region_policy must be a mapping with a 'kind', got {record!r}")
        kind = record.get("kind")
        try:
            if kind == "fixed":
                k = record.get("k")
                return cls("fixed", k, k, DEFAULT_CONF)
            if kind == "adaptive":
                return cls("adaptive", record.get("min"), record.get("max"), record.get("conf"))
            return cls(kind, record.get("min"), record.get("max"), None)  # type: ignore[arg-type]
        except ConfigError as exc:
            raise StoreError(str(exc)) from None
