"""The SCAN / SGRAF word vocabulary (``{"word2idx", "idx2word", "idx"}`` JSON).

Loading the shipped SGRAF files keeps the published checkpoints' embedding rows lined up; building
one follows SCAN's ``vocab.py``: lower-case + word_tokenize, count train+val captions, keep words
seen at least ``threshold`` (4) times, ids ``<pad>`` 0, ``<start>`` 1, ``<end>`` 2, ``<unk>`` 3, then
the kept words in first-seen order (what SCAN's Counter gives under Python 3.7+).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Iterable

from itmflow.errors import InputFileError, TokenizerError
from itmflow.files import atomic_write_json, sha256_bytes
from pipeline.text.words import scan_tokenize

#: SGRAF's published word vocabularies, shipped inside the package (``pipeline/text/data``):
#: a name here is accepted wherever a vocabulary JSON path is.
SHIPPED_VOCABS = {name: Path(__file__).resolve().parent / "data" / f"{name}_vocab.json"
                  for name in ("coco_precomp", "f30k_precomp")}

SPECIALS = ("<pad>", "<start>", "<end>", "<unk>")
PAD, START, END, UNK = 0, 1, 2, 3


class WordVocab:
    """Word ↔ id mapping with SCAN's special tokens and tokenization."""

    def __init__(self, word2idx: dict[str, int], *, name: str = "", source_sha256: str | None = None) -> None:
        for word, idx in zip(SPECIALS, (PAD, START, END, UNK)):
            if word2idx.get(word) != idx:
                raise TokenizerError(f"vocabulary {name or '(built)'}: {word} must have id {idx}, "
                                     f"found {word2idx.get(word)!r}")
        ids = sorted(word2idx.values())
        if ids != list(range(len(ids))):
            raise TokenizerError(f"vocabulary {name or '(built)'}: ids must be 0..{len(ids) - 1} without gaps")
        self.word2idx = dict(word2idx)
        self.idx2word = {i: w for w, i in word2idx.items()}
        self.name = name
        self.source_sha256 = source_sha256

    def __len__(self) -> int:
        return len(self.word2idx)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "WordVocab":
        """Read a vocabulary JSON in SCAN/SGRAF's format; every inconsistency names the file.

        ``path`` may also name a shipped vocabulary (``coco_precomp``, ``f30k_precomp``).
        """
        source = Path(path)
        if not source.is_file() and str(path) in SHIPPED_VOCABS:
            source = SHIPPED_VOCABS[str(path)]
        if not source.is_file():
            raise InputFileError(f"vocabulary file {source} does not exist (or name a shipped one: "
                                 f"{', '.join(SHIPPED_VOCABS)})")
        data = source.read_bytes()
        try:
            doc = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise TokenizerError(f"vocabulary {source} is not UTF-8 (offset {exc.start})") from exc
        except json.JSONDecodeError as exc:
            raise TokenizerError(f"vocabulary {source} line {exc.lineno} column {exc.colno}: "
                                 f"malformed JSON ({exc.msg})") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("word2idx"), dict):
            raise TokenizerError(f"vocabulary {source}: expected an object with 'word2idx' (SCAN/SGRAF "
                                 "vocab JSON: word2idx, idx2word, idx)")
        word2idx = doc["word2idx"]
        if any(not isinstance(i, int) or isinstance(i, bool) for i in word2idx.values()):
            raise TokenizerError(f"vocabulary {source}: word2idx values must be integers")
        idx2word = doc.get("idx2word")
        if isinstance(idx2word, dict):
            for word, idx in word2idx.items():
                if idx2word.get(str(idx)) != word:
                    raise TokenizerError(f"vocabulary {source}: idx2word[{idx}] is {idx2word.get(str(idx))!r} "
                                         f"but word2idx[{word!r}] = {idx}")
        if "idx" in doc and doc["idx"] != len(word2idx):
            raise TokenizerError(f"vocabulary {source}: idx is {doc['idx']} but word2idx has {len(word2idx)} words")
        return cls(word2idx, name=source.name, source_sha256=sha256_bytes(data))

    @classmethod
    def build(cls, captions: Iterable[str], threshold: int = 4) -> "WordVocab":
        """Count words of ``captions`` (give train+val) and keep those seen ``threshold`` times or more."""
        if threshold < 1:
            raise TokenizerError(f"vocabulary threshold must be at least 1, got {threshold}")
        counter: Counter[str] = Counter()
        for caption in captions:
            counter.update(scan_tokenize(caption))
        word2idx = {w: i for i, w in enumerate(SPECIALS)}
        for word, count in counter.items():
            if count >= threshold and word not in word2idx:
                word2idx[word] = len(word2idx)
        return cls(word2idx, name=f"built(threshold={threshold})")

    def to_json(self) -> dict:
        """The SCAN/SGRAF JSON document."""
        return {"word2idx": self.word2idx, "idx2word": {str(i): w for i, w in self.idx2word.items()},
                "idx": len(self.word2idx)}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the vocabulary in SCAN/SGRAF's JSON format (atomically)."""
        atomic_write_json(path, self.to_json())
        return Path(path)

    @property
    def sha256(self) -> str:
        """Hash of the word → id mapping (independent of file formatting): same ids, same hash."""
        canonical = json.dumps(self.word2idx, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return sha256_bytes(canonical.encode("utf-8"))

    def tokenize(self, text: str) -> list[str]:
        """SCAN's tokens of ``text`` (lower-cased, word_tokenize)."""
        return scan_tokenize(text)

    def ids(self, tokens: list[str]) -> list[int]:
        """``<start>`` + ids (OOV → ``<unk>``) + ``<end>``."""
        get = self.word2idx.get
        return [START, *(get(t, UNK) for t in tokens), END]

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` with ``<start>``/``<end>``, unknown words as ``<unk>``."""
        return self.ids(self.tokenize(text))

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words of ``ids`` (for inspection)."""
        return [self.idx2word.get(int(i), "<unk>") for i in ids]
