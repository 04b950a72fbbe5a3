"""The VSE++ hinge loss all three models train with (TERAN on its alignment-score matrix)."""

from __future__ import annotations

import torch
from torch import Tensor


def contrastive_loss(scores: Tensor, margin: float = 0.2, max_violation: bool = True) -> Tensor:
    """VSE++ hinge on a square ``[B, B]`` score matrix (rows images, columns captions), summed.

    ``cost_s[i, j] = [margin + s(i, j) - s(i, i)]_+`` (captions ranked for image i) and
    ``cost_im[i, j] = [margin + s(i, j) - s(j, j)]_+`` (images ranked for caption j), diagonals
    zeroed; with ``max_violation`` only the hardest negative per query counts. The sum (not the
    mean) over the batch is what TERN, TERAN and SGRAF minimise.
    """
    if scores.dim() != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"the loss needs a square [B, B] score matrix, got {tuple(scores.shape)}")
    diagonal = scores.diag().view(-1, 1)
    cost_s = (margin + scores - diagonal).clamp(min=0)
    cost_im = (margin + scores - diagonal.t()).clamp(min=0)
    eye = torch.eye(scores.shape[0], dtype=torch.bool, device=scores.device)
    cost_s = cost_s.masked_fill(eye, 0)
    cost_im = cost_im.masked_fill(eye, 0)
    if max_violation:
        cost_s = cost_s.max(dim=1).values
        cost_im = cost_im.max(dim=0).values
    return cost_s.sum() + cost_im.sum()


__all__ = ["contrastive_loss"]
