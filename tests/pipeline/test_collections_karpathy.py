"""Karpathy split JSON: ids, files, splits, caption order, and every kind of bad input."""

from __future__ import annotations

import json

import pytest

from itmflow.errors import CollectionError, InputFileError
from pipeline.collections.karpathy import read_karpathy


def test_coco_ids_files_splits_and_order(karpathy_coco):
    result = read_karpathy(karpathy_coco)
    b = result.builder
    assert [(im.image_id, im.file, im.split) for im in b.images] == [
        ("391895", "val2014/COCO_val2014_000000391895.jpg", "test"),
        ("57870", "train2014/COCO_train2014_000000057870.jpg", "restval"),
        ("384029", "train2014/COCO_train2014_000000384029.jpg", "train")]
    first = [c for c in b.captions if c.image_id == "391895"]
    # all six kept, in order; the first five are the evaluation captions
    assert [c.caption_id for c in first] == ["770337", "771687", "772707", "776154", "781998", "790001"]
    assert first[0].raw == "A man riding a wave on top of a surfboard."
    assert b.problems == []
    assert result.images_root == karpathy_coco.parent


def test_flickr_ids_are_file_stems(karpathy_f30k, tmp_path):
    result = read_karpathy(karpathy_f30k, images_root=tmp_path / "imgs")
    assert [(im.image_id, im.file, im.split) for im in result.builder.images] == [
        ("1000092795", "1000092795.jpg", "train"), ("10002456", "10002456.jpg", "val")]
    assert len(result.builder.captions) == 10
    assert result.images_root == tmp_path / "imgs"


def test_malformed_json_names_line_and_column(tmp_path):
    path = tmp_path / "dataset_coco.json"
    path.write_text('{"images": [\n  {"filename": "a.jpg",\n   "split": "train" "sentences": []}\n]}')
    with pytest.raises(InputFileError, match=r"line 3 column 21: malformed JSON"):
        read_karpathy(path)


def test_missing_field_is_named_with_its_position(karpathy_f30k):
    doc = json.loads(karpathy_f30k.read_text())
    del doc["images"][1]["sentences"][2]["sentid"]
    karpathy_f30k.write_text(json.dumps(doc))
    with pytest.raises(CollectionError, match=r"images\[1\]\.sentences\[2\]: required field 'sentid'"):
        read_karpathy(karpathy_f30k)
    doc["images"][0]["split"] = 3
    karpathy_f30k.write_text(json.dumps(doc))
    with pytest.raises(CollectionError, match=r"images\[0\]\.split: expected str"):
        read_karpathy(karpathy_f30k)


def test_empty_non_utf8_and_wrong_top_level(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_bytes(b"  \n")
    with pytest.raises(InputFileError, match="is empty"):
        read_karpathy(empty)
    latin = tmp_path / "latin.json"
    latin.write_bytes('{"images": [\n{"filename": "caf\u00e9.jpg"}]}'.encode("latin-1"))
    with pytest.raises(InputFileError, match="line 2: bytes that are not UTF-8"):
        read_karpathy(latin)
    listing = tmp_path / "list.json"
    listing.write_text("[1, 2]")
    with pytest.raises(CollectionError, match="'images' list"):
        read_karpathy(listing)
    with pytest.raises(InputFileError, match="does not exist"):
        read_karpathy(tmp_path / "missing.json")


def test_duplicates_unsafe_paths_and_odd_splits_are_reported(karpathy_f30k):
    doc = json.loads(karpathy_f30k.read_text())
    dup = json.loads(json.dumps(doc["images"][0]))
    escaping = json.loads(json.dumps(doc["images"][1]))
    escaping.update(filename="../../etc/passwd.jpg", split="dev")
    for k, s in enumerate(escaping["sentences"]):
        s["sentid"] = 100 + k
    doc["images"][1]["sentences"][1]["sentid"] = 0  # repeats image 0's first caption id
    doc["images"][1]["sentences"][3]["raw"] = "   "
    doc["images"][1]["split"] = "holdout"
    doc["images"] += [dup, escaping]
    karpathy_f30k.write_text(json.dumps(doc))
    b = read_karpathy(karpathy_f30k).builder
    kinds = sorted(p.kind for p in b.problems)
    assert kinds == ["duplicate_caption_id", "duplicate_image_id", "empty_caption", "unknown_split",
                     "unsafe_path"]
    assert [im.image_id for im in b.images] == ["1000092795", "10002456"]
    assert b.images[1].split == ""
    assert len(b.captions) == 9  # 5 + 4 (the repeated id dropped); the empty one kept
    where = {p.kind: p.where for p in b.problems}
    assert where["duplicate_image_id"] == "dataset_flickr30k.json images[2]"
    assert where["duplicate_caption_id"] == "dataset_flickr30k.json images[1].sentences[1]"
