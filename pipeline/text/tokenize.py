"""Collection → caption store: BERT WordPiece ids and/or SCAN word ids for every caption.

The table handed to :func:`stores.captions.write_caption_store` has the agreed columns
``caption_id, image_id, split, raw, bert_ids (list<int32>), bert_length (int32), word_tokens
(list<string>), word_ids (list<int32>)``; the BERT columns are null without a BERT tokenizer and
the word columns null without a vocabulary. :func:`tokenize` is the whole step (collection table →
caption store directory), as ``itmflow tokenize`` runs it::

    from pipeline.text.tokenize import TokenizeConfig, tokenize

    result = tokenize(TokenizeConfig(collection="collection.parquet", out="stores/captions",
                                     build_vocab=True))
    print(result.stats.captions, result.stats.word_unknown)
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from itmflow.errors import CollectionError, ConfigError, TokenizerError
from pipeline.collections.records import Collection
from pipeline.text.bert import BertTokenizer
from pipeline.text.vocab import UNK, WordVocab

if TYPE_CHECKING:
    from rich.console import Console

#: Splits whose captions build a vocabulary: SCAN counts train (which includes restval) and dev.
VOCAB_SPLITS = ("train", "restval", "val")


@dataclass
class TokenizeStats:
    """What tokenization did, for the manifest and the printed summary."""

    captions: int = 0
    bert_truncated: int = 0
    bert_max_length: int | None = None
    bert_length_max: int = 0
    bert_length_mean: float = 0.0
    word_unknown: int = 0
    word_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready counts (for the caption store manifest)."""
        return dict(self.__dict__)


def vocab_captions(collection: Collection) -> tuple[list[str], str]:
    """Captions SCAN builds a vocabulary from (train+restval+val), or all when there are no splits."""
    split_of = collection.split_of()
    chosen = [c.raw for c in collection.captions if split_of[c.image_id] in VOCAB_SPLITS]
    if chosen:
        return chosen, "train+restval+val captions"
    if any(im.split for im in collection.images):
        raise CollectionError(f"{collection.path}: no captions in train/restval/val to build a vocabulary from")
    return [c.raw for c in collection.captions], "all captions (the collection has no splits)"


def tokenize_collection(collection: Collection, *, bert: BertTokenizer | None, vocab: WordVocab | None,
                        max_length: int | None = None,
                        progress: Callable[[str, int], None] | None = None) -> tuple[Any, TokenizeStats]:
    """The caption-store table of ``collection`` and the statistics; ``progress(stage, n_done)``."""
    import numpy as np
    import pyarrow as pa

    if bert is None and vocab is None:
        raise TokenizerError("nothing to do: give a BERT tokenizer, a word vocabulary, or both")
    captions = collection.captions
    if not captions:
        raise CollectionError(f"{collection.path}: the collection has no captions to tokenize")
    split_of = collection.split_of()
    texts = [c.raw for c in captions]
    n = len(texts)
    stats = TokenizeStats(captions=n, bert_max_length=max_length)
    columns: dict[str, Any] = {
        "caption_id": pa.array([c.caption_id for c in captions], pa.string()),
        "image_id": pa.array([c.image_id for c in captions], pa.string()),
        "split": pa.array([split_of[c.image_id] for c in captions], pa.string()),
        "raw": pa.array(texts, pa.string()),
    }
    int_list = pa.list_(pa.int32())
    if bert is not None:
        values, offsets, truncated = bert.encode_flat(texts, max_length)
        lengths = np.diff(offsets).astype(np.int32)
        columns["bert_ids"] = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values))
        columns["bert_length"] = pa.array(lengths)
        stats.bert_truncated = truncated
        stats.bert_length_max = int(lengths.max())
        stats.bert_length_mean = float(lengths.mean())
        if progress:
            progress("bert", n)
    else:
        columns["bert_ids"] = pa.nulls(n, int_list)
        columns["bert_length"] = pa.nulls(n, pa.int32())
    if vocab is not None:
        tokens = [vocab.tokenize(t) for t in texts]
        ids = [vocab.ids(t) for t in tokens]
        stats.word_tokens = sum(len(t) for t in tokens)
        stats.word_unknown = sum(row.count(UNK) for row in ids)
        columns["word_tokens"] = pa.array(tokens, pa.list_(pa.string()))
        columns["word_ids"] = pa.array(ids, int_list)
        if progress:
            progress("words", n)
    else:
        columns["word_tokens"] = pa.nulls(n, pa.list_(pa.string()))
        columns["word_ids"] = pa.nulls(n, int_list)
    return pa.table(columns), stats



@dataclass
class TokenizeConfig:
    """Which tokenizations of a collection's captions go into a caption store (``itmflow tokenize``)."""

    collection: str | os.PathLike[str]
    """Collection table written by ``itmflow ingest`` (.parquet)."""
    out: str | os.PathLike[str]
    """Caption store directory to write."""
    tokenizer: str | None = "bert-base-uncased"
    """Hugging Face BERT tokenizer (local directory or hub id); None: no BERT ids."""
    vocab: str | os.PathLike[str] | None = None
    """SCAN/SGRAF vocabulary JSON, or a shipped one by name (coco_precomp, f30k_precomp)."""
    build_vocab: bool = False
    """Build a word vocabulary the SCAN way; saved as OUT/vocab.json."""
    vocab_threshold: int = 4
    max_length: int | None = None
    """Truncate BERT ids to this many tokens (keeping [SEP])."""

    def validate(self) -> TokenizeConfig:
        if self.vocab is not None and self.build_vocab:
            raise ConfigError("give either --word-vocab JSON or --build-vocab, not both")
        if self.tokenizer is None and self.vocab is None and not self.build_vocab:
            raise ConfigError("--no-bert without --word-vocab/--build-vocab leaves nothing to store; "
                              "add a vocabulary")
        return self


@dataclass
class TokenizeResult:
    """What was written: the statistics and the tokenizers used."""

    out: Path
    stats: TokenizeStats
    bert: BertTokenizer | None
    words: WordVocab | None
    vocab_meta: dict[str, Any] | None


def tokenize(config: TokenizeConfig, *, console: Console | None = None) -> TokenizeResult:
    """Tokenize every caption of the collection and write the caption store (and its vocab.json
    when the vocabulary was built). ``console`` shows a spinner per stage."""
    from pipeline.collections.table import read_collection
    from pipeline.text.bert import load_bert_tokenizer
    from stores.captions import write_caption_store

    config.validate()

    def status(text: str) -> Any:
        return console.status(text) if console is not None else nullcontext()

    collection_path, out = Path(config.collection), Path(config.out)
    coll = read_collection(collection_path)
    bert = None if config.tokenizer is None else load_bert_tokenizer(config.tokenizer)
    words = None
    vocab_meta: dict[str, Any] | None = None
    if config.vocab is not None:
        words = WordVocab.load(config.vocab)
        vocab_meta = {"name": Path(config.vocab).name, "source": "file", "size": len(words),
                      "sha256": words.sha256, "file_sha256": words.source_sha256}
    elif config.build_vocab:
        texts, which = vocab_captions(coll)
        with status(f"building the word vocabulary from {len(texts)} {which}"):
            words = WordVocab.build(texts, threshold=config.vocab_threshold)
        vocab_meta = {"name": "vocab.json", "source": f"built from {which}",
                      "threshold": config.vocab_threshold, "size": len(words), "sha256": words.sha256}
    with status(f"tokenizing {len(coll.captions)} captions"):
        table, stats = tokenize_collection(coll, bert=bert, vocab=words, max_length=config.max_length)
    meta = {
        "tokenizer": None if bert is None else {"name": bert.name, "vocab_sha256": bert.vocab_sha256,
                                                "vocab_size": bert.vocab_size,
                                                "max_length": config.max_length},
        "vocab": vocab_meta,
        "collection": {"name": collection_path.name, "source_format": coll.source_format,
                       "images": len(coll.images)},
        # the store adds its own "counts" and "provenance"; these are what tokenization saw
        "tokenization": stats.to_dict(),
    }
    write_caption_store(out, table, meta)
    if config.build_vocab and words is not None:
        words.save(out / "vocab.json")
    return TokenizeResult(out=out, stats=stats, bert=bert, words=words, vocab_meta=vocab_meta)
