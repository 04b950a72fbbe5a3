"""Fixtures shared by the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._support.synthetic_collection import write_synthetic_stores


@pytest.fixture(scope="module")
def small_stores(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path):
    """12 train + 4 restval images (80 captions: 10 batches of 8 per epoch), 5 val, 5 test;
    16-dim features (one set per test module)."""
    root = tmp_path_factory.mktemp("small-stores")
    return write_synthetic_stores(root, minilm_dir, splits={"train": 12, "restval": 4, "val": 5,
                                                            "test": 5}, feature_dim=16, seed=3)
