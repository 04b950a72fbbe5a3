"""Collection → caption store through `itmflow tokenize` (BERT ids, word ids, or both)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.collections import CaptionRecord, ImageRecord, read_collection, write_collection
from pipeline.text.bert import load_bert_tokenizer
from pipeline.text.tokenize import tokenize_collection, vocab_captions
from pipeline.text.words import scan_tokenize
from stores.captions import read_caption_store


@pytest.fixture
def collection(tmp_path, photo_dir):
    out = tmp_path / "sample.parquet"
    result = CliRunner().invoke(app, ["ingest", str(photo_dir), "--format", "folder", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_tokenize_both_with_the_shipped_vocab(tmp_path, collection, minilm_dir, sgraf_vocab_dir):
    store = tmp_path / "captions"
    vocab_file = sgraf_vocab_dir / "coco_precomp_vocab.json"
    result = CliRunner().invoke(app, ["tokenize", str(collection), "--out", str(store), "--tokenizer",
                                      str(minilm_dir), "--word-vocab", str(vocab_file)])
    assert result.exit_code == 0, result.output
    table, manifest = read_caption_store(store)
    coll = read_collection(collection)
    assert table.column("caption_id").to_pylist() == [c.caption_id for c in coll.captions]
    assert table.column("split").to_pylist()[:5] == ["train"] * 5
    row = table.slice(0, 1).to_pylist()[0]
    assert row["raw"] == coll.captions[0].raw
    bert = load_bert_tokenizer(minilm_dir)
    assert row["bert_ids"] == bert.backend.encode(row["raw"]).ids and row["bert_length"] == len(row["bert_ids"])
    vocab = json.loads(vocab_file.read_text())["word2idx"]
    assert row["word_ids"] == [1, *(vocab.get(t, 3) for t in row["word_tokens"]), 2]
    assert row["word_tokens"][:3] == ["a", "smiling", "woman"]
    assert manifest["tokenizer"]["name"] == "model" and manifest["tokenizer"]["vocab_size"] == 30522
    assert manifest["vocab"]["name"] == "coco_precomp_vocab.json" and manifest["vocab"]["size"] == 11353
    assert manifest["counts"]["captions"] == 60 and manifest["tokenization"]["bert_truncated"] == 0


def test_tokenize_words_only_with_a_built_vocab(tmp_path, collection):
    store = tmp_path / "captions"
    result = CliRunner().invoke(app, ["tokenize", str(collection), "--out", str(store), "--no-bert",
                                      "--build-vocab", "--vocab-threshold", "2"])
    assert result.exit_code == 0, result.output
    table, manifest = read_caption_store(store)
    assert table.column("bert_ids").null_count == 60 and table.column("word_ids").null_count == 0
    saved = json.loads((store / "vocab.json").read_text())
    assert manifest["vocab"]["size"] == saved["idx"] and saved["word2idx"]["<unk>"] == 3
    # built from train+val only: a word seen only in test captions is unknown
    coll = read_collection(collection)
    built_from, which = vocab_captions(coll)
    assert which == "train+restval+val captions" and len(built_from) < 60
    split_of = coll.split_of()
    test_words = {w for c in coll.captions if split_of[c.image_id] == "test" for w in scan_tokenize(c.raw)}
    train_words = {w for t in built_from for w in scan_tokenize(t)}
    only_test = test_words - train_words
    assert only_test and not only_test & set(saved["word2idx"])
    rows = [r for r in table.to_pylist() if r["split"] == "test"]
    unknown = {t for r in rows for t, i in zip(r["word_tokens"], r["word_ids"][1:-1]) if i == 3}
    assert only_test <= unknown  # (words seen once in train are unknown too: threshold 2)

def test_bert_only_with_max_length_reports_truncation(tmp_path, minilm_dir):
    images = [ImageRecord("1", "a.jpg", "train")]
    caps = [CaptionRecord("1#0", "1", " ".join(["dog"] * 40)), CaptionRecord("1#1", "1", "A dog.")]
    path = write_collection(tmp_path / "c.parquet", images, caps, source_format="folder", images_root=tmp_path)
    table, stats = tokenize_collection(read_collection(path), bert=load_bert_tokenizer(minilm_dir), vocab=None,
                                       max_length=16)
    assert stats.bert_truncated == 1 and table.column("bert_length").to_pylist() == [16, 5]
    assert table.column("word_ids").null_count == 2
    result = CliRunner().invoke(app, ["tokenize", str(path), "--out", str(tmp_path / "s"), "--tokenizer",
                                      str(minilm_dir), "--max-length", "16"])
    assert result.exit_code == 0, result.output
    assert "1 (to 16)" in result.output


def test_tokenize_refuses_nothing_to_do_and_bad_inputs(tmp_path, collection, sgraf_vocab_dir):
    run = CliRunner().invoke
    result = run(app, ["tokenize", str(collection), "--out", str(tmp_path / "s"), "--no-bert"])
    assert result.exit_code == 1 and "nothing to store" in str(result.exception)
    result = run(app, ["tokenize", str(collection), "--out", str(tmp_path / "s"), "--build-vocab", "--word-vocab",
                       str(sgraf_vocab_dir / "coco_precomp_vocab.json")])
    assert result.exit_code == 1 and "either --word-vocab" in str(result.exception)
    result = run(app, ["tokenize", str(tmp_path / "none.parquet"), "--out", str(tmp_path / "s"), "--no-bert",
                       "--build-vocab"])
    assert result.exit_code == 1 and "itmflow ingest" in str(result.exception)
    result = run(app, ["tokenize", str(collection), "--out", str(tmp_path / "s"), "--tokenizer",
                       str(tmp_path)])
    assert result.exit_code == 1 and "cannot load tokenizer" in str(result.exception)
    assert not (tmp_path / "s").exists()


def test_tokenize_with_no_flags_is_offline_bert_base_uncased(tmp_path, collection, minilm_dir, monkeypatch):
    """The default tokenizer comes from the package's vocabulary: no hub, exactly the bert ids."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    store = tmp_path / "captions"
    result = CliRunner().invoke(app, ["tokenize", str(collection), "--out", str(store),
                                      "--word-vocab", "coco_precomp"])
    assert result.exit_code == 0, result.output
    table, manifest = read_caption_store(store)
    reference = load_bert_tokenizer(minilm_dir)  # the same bert-base-uncased vocabulary and rules
    for row in table.to_pylist():
        assert row["bert_ids"] == reference.backend.encode(row["raw"]).ids
    assert manifest["tokenizer"]["name"] == "bert-base-uncased"
    assert manifest["tokenizer"]["vocab_sha256"] == reference.vocab_sha256
    assert manifest["vocab"]["size"] == 11353


def test_shipped_bert_vocabulary_matches_on_hard_text(minilm_dir):
    ours = load_bert_tokenizer("bert-base-uncased")
    reference = load_bert_tokenizer(minilm_dir)
    texts = ["Café au lait, naïve résumé — 東京 tower!! x\u00ad y", "  tabs\tand\nnewlines [MASK] [UNK]",
             "supercalifragilisticexpialidocious" * 4, "emoji 😀 ok", "ÀÉÎ Ünïcödé", "a\x00b\x07c"]
    assert [ours.backend.encode(t).ids for t in texts] == [reference.backend.encode(t).ids for t in texts]
    assert (ours.name, ours.cls_id, ours.sep_id, ours.vocab_size) == ("bert-base-uncased", 101, 102, 30522)
