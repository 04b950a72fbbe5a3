"""Block scoring: every image against every caption, fast and with bounded memory.

The originals score SGRAF / TERAN with a Python loop per caption (or per query) over float64 / float32
host buffers of every token vector (13–20 GB for COCO 5K, hours of run time). Here:

1. Images and captions are encoded once each (``model.encode_images`` / ``encode_captions``); the
   embeddings are kept as the *chunks* the loader produced, each padded only to its own longest
   item, in a buffer dtype of float32 or lower (``buffer_dtype``: float16 / bfloat16 halve them).
2. ``model.similarity(img_block, cap_block)`` — vectorised over both axes — scores blocks of
   ``img_block × cap_block`` pairs; block sizes follow from ``max_memory_gb`` and a per-pair memory
   estimate of the model (:func:`pair_bytes`). Blocks are cast to float32 on the device before
   scoring, so the arithmetic is the model's own float32 arithmetic (float64 for a model whose
   weights are float64, :func:`~trainers.models.common.compute_dtype`: the validation of a
   ``dtype: float64`` training run; its buffers stay float32).
3. Scores are written into one float32 ``[n_images, n_captions]`` matrix (or a memmap given as
   ``out``), with a rich progress bar over pairs.

Works on CPU or GPU (``device``). The SGRAF ensemble is the mean of the SGR and SAF matrices
(:func:`ensemble`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from itmflow.errors import ConfigError
from trainers.models.common import (Embeddings, MatchingModel, compute_dtype, embeddings_to,
                                    index_embeddings, num_items)

if TYPE_CHECKING:
    from rich.console import Console

DEFAULT_MAX_MEMORY_GB = 2.0
_BYTES_F32 = 4


@dataclass
class EncodedChunks:
    """Embeddings of one side as a list of chunks (each padded to its own longest item)."""

    chunks: list[Embeddings]

    def __len__(self) -> int:
        return sum(num_items(c) for c in self.chunks)

    def nbytes(self) -> int:
        """Bytes held by the buffers (to report memory)."""
        total = 0
        for c in self.chunks:
            for t in (c.values() if isinstance(c, dict) else [c]):
                total += t.element_size() * t.nelement()
        return total

    def offsets(self) -> list[int]:
        """Start index of every chunk."""
        out, pos = [], 0
        for c in self.chunks:
            out.append(pos)
            pos += num_items(c)
        return out


def _token_shape(emb: Embeddings) -> tuple[int, int]:
    """(tokens per item, width) of the largest per-token tensor of an embedding (1, D for vectors)."""
    tensors = list(emb.values()) if isinstance(emb, dict) else [emb]
    best = (1, 1)
    for t in tensors:
        if t.is_floating_point():
            shape = (int(t.shape[1]), int(t.shape[2])) if t.dim() == 3 else (1, int(t.shape[-1]))
            if shape[0] * shape[1] > best[0] * best[1]:
                best = shape
    return best


def pair_bytes(model: MatchingModel, img: Embeddings, cap: Embeddings) -> int:
    """Working memory one (image, caption) pair needs inside ``model.similarity`` (an estimate).

    A model may define ``pair_memory_bytes(img, cap)`` itself; otherwise the count follows the
    intermediate tensors of each model's vectorised similarity:

    * TERN: one dot product per pair.
    * TERAN: the ``R × W`` cosine block plus its mask / filled copies (≈ 4 tensors).
    * SGRAF: per word the attended region context (``W × E``) and its l2norm/difference copies
      (≈ 4), the ``R × W`` attention (≈ 4), and the ``(W + 1) × 256`` similarity graph (≈ 8).
    """
    custom = getattr(model, "pair_memory_bytes", None)
    if callable(custom):
        return int(custom(img, cap))
    r, e_img = _token_shape(img)
    w, e_cap = _token_shape(cap)
    kind = getattr(model, "kind", "")
    if kind == "tern" or (r == 1 and w == 1):
        return 2 * _BYTES_F32
    if kind == "teran":
        return 4 * r * w * _BYTES_F32
    sim_dim = int(getattr(getattr(model, "config", None), "sim_dim", 256) or 256)
    # SGRAF and unknown token-level models: the SCAN-style attended context dominates.
    return _BYTES_F32 * (4 * w * max(e_img, e_cap) + 4 * r * w + 8 * (w + 1) * sim_dim)


def block_sizes(model: MatchingModel, img: Embeddings, cap: Embeddings, max_memory_gb: float,
                n_img: int, n_cap: int) -> tuple[int, int]:
    """Largest ``(images, captions)`` block that fits ``max_memory_gb`` of working memory."""
    if max_memory_gb <= 0:
        raise ConfigError(f"--max-memory-gb must be positive, got {max_memory_gb}")
    budget = max_memory_gb * (1 << 30)
    pairs = max(1, int(budget // pair_bytes(model, img, cap)))
    # Favour wide caption blocks (one image-side chunk reused across many captions), but keep
    # a block roughly square when the budget is small so neither side degenerates to 1.
    cap_block = min(n_cap, pairs, max(1, math.isqrt(pairs) * 4))
    img_block = max(1, min(n_img, pairs // cap_block))
    if img_block == n_img:
        cap_block = min(n_cap, max(cap_block, pairs // max(1, n_img)))
    return img_block, cap_block


def _progress(enabled: bool, console: Console | None = None):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled,
                    console=console, transient=False)


@torch.no_grad()
def encode(model: MatchingModel, batches: Iterable[dict[str, Tensor]], side: str, *,
           device: torch.device | str = "cpu", buffer_dtype: torch.dtype = torch.float32,
           progress: bool = False, console: Console | None = None) -> EncodedChunks:
    """Encode every batch of one side (``"images"`` or ``"captions"``) into host buffers."""
    if side not in ("images", "captions"):
        raise ValueError(f"side must be 'images' or 'captions', got {side!r}")
    if buffer_dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ConfigError(f"buffer dtype must be float32, float16 or bfloat16, got {buffer_dtype}")
    fn = model.encode_images if side == "images" else model.encode_captions
    total = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
    chunks: list[Embeddings] = []
    with _progress(progress, console) as bar:
        task = bar.add_task(f"encode {side}", total=total)
        for batch in batches:
            batch = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in batch.items()}
            chunks.append(embeddings_to(fn(batch), "cpu", buffer_dtype))
            bar.advance(task)
    if not chunks:
        raise ConfigError(f"no {side} to encode (empty loader)")
    return EncodedChunks(chunks)


def _split(chunks: EncodedChunks, block: int) -> list[tuple[int, Embeddings]]:
    """(start, sub-chunk) pieces of at most ``block`` items, in order."""
    pieces: list[tuple[int, Embeddings]] = []
    for start, c in zip(chunks.offsets(), chunks.chunks):
        n = num_items(c)
        for s in range(0, n, block):
            pieces.append((start + s, index_embeddings(c, slice(s, min(n, s + block)))))
    return pieces


@torch.no_grad()
def score_encoded(model: MatchingModel, images: EncodedChunks, captions: EncodedChunks, *,
                  device: torch.device | str = "cpu", max_memory_gb: float = DEFAULT_MAX_MEMORY_GB,
                  out: np.ndarray | None = None, progress: bool = False,
                  console: Console | None = None) -> np.ndarray:
    """Score every image chunk against every caption chunk → float32 ``[n_images, n_captions]``."""
    n_img, n_cap = len(images), len(captions)
    if out is None:
        out = np.empty((n_img, n_cap), dtype=np.float32)
    elif out.shape != (n_img, n_cap):
        raise ConfigError(f"output buffer has shape {out.shape}, need {(n_img, n_cap)}")
    img_block, cap_block = block_sizes(model, images.chunks[0], captions.chunks[0],
                                       max_memory_gb, n_img, n_cap)
    img_pieces = _split(images, img_block)
    cap_pieces = _split(captions, cap_block)
    dtype = compute_dtype(model)  # float32 (float64 only for a float64-trained model)
    if torch.device(device).type != "cpu" and captions.nbytes() * 2 <= max_memory_gb * (1 << 30):
        # On an accelerator, upload the caption side once instead of once per image block
        # when the float32 copies fit in the memory budget.
        cap_pieces = [(c0, embeddings_to(cap, device, dtype)) for c0, cap in cap_pieces]
    with _progress(progress, console) as bar:
        task = bar.add_task("score pairs", total=n_img * n_cap)
        for i0, img in img_pieces:
            img_dev = embeddings_to(img, device, dtype)
            ni = num_items(img)
            for c0, cap in cap_pieces:
                nc = num_items(cap)
                sims = model.similarity(img_dev, embeddings_to(cap, device, dtype))
                out[i0:i0 + ni, c0:c0 + nc] = sims.float().cpu().numpy()
                bar.advance(task, ni * nc)
    return out


@torch.no_grad()
def score_matrix(model: MatchingModel, images: Iterable[dict[str, Tensor]],
                 captions: Iterable[dict[str, Tensor]], *, device: torch.device | str = "cpu",
                 max_memory_gb: float = DEFAULT_MAX_MEMORY_GB,
                 buffer_dtype: torch.dtype = torch.float32, out: np.ndarray | None = None,
                 progress: bool = False, console: Console | None = None) -> np.ndarray:
    """Encode both sides and score all pairs: float32 ``[n_images, n_captions]`` (rows = images).

    ``images`` / ``captions`` are iterables of collated batches (e.g. DataLoaders) in evaluation
    order. The model is put in eval mode for the duration (dropout off, BatchNorm running stats)
    and restored afterwards.
    """
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        img = encode(model, images, "images", device=device, buffer_dtype=buffer_dtype,
                     progress=progress, console=console)
        cap = encode(model, captions, "captions", device=device, buffer_dtype=buffer_dtype,
                     progress=progress, console=console)
        return score_encoded(model, img, cap, device=device, max_memory_gb=max_memory_gb,
                             out=out, progress=progress, console=console)
    finally:
        if was_training:
            model.train()


def ensemble(matrices: list[np.ndarray]) -> np.ndarray:
    """Equal-weight mean of similarity matrices (the SGRAF = (SGR + SAF) / 2 convention)."""
    if not matrices:
        raise ConfigError("ensemble needs at least one similarity matrix")
    shapes = {m.shape for m in matrices}
    if len(shapes) != 1:
        raise ConfigError(f"similarity matrices of an ensemble differ in shape: {sorted(shapes)}")
    acc = np.zeros(matrices[0].shape, dtype=np.float64)
    for m in matrices:
        acc += m
    return (acc / len(matrices)).astype(np.float32)
