"""Helpers for the store tests: synthetic region rows (real arrays, 2048-d) and small stores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from stores import RegionStoreWriter
from stores.schema import geometry_from_boxes

DIM = 2048
FIXED = {"kind": "fixed", "k": 36}
ADAPTIVE = {"kind": "adaptive", "min": 10, "max": 100, "conf": 0.2}
DETECTOR = {"name": "test-butd", "weights_file": "w.pth", "weights_sha256": "ab" * 32, "min_size": 600}


def make_rows(n: int, *, adaptive: bool = False, dim: int = DIM, seed: int = 0, prefix: str = "img",
              labels: bool = True) -> list[dict[str, Any]]:
    """``n`` rows with random boxes/features; K = 36, or drawn from 10..100 when ``adaptive``."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        k = int(rng.integers(10, 101)) if adaptive else 36
        w, h = int(rng.integers(200, 800)), int(rng.integers(200, 800))
        xy = rng.uniform(0, 1, (k, 4)).astype(np.float32)
        boxes = np.stack([np.minimum(xy[:, 0], xy[:, 2]) * w, np.minimum(xy[:, 1], xy[:, 3]) * h,
                          np.maximum(xy[:, 0], xy[:, 2]) * w, np.maximum(xy[:, 1], xy[:, 3]) * h],
                         axis=1).astype(np.float32)
        row = {"image_id": f"{prefix}{i:04d}", "file": f"photos/{prefix}{i:04d}.jpg", "width": w, "height": h,
               "num_regions": k, "boxes": boxes, "geometry": geometry_from_boxes(boxes, w, h),
               "features": (np.abs(rng.standard_normal((k, dim))) * 3).astype(np.float32)}
        if labels:
            row.update(object_ids=rng.integers(0, 1600, k).astype(np.int16),
                       object_conf=rng.random(k).astype(np.float32),
                       attr_ids=rng.integers(0, 400, k).astype(np.int16),
                       attr_conf=rng.random(k).astype(np.float32))
        rows.append(row)
    return rows


def write_store(path: Path, rows: list[dict[str, Any]], *, storage: str = "parquet", dtype: str = "float16",
                adaptive: bool = False, rows_per_part: int = 4, **kw: Any) -> Path:
    """Write ``rows`` to a new store at ``path``."""
    with RegionStoreWriter(path, storage=storage, feature_dim=rows[0]["features"].shape[1], feature_dtype=dtype,
                           region_policy=ADAPTIVE if adaptive else FIXED, detector=DETECTOR,
                           rows_per_part=rows_per_part, **kw) as writer:
        for row in rows:
            writer.add(row)
    return path


def assert_row_equal(got: dict[str, Any], want: dict[str, Any], dtype: str = "float32") -> None:
    """Every field equal; features compared after casting ``want`` to the store dtype (exact)."""
    assert got["image_id"] == want["image_id"]
    assert got["file"] == want["file"]
    for name in ("width", "height", "num_regions"):
        assert got[name] == want[name], name
    for name in ("boxes", "geometry", "object_ids", "object_conf", "attr_ids", "attr_conf"):
        if want.get(name) is None:
            assert got[name] is None, name
        else:
            assert got[name].dtype == want[name].dtype, name
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert got["features"].dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got["features"], want["features"].astype(dtype))


