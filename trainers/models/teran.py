"""TERAN (Messina et al., TOMM 2021): TERN's encoders scored by a region-word alignment.

Every output token and region is l2-normalised. The alignment drops the I-CLS and, on the text
side, keeps the original positions ``1 .. L-3`` only ([CLS], the last word piece — usually the
full stop — and [SEP] are excluded, as ``s_seq[:, 1:-2]`` with ``s_len - 3`` does in the authors'
loss). ``A[r, w]`` = cosine(region r, word w); aggregations:

- ``MrSw``: max over regions, sum over words (the paper's default);
- ``MwSr``: max over words, sum over regions;
- ``symm``: the sum of both.

Maxima are taken over *valid* entries only. The authors fill masked entries with 0 before the max,
which makes a score depend on how much padding its batch happened to have; with a fixed 36 regions
and MrSw (the released models) both definitions coincide. Their evaluation pads every caption to
88 tokens, so their MwSr per-region maximum is in effect ``max(0, max_w A)``;
``mwsr_zero_floor`` reproduces that (set when an authors' TERAN checkpoint is loaded).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from trainers.models.common import scoring_without_grad
from trainers.models.spec import ModelSpec
from trainers.models.tern import TernConfig, TransformerEncoders

Aggregation = Literal["MrSw", "MwSr", "symm"]


@dataclass
class TeranConfig(TernConfig):
    """TERAN sizes; defaults are ``configs/teran_coco_MrSw.yaml``."""

    shared_transformer: bool = False
    aggregation: Aggregation = "MrSw"
    mwsr_zero_floor: bool = False
    """Floor MwSr's per-region max over words at 0, as the authors' padded evaluation does."""


def _masked_max(x: Tensor, valid: Tensor, dim: int) -> Tensor:
    """Max over ``dim`` of the valid entries; 0 where no entry is valid."""
    filled = x.masked_fill(~valid, float("-inf"))
    out = filled.amax(dim=dim)
    return torch.where(valid.any(dim=dim), out, out.new_zeros(()))


def alignment_scores(regions: Tensor, region_mask: Tensor, words: Tensor, word_mask: Tensor,
                     aggregation: Aggregation = "MrSw", mwsr_zero_floor: bool = False) -> Tensor:
    """Vectorised TERAN score of every image against every caption → ``[n_img, n_cap]``.

    ``regions [Ni, R, E]`` / ``words [Nc, W, E]`` are unit vectors, masks are boolean. Memory is
    ``Ni·Nc·R·W`` floats; callers bound it by the block size.
    """
    a = torch.einsum("ire,cwe->icrw", regions, words.to(regions))
    valid = region_mask[:, None, :, None] & word_mask[None, :, None, :]
    if aggregation not in ("MrSw", "MwSr", "symm"):
        raise ValueError(f"unknown TERAN aggregation {aggregation!r}")
    score = a.new_zeros(a.shape[:2])
    if aggregation in ("MrSw", "symm"):
        per_word = _masked_max(a, valid, dim=2)                   # [Ni, Nc, W]
        score = score + per_word.masked_fill(~word_mask[None], 0).sum(dim=2)
    if aggregation in ("MwSr", "symm"):
        per_region = _masked_max(a, valid, dim=3)                 # [Ni, Nc, R]
        if mwsr_zero_floor:
            per_region = per_region.clamp(min=0)
        score = score + per_region.masked_fill(~region_mask[:, None], 0).sum(dim=2)
    return score


def mrsw_scores_packed(regions: Tensor, region_mask: Tensor, words: Tensor, word_mask: Tensor) -> Tensor:
    """MrSw of every image against every caption with the valid words packed: ``[n_img, n_cap]``.

    The same score as :func:`alignment_scores` (``MrSw``), for evaluation: the valid words of all
    captions form one ``[T, E]`` matrix, so no padded word is multiplied or reduced (COCO captions
    in a loader chunk are padded to their longest), and the per-caption sums are one ``index_add``
    (on a GPU its atomic adds may order a sum differently from run to run: ~1e-7).
    """
    n_img, n_reg, dim = regions.shape
    n_cap = words.shape[0]
    flat = words.to(regions)[word_mask]                                 # [T, E]
    owner = torch.nonzero(word_mask)[:, 0]                              # caption of each word
    a = (regions.reshape(n_img * n_reg, dim) @ flat.t()).view(n_img, n_reg, -1)
    if not bool(region_mask.all()):
        a = a.masked_fill(~region_mask[:, :, None], float("-inf"))
    per_word = a.amax(dim=1)                                            # [Ni, T]
    if not bool(region_mask.any(dim=1).all()):                          # an image with no region
        per_word = torch.where(region_mask.any(dim=1, keepdim=True), per_word, per_word.new_zeros(()))
    return per_word.new_zeros(n_img, n_cap).index_add_(1, owner, per_word)


class TERAN(TransformerEncoders):
    """TERAN; embeddings are dicts of per-token unit vectors with masks (plus the global CLS)."""

    kind = "teran"
    config: TeranConfig

    def __init__(self, config: TeranConfig | None = None):
        super().__init__(config or TeranConfig())

    def encode_images(self, images: dict[str, Tensor]) -> dict[str, Tensor]:
        """``regions [B, K, E]`` (I-CLS dropped), ``region_mask [B, K]``, ``global [B, E]``."""
        tokens, valid = self.image_tokens(images)
        tokens = F.normalize(tokens, p=2, dim=2)
        return {"regions": tokens[:, 1:], "region_mask": valid[:, 1:], "global": tokens[:, 0]}

    def encode_captions(self, captions: dict[str, Tensor]) -> dict[str, Tensor]:
        """``words [B, W, E]`` = original positions 1..L-3, ``word_mask [B, W]``, ``global``."""
        tokens, valid = self.caption_tokens(captions)
        tokens = F.normalize(tokens, p=2, dim=2)
        lengths = valid.sum(dim=1)
        n_words = (lengths - 3).clamp(min=0)
        width = max(int(n_words.max().item()) if n_words.numel() else 0, 1)
        words = tokens[:, 1:1 + width]
        if words.shape[1] < width:  # captions of fewer than 4 tokens only
            words = torch.cat([words, words.new_zeros(words.shape[0], width - words.shape[1],
                                                      words.shape[2])], dim=1)
        word_mask = torch.arange(width, device=tokens.device)[None] < n_words[:, None]
        return {"words": words, "word_mask": word_mask, "global": tokens[:, 0]}

    def similarity(self, img_emb: dict[str, Tensor], cap_emb: dict[str, Tensor]) -> Tensor:
        """Alignment scores ``[n_img, n_cap]``; MrSw in eval mode without autograd packs the valid
        words (:func:`mrsw_scores_packed`, the same numbers without the padding's arithmetic)."""
        if self.config.aggregation == "MrSw" and scoring_without_grad(self):
            return mrsw_scores_packed(img_emb["regions"], img_emb["region_mask"], cap_emb["words"],
                                      cap_emb["word_mask"])
        return self.reference_similarity(img_emb, cap_emb)

    def reference_similarity(self, img_emb: dict[str, Tensor], cap_emb: dict[str, Tensor]) -> Tensor:
        """:meth:`similarity` through the padded, masked computation in every mode (training)."""
        return alignment_scores(img_emb["regions"], img_emb["region_mask"], cap_emb["words"],
                                cap_emb["word_mask"], self.config.aggregation,
                                self.config.mwsr_zero_floor)

    def global_embeddings(self, emb: dict[str, Tensor]) -> Tensor:
        """The l2-normalised I-CLS / T-CLS vectors (unused by the alignment, handy for search)."""
        return emb["global"]


def _preset(dataset: str) -> dict[str, Any]:
    # teran_{coco,f30k}_MrSw.yaml: lr 1e-5, bs 40 (F30K 30), StepLR 20, warm-up none (COCO) /
    # linear 1000 (F30K), 30 epochs; val_step copied from TERN (500).
    f30k = dataset == "f30k"
    return dict(batch_size=30 if f30k else 40, epochs=30, lr=1e-5, lr_step_epochs=20,
                warmup_iters=1000 if f30k else 0, val_every=500)


SPECS = (ModelSpec(name="teran", kind=TERAN.kind, config_class=TeranConfig, model_class=TERAN,
                   needs=frozenset({"bert", "geometry"}), global_vectors=True, preset=_preset),)


__all__ = ["SPECS", "TERAN", "TeranConfig", "alignment_scores", "mrsw_scores_packed"]
