"""Caption store: write/read round trip, nullable token columns, bad input named."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from itmflow.errors import SchemaVersionError, StoreCorruptError, StoreError
from stores.captions import read_caption_store, write_caption_store


def test_round_trip_rows_and_table(tmp_path):
    rows = [{"caption_id": "1", "image_id": "a", "split": "train", "raw": "A dog.", "bert_ids": [101, 1037, 102],
             "bert_length": 3, "word_tokens": ["a", "dog", "."], "word_ids": [1, 4, 5, 6, 2]},
            {"caption_id": "2", "image_id": "a", "split": "train", "raw": "Two dogs.", "bert_ids": None,
             "bert_length": None, "word_tokens": None, "word_ids": None}]
    write_caption_store(tmp_path / "c", rows, {"tokenizer": "bert-base-uncased", "vocab_sha256": "00"})
    table, manifest = read_caption_store(tmp_path / "c")
    assert manifest["format"] == "itmflow.captions" and manifest["schema_version"] == 1
    assert manifest["tokenizer"] == "bert-base-uncased"
    assert manifest["counts"] == {"captions": 2, "images": 1, "splits": {"train": 2}, "with_bert": 1,
                                  "with_words": 1}
    assert table.schema.field("bert_ids").type == pa.list_(pa.int32())
    assert table.to_pylist() == rows
    # A table with only the required columns gets null token columns.
    write_caption_store(tmp_path / "d", pa.table({"caption_id": ["x"], "image_id": ["i"], "split": ["test"],
                                                  "raw": ["r"]}), {})
    assert read_caption_store(tmp_path / "d")[0].column("word_ids").null_count == 1


def test_bad_input(tmp_path):
    with pytest.raises(StoreError, match="duplicate caption_id '1'"):
        write_caption_store(tmp_path / "c", [{"caption_id": "1", "image_id": "a", "split": "", "raw": "x"}] * 2, {})
    with pytest.raises(StoreError, match="caption_id"):
        write_caption_store(tmp_path / "c", pa.table({"image_id": ["a"]}), {})
    write_caption_store(tmp_path / "c", [{"caption_id": "1", "image_id": "a", "split": "", "raw": "x"}], {})
    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    (tmp_path / "c" / "captions.parquet").write_bytes(b"PAR1")
    with pytest.raises(StoreCorruptError, match="captions.parquet has 4 bytes"):
        read_caption_store(tmp_path / "c")
    m["schema_version"] = 2
    (tmp_path / "c" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(SchemaVersionError):
        read_caption_store(tmp_path / "c")
