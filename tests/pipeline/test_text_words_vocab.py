"""SCAN word tokenization and the SGRAF/SCAN word vocabulary (shipped files and built ones)."""

from __future__ import annotations

import json

import pytest

from itmflow.errors import InputFileError, TokenizerError
from pipeline.text.vocab import WordVocab
from pipeline.text.words import scan_tokenize

# Expected tokens checked against NLTK 3.10's TreebankWordTokenizer on the same sentence pieces.
CASES = [
    ("A man's dog isn't running.", ["a", "man", "'s", "dog", "is", "n't", "running", "."]),
    ("Two dogs, one cat: 3,000 people!", ["two", "dogs", ",", "one", "cat", ":", "3,000", "people", "!"]),
    ('He said "hi" to Mr. Smith. Then left.',
     ["he", "said", "``", "hi", "''", "to", "mr.", "smith", ".", "then", "left", "."]),
    ("A cat sits on a mat...", ["a", "cat", "sits", "on", "a", "mat", "..."]),
    ("The U.S. flag flies. A dog barks", ["the", "u.s.", "flag", "flies", ".", "a", "dog", "barks"]),
    ("It cannot be (really) -- ok?", ["it", "can", "not", "be", "(", "really", ")", "--", "ok", "?"]),
    ("They're gonna eat; we'll see.", ["they", "'re", "gon", "na", "eat", ";", "we", "'ll", "see", "."]),
    ("A clock at 10:20 on W. 5th street", ["a", "clock", "at", "10:20", "on", "w.", "5th", "street"]),
    ("Children's toys & games @ home #1 for $5", ["children", "'s", "toys", "&", "games", "@", "home", "#", "1",
                                                 "for", "$", "5"]),
    # the older Treebank rules the shipped vocabularies were built with ("'stop", "building..")
    ("A 'stop' sign near a building.. ok", ["a", "'stop", "'", "sign", "near", "a", "building..", "ok"]),
]


@pytest.mark.parametrize("text,tokens", CASES)
def test_scan_tokenize(text, tokens):
    assert scan_tokenize(text) == tokens


def test_shipped_sgraf_vocabularies(sgraf_vocab_dir):
    coco = WordVocab.load(sgraf_vocab_dir / "coco_precomp_vocab.json")
    f30k = WordVocab.load(sgraf_vocab_dir / "f30k_precomp_vocab.json")
    assert (len(coco), len(f30k)) == (11353, 8481)
    raw = json.loads((sgraf_vocab_dir / "coco_precomp_vocab.json").read_text())["word2idx"]
    ids = coco.encode("A man's dog isn't raining, xyzzyq!")
    assert ids[0] == 1 and ids[-1] == 2
    assert ids[1:-1] == [raw["a"], raw["man"], raw["'s"], raw["dog"], raw["is"], raw["n't"], raw["raining"],
                         raw[","], 3, raw["!"]]
    assert coco.word2idx["raining"] == 5665 and coco.word2idx["wrought-iron"] == 4  # the shipped order
    assert coco.decode(ids)[1:4] == ["a", "man", "'s"]
    # every token of ordinary captions exists in the shipped vocabulary
    for text in ("A woman in a red shirt holds an umbrella.", "Two giraffes standing next to a tree."):
        assert 3 not in coco.encode(text)


def test_build_the_scan_way_and_round_trip(tmp_path):
    captions = ["A dog runs.", "A dog sleeps.", "The dog barks!", "a DOG, a cat.", "Rare zebra."]
    vocab = WordVocab.build(captions, threshold=2)
    assert list(vocab.word2idx) == ["<pad>", "<start>", "<end>", "<unk>", "a", "dog", "."]  # first-seen order
    assert vocab.encode("A zebra dog.") == [1, 4, 3, 5, 6, 2]
    assert len(WordVocab.build(captions, threshold=1)) == 4 + 12  # a dog runs . sleeps the barks ! , cat rare zebra
    path = vocab.save(tmp_path / "vocab.json")
    doc = json.loads(path.read_text())
    assert doc["idx"] == 7 and doc["idx2word"]["5"] == "dog"
    again = WordVocab.load(path)
    assert again.word2idx == vocab.word2idx and again.sha256 == vocab.sha256
    assert WordVocab.build(captions, threshold=1).sha256 != vocab.sha256
    with pytest.raises(TokenizerError, match="at least 1"):
        WordVocab.build(captions, threshold=0)


@pytest.mark.parametrize("content,match", [
    ('{"word2idx": {"<pad>": 0, "<start>": 1, "<end>": 2}', "line 1 column"),
    ('["a", "b"]', "expected an object with 'word2idx'"),
    ('{"word2idx": {"<pad>": 0, "<start>": 1, "<end>": 2, "<unk>": 3, "a": 5}}', "without gaps"),
    ('{"word2idx": {"<pad>": 1, "<start>": 0, "<end>": 2, "<unk>": 3}}', "<pad> must have id 0"),
    ('{"word2idx": {"<pad>": 0, "<start>": 1, "<end>": 2, "<unk>": 3}, "idx": 9}', "idx is 9"),
    ('{"word2idx": {"<pad>": 0, "<start>": 1, "<end>": 2, "<unk>": 3},'
     ' "idx2word": {"0": "<pad>", "1": "<start>", "2": "<end>", "3": "oops"}}', r"idx2word\[3\]"),
])
def test_bad_vocabulary_files(tmp_path, content, match):
    path = tmp_path / "v.json"
    path.write_text(content)
    with pytest.raises(TokenizerError, match=match):
        WordVocab.load(path)


def test_missing_and_non_utf8_vocabulary(tmp_path):
    with pytest.raises(InputFileError, match="does not exist"):
        WordVocab.load(tmp_path / "none.json")
    path = tmp_path / "v.json"
    path.write_bytes(b'{"word2idx": {"caf\xe9": 4}}')
    with pytest.raises(TokenizerError, match="not UTF-8"):
        WordVocab.load(path)
