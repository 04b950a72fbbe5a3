"""One optimisation step: forward, VSE++ hinge loss, backward, clipping, Adam."""

from __future__ import annotations

import math

import torch
from torch import nn

from trainers.losses import contrastive_loss as hinge
from trainers.models.common import at_least_float32
from trainers.training.config import TrainConfig


def _to_device(batch: dict[str, torch.Tensor], device: torch.device,
               dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Move a batch to ``device``; with ``dtype``, floating tensors (features, geometry) are cast
    to it (ids, lengths and masks are not)."""
    return {k: v.to(device, dtype=dtype if v.is_floating_point() else None, non_blocking=True)
            for k, v in batch.items()}


def contrastive_loss(scores: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """VSE++ hinge on the ``[B,B]`` scores (image rows, caption columns), summed over the batch,
    in float32 (float64 when the scores are float64: a ``dtype: float64`` run)."""
    return hinge(at_least_float32(scores), margin=config.margin,
                 max_violation=config.max_violation)


def optimisation_step(model: nn.Module, optimizer: torch.optim.Optimizer,
                      scaler: torch.amp.GradScaler, images: dict[str, torch.Tensor],
                      captions: dict[str, torch.Tensor], config: TrainConfig, *, lr: float,
                      device: torch.device, amp_dtype: torch.dtype | None = None,
                      step: int = 0, dtype: torch.dtype | None = None) -> float:
    """Forward, VSE++ loss, backward, clip to ``config.grad_clip``, Adam step; returns the loss.

    Every parameter group runs at ``lr × group['lr_scale']``. ``amp_dtype`` (CUDA only) runs the
    forward pass under autocast; the loss is computed in at least float32. ``dtype`` (runs with
    ``dtype: float64``) casts the batches' floating tensors to the model's dtype; None leaves them
    as collated (float32 features).
    """
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    images, captions = _to_device(images, device, dtype), _to_device(captions, device, dtype)
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        scores = model(images, captions)
    loss = contrastive_loss(scores, config)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if config.grad_clip > 0:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    value = float(loss.detach())
    if not math.isfinite(value):
        raise FloatingPointError(f"training loss became {value} at step {step}; lower the "
                                 "learning rate or use amp: off")
    return value
