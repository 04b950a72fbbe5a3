"""BERT WordPiece tokenization with the offline MiniLM tokenizer (bert-base-uncased vocabulary)."""

from __future__ import annotations

import pytest

from itmflow.errors import TokenizerError
from pipeline.text.bert import encode_captions, load_bert_tokenizer


@pytest.fixture(scope="module")
def tok(minilm_dir):
    return load_bert_tokenizer(minilm_dir)


def test_known_wordpiece_splits(tok):
    (ids,), truncated = encode_captions(tok, ["Unaffable tokenization of playgrounds"])
    pieces = [tok.backend.id_to_token(i) for i in ids]
    assert pieces == ["[CLS]", "una", "##ffa", "##ble", "token", "##ization", "of", "playground", "##s", "[SEP]"]
    assert truncated == 0
    (ids,), _ = encode_captions(tok, ["A man riding a skateboard."])
    # bert-base-uncased ids: [CLS]=101, a=1037, man=2158, riding=5559, skate=17260, ##board=6277, .=1012
    assert ids == [101, 1037, 2158, 5559, 1037, 17260, 6277, 1012, 102]
    assert (tok.cls_id, tok.sep_id, tok.vocab_size) == (101, 102, 30522)


def test_no_silent_truncation_and_explicit_max_length(tok):
    long = " ".join(["word"] * 300)  # the MiniLM files ask for truncation at 128: must be ignored
    ids, truncated = encode_captions(tok, [long, "short one"])
    assert [len(x) for x in ids] == [302, 4] and truncated == 0
    ids, truncated = encode_captions(tok, [long, "short one", long], max_length=32)
    assert [len(x) for x in ids] == [32, 4, 32] and truncated == 2
    assert ids[0][0] == 101 and ids[0][-1] == 102
    with pytest.raises(TokenizerError, match="at least 2"):
        encode_captions(tok, ["x"], max_length=1)


def test_flat_encoding_matches_per_caption_and_spans_batches(tok):
    texts = [f"caption number {i} with a dog" for i in range(9000)]  # more than one internal batch
    values, offsets, _ = tok.encode_flat(texts)
    assert len(offsets) == 9001 and offsets[-1] == len(values)
    assert values[offsets[8500]:offsets[8501]].tolist() == tok.backend.encode(texts[8500]).ids
    assert encode_captions(tok, [])[0] == []


@pytest.mark.slow  # imports transformers (seconds on a busy 2-core box)
def test_vocab_hash_is_layout_independent(tok, minilm_dir, tmp_path):
    # the same WordPiece vocabulary loaded from vocab.txt only gives the same hash
    (tmp_path / "vocab.txt").write_bytes((minilm_dir / "vocab.txt").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "BertTokenizer", "do_lower_case": true}')
    plain = load_bert_tokenizer(tmp_path)
    assert plain.vocab_sha256 == tok.vocab_sha256
    assert encode_captions(plain, ["Unaffable playgrounds"])[0] == encode_captions(tok, ["Unaffable playgrounds"])[0]


def test_unloadable_tokenizers(tmp_path):
    with pytest.raises(TokenizerError, match="cannot load tokenizer 'no-such-org/no-such-tokenizer'"):
        load_bert_tokenizer("no-such-org/no-such-tokenizer")
    with pytest.raises(TokenizerError, match="directory needs tokenizer.json or vocab.txt"):
        load_bert_tokenizer(tmp_path)


def test_word_cache_equals_the_rust_backend_token_for_token(tok):
    import json
    import random

    assert tok.word_cache is not None  # the MiniLM files are the standard BERT pipeline
    rng = random.Random(0)
    pieces = ["A", "man", "RIDING", "skateboards", "x" * 120, "3,000", "10:20", "don't", "[MASK]", "[mask]",
              "[CLS]", "caf\u00e9", "na\u00efve", "\u4e2d\u6587", "\x0b", "\x7f", "\t", "\n", "_", "~", "--", "...",
              "e-mail", "#1", "$5", "a/b", "(x)", "\"q\"", "'s", "\u00a0", "\U0001f600", "o'clock"]
    texts = ["".join(rng.choice(pieces) + rng.choice(["", " ", "  "]) for _ in range(rng.randint(0, 12)))
             for _ in range(3000)]
    from workflows.sample import CAPTIONS_FILE

    for line in CAPTIONS_FILE.read_text(encoding="utf-8").splitlines():
        texts += json.loads(line)["captions"]
    values, offsets, _ = tok.encode_flat(texts)
    expected = [enc.ids for enc in tok.backend.encode_batch(texts, add_special_tokens=True)]
    got = [values[offsets[i]:offsets[i + 1]].tolist() for i in range(len(texts))]
    mismatches = [(t, g, e) for t, g, e in zip(texts, got, expected) if g != e]
    assert not mismatches, mismatches[:3]
    assert len(tok.word_cache.cache) > 20  # the shortcut was really taken (chunks cached)


def test_non_string_caption_is_a_clear_error(tok):
    with pytest.raises(TokenizerError, match="caption 1 of a batch is NoneType"):
        tok.encode_flat(["fine", None])
