"""trainers.data: the join of real region and caption stores, the c//5 evaluation layout, batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from itmflow.errors import StoreError
from tests._support.synthetic_collection import write_synthetic_stores
from trainers.data import (
    CaptionCollator,
    EpochBatchSampler,
    MatchingData,
    PairCollator,
    collate_images,
)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path):
    return write_synthetic_stores(tmp_path_factory.mktemp("data-stores"), minilm_dir,
                                  splits={"train": 6, "restval": 3, "val": 4, "test": 4},
                                  feature_dim=8, seed=1)


def _caption_store(path: Path, rows: list[dict], *, words: bool = True) -> Path:
    """A caption store written through the stores API from explicit rows."""
    import pyarrow as pa

    from stores.captions import write_caption_store

    table = pa.table({
        "caption_id": [r["caption_id"] for r in rows], "image_id": [r["image_id"] for r in rows],
        "split": [r["split"] for r in rows], "raw": [r["raw"] for r in rows],
        "bert_ids": pa.array([[101, 2000 + i, 102] for i in range(len(rows))], pa.list_(pa.int32())),
        "bert_length": pa.array([3] * len(rows), pa.int32()),
        "word_tokens": pa.array([["x"]] * len(rows), pa.list_(pa.string())),
        "word_ids": pa.array([[1, 4, 2] if words else None for _ in rows], pa.list_(pa.int32())),
    })
    return write_caption_store(path, table, {"tokenizer": None, "vocab": None})


def test_training_items_are_captions_of_train_and_restval(stores) -> None:
    from stores import open_region_store

    data = MatchingData(stores.regions, stores.captions, model="tern")
    pairs = data.train_pairs()
    assert len(pairs) == (6 + 3) * 5
    reader = open_region_store(stores.regions)
    splits = set()
    for i in range(len(pairs)):
        image, caption = pairs[i]
        row = pairs.rows[i]
        image_id = data.captions.image_ids[row]
        splits.add(data.captions.splits[row])
        stored = reader.get(image_id)
        np.testing.assert_array_equal(image["features"].numpy(), stored["features"])
        np.testing.assert_array_equal(image["geometry"].numpy(), stored["geometry"])
        assert caption["bert_ids"][0] == 101 and caption["bert_ids"][-1] == 102  # [CLS] ... [SEP]
    assert splits == {"train", "restval"}


def test_eval_set_is_five_captions_per_image_in_order(stores) -> None:
    data = MatchingData(stores.regions, stores.captions, model="teran")
    ev = data.eval_set("test")
    assert ev.image_ids == [f"test-{i:04d}" for i in range(4)]
    assert len(ev.caption_rows) == 20
    for c, row in enumerate(ev.caption_rows):
        assert data.captions.image_ids[row] == ev.image_ids[c // 5]
        assert data.captions.caption_ids[row] == f"{ev.image_ids[c // 5]}#{c % 5}"
    assert data.eval_set("val", max_images=2).image_ids == ["val-0000", "val-0001"]


def test_collate_pads_per_batch_and_keeps_start_end(stores) -> None:
    data = MatchingData(stores.regions, stores.captions, model="sgraf-sgr")
    pairs = data.train_pairs()
    items = [pairs[i] for i in range(5)]
    images, captions = PairCollator(("bert", "words"))(items)
    assert images["features"].shape == (5, 36, 8) and images["features"].dtype == torch.float32
    assert images["geometry"].shape == (5, 36, 5)
    assert images["num_regions"].tolist() == [36] * 5
    lengths = [len(c["word_ids"]) for _, c in items]
    assert captions["word_lengths"].tolist() == lengths
    assert captions["word_ids"].shape == (5, max(lengths))
    for n, length in enumerate(lengths):
        ids = captions["word_ids"][n]
        assert ids[0] == 1 and ids[length - 1] == 2  # <start> ... <end>
        assert (ids[length:] == 0).all()
    assert CaptionCollator(("words",))([c for _, c in items]).keys() == {"word_ids", "word_lengths"}


def test_variable_region_counts_are_zero_padded() -> None:
    rows = [{"features": torch.ones(k, 4), "geometry": torch.full((k, 5), 0.5), "num_regions": k,
             "image_id": f"i{k}", "file": f"i{k}.jpg", "width": 10, "height": 10}
            for k in (3, 5)]
    batch = collate_images(rows)
    assert batch["features"].shape == (2, 5, 4)
    assert batch["features"][0, 3:].abs().sum() == 0 and batch["features"][0, :3].min() == 1
    assert batch["num_regions"].tolist() == [3, 5]


def test_captions_of_images_without_regions_are_skipped_and_counted(stores, tmp_path: Path) -> None:
    rows = [{"caption_id": f"train-0000#{n}", "image_id": "train-0000", "split": "train",
             "raw": "a red car"} for n in range(5)]
    rows += [{"caption_id": f"gone#{n}", "image_id": "gone", "split": "train", "raw": "a dog"}
             for n in range(5)]
    caps = _caption_store(tmp_path / "caps", rows)
    data = MatchingData(stores.regions, caps, model="tern")
    assert len(data.train_pairs()) == 5
    assert data.skipped["train"] == 5
    with pytest.raises(StoreError, match="no evaluation images"):
        data.eval_set("val")


def test_missing_word_ids_are_a_clear_error_for_sgraf(stores, tmp_path: Path) -> None:
    rows = [{"caption_id": f"train-0001#{n}", "image_id": "train-0001", "split": "train",
             "raw": "a dog"} for n in range(5)]
    caps = _caption_store(tmp_path / "caps", rows, words=False)
    assert len(MatchingData(stores.regions, caps, model="tern").train_pairs()) == 5
    with pytest.raises(StoreError, match=r"no word ids \(first: caption_id 'train-0001#0'\)"):
        MatchingData(stores.regions, caps, model="sgraf-saf").train_pairs()
    with pytest.raises(StoreError, match="no training captions"):
        MatchingData(stores.regions, _caption_store(tmp_path / "c2", [
            {"caption_id": "v#0", "image_id": "val-0000", "split": "val", "raw": "x"}]),
            model="tern").train_pairs()


def test_geometry_is_computed_from_boxes_when_the_store_has_none(tmp_path: Path) -> None:
    from stores import RegionStoreWriter
    from stores.schema import geometry_from_boxes

    boxes = np.array([[0, 0, 50, 20], [10, 10, 100, 80]], np.float32)
    base = {"file": "a.jpg", "width": 100, "height": 80, "num_regions": 2,
            "features": np.ones((2, 4), np.float32), "object_ids": np.zeros(2, np.int16),
            "object_conf": np.ones(2, np.float32), "attr_ids": np.zeros(2, np.int16),
            "attr_conf": np.ones(2, np.float32)}
    with RegionStoreWriter(tmp_path / "r1", feature_dim=4, feature_dtype="float32",
                           region_policy={"kind": "variable"}, absent_fields=["geometry"]) as w:
        w.add({**base, "image_id": "a", "boxes": boxes})
    with RegionStoreWriter(tmp_path / "r2", feature_dim=4, feature_dtype="float32",
                           region_policy={"kind": "variable"},
                           absent_fields=["geometry", "boxes"]) as w:
        w.add({**base, "image_id": "a"})
    rows = [{"caption_id": f"a#{n}", "image_id": "a", "split": "train", "raw": "x"} for n in range(5)]
    caps = _caption_store(tmp_path / "caps", rows)
    image, _ = MatchingData(tmp_path / "r1", caps, model="tern").train_pairs()[0]
    np.testing.assert_allclose(image["geometry"].numpy(), geometry_from_boxes(boxes, 100, 80))
    assert image["geometry"][1, 4] == pytest.approx(90 * 70 / (100 * 80))
    # SGRAF does not read geometry; TERN needs it and says so.
    image, _ = MatchingData(tmp_path / "r2", caps, model="sgraf-sgr").train_pairs()[0]
    assert image["geometry"].abs().sum() == 0
    with pytest.raises(StoreError, match="neither geometry nor boxes"):
        MatchingData(tmp_path / "r2", caps, model="tern").train_pairs()[0]


def test_epoch_batches_depend_only_on_seed_and_epoch() -> None:
    full = list(EpochBatchSampler(23, 5, seed=7, epoch=2))
    assert [len(b) for b in full] == [5, 5, 5, 5, 3]
    assert sorted(i for b in full for i in b) == list(range(23))
    assert full == list(EpochBatchSampler(23, 5, seed=7, epoch=2))
    assert full[2:] == list(EpochBatchSampler(23, 5, seed=7, epoch=2, start_batch=2))
    assert full != list(EpochBatchSampler(23, 5, seed=7, epoch=3))
    assert len(EpochBatchSampler(23, 5, seed=7, start_batch=4)) == 1


def test_sgraf_refuses_a_store_without_exactly_36_regions(tmp_path: Path) -> None:
    from itmflow.errors import ModelInputError
    from stores import RegionStoreWriter
    from trainers.training.config import build_config
    from trainers.training import Trainer

    with RegionStoreWriter(tmp_path / "r", feature_dim=4, feature_dtype="float32",
                           region_policy={"kind": "adaptive", "min": 10, "max": 100, "conf": 0.2}
                           ) as w:
        w.add({"image_id": "a", "file": "a.jpg", "width": 10, "height": 10, "num_regions": 10,
               "boxes": np.tile(np.array([[0, 0, 5, 5]], np.float32), (10, 1)),
               "geometry": np.zeros((10, 5), np.float32), "features": np.ones((10, 4), np.float32),
               "object_ids": np.zeros(10, np.int16), "object_conf": np.ones(10, np.float32),
               "attr_ids": np.zeros(10, np.int16), "attr_conf": np.ones(10, np.float32)})
    rows = [{"caption_id": f"a#{n}", "image_id": "a", "split": "train", "raw": "x"} for n in range(5)]
    caps = _caption_store(tmp_path / "caps", rows)
    cfg = build_config("sgraf-sgr", overrides={"device": "cpu", "model_config": {"embed_size": 8}})
    with pytest.raises(ModelInputError, match=r"needs exactly 36 regions per image"):
        Trainer(cfg, MatchingData(tmp_path / "r", caps, model="sgraf-sgr"), tmp_path / "run")
