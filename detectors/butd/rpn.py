"""Region proposal network on res4, test-time proposal selection as Caffe's proposal layer (docs/guide/detector.md).

Head: 3×3 conv 1024→512 (bias) + ReLU, then 1×1 convs for objectness and 4·A deltas. Objectness is
either one logit per anchor (sigmoid; detectron2 / airsplay / HF) or Caffe's 2·A channels with a
bg/fg softmax (MILVLG keeps them). The two are the same model: ``sigmoid(f - b) = softmax_fg``.

Selection per image: decode every anchor (legacy +1), clip to the resized image, drop boxes
smaller than ``min_size · scale``, sort by objectness, keep ``pre_nms_topk``, NMS with the +1 IoU,
keep ``post_nms_topk``; proposals stay in objectness order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from detectors.butd.anchors import FEAT_STRIDE, caffe_cell_anchors, grid_anchors
from detectors.butd.backbone import ValidMask
from detectors.butd.box_ops import clip_boxes, decode_legacy, min_size_keep, nms_legacy


@dataclass
class RPNSettings:
    """Test-time proposal settings (defaults: Caffe ``TEST.*`` of the BUTD models)."""

    pre_nms_topk: int = 6000
    post_nms_topk: int = 300
    nms_thresh: float = 0.7
    min_size: float = 16.0


class RPNHead(nn.Module):
    """Shared 3×3 conv + objectness and anchor-delta 1×1 convs (detectron2 names)."""

    def __init__(self, in_channels: int = 1024, hidden: int = 512, num_anchors: int = 12,
                 objectness: str = "sigmoid") -> None:
        super().__init__()
        if objectness not in ("sigmoid", "softmax"):
            raise ValueError(f"objectness must be 'sigmoid' or 'softmax', got {objectness!r}")
        self.objectness = objectness
        self.num_anchors = num_anchors
        self.conv = nn.Conv2d(in_channels, hidden, 3, padding=1)
        out = num_anchors if objectness == "sigmoid" else 2 * num_anchors
        self.objectness_logits = nn.Conv2d(hidden, out, 1)
        self.anchor_deltas = nn.Conv2d(hidden, 4 * num_anchors, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (fg probability ``[B, A, H, W]``, deltas ``[B, 4A, H, W]``)."""
        t = F.relu(self.conv(x))
        logits = self.objectness_logits(t).float()
        if self.objectness == "sigmoid":
            prob = torch.sigmoid(logits)
        else:
            # Caffe layout: channels 0..A-1 background, A..2A-1 foreground (proposal_layer.py)
            b, _, h, w = logits.shape
            prob = torch.softmax(logits.view(b, 2, self.num_anchors, h, w), dim=1)[:, 1]
        return prob, self.anchor_deltas(t).float()


class CellAnchors(nn.Module):
    """Holds the [A, 4] anchor table under the key ``cell_anchors.0`` (as detectron2 ≤ 0.4 / HF)."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.cell_anchors = nn.Module()
        self.cell_anchors.register_buffer("0", table.clone())

    @property
    def table(self) -> torch.Tensor:
        return getattr(self.cell_anchors, "0")


class RPN(nn.Module):
    """Head + anchors + Caffe test-time proposal selection."""

    def __init__(self, in_channels: int = 1024, hidden: int = 512, objectness: str = "sigmoid",
                 settings: RPNSettings | None = None) -> None:
        super().__init__()
        table = caffe_cell_anchors()
        self.rpn_head = RPNHead(in_channels, hidden, table.shape[0], objectness)
        self.anchor_generator = CellAnchors(table)
        self.settings = settings or RPNSettings()

    @torch.no_grad()
    def forward(self, features: torch.Tensor, mask: ValidMask,
                image_sizes: Sequence[tuple[int, int]], scales: Sequence[float],
                ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Proposals per image: (boxes ``[P, 4]`` in resized pixels, objectness ``[P]``)."""
        prob, deltas = self.rpn_head(features)
        a = self.rpn_head.num_anchors
        cells = self.anchor_generator.table.to(features.device)
        out = []
        for i, ((ih, iw), scale) in enumerate(zip(image_sizes, scales)):
            # only the cells a lone image of this size would have: the padded ones do not exist
            fh, fw = mask.sizes[i] if mask.sizes is not None else features.shape[-2:]
            p = prob[i, :, :fh, :fw].permute(1, 2, 0).reshape(-1)
            d = deltas[i, :, :fh, :fw].reshape(a, 4, fh, fw).permute(2, 3, 0, 1).reshape(-1, 4)
            anchors = grid_anchors(cells, fh, fw, FEAT_STRIDE)
            boxes = clip_boxes(decode_legacy(d, anchors), ih, iw)
            keep = min_size_keep(boxes, self.settings.min_size * scale)
            boxes, p = boxes[keep], p[keep]
            order = torch.sort(p, descending=True, stable=True).indices[: self.settings.pre_nms_topk]
            boxes, p = boxes[order], p[order]
            keep = nms_legacy(boxes, p, self.settings.nms_thresh)[: self.settings.post_nms_topk]
            out.append((boxes[keep], p[keep]))
        return out
