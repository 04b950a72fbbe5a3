"""``search``: query an embedding directory by text (→ images) or by image id (→ captions or
images) and draw the results as a PNG. ``itmflow search`` wraps it.

    from pipeline.search.query import SearchConfig, search

    result = search(SearchConfig(directory="emb", text="a dog on a beach", top=5))
    for hit in result.hits:
        print(hit.rank, hit.score, hit.item_id, hit.file)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from itmflow.errors import ConfigError, InputFileError, TokenizerError
from pipeline.search.render import Hit

if TYPE_CHECKING:
    from pipeline.search.embeddings import EmbeddingDir

PathLike = str | os.PathLike[str]
TARGETS = ("images", "captions")


@dataclass
class SearchConfig:
    """One query (exactly one of ``text`` / ``image``) against an embedding directory."""

    directory: PathLike
    """Embedding directory written by ``itmflow embed``."""
    text: str | None = None
    """Text query: find images."""
    image: str | None = None
    """Image id query: find captions (or images with ``target="images"``)."""
    target: str | None = None
    """images or captions (default: the other modality)."""
    top: int = 5
    images: PathLike | None = None
    """Images root (default: the one recorded by ``embed``)."""
    model: PathLike | None = None
    """Model that encodes a text query (default: the one recorded by ``embed``)."""
    tokenizer: str | None = None
    """BERT tokenizer directory or id (default: the model's)."""
    png: PathLike | None = None
    """Picture of the results (default DIR/search-<query>.png)."""
    device: str = "cpu"

    def validate(self) -> SearchConfig:
        if (self.text is None) == (self.image is None):
            raise ConfigError("give exactly one query: --text \"...\" or --image ID")
        if self.top < 1:
            raise ConfigError(f"--top must be >= 1, got {self.top}")
        return self


@dataclass
class SearchResult:
    """The ranked hits of one query and the picture drawn of them."""

    title: str
    target: str
    """``images`` (hits carry ``file``) or ``captions`` (hits carry ``text``)."""
    hits: list[Hit]
    png: Path
    random_init_regions: bool = False
    """The embeddings came (directly or through a trained model) from a random-weight detector."""


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9]+", "-", text).strip("-")[:48] or "query"


class TextEncoder:
    """A loaded model + tokenizer that turn text queries into l2-normalised global vectors ``[1, D]``.

    Built once (``itmflow serve`` keeps one for its lifetime; :func:`encode_text` builds one per
    call). The tokenizer's vocabulary is checked against the one recorded by ``embed``. Tokenizing
    is serialised with a lock (a fast tokenizer refuses concurrent use: "Already borrowed"); the
    forward passes of concurrent calls run in parallel.
    """

    def __init__(self, emb: EmbeddingDir, model_path: PathLike | None = None,
                 tokenizer: str | None = None, device: str = "cpu") -> None:
        import threading

        from pipeline.text.bert import load_bert_tokenizer
        from trainers.checkpoints import load_model

        source = model_path or (emb.path / emb.manifest["model"]["source"])
        self.device = device
        self.model = load_model(source, device=device)
        self.model.eval()
        tok_info = emb.manifest.get("tokenizer") or {}
        tok_source = tokenizer or tok_info.get("source") or "bert-base-uncased"
        tok = load_bert_tokenizer(tok_source)
        expected = tok_info.get("vocab_sha256")
        if expected and tok.vocab_sha256 != expected:
            raise TokenizerError(f"tokenizer {tok_source!r} has vocabulary sha256 {tok.vocab_sha256[:12]}…, "
                                 f"but the captions were tokenized with {expected[:12]}… "
                                 f"({tok_info.get('name')}); pass --tokenizer with that tokenizer")
        self.tokenizer = tok
        self._lock = threading.Lock()

    def __call__(self, text: str) -> np.ndarray:
        import torch

        from pipeline.text.bert import encode_captions

        if not text.strip():
            raise ConfigError("the --text query is empty")
        with self._lock:
            ids, _ = encode_captions(self.tokenizer, [text])
        batch = {"bert_ids": torch.tensor(ids, dtype=torch.long, device=self.device),
                 "bert_lengths": torch.tensor([len(ids[0])], dtype=torch.long, device=self.device)}
        with torch.inference_mode():       # an eval-mode forward is safe from several threads
            vec = self.model.global_embeddings(self.model.encode_captions(batch))
        if vec is None:
            raise ConfigError(f"model kind {getattr(self.model, 'kind', '?')!r} has no global "
                              "vectors to query with; use a TERN or TERAN model")
        vec = torch.nn.functional.normalize(vec.float(), dim=-1)
        return vec.cpu().numpy().astype(np.float32)


def encode_text(emb: EmbeddingDir, text: str, model_path: PathLike | None = None,
                tokenizer: str | None = None, device: str = "cpu") -> np.ndarray:
    """The l2-normalised global vector ``[1, D]`` of a text query, tokenized like the embedded
    captions (the tokenizer's vocabulary is checked against the one recorded by ``embed``)."""
    if not text.strip():
        raise ConfigError("the --text query is empty")
    return TextEncoder(emb, model_path, tokenizer, device)(text)


def search(config: SearchConfig, *, console: Any = None) -> SearchResult:
    """Run the query, rank the target side by cosine, and write the PNG of the results.

    Embeddings marked ``random_init_regions`` print a warning on stderr (``console``) and their
    PNG carries the red "random weights" banner.
    """
    from itmflow.marks import record_random_init, warn
    from pipeline.search.embeddings import EmbeddingDir
    from pipeline.search.render import captions_panel, image_grid

    config.validate()
    directory = Path(config.directory)
    emb = EmbeddingDir.open(directory)
    mark = record_random_init(emb.manifest)
    warn(console, f"the embeddings in {directory}", mark)
    recorded = emb.manifest.get("images_root")
    root = config.images if config.images is not None else ((directory / recorded) if recorded else None)
    query_file: str | None = None
    if config.text is not None:
        query_vec = encode_text(emb, config.text, config.model, config.tokenizer, config.device)
        target = config.target or "images"
        title = f"text: \"{config.text}\""
    else:
        img_side = emb.side("images")
        pos = img_side.position("image_id", config.image or "")
        query_vec = img_side.vectors[pos][None]
        query_file = img_side.row(pos).get("file")
        target = config.target or ("captions" if "captions" in emb.sides else "images")
        title = f"image: {config.image}"
    if target not in TARGETS:
        raise ConfigError(f"--target must be images or captions, got {target!r}")
    side = emb.side(target)
    if not np.isfinite(np.asarray(query_vec, dtype=np.float32)).all():
        raise InputFileError(f"the query vector is not finite (NaN/inf); the model of {directory} gives NaN "
                             f"(a diverged checkpoint?)")
    scores, idx = side.search(np.asarray(query_vec, dtype=np.float32), config.top)
    if not np.isfinite(scores).all():
        raise InputFileError(f"search scores against {directory} ({target}) are not finite (NaN/inf); "
                             f"region store {emb.manifest.get('regions')!r}: re-run itmflow embed")
    hits: list[Hit] = []
    for rank, (s, i) in enumerate(zip(scores[0], idx[0]), start=1):
        if i < 0:
            continue
        row = side.row(int(i))
        if target == "images":
            hits.append(Hit(rank, float(s), row["image_id"], file=row.get("file")))
        else:
            hits.append(Hit(rank, float(s), row["caption_id"], text=row.get("raw")))
    query = config.text if config.text is not None else config.image or ""
    png = Path(config.png) if config.png is not None else directory / f"search-{_slug(query)}.png"
    if target == "images":
        image_grid(hits, root, png, title=title, random_init=bool(mark))
    else:
        captions_panel(query_file, config.image or "", hits, root, png, random_init=bool(mark))
    return SearchResult(title=title, target=target, hits=hits, png=png,
                        random_init_regions=bool(mark))


__all__ = ["SearchConfig", "SearchResult", "TextEncoder", "encode_text", "search"]
