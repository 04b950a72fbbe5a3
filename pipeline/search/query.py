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
    random_init_regions: bool = False
    """The embeddings came (directly or through a trained model) from a random-weight detector."""

    def to_dict(self) -> dict:
        """JSON-ready (``itmflow search --json``)."""
        return {"query": self.query, "kind": self.kind, "target": self.target,
                "png": None if self.png is None else str(self.png),
                "random_init_regions": self.random_init_regions,
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


class TextEncoder:
    """A loaded model + tokenizer that turn text queries into l2-normalised global vectors ``[1, D]``.

    Built once (``itmflow serve`` keeps one for its lifetime; ``itmflow search`` one per call, for
    all its queries). The tokenizer's vocabulary is checked against the one recorded by ``embed``.
    Tokenizing is serialised with a lock (a fast tokenizer refuses concurrent use: "Already
    borrowed"); the forward passes of concurrent calls run in parallel.
    """

    def __init__(self, emb: EmbeddingDir, model_path: PathLike | None = None,
                 tokenizer: str | None = None, device: str = "auto") -> None:
        import threading

        from itmflow.devices import resolve_device
        from pipeline.text.bert import load_bert_tokenizer
        from trainers.checkpoints import load_model

        source = model_path or (emb.path / emb.manifest["model"]["source"])
        self.device = resolve_device(device)
        self.model = load_model(source, device=self.device)
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
                tokenizer: str | None = None, device: str = "auto") -> np.ndarray:
    """The l2-normalised global vector ``[1, D]`` of one text query (see :class:`TextEncoder`)."""
    if not text.strip():
        raise ConfigError("the --text query is empty")
    return TextEncoder(emb, model_path, tokenizer, device)(text)


def search_all(config: SearchConfig, *, console: Any = None) -> list[SearchResult]:
    """Run every query of ``config`` (the text model is loaded once), rank the target side by
    cosine, and write a PNG per query unless ``draw`` is off.

    Embeddings marked ``random_init_regions`` print a warning on stderr (``console``) and their
    PNGs carry the red "random weights" banner.
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
    queries = config.queries()
    encode = None
    if any(kind == "text" for kind, _ in queries):
        encode = TextEncoder(emb, config.model, config.tokenizer, config.device)
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
        if not np.isfinite(np.asarray(query_vec, dtype=np.float32)).all():
            raise InputFileError(f"the query vector is not finite (NaN/inf); the model of {directory} "
                                 "gives NaN (a diverged checkpoint?)")
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
        png: Path | None = None
        if config.draw:
            png = Path(config.png) if config.png is not None else directory / png_name(kind, query, target)
            if target == "images":
                image_grid(hits, root, png, title=title, random_init=bool(mark))
            else:
                captions_panel(query_file, query if kind == "image" else "", hits, root, png,
                               random_init=bool(mark))
        results.append(SearchResult(title=title, target=target, hits=hits, png=png, query=query,
                                    kind=kind, random_init_regions=bool(mark)))
    return results


def search(config: SearchConfig, *, console: Any = None) -> SearchResult:
    """Run the one query of ``config`` (see :func:`search_all` for several) and write its PNG."""
    if len(config.queries()) != 1:
        raise ConfigError("give exactly one query: --text \"...\" or --image ID (search_all "
                          "takes several)")
    return search_all(config, console=console)[0]


__all__ = ["SearchConfig", "SearchResult", "TextEncoder", "encode_text", "png_name", "search",
           "search_all"]
