"""Collection → caption store: BERT WordPiece ids and/or SCAN word ids for every caption.

The table handed to :func:`stores.captions.write_caption_store` has the agreed columns
``caption_id, image_id, split, raw, bert_ids (list<int32>), bert_length (int32), word_tokens
(list<string>), word_ids (list<int32>)``; the BERT columns are null without a BERT tokenizer and
the word columns null without a vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from itmflow.errors import CollectionError, TokenizerError
from pipeline.collections.records import Collection
from pipeline.text.bert import BertTokenizer
from pipeline.text.vocab import UNK, WordVocab

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

