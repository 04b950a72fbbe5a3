"""Choose the regions to keep and turn them into store rows (docs/guide/detector.md).

``caffe`` selection reproduces ``generate_tsv.py``: for every one of the 1600 object classes, NMS
(IoU 0.3, +1 convention) on the *proposal* boxes ranked by that class's probability; a box's
``max_conf`` is its best probability over the classes whose NMS kept it; keep boxes with
``max_conf >= 0.2``, at least ``min_boxes`` and at most ``max_boxes``. When the threshold alone
gives between ``min_boxes`` and ``max_boxes`` boxes they stay in proposal (objectness) order;
otherwise the top ones by ``max_conf`` are taken in that order.

The NMS runs on the proposals in the *original* image's frame, as ``generate_tsv.py`` does
(``cls_boxes = rois[:, 1:5] / im_scales[0]`` before the class loop). The +1 IoU is not scale
invariant: the same two boxes overlap 0.2945 in resized pixels at scale 2 and 0.3057 in original
pixels, so the frame decides what the 0.3 threshold suppresses.

The per-class NMS runs for all classes at once: the IoU matrix is shared, and the greedy pass walks
the proposal ranks once over a ``[classes, proposals]`` state (no Python loop over classes; this
loop is what made the original CPU post-processing slow).

``maxnms`` is the airsplay / Hugging Face variant: per proposal the best foreground class and its
*regressed* box, one class-agnostic NMS tried at 0.3, 0.4, …, 0.9 until ``min_boxes`` survive,
top ``max_boxes``; features stay those of the proposals.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import nms

from detectors.butd.box_ops import decode_legacy, iou_legacy
from itmflow.errors import ConfigError
from detectors.butd.settings import SELECTIONS
from itmflow.regions import DetectedRegions, RegionPolicy


def _guaranteed_max_conf(overlaps: torch.Tensor, class_prob: torch.Tensor,
                         top_k: int = 8) -> torch.Tensor:
    """A lower bound of ``max_conf`` that needs no NMS.

    A box whose class-c probability is strictly higher than that of every box overlapping it is
    kept by class c's greedy NMS (only a higher-ranked overlapping box can suppress it). Checking
    each box's ``top_k`` classes is enough for a useful bound (any subset of classes gives a
    valid one).
    """
    neighbours = overlaps.clone()
    neighbours.fill_diagonal_(False)
    k = min(top_k, class_prob.shape[1])
    values, classes = class_prob.topk(k, dim=1)  # [N, k]
    others = class_prob.t()[classes]  # [N, k, N]: every box's probability of box n's top classes
    nb_max = torch.where(neighbours[:, None, :], others, class_prob.new_tensor(-1.0)).amax(dim=2)
    return torch.where(values > nb_max, values, 0.0).amax(dim=1)


def _greedy_nms_all_classes(overlaps: torch.Tensor, class_prob: torch.Tensor) -> torch.Tensor:
    """Exact greedy NMS of every column of ``class_prob`` at once → kept mask ``[N, C]``.

    Works in rank space: step ``r`` takes every class's rank-``r`` box and, where it is still
    alive, suppresses the lower-ranked boxes it overlaps. The loop runs over ranks, not classes.
    """
    n, c = class_prob.shape
    order = torch.sort(class_prob.t(), dim=1, descending=True, stable=True).indices  # [C, N]
    suppressed = torch.zeros(c, n, dtype=torch.bool, device=class_prob.device)  # rank space
    for r in range(n - 1):
        alive = ~suppressed[:, r]
        if not bool(alive.any()):
            continue
        later = overlaps[order[:, r]].gather(1, order[:, r + 1:])  # [C, N-r-1]
        suppressed[:, r + 1:] |= later & alive[:, None]
    kept = torch.zeros(c, n, dtype=torch.bool, device=class_prob.device)
    kept.scatter_(1, order, ~suppressed)
    return kept.t()


def per_class_nms_max_conf(boxes: torch.Tensor, class_prob: torch.Tensor,
                           threshold: float) -> torch.Tensor:
    """``max_conf[n]`` = max over classes c whose greedy NMS keeps box n of ``class_prob[n, c]``.

    ``boxes`` ``[N, 4]`` in the frame the NMS is defined in (for Caffe BUTD: original image
    pixels, see :func:`regions_for_image`), ``class_prob`` ``[N, C]`` (foreground classes only),
    +1 IoU. Exact and
    vectorised over classes. Classes that cannot raise any box above a bound it already has
    (see :func:`_guaranteed_max_conf`) are skipped: with a peaked softmax that is nearly all of
    the 1600, which is what makes this faster than one NMS call per class.
    """
    n = class_prob.shape[0]
    if n == 0:
        return class_prob.new_zeros(0)
    overlaps = iou_legacy(boxes, boxes) > threshold  # [N, N], shared by every class
    bound = _guaranteed_max_conf(overlaps, class_prob)
    matters = (class_prob > bound[:, None]).any(dim=0)
    if not bool(matters.any()):
        return bound
    prob = class_prob[:, matters]
    kept = _greedy_nms_all_classes(overlaps, prob)
    found = torch.where(kept, prob, torch.zeros_like(prob)).amax(dim=1)
    return torch.maximum(bound, found)


def select_caffe(max_conf: torch.Tensor, policy: RegionPolicy) -> torch.Tensor:
    """Indices of the kept regions with ``generate_tsv.py``'s threshold / clamp / ordering rule."""
    keep = torch.nonzero(max_conf >= policy.conf_thresh).flatten()
    if policy.min_regions <= len(keep) <= policy.max_regions:
        return keep  # proposal (objectness) order
    order = torch.sort(max_conf, descending=True, stable=True).indices
    limit = policy.min_regions if len(keep) < policy.min_regions else policy.max_regions
    return order[:limit]


def select_maxnms(proposals: torch.Tensor, cls_prob: torch.Tensor, box_deltas: torch.Tensor,
                  image_size: tuple[int, int], policy: RegionPolicy,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """airsplay / HF "maxnms": returns (kept indices, regressed boxes of all proposals)."""
    fg = cls_prob[:, 1:]
    scores, cls = fg.max(dim=1)
    deltas = box_deltas.view(len(proposals), -1, 4)[torch.arange(len(proposals)), cls + 1]
    boxes = decode_legacy(deltas, proposals)
    h, w = image_size
    # airsplay clips regressed boxes to [0, W] x [0, H] (detectron2 Boxes.clip)
    boxes = torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h),
                         boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)], dim=1)
    keep = torch.zeros(0, dtype=torch.long)
    for thresh in np.arange(0.3, 1.0, 0.1):
        keep = nms(boxes, scores, float(thresh))
        if len(keep) >= policy.min_regions:
            break
    return keep[: policy.max_regions], boxes


def geometry(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """TERN's 5-d box geometry: x1/W, y1/H, x2/W, y2/H, (x2-x1)(y2-y1)/(W·H)."""
    b = boxes.astype(np.float64)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) / (float(width) * float(height))
    return np.stack([b[:, 0] / width, b[:, 1] / height, b[:, 2] / width, b[:, 3] / height, area],
                    axis=1).astype(np.float32)


def regions_for_image(proposals: torch.Tensor, features: torch.Tensor, cls_prob: torch.Tensor,
                      box_deltas: torch.Tensor, attr_prob: torch.Tensor, *, scale: float,
                      resized_size: tuple[int, int], orig_size: tuple[int, int],
                      policy: RegionPolicy, selection: str = "caffe",
                      nms_thresh: float = 0.3) -> DetectedRegions:
    """Select one image's regions and build its region dict (store field names, numpy values).

    ``proposals`` are in resized pixels; boxes are returned in original pixels (divided by
    ``scale``). Object / attribute ids are 0-based into the VG vocabularies (background and
    "no attribute" excluded); their confidences are the 1601- / 401-way softmax values.
    ``nms_thresh`` is the per-class NMS IoU of the ``caffe`` selection.

    ``caffe``: the proposals are divided by ``scale`` *before* the per-class NMS, as in
    ``generate_tsv.py`` (float32 division, the same rounding as numpy's), and the kept boxes are
    those divided boxes; features stay the ones pooled from the resized-frame proposals.
    ``maxnms`` (airsplay / HF) runs its class-agnostic NMS without +1 in the resized frame, as
    the ports do (IoU without +1 does not depend on the frame).
    """
    if selection == "caffe":
        orig_boxes = proposals.float() / scale  # generate_tsv.py: rois[:, 1:5] / im_scales[0]
        max_conf = per_class_nms_max_conf(orig_boxes, cls_prob[:, 1:], nms_thresh)
        keep = select_caffe(max_conf, policy)
        kept = orig_boxes[keep]
    elif selection == "maxnms":
        keep, regressed = select_maxnms(proposals, cls_prob, box_deltas, resized_size, policy)
        kept = regressed[keep] / scale
    else:
        raise ConfigError(f"selection {selection!r} is not one of {SELECTIONS}")
    height, width = orig_size
    boxes = kept.cpu().numpy().astype(np.float32)
    obj_conf, obj_ids = cls_prob[keep, 1:].max(dim=1)
    attr_conf, attr_ids = attr_prob[keep, 1:].max(dim=1)
    return {
        "boxes": boxes,
        "geometry": geometry(boxes, width, height),
        "features": features[keep].cpu().numpy().astype(np.float32),
        "object_ids": obj_ids.cpu().numpy().astype(np.int16),
        "object_conf": obj_conf.cpu().numpy().astype(np.float32),
        "attr_ids": attr_ids.cpu().numpy().astype(np.int16),
        "attr_conf": attr_conf.cpu().numpy().astype(np.float32),
        "num_regions": int(len(keep)),
        "width": int(width),
        "height": int(height),
    }


__all__ = ["SELECTIONS", "geometry", "per_class_nms_max_conf",
           "regions_for_image", "select_caffe", "select_maxnms"]
