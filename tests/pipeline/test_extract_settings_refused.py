"""Settings that differ from an existing store are named leaf by leaf and refused, also when the store
is complete and nothing is left to do (no Ray, no detector: the check runs before the plan)."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import pytest

from itmflow.errors import StoreError
from pipeline.extract import ExtractConfig, run_extract
from stores import RegionStoreWriter
from tests._support.extract_support import TINY, make_collection
from tests._support.store_fixtures import DETECTOR, FIXED, make_rows, write_store


def _complete_store(tmp_path: Path) -> tuple[Path, Path]:
    """A collection of two images and a store that already holds both, written with TINY's settings."""
    det = TINY["detector"]
    coll = make_collection(tmp_path / "c.parquet", tmp_path, ["img0000.jpg", "img0001.jpg"])
    settings = {**asdict(det), "region_policy": det.policy().to_manifest(), "random_init": True, "seed": 0}
    rows = make_rows(2, adaptive=True, dim=8)
    out = tmp_path / "store"
    with RegionStoreWriter(out, feature_dim=8, region_policy=det.policy(),
                           detector={"name": "butd", "weights_file": None, "weights_sha256": None,
                                     "settings": settings}) as writer:
        for row in rows:
            row["file"] = row["image_id"] + ".jpg"
            writer.add(row)
    return coll, out


def test_complete_store_with_same_settings_is_nothing_to_do(tmp_path):
    coll, out = _complete_store(tmp_path)
    summary = run_extract(ExtractConfig(collection=coll, out=out, **TINY))
    assert summary.processed == 0 and summary.already_done == 2


def test_complete_store_refuses_other_settings_leaf_by_leaf(tmp_path):
    coll, out = _complete_store(tmp_path)
    tiny = {**TINY, "detector": replace(TINY["detector"], min_size=200, max_size=300)}
    with pytest.raises(StoreError) as info:
        run_extract(ExtractConfig(collection=coll, out=out, **tiny))
    text = str(info.value)
    assert "detector.settings.min_size: 128 -> 200" in text
    assert "detector.settings.max_size: 256 -> 300" in text
    with pytest.raises(StoreError, match=r"feature_dtype: \"float16\" -> \"float32\""):
        run_extract(ExtractConfig(collection=coll, out=out, **TINY, feature_dtype="float32"))


def test_writer_names_nested_leaves(tmp_path):
    write_store(tmp_path / "s", make_rows(1, dim=8))
    with pytest.raises(StoreError) as info:
        RegionStoreWriter(tmp_path / "s", feature_dim=8, region_policy=FIXED,
                          detector={**DETECTOR, "min_size": 300})
    assert "detector.min_size: 600 -> 300" in str(info.value)
    assert len(str(info.value).splitlines()) <= 4
