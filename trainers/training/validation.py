"""Scoring a model on an evaluation set during training (validation) and in tests."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from trainers.data import CaptionCollator, EvalSet, MatchingData, collate_images
from trainers.evaluation import CAPTIONS_PER_IMAGE, RetrievalMetrics, evaluate_sims
from trainers.models import Input
from trainers.scoring import score_matrix


@torch.no_grad()
def similarity_matrix(model: nn.Module, evalset: EvalSet, *, needs: frozenset[Input],
                      batch_size: int, device: torch.device, workers: int = 0) -> np.ndarray:
    """``[n_images, 5·n_images]`` scores of a model on an evaluation set (block scoring)."""
    gen = torch.Generator().manual_seed(0)
    images = DataLoader(evalset.images, batch_size=batch_size, shuffle=False,
                        collate_fn=collate_images, num_workers=workers, generator=gen)
    captions = DataLoader(evalset.captions, batch_size=batch_size, shuffle=False,
                          collate_fn=CaptionCollator(needs), num_workers=workers, generator=gen)
    return score_matrix(model, images, captions, device=device)


def evaluate_split(model: nn.Module, data: MatchingData, split: str = "test", *,
                   max_images: int | None = None, batch_size: int = 128,
                   device: torch.device | str = "cpu", evalset: EvalSet | None = None
                   ) -> RetrievalMetrics:
    """Recall metrics of ``model`` on ``split``.

    Images of the split with 5 captions and their first 5 captions (caption ``c`` ↔ image
    ``c // 5``), scored in blocks and ranked with the originals' semantics.
    """
    evalset = evalset or data.eval_set(split, max_images=max_images)
    sims = similarity_matrix(model, evalset, needs=data.needs, batch_size=batch_size,
                             device=torch.device(device))
    return evaluate_sims(sims, CAPTIONS_PER_IMAGE).metrics
