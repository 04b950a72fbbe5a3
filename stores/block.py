"""A columnar block of region rows: the one in-memory shape both part formats read and write.

Per-region fields are flat arrays over all regions of the block (``features`` is ``[R, D]``) and
``offsets`` (``n + 1`` entries) says which regions belong to which row, so fixed K and variable K
share one code path. Rows handed out by :meth:`Block.row` are views into the block (no copy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from stores.integrity import check_row, row_checksums
from stores.schema import REGION_FIELDS, SCALAR_FIELDS


@dataclass
class Block:
    """``n`` rows in columnar form. Absent region fields are ``None``."""

    image_id: list[str]
    file: list[str]
    width: np.ndarray
    height: np.ndarray
    num_regions: np.ndarray
    offsets: np.ndarray
    features: np.ndarray | None
    regions: dict[str, np.ndarray | None]
    #: Per-row feature arrays instead of the stacked ``features`` (which is then None): the write path
    #: hands rows to the encoders without stacking them, and the Parquet reader hands out views of
    #: each row group's buffer. Either way each byte is copied once less.
    feature_rows: Sequence[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.image_id)

    @classmethod
    def from_rows(cls, rows: Sequence[dict[str, Any]], feature_dim: int, dtype: np.dtype,
                  present: Sequence[str], *, stack_features: bool = True) -> "Block":
        """Stack validated rows (see :func:`stores.schema.validate_row`); with
        ``stack_features=False`` the features stay per row in ``feature_rows``."""
        # offsets follow the arrays (a padded fixed-K row holds K regions, num_regions the real count)
        counts = np.array([len(r["features"]) for r in rows], dtype=np.int64)
        real = np.array([r["num_regions"] for r in rows], dtype=np.int64)
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        feature_rows = None
        if not stack_features:
            features = None
            feature_rows = [r["features"] for r in rows]
        elif rows:
            features = np.concatenate([r["features"] for r in rows], axis=0)
        else:
            features = np.zeros((0, feature_dim), dtype=dtype)
        regions: dict[str, np.ndarray | None] = {}
        for name, (fdtype, width) in REGION_FIELDS.items():
            if name not in present:
                regions[name] = None
            elif rows:
                regions[name] = np.concatenate([r[name] for r in rows], axis=0)
            else:
                regions[name] = np.zeros((0, width) if width else (0,), dtype=fdtype)
        return cls(image_id=[r["image_id"] for r in rows], file=[r["file"] for r in rows],
                   width=np.array([r["width"] for r in rows], dtype=SCALAR_FIELDS["width"]),
                   height=np.array([r["height"] for r in rows], dtype=SCALAR_FIELDS["height"]),
                   num_regions=real.astype(SCALAR_FIELDS["num_regions"]), offsets=offsets,
                   features=features, regions=regions, feature_rows=feature_rows)  # type: ignore[arg-type]

    def _scalars(self) -> tuple[list[int], list[int], list[int], list[int]]:
        # Python ints once per block: indexing numpy arrays per row and converting costs more than
        # the rest of building a row.
        cached = self.__dict__.get("_scalar_lists")
        if cached is None:
            cached = (self.offsets.tolist(), self.width.tolist(), self.height.tolist(), self.num_regions.tolist())
            self.__dict__["_scalar_lists"] = cached
        return cached

    def row(self, i: int) -> dict[str, Any]:
        """Row ``i`` as the contract's dict (arrays are views into the block)."""
        return self._row(i, self._features(i))

    def _row(self, i: int, features: np.ndarray) -> dict[str, Any]:
        offsets, width, height, counts = self._scalars()
        a, b = offsets[i], offsets[i + 1]
        out: dict[str, Any] = {"image_id": self.image_id[i], "file": self.file[i],
                               "width": width[i], "height": height[i], "num_regions": counts[i]}
        for name, arr in self.regions.items():
            out[name] = None if arr is None else arr[a:b]
        out["features"] = features
        return out

    def flat_features(self) -> np.ndarray:
        """All features as one ``[R, D]`` array (a copy when the block holds per-row arrays)."""
        if self.features is not None:
            return self.features
        rows = [self.feature_rows[i] for i in range(len(self.feature_rows))] if self.feature_rows else []
        return np.concatenate(rows, axis=0) if rows else np.zeros((0, 0), dtype=np.float32)

    def rows(self, templates: Sequence[dict[str, Any]] | None = None) -> Iterator[dict[str, Any]]:
        """All rows in order (features read from the file several rows per call where they are lazy).

        The rows are built from :meth:`row_templates` (each a copy of its template plus the
        features; pass ``templates`` when they were made beforehand): the region views of the
        whole block are made in one go, not per row.
        """
        if templates is None:
            templates = self.row_templates()
        features = self.feature_rows.in_order() if isinstance(self.feature_rows, LazyRows) else (
            self._features(i) for i in range(len(self)))
        for template, feats in zip(templates, features):
            row = template.copy()
            row["features"] = feats
            yield row

    def _features(self, i: int) -> np.ndarray:
        if self.features is None:
            return self.feature_rows[i]  # type: ignore[index]
        offsets = self._scalars()[0]
        return self.features[offsets[i]:offsets[i + 1]]

    def row_templates(self) -> list[dict[str, Any]]:
        """Every row's dict without ``features``, in order (fresh dicts; the arrays are views into
        the block). Measured at K=36: ~0.9 µs per row, against ~1.2 µs for :meth:`row` one by one
        (the per-region views of a fixed-K block come from one reshape)."""
        n = len(self)
        offsets, width, height, counts = self._scalars()
        k = self.fixed_k()
        keys = ["image_id", "file", "width", "height", "num_regions"]
        columns: list[Any] = [self.image_id, self.file, width, height, counts]
        for name, arr in self.regions.items():
            keys.append(name)
            if arr is None:
                columns.append([None] * n)
            elif k is not None:
                columns.append(list(arr.reshape((n, k) + arr.shape[1:])))
            else:
                columns.append([arr[offsets[i]:offsets[i + 1]] for i in range(n)])
        return [dict(zip(keys, values)) for values in zip(*columns)]

    def feature_checksums(self) -> np.ndarray:
        """:func:`stores.integrity.feature_checksum` of every row's features (what a part stores)."""
        if self.features is None:
            return row_checksums(self.feature_rows[i] for i in range(len(self)))  # type: ignore[index]
        offsets = self._scalars()[0]
        return row_checksums(self.features[offsets[i]:offsets[i + 1]] for i in range(len(self)))

    def fixed_k(self) -> int | None:
        """K when every row of the block holds the same number of regions (padded rows count K;
        None for an empty or mixed block)."""
        if len(self) == 0:
            return None
        counts = np.diff(self.offsets)
        k = int(counts[0])
        return k if bool((counts == k).all()) else None


class LazyRows:
    """Per-row feature arrays of rows ``start:stop`` of a :class:`stores.rawrows.RawRows`, each read
    from the file when it is taken (a fresh array every time)."""

    #: Rows per ``preadv`` when the rows are taken in order. Four rows (590 KB at K=36, float16)
    #: stay in the core's L2 cache between the copy and the checksum; eight did not (measured
    #: ~3 µs more per row for the check).
    READ_AHEAD = 4

    def __init__(self, raw: Any, start: int, stop: int) -> None:
        self._raw, self._start, self._n = raw, start, stop - start

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < self._n:
            raise IndexError(i)
        return self._raw(self._start + i)

    def in_order(self) -> Iterator[np.ndarray]:
        """Every row in order, :attr:`READ_AHEAD` rows per ``preadv``, each checked against its
        checksum as it is handed out (:meth:`stores.rawrows.RawRows.in_order`)."""
        return self._raw.in_order(self._start, self._start + self._n, self.READ_AHEAD)


class CheckedRows:
    """Per-row feature arrays already in memory (decoded by pyarrow), each checked against its
    checksum the first time it is taken: a damaged row fails alone, not the rows decoded with it."""

    def __init__(self, rows: Sequence[np.ndarray], checksums: Sequence[int], part: Any, first_row: int) -> None:
        self._rows, self._sums, self._part, self._first = rows, checksums, part, first_row
        self._ok = [False] * len(rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i: int) -> np.ndarray:
        row = self._rows[i]
        if not self._ok[i]:
            check_row(self._part, self._first + i, row, self._sums[i])
            self._ok[i] = True
        return row
