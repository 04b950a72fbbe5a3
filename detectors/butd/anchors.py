"""RPN anchors: the Caffe ``generate_anchors`` table (ratio-major order) and its shifts (docs/guide/detector.md).

The Caffe RPN was trained with 12 anchors per cell, 3 ratios × 4 scales of a 16-px base box, in
*ratio-major* order (index = ratio_idx·4 + scale_idx), with the legacy "+1" widths and integer
rounding. detectron2's generator makes size-major, centred, unrounded anchors instead, which would
silently pair every RPN output channel with the wrong anchor. A checkpoint that stores
``cell_anchors.0`` has its table used verbatim (see :mod:`detectors.butd.weights`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

CAFFE_RATIOS = (0.5, 1.0, 2.0)
CAFFE_SCALES = (4, 8, 16, 32)
FEAT_STRIDE = 16


def caffe_cell_anchors(base_size: int = 16, ratios: Sequence[float] = CAFFE_RATIOS,
                       scales: Sequence[float] = CAFFE_SCALES) -> torch.Tensor:
    """The anchors of the cell at (0, 0) as ``float32[len(ratios)·len(scales), 4]`` (x1,y1,x2,y2).

    Reproduces ``lib/rpn/generate_anchors.py``: numpy's round-half-to-even included.
    """
    base = np.array([0, 0, base_size - 1, base_size - 1], dtype=np.float64)
    w = base[2] - base[0] + 1
    h = base[3] - base[1] + 1
    cx = base[0] + 0.5 * (w - 1)
    cy = base[1] + 0.5 * (h - 1)
    out = []
    for ratio in ratios:
        rw = np.round(np.sqrt(w * h / ratio))
        rh = np.round(rw * ratio)
        for scale in scales:
            sw, sh = rw * scale, rh * scale
            out.append([cx - 0.5 * (sw - 1), cy - 0.5 * (sh - 1),
                        cx + 0.5 * (sw - 1), cy + 0.5 * (sh - 1)])
    return torch.tensor(out, dtype=torch.float32)


def grid_anchors(cell_anchors: torch.Tensor, height: int, width: int,
                 stride: int = FEAT_STRIDE) -> torch.Tensor:
    """All anchors of a ``height``×``width`` feature map, flat in (H, W, A) order.

    Index ``(h·W + w)·A + a`` — the order Caffe's proposal layer uses after transposing the RPN
    outputs to (H, W, A).
    """
    device = cell_anchors.device
    ys = torch.arange(height, device=device, dtype=torch.float32) * stride
    xs = torch.arange(width, device=device, dtype=torch.float32) * stride
    sy, sx = torch.meshgrid(ys, xs, indexing="ij")
    shifts = torch.stack([sx, sy, sx, sy], dim=-1).reshape(-1, 1, 4)
    return (shifts + cell_anchors.reshape(1, -1, 4).to(torch.float32)).reshape(-1, 4)
