"""Global embeddings (TERN / TERAN I-CLS and T-CLS vectors) written as Parquet, with a faiss index.

An embedding directory (``itmflow embed``)::

    DIR/manifest.json      format "itmflow.embeddings": model, dims, index kind, counts, stores
    DIR/images.parquet     image_id, file, vector (fixed-size list<float32>)
    DIR/images.faiss       faiss index over the image vectors (inner product = cosine)
    DIR/captions.parquet   caption_id, image_id, split, raw, vector   (when captions were embedded)
    DIR/captions.faiss

Vectors are l2-normalised, so inner product is the cosine the models score with (TERN exactly;
for TERAN the global vectors are the I-CLS / T-CLS outputs, which its alignment score does not use —
a fast first stage, not the TERAN score). Exact ``IndexFlatIP`` is the default up to
:data:`EXACT_MAX` vectors; beyond that (or on request) an IVF or HNSW index trades a little recall
for speed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from itmflow.errors import ConfigError, InputFileError
from itmflow.files import atomic_path, atomic_write_json
from pipeline.search.manifest import FORMAT, read_embedding_manifest
from trainers.models import MatchingModel

if TYPE_CHECKING:
    from rich.console import Console

INDEX_KINDS = ("auto", "flat", "ivf", "hnsw")
EXACT_MAX = 100_000
"""Up to this many vectors ``auto`` builds an exact index (a flat scan of 100k × 1024 floats is a
few milliseconds per query)."""


# ------------------------------------------------------------------------------------ vectors

@torch.no_grad()
def global_vectors(model: MatchingModel, batches: Iterable[dict[str, Tensor]], side: str, *,
                   device: torch.device | str = "cpu", progress: bool = False,
                   console: Console | None = None, total: int | None = None) -> np.ndarray:
    """One l2-normalised float32 vector per item of ``side`` ("images" / "captions").

    ``total`` (batches, for the progress bar) defaults to ``len(batches)`` when it has one.
    """
    from rich.progress import Progress

    probe = model.global_embeddings
    fn = model.encode_images if side == "images" else model.encode_captions
    was_training = bool(getattr(model, "training", False))
    model.eval()
    parts: list[np.ndarray] = []
    try:
        if total is None and hasattr(batches, "__len__"):
            total = len(batches)  # type: ignore[arg-type]
        with Progress(console=console, disable=not progress) as bar:
            task = bar.add_task(f"embed {side}", total=total)
            for batch in batches:
                batch = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in batch.items()}
                vec = probe(fn(batch))
                if vec is None:
                    raise ConfigError(f"model kind {getattr(model, 'kind', '?')!r} has no global "
                                      "vectors to index; use a TERN or TERAN model")
                vec = torch.nn.functional.normalize(vec.float(), dim=-1)
                parts.append(vec.cpu().numpy().astype(np.float32))
                bar.advance(task)
    finally:
        if was_training:
            model.train()
    if not parts:
        raise ConfigError(f"no {side} to embed")
    return np.concatenate(parts)


# ------------------------------------------------------------------------------------- index

def choose_index(kind: str, n: int) -> str:
    """Resolve ``auto`` to ``flat`` (exact) for small collections and ``ivf`` for large ones."""
    if kind not in INDEX_KINDS:
        raise ConfigError(f"index kind must be one of {INDEX_KINDS}, got {kind!r}")
    if kind == "auto":
        return "flat" if n <= EXACT_MAX else "ivf"
    return kind


def build_index(vectors: np.ndarray, kind: str = "auto", *, nlist: int | None = None,
                nprobe: int = 32, hnsw_m: int = 32) -> Any:
    """A faiss inner-product index over ``vectors`` [N, D] (float32, l2-normalised)."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    kind = choose_index(kind, n)
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = max(64, 2 * hnsw_m)
    else:
        lists = nlist or max(1, min(n // 39, int(4 * math.sqrt(n))))   # faiss wants ≥39 per list
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, lists, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = min(nprobe, lists)
    index.add(vectors)
    return index


# --------------------------------------------------------------------------------- directory

def _vector_table(columns: dict[str, list[Any]], vectors: np.ndarray) -> Any:
    import pyarrow as pa

    n, d = vectors.shape
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), type=pa.float32())
    arrays = {k: pa.array(v, type=pa.string()) for k, v in columns.items()}
    arrays["vector"] = pa.FixedSizeListArray.from_arrays(flat, d)
    return pa.table(arrays)


def write_side(directory: Path, side: str, columns: dict[str, list[Any]], vectors: np.ndarray,
               index_kind: str) -> dict[str, Any]:
    """Write ``{side}.parquet`` and ``{side}.faiss``; returns the manifest entry of that side."""
    import faiss
    import pyarrow.parquet as pq

    if any(len(v) != len(vectors) for v in columns.values()):
        raise ConfigError(f"{side}: {len(vectors)} vectors but columns of other lengths")
    kind = choose_index(index_kind, len(vectors))
    index = build_index(vectors, kind)
    with atomic_path(directory / f"{side}.parquet") as tmp:
        pq.write_table(_vector_table(columns, vectors), tmp)
    with atomic_path(directory / f"{side}.faiss") as tmp:
        faiss.write_index(index, str(tmp))
    return {"count": int(len(vectors)), "dim": int(vectors.shape[1]), "index": kind,
            "parquet": f"{side}.parquet", "faiss": f"{side}.faiss"}


def write_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest.json`` (last, so a directory with a manifest is complete)."""
    from itmflow.provenance import provenance

    doc = {"format": FORMAT, "schema_version": 1, **manifest, "provenance": provenance()}
    atomic_write_json(directory / "manifest.json", doc)
    return directory / "manifest.json"


@dataclass
class SideIndex:
    """One embedded side: its rows (ids, files / captions), vectors and faiss index."""

    table: Any            # pyarrow.Table without the vector column
    vectors: np.ndarray
    index: Any

    def row(self, i: int) -> dict[str, Any]:
        """Row ``i`` as a dict of its string columns."""
        return {name: self.table.column(name)[i].as_py() for name in self.table.column_names}

    def position(self, column: str, value: str) -> int:
        """Row number whose ``column`` equals ``value`` (raises when absent)."""
        values = self.table.column(column).to_pylist()
        try:
            return values.index(value)
        except ValueError:
            raise InputFileError(f"no {column} {value!r} in this embedding directory") from None

    def search(self, queries: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, row indices)`` of the ``top`` nearest rows for each query vector."""
        q = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.vectors.shape[1])
        k = min(top, self.index.ntotal)
        return self.index.search(q, k)


@dataclass
class EmbeddingDir:
    """A directory written by ``itmflow embed``."""

    path: Path
    manifest: dict[str, Any]
    sides: dict[str, SideIndex]

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> EmbeddingDir:
        """Read the manifest, the Parquet tables and the faiss indexes of every side present."""
        d = Path(path)
        manifest = read_embedding_manifest(d)
        import faiss
        import pyarrow.parquet as pq

        sides: dict[str, SideIndex] = {}
        for side, entry in manifest.get("sides", {}).items():
            table = pq.read_table(d / entry["parquet"])
            vec_col = table.column("vector").combine_chunks()
            vectors = vec_col.flatten().to_numpy().reshape(len(table), entry["dim"]).astype(np.float32)
            index = faiss.read_index(str(d / entry["faiss"]))
            if index.ntotal != len(table):
                raise InputFileError(f"{d / entry['faiss']}: {index.ntotal} vectors but "
                                     f"{entry['parquet']} has {len(table)} rows; re-run itmflow embed")
            if not np.isfinite(vectors).all():
                bad = int((~np.isfinite(vectors).all(axis=1)).sum())
                raise InputFileError(
                    f"{d / entry['parquet']}: {bad} {side} vector(s) are not finite (NaN/inf), so every "
                    f"score against them is; embedded from region store {manifest.get('regions')!r}. Check "
                    "that store (`itmflow store verify`; features imported without image sizes?) and re-run "
                    "itmflow embed")
            sides[side] = SideIndex(table.drop(["vector"]), vectors, index)
        return cls(d, manifest, sides)

    def side(self, name: str) -> SideIndex:
        """The ``images`` or ``captions`` side (a clear error when it was not embedded)."""
        if name not in self.sides:
            hint = " (pass --captions to itmflow embed)" if name == "captions" else ""
            raise InputFileError(f"{self.path} holds no {name} embeddings{hint}")
        return self.sides[name]


__all__ = ["EXACT_MAX", "EmbeddingDir", "FORMAT", "INDEX_KINDS", "SideIndex", "build_index",
           "choose_index", "global_vectors", "write_manifest", "write_side"]
