"""Anchors, +1 box arithmetic, per-class NMS and region selection against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from detectors.butd.anchors import caffe_cell_anchors, grid_anchors
from detectors.butd.box_ops import clip_boxes, decode_legacy, iou_legacy, min_size_keep, nms_legacy
from detectors.butd.postprocess import (
    _greedy_nms_all_classes,
    geometry,
    per_class_nms_max_conf,
    select_caffe,
    select_maxnms,
)
from itmflow.errors import ConfigError
from itmflow.regions import RegionPolicy

# spec §2.2, ratio-major: r=0.5, r=1, r=2; scales 4, 8, 16, 32
SPEC_ANCHORS = [
    [-38, -16, 53, 31], [-84, -40, 99, 55], [-176, -88, 191, 103], [-360, -184, 375, 199],
    [-24, -24, 39, 39], [-56, -56, 71, 71], [-120, -120, 135, 135], [-248, -248, 263, 263],
    [-14, -36, 29, 51], [-36, -80, 51, 95], [-80, -168, 95, 183], [-168, -344, 183, 359],
]


def test_caffe_anchor_table_matches_spec():
    table = caffe_cell_anchors()
    assert table.shape == (12, 4)
    assert table.tolist() == [[float(v) for v in row] for row in SPEC_ANCHORS]
    w = table[:, 2] - table[:, 0] + 1
    h = table[:, 3] - table[:, 1] + 1
    assert w[:4].tolist() == [92, 184, 368, 736] and h[:4].tolist() == [48, 96, 192, 384]


def test_grid_anchor_order_is_h_w_a():
    table = caffe_cell_anchors()
    grid = grid_anchors(table, height=2, width=3)
    assert grid.shape == (2 * 3 * 12, 4)
    # index (h·W + w)·A + a, shifted by (w·16, h·16)
    h, w, a = 1, 2, 5
    expect = table[a] + torch.tensor([w * 16, h * 16, w * 16, h * 16], dtype=torch.float32)
    assert torch.equal(grid[(h * 3 + w) * 12 + a], expect)


def test_legacy_decode_hand_cases():
    box = torch.tensor([[0.0, 0.0, 9.0, 19.0]])  # w = 10, h = 20, centre (5, 10)
    out = decode_legacy(torch.zeros(1, 4), box)
    assert out.tolist() == [[0.0, 0.0, 10.0, 20.0]]  # no −1 on x2': the Caffe formula
    d = torch.tensor([[0.1, -0.2, math.log(2.0), 0.0]])
    # cx' = 0.1·10 + 5 = 6, w' = 20 → x1' = −4, x2' = 16; cy' = −0.2·20 + 10 = 6, h' = 20
    assert torch.allclose(decode_legacy(d, box), torch.tensor([[-4.0, -4.0, 16.0, 16.0]]))
    # class-specific: two classes, second one scaled by the weights (dx/10 = 0.1)
    d2 = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0, -2.0, 5 * math.log(2.0), 0.0]])
    out = decode_legacy(d2, box, weights=(10.0, 10.0, 5.0, 5.0))
    assert torch.allclose(out[:, 4:], torch.tensor([[-4.0, -4.0, 16.0, 16.0]]))
    # dw / dh clamp at log(1000/16): exp(100) would overflow
    big = decode_legacy(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), box)
    assert torch.isfinite(big).all() and float(big[0, 2] - big[0, 0]) == pytest.approx(10 * 1000 / 16, rel=1e-5)


def test_legacy_iou_and_nms_hand_cases():
    a = torch.tensor([[0.0, 0.0, 9.0, 9.0]])  # 10×10 = 100 legacy area
    b = torch.tensor([[5.0, 5.0, 14.0, 14.0]])  # overlap 5×5 = 25
    assert float(iou_legacy(a, b)) == pytest.approx(25 / 175)
    # identical single-pixel boxes: legacy area 1, IoU 1 (the plain convention gives 0/0)
    p = torch.tensor([[3.0, 3.0, 3.0, 3.0]])
    assert float(iou_legacy(p, p)) == pytest.approx(1.0)
    # legacy IoU 70/130 = 0.54 vs plain IoU 54/108 = 0.5: at 0.5 only the +1 convention suppresses
    c = torch.tensor([[0.0, 0.0, 9.0, 9.0], [0.0, 3.0, 9.0, 12.0]])  # overlap 10×7 = 70 of 130
    assert float(iou_legacy(c[:1], c[1:])) == pytest.approx(70 / 130)
    keep = nms_legacy(c, torch.tensor([0.9, 0.8]), 0.5)
    assert keep.tolist() == [0]
    keep = nms_legacy(c, torch.tensor([0.7, 0.8]), 0.6)
    assert keep.tolist() == [1, 0]


def test_clip_and_min_size():
    boxes = torch.tensor([[-5.0, -1.0, 700.0, 50.0], [10.0, 10.0, 24.0, 40.0]])
    clipped = clip_boxes(boxes, height=480, width=640)
    assert clipped[0].tolist() == [0.0, 0.0, 639.0, 50.0]
    # second box: 15 px wide (legacy), kept at 15, dropped at 16
    assert min_size_keep(clipped, 15).tolist() == [0, 1]
    assert min_size_keep(clipped, 16).tolist() == [0]


def _reference_max_conf(boxes, prob, thresh):
    """generate_tsv.py's loop over classes, one torchvision NMS each (the slow original)."""
    max_conf = torch.zeros(len(boxes))
    for c in range(prob.shape[1]):
        keep = nms_legacy(boxes, prob[:, c], thresh)
        max_conf[keep] = torch.maximum(max_conf[keep], prob[keep, c])
    return max_conf


@pytest.mark.parametrize("sharpness", [0.2, 3.0, 12.0])
def test_vectorised_per_class_nms_equals_loop(sharpness):
    gen = torch.Generator().manual_seed(3)
    xy = torch.rand(40, 2, generator=gen) * 100
    wh = torch.rand(40, 2, generator=gen) * 60 + 5
    boxes = torch.cat([xy, xy + wh], dim=1)
    prob = torch.softmax(torch.randn(40, 31, generator=gen) * sharpness, dim=1)
    got = per_class_nms_max_conf(boxes, prob, 0.3)
    ref = _reference_max_conf(boxes, prob, 0.3)
    assert torch.equal(got, ref)
    # overlap actually suppresses something (else the test would be vacuous)
    assert (got < prob.max(dim=1).values).any()


def test_all_class_greedy_nms_keeps_what_torchvision_keeps():
    gen = torch.Generator().manual_seed(5)
    xy = torch.rand(30, 2, generator=gen) * 80
    boxes = torch.cat([xy, xy + torch.rand(30, 2, generator=gen) * 50 + 5], dim=1)
    prob = torch.rand(30, 12, generator=gen)
    kept = _greedy_nms_all_classes(iou_legacy(boxes, boxes) > 0.3, prob)
    for c in range(12):
        ref = set(nms_legacy(boxes, prob[:, c], 0.3).tolist())
        assert set(torch.nonzero(kept[:, c]).flatten().tolist()) == ref


def test_select_caffe_order_rule():
    policy = RegionPolicy.adaptive(2, 3, conf_thresh=0.2)
    # within [min, max]: proposal order kept
    assert select_caffe(torch.tensor([0.3, 0.1, 0.9, 0.05]), policy).tolist() == [0, 2]
    # too few: top-min by confidence, sorted
    assert select_caffe(torch.tensor([0.1, 0.15, 0.9, 0.05]), policy).tolist() == [2, 1]
    # too many: top-max by confidence, sorted
    assert select_caffe(torch.tensor([0.3, 0.4, 0.9, 0.5, 0.25]), policy).tolist() == [2, 3, 1]


def test_region_policy_parse():
    assert RegionPolicy.parse("36").to_manifest() == {"kind": "fixed", "k": 36}
    assert RegionPolicy.parse("10-100").to_manifest() == {"kind": "adaptive", "min": 10, "max": 100,
                                                          "conf": 0.2}
    for bad in ("abc", "0", "50-10"):
        with pytest.raises(ConfigError, match="regions"):
            RegionPolicy.parse(bad)


def test_maxnms_uses_regressed_box_of_best_class():
    proposals = torch.tensor([[0.0, 0.0, 9.0, 9.0], [0.0, 0.0, 9.0, 9.0], [50.0, 50.0, 69.0, 69.0]])
    prob = torch.tensor([[0.1, 0.6, 0.3], [0.2, 0.3, 0.5], [0.3, 0.3, 0.4]])  # bg first
    deltas = torch.zeros(3, 12)
    deltas[0, 4:8] = torch.tensor([0.1, 0.0, 0.0, 0.0])  # class 1 of proposal 0: shift by 1 px
    keep, boxes = select_maxnms(proposals, prob, deltas, (100, 100), RegionPolicy.adaptive(1, 2))
    assert boxes[0].tolist() == pytest.approx([1.0, 0.0, 11.0, 10.0])
    # proposals 0 and 1 overlap heavily: 1 is suppressed, top-2 are 0 (0.6) and 2 (0.4)
    assert keep.tolist() == [0, 2]


def test_geometry_formula():
    boxes = np.array([[10.0, 20.0, 110.0, 70.0]], dtype=np.float32)
    g = geometry(boxes, width=200, height=100)
    assert g.dtype == np.float32
    assert g[0].tolist() == pytest.approx([0.05, 0.2, 0.55, 0.7, 100 * 50 / (200 * 100)])


def test_softmax_objectness_equals_sigmoid_of_fg_minus_bg():
    from detectors.butd.rpn import RPNHead

    gen = torch.Generator().manual_seed(7)
    soft = RPNHead(in_channels=8, hidden=6, objectness="softmax")
    sig = RPNHead(in_channels=8, hidden=6, objectness="sigmoid")
    with torch.no_grad():
        for p in soft.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
        sig.conv.load_state_dict(soft.conv.state_dict())
        sig.anchor_deltas.load_state_dict(soft.anchor_deltas.state_dict())
        w, b = soft.objectness_logits.weight, soft.objectness_logits.bias
        sig.objectness_logits.weight.copy_(w[12:] - w[:12])  # Caffe: 0..11 bg, 12..23 fg
        sig.objectness_logits.bias.copy_(b[12:] - b[:12])
    x = torch.randn(2, 8, 5, 7, generator=gen)
    p_soft, d_soft = soft(x)
    p_sig, d_sig = sig(x)
    assert p_soft.shape == (2, 12, 5, 7)
    torch.testing.assert_close(p_soft, p_sig, rtol=1e-5, atol=1e-6)
    assert torch.equal(d_soft, d_sig)
