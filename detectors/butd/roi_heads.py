"""Box head: RoI max-pooling 14×14 on res4, res5 (stride 1, dilation 2), mean pool → 2048-d,
1601-way classifier, class-specific box deltas and the attribute head (docs/guide/detector.md).

Canonical class order is Caffe's: class 0 = background, attribute 0 = "no attribute"; box-delta
rows are raw (weights 1,1,1,1) for all 1601 classes. :mod:`detectors.butd.weights` converts the
other layouts into this one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import roi_pool

from detectors.butd.backbone import make_res5

NUM_CLASSES = 1601  # 1600 VG objects + background
NUM_ATTRIBUTES = 401  # 400 VG attributes + "no attribute"
POOLER_RESOLUTION = 14
SPATIAL_SCALE = 1.0 / 16


@dataclass
class RoIOutputs:
    """Per-RoI outputs of the box head (rows follow the concatenated proposals)."""

    features: torch.Tensor  # [R, 2048] float32
    cls_prob: torch.Tensor  # [R, 1601] softmax, background at 0
    box_deltas: torch.Tensor  # [R, 1601*4] raw deltas
    attr_prob: torch.Tensor  # [R, 401] softmax, "no attribute" at 0


class BoxPredictor(nn.Module):
    """Classifier, class-specific regression and attribute head on the pooled 2048-d feature."""

    def __init__(self, in_dim: int = 2048, num_classes: int = NUM_CLASSES,
                 num_attributes: int = NUM_ATTRIBUTES, embed_dim: int = 256,
                 attr_hidden: int = 512) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_dim, num_classes)
        self.bbox_pred = nn.Linear(in_dim, 4 * num_classes)
        self.cls_embedding = nn.Embedding(num_classes, embed_dim)
        self.fc_attr = nn.Linear(in_dim + embed_dim, attr_hidden)
        self.attr_score = nn.Linear(attr_hidden, num_attributes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.cls_score(x)
        deltas = self.bbox_pred(x)
        # Caffe: ArgMax over all 1601 scores (background included) feeds the class embedding
        predicted = logits.argmax(dim=1)
        h = torch.cat([x, self.cls_embedding(predicted).to(x.dtype)], dim=1)
        attr_logits = self.attr_score(F.relu(self.fc_attr(h)))
        return logits, deltas, attr_logits


class RoIHeads(nn.Module):
    """roi_pool → res5 → mean → :class:`BoxPredictor`."""

    def __init__(self, res5_dilation: int = 2) -> None:
        super().__init__()
        self.res5 = make_res5(res5_dilation)
        self.box_predictor = BoxPredictor()

    @torch.no_grad()
    def forward(self, features: torch.Tensor, proposals: list[torch.Tensor]) -> RoIOutputs:
        """Run the head on every image's proposals (resized pixel coordinates) in one batch."""
        return self.head(self.pool(features, proposals))

    @torch.no_grad()
    def pool(self, features: torch.Tensor, proposals: list[torch.Tensor]) -> torch.Tensor:
        """RoI max-pooling of every image's proposals → ``[R, 1024, 14, 14]`` float32."""
        rois = torch.cat([torch.cat([torch.full((len(b), 1), i, dtype=b.dtype, device=b.device), b],
                                    dim=1) for i, b in enumerate(proposals)])
        # RoIPool semantics = Caffe ROIPooling (round() of coordinates, +1 extents, max); not RoIAlign
        # fp32 pooling: exact max either way, and the CPU kernel has no bf16 version
        return roi_pool(features.float(), rois.float(), output_size=POOLER_RESOLUTION,
                        spatial_scale=SPATIAL_SCALE)

    @torch.no_grad()
    def head(self, pooled: torch.Tensor) -> RoIOutputs:
        """res5 → mean → predictor on pooled RoIs (rows of the result follow ``pooled``)."""
        x = self.res5(pooled).mean(dim=(2, 3))
        logits, deltas, attr_logits = self.box_predictor(x)
        return RoIOutputs(features=x.float(), cls_prob=torch.softmax(logits.float(), dim=1),
                          box_deltas=deltas.float(), attr_prob=torch.softmax(attr_logits.float(), dim=1))
