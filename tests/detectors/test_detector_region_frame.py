"""Caffe region selection runs in the original image's frame, as ``generate_tsv.py`` does.

``generate_tsv.py`` divides the proposals by the image scale (``cls_boxes = rois[:, 1:5] /
im_scales[0]``) before its per-class NMS. The legacy +1 IoU is not scale invariant, so running
the NMS on resized-pixel boxes keeps different regions. These tests compare
:func:`regions_for_image` with a plain, loop-based transcription of the original rule.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detectors.butd.box_ops import iou_legacy
from detectors.butd.postprocess import RegionPolicy, regions_for_image

# Found by a brute-force search over integer boxes: in original pixels these two overlap 0.3057
# (+1 IoU); at scale 2 (resized pixels = 2 x original) the same pair overlaps 0.2945.
ORIG_A = [0.0, 0.0, 12.0, 45.0]
ORIG_B = [5.0, 11.0, 17.0, 56.0]
SCALE = 2.0


def _regions(proposals, cls_prob, scale, policy, features=None):
    n = len(proposals)
    if features is None:
        features = torch.arange(n * 8, dtype=torch.float32).view(n, 8)
    attr_prob = torch.softmax(torch.linspace(0, 1, n * 5).view(n, 5), dim=1)
    deltas = torch.zeros(n, 4 * cls_prob.shape[1])
    return regions_for_image(proposals, features, cls_prob, deltas, attr_prob, scale=scale,
                             resized_size=(400, 400), orig_size=(200, 200), policy=policy,
                             selection="caffe")


def test_two_boxes_whose_overlap_crosses_the_threshold_between_frames():
    resized = torch.tensor([ORIG_A, ORIG_B]) * SCALE
    orig = torch.tensor([ORIG_A, ORIG_B])
    assert float(iou_legacy(resized[:1], resized[1:])) == pytest.approx(0.2945, abs=5e-5)
    assert float(iou_legacy(orig[:1], orig[1:])) == pytest.approx(0.3057, abs=5e-5)
    # columns: background, class 1, class 2. Box A outranks B in both classes; B's only
    # confident class is 1, where A suppresses it if (and only if) they overlap more than 0.3.
    cls_prob = torch.tensor([[0.10, 0.60, 0.30],
                             [0.35, 0.50, 0.15]])
    features = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    got = _regions(resized, cls_prob, SCALE, RegionPolicy.adaptive(1, 100), features)
    # generate_tsv.py: NMS in original pixels (0.3057 > 0.3) suppresses B in both classes, so
    # B's max_conf is 0 < 0.2 and only A is kept
    assert got["num_regions"] == 1
    np.testing.assert_array_equal(got["boxes"], np.array([ORIG_A], dtype=np.float32))
    np.testing.assert_array_equal(got["features"], np.array([[1.0, 2.0]], dtype=np.float32))
    assert got["object_ids"].tolist() == [0]


# ---- a plain transcription of the original (generate_tsv.py + cpu_nms.pyx), numpy and loops ----

def cpu_nms(dets: np.ndarray, thresh: float) -> list[int]:
    """``lib/nms/cpu_nms.pyx``: greedy NMS, +1 areas, float32 arithmetic, suppress ``ovr >= thresh``."""
    x1, y1, x2, y2, scores = (dets[:, k] for k in range(5))
    areas = (x2 - x1 + np.float32(1)) * (y2 - y1 + np.float32(1))
    order = scores.argsort()[::-1]
    suppressed = [False] * len(dets)
    keep = []
    for _i in range(len(dets)):
        i = order[_i]
        if suppressed[i]:
            continue
        keep.append(int(i))
        for _j in range(_i + 1, len(dets)):
            j = order[_j]
            if suppressed[j]:
                continue
            xx1 = max(x1[i], x1[j])
            yy1 = max(y1[i], y1[j])
            xx2 = min(x2[i], x2[j])
            yy2 = min(y2[i], y2[j])
            w = max(np.float32(0), xx2 - xx1 + np.float32(1))
            h = max(np.float32(0), yy2 - yy1 + np.float32(1))
            inter = w * h
            ovr = inter / (areas[i] + areas[j] - inter)
            if ovr >= thresh:
                suppressed[j] = True
    return keep


def original_selection(rois: np.ndarray, cls_prob: np.ndarray, im_scale: float, min_boxes: int,
                       max_boxes: int, conf_thresh: float = 0.2, nms_thresh: float = 0.3,
                       ) -> tuple[np.ndarray, np.ndarray]:
    """``generate_tsv.py:get_detections_from_im`` after the forward pass → (keep, kept boxes)."""
    cls_boxes = rois / im_scale  # rois[:, 1:5] / im_scales[0]  (float32)
    max_conf = np.zeros(rois.shape[0])
    for cls_ind in range(1, cls_prob.shape[1]):
        cls_scores = cls_prob[:, cls_ind]
        dets = np.hstack((cls_boxes, cls_scores[:, np.newaxis])).astype(np.float32)
        keep = np.array(cpu_nms(dets, nms_thresh))
        max_conf[keep] = np.where(cls_scores[keep] > max_conf[keep], cls_scores[keep], max_conf[keep])
    keep_boxes = np.where(max_conf >= conf_thresh)[0]
    # the original sorts with argsort()[::-1] (tie order unspecified; ties only happen between
    # boxes no class kept, max_conf 0); a stable descending order is used here
    by_conf = np.argsort(-max_conf, kind="stable")
    if len(keep_boxes) < min_boxes:
        keep_boxes = by_conf[:min_boxes]
    elif len(keep_boxes) > max_boxes:
        keep_boxes = by_conf[:max_boxes]
    return keep_boxes, cls_boxes[keep_boxes]


def _random_case(seed: int, scale: float, n: int = 100, classes: int = 10):
    rng = np.random.default_rng(seed)
    # crowded proposals in resized pixels (float32), 16-60 original pixels wide and high (the RPN
    # drops boxes under 16 * scale resized pixels), clipped to the image; peaked class
    # probabilities with background first
    size = 120.0 * scale
    xy = rng.random((n, 2)) * size
    wh = (rng.random((n, 2)) * 44.0 + 16.0) * scale
    rois = np.concatenate([xy, np.minimum(xy + wh, size + 20.0 * scale)], axis=1).astype(np.float32)
    logits = rng.normal(size=(n, classes + 1)) * 2.0
    logits[:, 0] += 1.0
    prob = np.exp(logits - logits.max(axis=1, keepdims=True))
    prob = (prob / prob.sum(axis=1, keepdims=True)).astype(np.float32)
    return rois, prob


SCALES = (0.6, 1000 / 1333, 1.25, 600 / 333, 2.0, 3.0)


@pytest.mark.parametrize("regions", ["10-100", "36"])
def test_selection_equals_the_original_loop_over_random_proposals(regions):
    policy = RegionPolicy.parse(regions)
    frame_matters = 0
    for scale in SCALES:
        for seed in range(8):
            rois, prob = _random_case(seed, scale)
            keep, boxes = original_selection(rois, prob, scale, policy.min_regions, policy.max_regions)
            features = torch.from_numpy(np.random.default_rng(100 + seed).random((len(rois), 8),
                                                                                 dtype=np.float32))
            got = _regions(torch.from_numpy(rois), torch.from_numpy(prob), scale, policy, features)
            assert got["num_regions"] == len(keep), (scale, seed)
            np.testing.assert_array_equal(got["boxes"], boxes, err_msg=f"scale {scale} seed {seed}")
            np.testing.assert_array_equal(got["features"], features.numpy()[keep])
            np.testing.assert_array_equal(got["object_ids"], prob[keep, 1:].argmax(axis=1))
            np.testing.assert_array_equal(got["object_conf"], prob[keep, 1:].max(axis=1))
            # the same rule applied to the resized-pixel boxes (what the frame bug did)
            resized_keep, _ = original_selection(rois, prob, 1.0, policy.min_regions, policy.max_regions)
            frame_matters += not np.array_equal(resized_keep, keep)
    # the cases are not vacuous: in several of them the frame changes which regions are kept
    assert frame_matters >= 5, frame_matters
