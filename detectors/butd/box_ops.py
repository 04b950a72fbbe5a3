"""Box operations with the legacy "+1" pixel convention of py-faster-rcnn (docs/guide/detector.md).

Caffe measured a box [x1, x2] as ``x2 - x1 + 1`` pixels wide. The weights were trained that way, so
decoding and IoU keep the convention: IoU uses torchvision's kernels on boxes shifted by
``[0, 0, 1, 1]``, which reproduces the legacy areas and intersections exactly.
"""

from __future__ import annotations

import math

import torch
from torchvision.ops import box_iou, nms

#: MILVLG's clamp on dw/dh before exp (Caffe had none; it only guards overflow).
SCALE_CLAMP = math.log(1000.0 / 16)


def _plus_one(boxes: torch.Tensor) -> torch.Tensor:
    return boxes + boxes.new_tensor([0.0, 0.0, 1.0, 1.0])


def decode_legacy(deltas: torch.Tensor, boxes: torch.Tensor,
                  weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
                  scale_clamp: float = SCALE_CLAMP) -> torch.Tensor:
    """Apply ``deltas`` (``[N, 4k]``: dx, dy, dw, dh per class) to ``boxes`` (``[N, 4]``).

    ``w = x2 - x1 + 1``, ``cx = x1 + 0.5·w``; ``x1' = cx' - 0.5·w'``, ``x2' = cx' + 0.5·w'`` (no −1
    on x2', exactly as ``bbox_transform_inv``). Returns ``[N, 4k]``.
    """
    boxes = boxes.to(deltas.dtype)
    widths = boxes[:, 2] - boxes[:, 0] + 1.0
    heights = boxes[:, 3] - boxes[:, 1] + 1.0
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx = deltas[:, 0::4] / wx
    dy = deltas[:, 1::4] / wy
    dw = (deltas[:, 2::4] / ww).clamp(max=scale_clamp)
    dh = (deltas[:, 3::4] / wh).clamp(max=scale_clamp)
    pcx = dx * widths[:, None] + ctr_x[:, None]
    pcy = dy * heights[:, None] + ctr_y[:, None]
    pw = torch.exp(dw) * widths[:, None]
    ph = torch.exp(dh) * heights[:, None]
    out = torch.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], dim=2)
    return out.reshape(deltas.shape)


def clip_boxes(boxes: torch.Tensor, height: int | float, width: int | float) -> torch.Tensor:
    """Clip ``[N, 4k]`` boxes to ``[0, width-1] × [0, height-1]`` (Caffe's image extent)."""
    out = boxes.clone()
    out[:, 0::2] = out[:, 0::2].clamp(0, width - 1)
    out[:, 1::2] = out[:, 1::2].clamp(0, height - 1)
    return out


def min_size_keep(boxes: torch.Tensor, min_size: float) -> torch.Tensor:
    """Indices of boxes at least ``min_size`` wide and high (legacy widths, ``>=`` keeps)."""
    ws = boxes[:, 2] - boxes[:, 0] + 1
    hs = boxes[:, 3] - boxes[:, 1] + 1
    return torch.nonzero((ws >= min_size) & (hs >= min_size)).flatten()


def iou_legacy(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU ``[N, M]`` with +1 areas and intersections."""
    return box_iou(_plus_one(a.float()), _plus_one(b.float()))


def nms_legacy(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy NMS with the +1 IoU (Caffe ``cpu_nms``), kept indices sorted by score."""
    return nms(_plus_one(boxes.float()), scores.float(), threshold)
