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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from itmflow.errors import ConfigError, TokenizerError
from pipeline.search.render import Hit

if TYPE_CHECKING:
    from pipeline.search.embeddings import EmbeddingDir

PathLike = str | os.PathLike[str]
TARGETS = ("images", "captions")


@dataclass
class SearchConfig:
    """Queries against an embedding directory: ``text`` / ``image`` (one query) and / or
    ``texts`` / ``image_ids`` (several; the model that encodes text is loaded once for all)."""

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
    """Picture of the results of a single query (default DIR/search-text-<query>.png,
    DIR/search-image-<id>-<target>.png)."""
    device: str = "auto"
    texts: list[str] = field(default_factory=list)
    """More text queries (``--text`` repeated, ``--queries FILE``)."""
    image_ids: list[str] = field(default_factory=list)
    """More image id queries."""
    draw: bool = True
    """Write a PNG per query."""

    def queries(self) -> list[tuple[str, str]]:
        """``("text", query)`` / ``("image", id)`` pairs, in order."""
        out = [("text", t) for t in ([self.text] if self.text is not None else []) + list(self.texts)]
        out += [("image", i) for i in ([self.image] if self.image is not None else []) + list(self.image_ids)]
        return out

    def validate(self) -> SearchConfig:
        queries = self.queries()
        if not queries:
            raise ConfigError("give a query: --text \"...\" (repeatable), --queries FILE or --image ID")
        if self.top < 1:
            raise ConfigError(f"--top must be >= 1, got {self.top}")
        if self.target is not None and self.target not in TARGETS:
            raise ConfigError(f"--target must be images or captions, got {self.target!r}")
        if self.png is not None and len(queries) > 1:
            raise ConfigError("--png names the picture of one query; with several queries each "
                              "gets DIR/search-....png")
        for kind, q in queries:
            if kind == "text" and not q.strip():
                raise ConfigError("a --text query is empty")
        return self


@dataclass
class SearchResult:
    """The ranked hits of one query and the picture drawn of them."""

    title: str
    target: str
    """``images`` (hits carry ``file``) or ``captions`` (hits carry ``text``)."""
    hits: list[Hit]
    png: Path | None
    query: str = ""
    kind: str = "text"
    """``text`` or ``image``."""

    def to_dict(self) -> dict:
        """JSON-ready (``itmflow search --json``)."""
        return {"query": self.query, "kind": self.kind, "target": self.target,
                "png": None if self.png is None else str(self.png),
                "hits": [{"rank": h.rank, "score": h.score, "id": h.item_id,
                          **({"file": h.file} if self.target == "images" else {"text": h.text})}
                         for h in self.hits]}


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9]+", "-", text).strip("-")[:48] or "query"


def png_name(kind: str, query: str, target: str) -> str:
    """The default picture name of a query: distinct for text / image queries and for the two
    targets of an image query (``search-text-a-dog.png``, ``search-image-42-captions.png``)."""
    if kind == "text":
        return f"search-text-{_slug(query)}.png" if target == "images" else \
            f"search-text-{_slug(query)}-{target}.png"
    return f"search-image-{_slug(query)}-{target}.png"


def text_encoder(emb: EmbeddingDir, model_path: PathLike | None = None,
                 tokenizer: str | None = None, device: str = "auto"):
    """A function text -> the l2-normalised global vector ``[1, D]``, tokenized like the
    embedded captions (the tokenizer's vocabulary is checked against the one recorded by
    ``embed``); the model and tokenizer are loaded once, here."""
    import torch

    from itmflow.devices import resolve_device
    from pipeline.search.embeddings import global_vectors
    from pipeline.text.bert import encode_captions, load_bert_tokenizer
    from trainers.checkpoints import load_model

    dev = resolve_device(device)
    source = model_path or (emb.path / emb.manifest["model"]["source"])
    model = load_model(source, device=dev)
    tok_info = emb.manifest.get("tokenizer") or {}
    tok_source = tokenizer or tok_info.get("source") or "bert-base-uncased"
    tok = load_bert_tokenizer(tok_source)
    expected = tok_info.get("vocab_sha256")
    if expected and tok.vocab_sha256 != expected:
        raise TokenizerError(f"tokenizer {tok_source!r} has vocabulary sha256 {tok.vocab_sha256[:12]}…, "
                             f"but the captions were tokenized with {expected[:12]}… "
                             f"({tok_info.get('name')}); pass --tokenizer with that tokenizer")

    def encode(text: str) -> np.ndarray:
        if not text.strip():
            raise ConfigError("the --text query is empty")
        ids, _ = encode_captions(tok, [text])
        batch = {"bert_ids": torch.tensor(ids, dtype=torch.long),
                 "bert_lengths": torch.tensor([len(ids[0])], dtype=torch.long)}
        return global_vectors(model, [batch], "captions", device=dev)

    return encode


def encode_text(emb: EmbeddingDir, text: str, model_path: PathLike | None = None,
                tokenizer: str | None = None, device: str = "auto") -> np.ndarray:
    """The l2-normalised global vector ``[1, D]`` of one text query (see :func:`text_encoder`)."""
    if not text.strip():
        raise ConfigError("the --text query is empty")
    return text_encoder(emb, model_path, tokenizer, device)(text)


def search_all(config: SearchConfig) -> list[SearchResult]:
    """Run every query of ``config`` (the text model is loaded once), rank the target side by
    cosine, and write a PNG per query unless ``draw`` is off."""
    from pipeline.search.embeddings import EmbeddingDir
    from pipeline.search.render import captions_panel, image_grid

    config.validate()
    directory = Path(config.directory)
    emb = EmbeddingDir.open(directory)
    recorded = emb.manifest.get("images_root")
    root = config.images if config.images is not None else ((directory / recorded) if recorded else None)
    queries = config.queries()
    encode = None
    if any(kind == "text" for kind, _ in queries):
        encode = text_encoder(emb, config.model, config.tokenizer, config.device)
    results: list[SearchResult] = []
    for kind, query in queries:
        query_file: str | None = None
        if kind == "text":
            query_vec = encode(query)
            target = config.target or "images"
            title = f"text: \"{query}\""
        else:
            img_side = emb.side("images")
            pos = img_side.position("image_id", query)
            query_vec = img_side.vectors[pos][None]
            query_file = img_side.row(pos).get("file")
            target = config.target or ("captions" if "captions" in emb.sides else "images")
            title = f"image: {query}"
        side = emb.side(target)
        scores, idx = side.search(np.asarray(query_vec, dtype=np.float32), config.top)
        hits: list[Hit] = []
        for rank, (s, i) in enumerate(zip(scores[0], idx[0]), start=1):
            if i < 0:
                continue
            row = side.row(int(i))
            if target == "images":
                hits.append(Hit(rank, float(s), row["image_id"], file=row.get("file")))
            else:
                hits.append(Hit(rank, float(s), row["caption_id"], text=row.get("raw")))
        png: Path | None = None
        if config.draw:
            png = Path(config.png) if config.png is not None else directory / png_name(kind, query, target)
            if target == "images":
                image_grid(hits, root, png, title=title)
            else:
                captions_panel(query_file, query if kind == "image" else "", hits, root, png)
        results.append(SearchResult(title=title, target=target, hits=hits, png=png, query=query,
                                    kind=kind))
    return results


def search(config: SearchConfig) -> SearchResult:
    """Run the one query of ``config`` (see :func:`search_all` for several) and write its PNG."""
    if len(config.queries()) != 1:
        raise ConfigError("give exactly one query: --text \"...\" or --image ID (search_all "
                          "takes several)")
    return search_all(config)[0]


__all__ = ["SearchConfig", "SearchResult", "encode_text", "png_name", "search", "search_all",
           "text_encoder"]
