"""Region labels are shown as names ("gray yolk"), not ids: `store inspect` and the library call."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from typer.testing import CliRunner

from detectors.base import VGVocab
from pipeline.cli import app
from pipeline.labels import label_counts, top_labels
from tests._support.store_fixtures import make_rows, write_store


@pytest.mark.parametrize("storage", ["parquet", "hdf5"])
def test_top_labels_are_names_counted_over_every_region(tmp_path, storage):
    rows = make_rows(12, seed=3)
    rows[0]["object_ids"][:] = 0          # "yolk": the most frequent label by construction
    rows[0]["attr_ids"][:] = 0            # "gray"
    rows[1]["object_ids"][:] = 0
    rows[1]["attr_ids"][:] = 0
    store = write_store(tmp_path / "s", rows, storage=storage)
    expected = Counter()
    for row in rows:
        expected.update(zip(row["attr_ids"].astype(int).tolist(), row["object_ids"].astype(int).tolist()))
    assert label_counts(store) == expected
    top = top_labels(store, k=3)
    vocab = VGVocab.shipped()
    assert top[0] == {"label": "gray yolk", "regions": expected[(0, 0)]}
    by_name = Counter()
    for (attr, obj), n in expected.items():
        by_name[f"{vocab.attributes[attr]} {vocab.objects[obj]}"] += n
    assert [item["regions"] for item in top] == [n for _, n in expected.most_common(3)]
    assert all(by_name[item["label"]] == item["regions"] for item in top)  # ties in any order

    res = CliRunner().invoke(app, ["store", "inspect", str(store), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["top_labels"][0]["label"] == "gray yolk"
    res = CliRunner().invoke(app, ["store", "inspect", str(store)])
    assert "most frequent regions" in res.output and "gray yolk" in res.output


def test_padding_regions_are_not_counted(tmp_path):
    rows = make_rows(4, seed=1)
    k = rows[0]["object_ids"].shape[0]
    rows[0]["object_ids"][k // 2:] = -1   # a padded row (fewer regions than K): ids -1
    rows[0]["attr_ids"][k // 2:] = -1
    store = write_store(tmp_path / "s", rows)
    total = sum(label_counts(store).values())
    assert total == sum(int(np.sum(r["object_ids"] >= 0)) for r in rows) == 4 * k - (k - k // 2)
