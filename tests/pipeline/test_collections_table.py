"""The collection table round-trips records and refuses inconsistent input."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from itmflow.errors import CollectionError, InputFileError, UnsafePathError
from pipeline.collections import CaptionRecord, ImageRecord, read_collection, write_collection


def _sample():
    images = [ImageRecord("1", "a/one.jpg", "train"), ImageRecord("2", "two.png", "test"),
              ImageRecord("3", "three.jpg", "")]
    captions = [CaptionRecord("10", "1", "A dog."), CaptionRecord("11", "2", "A cat."),
                CaptionRecord("12", "1", "Another dog.")]
    return images, captions


def test_round_trip_keeps_order_and_relative_root(tmp_path):
    images, captions = _sample()
    root = tmp_path / "imgs"
    root.mkdir()
    out = write_collection(tmp_path / "out" / "c.parquet", images, captions,
                           source_format="folder", images_root=root)
    meta = json.loads(pq.read_schema(out).metadata[b"itmflow.collection"])
    assert meta["images_root"] == "../imgs"
    assert meta["format"] == "itmflow.collection" and meta["schema_version"] == 1
    coll = read_collection(out)
    assert coll.images_root == root.resolve()
    assert coll.images == images
    # grouped by image, each image's captions in source order
    assert [c.caption_id for c in coll.captions] == ["10", "12", "11"]
    assert coll.captions_by_image()["3"] == []
    assert coll.split_sizes() == {"train": 1, "test": 1, "": 1}
    table = pq.read_table(out)
    assert table.column("caption_ids").to_pylist() == [["10", "12"], ["11"], []]
    other = tmp_path / "elsewhere"
    assert read_collection(out, images_root=other).images_root == other.resolve()


@pytest.mark.parametrize("images,captions,match", [
    ([ImageRecord("1", "a.jpg"), ImageRecord("1", "b.jpg")], [], "appears twice"),
    ([ImageRecord("1", "a.jpg")], [CaptionRecord("c", "9", "x")], "not in the collection"),
    ([ImageRecord("1", "a.jpg")], [CaptionRecord("c", "1", "x"), CaptionRecord("c", "1", "y")],
     "caption id 'c' appears twice"),
    ([ImageRecord("1", "a.jpg", "training")], [], "split"),
])
def test_write_refuses_inconsistent_records(tmp_path, images, captions, match):
    with pytest.raises(CollectionError, match=match):
        write_collection(tmp_path / "c.parquet", images, captions, source_format="x", images_root=tmp_path)
    assert not (tmp_path / "c.parquet").exists()


@pytest.mark.parametrize("bad", ["../up.jpg", "/etc/passwd", "a/../../b.jpg"])
def test_write_refuses_escaping_files(tmp_path, bad):
    with pytest.raises(UnsafePathError):
        write_collection(tmp_path / "c.parquet", [ImageRecord("1", bad)], [],
                         source_format="x", images_root=tmp_path)


def test_read_refuses_foreign_and_missing_files(tmp_path):
    import pyarrow as pa

    with pytest.raises(InputFileError, match="does not exist"):
        read_collection(tmp_path / "nope.parquet")
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet")
    with pytest.raises(InputFileError, match="not a readable Parquet"):
        read_collection(junk)
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"image_id": ["1"]}), plain)
    with pytest.raises(CollectionError, match="itmflow ingest"):
        read_collection(plain)


def test_read_rechecks_paths_and_version(tmp_path):
    import pyarrow as pa

    out = write_collection(tmp_path / "c.parquet", [ImageRecord("1", "a.jpg")], [],
                           source_format="x", images_root=tmp_path)
    table = pq.read_table(out)
    meta = json.loads(table.schema.metadata[b"itmflow.collection"])
    hacked = table.set_column(1, "file", pa.array(["../../etc/passwd"]))
    pq.write_table(hacked, out)
    with pytest.raises(UnsafePathError, match="row 0"):
        read_collection(out)
    meta["schema_version"] = 99
    pq.write_table(table.replace_schema_metadata({"itmflow.collection": json.dumps(meta)}), out)
    with pytest.raises(CollectionError, match="schema_version 99"):
        read_collection(out)
