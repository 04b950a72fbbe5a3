"""BERT WordPiece tokenization of captions with any Hugging Face tokenizer (local dir or hub id).

The work is done by the Rust ``tokenizers`` backend in batches, with an exact word-piece cache
for plain-ASCII captions (see :class:`_AsciiWordCache`). Whatever truncation or padding the
tokenizer files carry (sentence-transformers ships ``max_length 128`` + fixed padding) is switched
off: captions are never cut silently. ``max_length`` truncates explicitly (keeping ``[SEP]``) and
the number of truncated captions is returned.
"""

from __future__ import annotations

import json
import re
from itertools import chain
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from itmflow.errors import TokenizerError
from itmflow.files import sha256_bytes

DEFAULT_TOKENIZER = "bert-base-uncased"
#: The bert-base-uncased WordPiece vocabulary shipped inside the package (30,522 entries).
SHIPPED_BERT_VOCAB = Path(__file__).resolve().parent / "data" / "bert-base-uncased-vocab.txt"
_BATCH = 8192


class _AsciiWordCache:
    """Exact shortcut for plain-ASCII captions with a standard BERT pipeline.

    ``BertNormalizer`` + ``BertPreTokenizer`` + ``WordPiece`` treat ASCII text one
    whitespace-separated chunk at a time: lower-case, split off punctuation (every printable ASCII
    non-alphanumeric is BERT punctuation), word-piece each run — nothing depends on the
    neighbouring chunks. Captions reuse a few thousand chunks (``dog``, ``dog,``, ``surfboard.``),
    so each chunk's ids are computed once by the Rust backend and cached; a caption is then a
    ``str.split`` and dictionary look-ups. Anything this does not cover exactly (non-ASCII,
    control characters, added tokens such as ``[MASK]`` in the text) goes to the backend. Tests
    compare both paths token for token.
    """

    _LIMIT = 1 << 20  # distinct chunks kept; cleared beyond (bounded memory for odd corpora)
    _CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

    def __init__(self, backend: Any, lowercase: bool, added: list[str]) -> None:
        self.backend = backend
        self.lowercase = lowercase
        self.added = [a for a in added if a]
        self.added_lower = [a.lower() for a in self.added]
        # first characters (lower-cased) of the added tokens: one cheap test rules most captions out
        self.added_first = sorted({a[0] for a in self.added_lower})
        self.cache: dict[str, list[int]] = {}

    @classmethod
    def for_backend(cls, backend: Any) -> "_AsciiWordCache | None":
        """The shortcut when ``backend`` is the standard BERT pipeline, else None."""
        spec = json.loads(backend.to_str())
        norm, pre, model = spec.get("normalizer") or {}, spec.get("pre_tokenizer") or {}, spec.get("model") or {}
        if norm.get("type") != "BertNormalizer" or not norm.get("clean_text", True):
            return None
        if pre.get("type") != "BertPreTokenizer" or model.get("type") != "WordPiece":
            return None
        added = [t.get("content", "") for t in spec.get("added_tokens") or []]
        return cls(backend, bool(norm.get("lowercase", True)), added)

    def ids(self, text: str, cls_id: int, sep_id: int) -> list[int] | None:
        """[CLS] … [SEP] ids of ``text``, or None when the backend must do it."""
        if not text.isascii() or self._CONTROL.search(text):
            return None
        words = text.lower() if self.lowercase else text
        if any(c in words for c in self.added_first) and any(
                token in text or low in words for token, low in zip(self.added, self.added_lower)):
            return None
        cache = self.cache
        chunks = words.split()  # BERT splits on whitespace first; nothing crosses a space
        pieces = [cache.get(c) for c in chunks]
        if None in pieces:
            if len(cache) >= self._LIMIT:
                cache.clear()
            for k, piece in enumerate(pieces):
                if piece is None:
                    pieces[k] = cache[chunks[k]] = self.backend.encode(chunks[k], add_special_tokens=False).ids
        return [cls_id, *chain.from_iterable(pieces), sep_id]


@dataclass
class BertTokenizer:
    """A fast tokenizer ready for caption batches: [CLS] … [SEP], no padding, no hidden truncation."""

    name: str
    backend: Any  # tokenizers.Tokenizer
    cls_id: int
    sep_id: int
    vocab_sha256: str
    vocab_size: int
    word_cache: _AsciiWordCache | None = None

    def encode_flat(self, texts: Sequence[str], max_length: int | None = None
                    ) -> tuple[np.ndarray, np.ndarray, int]:
        """Token ids of all ``texts`` as one int32 array plus int64 offsets (len(texts)+1).

        Returns ``(values, offsets, n_truncated)``; caption ``i`` is ``values[offsets[i]:offsets[i+1]]``.
        """
        if max_length is not None and max_length < 2:
            raise TokenizerError(f"max_length must be at least 2 ([CLS] and [SEP]), got {max_length}")
        flat: list[int] = []
        lengths: list[int] = []
        truncated = 0
        for start in range(0, len(texts), _BATCH):
            for ids in self._encode_batch(texts[start:start + _BATCH]):
                if max_length is not None and len(ids) > max_length:
                    ids = ids[: max_length - 1] + [self.sep_id]
                    truncated += 1
                lengths.append(len(ids))
                flat.extend(ids)
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(np.asarray(lengths, dtype=np.int64), out=offsets[1:])
        return np.array(flat, dtype=np.int32), offsets, truncated

    def _encode_batch(self, batch: Sequence[str]) -> list[list[int]]:
        """Ids of one batch: cached word pieces where exact, the Rust backend for the rest."""
        for k, text in enumerate(batch):
            if not isinstance(text, str):
                raise TokenizerError(f"caption {k} of a batch is {type(text).__name__}, not a string")
        out: list[list[int] | None] = [None] * len(batch)
        rest: list[int] = []
        cache = self.word_cache
        for k, text in enumerate(batch):
            ids = cache.ids(text, self.cls_id, self.sep_id) if cache is not None else None
            if ids is None:
                rest.append(k)
            else:
                out[k] = ids
        if rest:
            encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
            for k, enc in zip(rest, encode([batch[k] for k in rest], add_special_tokens=True)):
                out[k] = enc.ids
        return out  # type: ignore[return-value]


def _special_tokens(folder: Path) -> tuple[str, str]:
    """The [CLS]/[SEP] strings named in a tokenizer directory (BERT's when not named)."""
    names = {"cls_token": "[CLS]", "sep_token": "[SEP]"}
    for file in ("special_tokens_map.json", "tokenizer_config.json"):
        try:
            doc = json.loads((folder / file).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for key in names:
            value = doc.get(key)
            if isinstance(value, dict):  # {"content": "[CLS]", ...}
                value = value.get("content")
            if isinstance(value, str):
                names[key] = value
    return names["cls_token"], names["sep_token"]


def _from_tokenizer_json(folder: Path) -> tuple[Any, int | None, int | None]:
    """Backend, [CLS] id and [SEP] id straight from ``tokenizer.json`` (no transformers import)."""
    from tokenizers import Tokenizer

    try:
        backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception as exc:  # the Rust side raises plain Exception for a bad file
        raise TokenizerError(f"{folder / 'tokenizer.json'} cannot be read: {exc}") from exc
    cls, sep = _special_tokens(folder)
    return backend, backend.token_to_id(cls), backend.token_to_id(sep)


def _shipped_bert_base_uncased() -> tuple[Any, int | None, int | None]:
    """bert-base-uncased from the shipped vocabulary, built as its hub ``tokenizer.json`` is.

    BertNormalizer (clean text, CJK spacing, lower-case, accents stripped with lower-casing),
    BertPreTokenizer, WordPiece (``[UNK]``, ``##``, 100 characters), ``[CLS] $A [SEP]``: the same
    ids as the hub tokenizer, with no network.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {}
    for idx, line in enumerate(SHIPPED_BERT_VOCAB.read_text(encoding="utf-8").splitlines()):
        vocab[line] = idx
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##",
                                         max_input_chars_per_word=100))
    backend.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                    strip_accents=None, lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls_id, sep_id = vocab["[CLS]"], vocab["[SEP]"]
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    backend.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    return backend, cls_id, sep_id


def _from_transformers(text: str, local: Path, is_dir: bool) -> tuple[Any, int | None, int | None]:
    """Backend, [CLS] id and [SEP] id through ``AutoTokenizer`` (hub ids, vocab.txt-only dirs)."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(local) if is_dir else text, use_fast=True,
                                            local_files_only=is_dir)
    except Exception as exc:  # OSError / ValueError / hub errors all mean "cannot load"
        hint = ("the directory needs tokenizer.json or vocab.txt" if is_dir else
                "give a local directory, or a hub id with network access (HF_HUB_OFFLINE is "
                "set in tests)")
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise TokenizerError(f"cannot load tokenizer {text!r}: {exc.__class__.__name__}: {first}; {hint}") from exc
    if not getattr(tok, "is_fast", False):
        raise TokenizerError(f"tokenizer {text!r} has no fast (Rust) version; give a directory with tokenizer.json")
    # a copy, so the tokenizer cached inside transformers keeps its own settings
    return Tokenizer.from_str(tok.backend_tokenizer.to_str()), tok.cls_token_id, tok.sep_token_id


def load_bert_tokenizer(name_or_dir: str | Path = DEFAULT_TOKENIZER) -> BertTokenizer:
    """Load a fast tokenizer from a local directory or a hub id (downloads only for a hub id).

    ``bert-base-uncased`` (the default) is built from the vocabulary shipped with the package and
    needs no network.
    A directory with ``tokenizer.json`` is read by ``tokenizers`` directly (fast start); anything
    else goes through ``transformers.AutoTokenizer``. The tokenizer must add [CLS]/[SEP]
    (BERT-style). The name recorded is the hub id, or the directory's name for a local one (no
    absolute path ends up in a store).
    """
    text = str(name_or_dir)
    local = Path(text).expanduser()
    is_dir = local.is_dir()
    if is_dir and (local / "tokenizer.json").is_file():
        backend, cls_id, sep_id = _from_tokenizer_json(local)
    elif not is_dir and text == DEFAULT_TOKENIZER:
        backend, cls_id, sep_id = _shipped_bert_base_uncased()
    else:
        backend, cls_id, sep_id = _from_transformers(text, local, is_dir)
    backend.no_truncation()
    backend.no_padding()
    if cls_id is None or sep_id is None:
        raise TokenizerError(f"tokenizer {text!r} has no [CLS]/[SEP] tokens; it is not a BERT-style tokenizer")
    probe = backend.encode("probe", add_special_tokens=True).ids
    if not probe or probe[0] != cls_id or probe[-1] != sep_id:
        raise TokenizerError(f"tokenizer {text!r} does not add [CLS] … [SEP] around a caption; give a BERT "
                             "WordPiece tokenizer")
    vocab = backend.get_vocab()
    canonical = json.dumps(vocab, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return BertTokenizer(name=local.name if is_dir else text, backend=backend, cls_id=cls_id, sep_id=sep_id,
                         vocab_sha256=sha256_bytes(canonical.encode("utf-8")), vocab_size=len(vocab),
                         word_cache=_AsciiWordCache.for_backend(backend))


def encode_captions(tok: BertTokenizer, texts: Sequence[str], max_length: int | None = None
                    ) -> tuple[list[list[int]], int]:
    """Token ids with [CLS]/[SEP] per caption and the number of captions truncated to ``max_length``."""
    values, offsets, truncated = tok.encode_flat(texts, max_length)
    return [values[offsets[i]:offsets[i + 1]].tolist() for i in range(len(texts))], truncated
