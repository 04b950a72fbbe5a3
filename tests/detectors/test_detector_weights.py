"""The three checkpoint layouts load to the same model; strict key checks; the safe unpickler."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from tests._support.butd_layouts import SMALL, to_d2, write_hf, write_milvlg
from detectors.butd import BUTDSettings, build_detector, load_butd_weights
from detectors.butd.postprocess import regions_for_image
from detectors.butd.preprocess import batch_images, prepare
from itmflow.errors import CheckpointLayoutError, UnsafeCheckpointError
from itmflow.files import sha256_file


def _forward_regions(det, rgb):
    """One forward pass, regions under both selections (Caffe proposal boxes, maxnms regressed)."""
    prep = det.preprocessing(rgb)
    images, sizes = batch_images([prep])
    proposals, outs = det.model(images, sizes, [prep.scale])
    regions = {}
    for selection in ("caffe", "maxnms"):
        regions[selection] = regions_for_image(
            proposals[0], outs.features, outs.cls_prob, outs.box_deltas, outs.attr_prob,
            scale=prep.scale, resized_size=sizes[0], orig_size=(prep.orig_height, prep.orig_width),
            policy=det.policy, selection=selection, nms_thresh=det.config.class_nms_thresh)
    return regions


@pytest.mark.slow
def test_three_layouts_give_the_same_regions(random_detector, layout_files, small_photo, vg_vocab_dir):
    reference = _forward_regions(random_detector, small_photo)
    assert reference["caffe"]["num_regions"] >= 10
    for layout, path in layout_files.items():
        det = build_detector(str(path), BUTDSettings(regions="10-100", **SMALL), vocab_dir=vg_vocab_dir)
        assert det.weights_layout == layout
        got = _forward_regions(det, small_photo)
        for selection, ref in reference.items():
            reg = got[selection]
            assert reg["num_regions"] == ref["num_regions"], (layout, selection)
            # class roll: object / attribute ids identical (a roll the wrong way shifts them by 1)
            assert np.array_equal(reg["object_ids"], ref["object_ids"]), (layout, selection)
            assert np.array_equal(reg["attr_ids"], ref["attr_ids"]), (layout, selection)
            np.testing.assert_allclose(reg["object_conf"], ref["object_conf"], rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(reg["attr_conf"], ref["attr_conf"], rtol=1e-4, atol=1e-6)
            # 24→12 objectness: same proposals; box rows (6404 vs 6400×(10,10,5,5)): same
            # regressed boxes under maxnms
            np.testing.assert_allclose(reg["boxes"], ref["boxes"], rtol=1e-4, atol=1e-3)
            np.testing.assert_allclose(reg["features"], ref["features"], rtol=1e-4, atol=1e-4)
        assert det.vocab is not None and det.label(5, 7) == f"{det.vocab.attributes[7]} {det.vocab.objects[5]}"


def test_loader_reports_layout_sha_and_anchor_presence(layout_files, canonical_state):
    for layout, path in layout_files.items():
        loaded = load_butd_weights(path, canonical_state)
        assert loaded.layout == layout
        file = path / "pytorch_model.bin" if path.is_dir() else path
        assert loaded.sha256 == sha256_file(file)
        assert loaded.has_anchors == (layout != "airsplay")
        # bg-first after loading the bg-last layouts; bg box rows zero (never used)
        if layout != "milvlg":
            assert loaded.box_weights == (10.0, 10.0, 5.0, 5.0)
            assert loaded.state_dict["roi_heads.box_predictor.bbox_pred.weight"][:4].abs().sum() == 0
        assert torch.equal(loaded.state_dict["roi_heads.box_predictor.cls_score.weight"],
                           canonical_state["roi_heads.box_predictor.cls_score.weight"])


def test_strict_loading_names_bad_keys(canonical_state, tmp_path):
    broken = dict(canonical_state)
    broken.pop("backbone.res4.7.conv2.weight")
    broken["roi_heads.res5.0.conv9.weight"] = torch.zeros(1)
    path = write_milvlg(broken, tmp_path / "broken.pth")
    with pytest.raises(CheckpointLayoutError) as info:
        load_butd_weights(path, canonical_state)
    msg = str(info.value)
    assert "backbone.res4.7.conv2.weight" in msg and "roi_heads.res5.0.conv9.weight" in msg
    assert "broken.pth" in msg and "milvlg" in msg


def test_shape_mismatch_named(canonical_state, tmp_path):
    wrong = dict(canonical_state)
    wrong["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(1231, 2048)
    path = write_milvlg(wrong, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointLayoutError, match=r"cls_score.weight: checkpoint \(1231, 2048\)"):
        load_butd_weights(path, canonical_state)


def test_unknown_layout_and_missing_hf_config(canonical_state, tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(CheckpointLayoutError, match="unknown checkpoint layout"):
        load_butd_weights(path, canonical_state)
    hf = write_hf(canonical_state, tmp_path / "hf")
    (hf / "config.yaml").unlink()
    with pytest.raises(CheckpointLayoutError, match="config.yaml"):
        load_butd_weights(hf, canonical_state)


def test_hf_config_res5halve_refused(canonical_state, tmp_path):
    hf = write_hf(canonical_state, tmp_path / "hf")
    (hf / "config.yaml").write_text("MODEL:\n  ROI_BOX_HEAD:\n    RES5HALVE: true\n")
    with pytest.raises(CheckpointLayoutError, match="RES5HALVE"):
        load_butd_weights(hf, canonical_state)


def test_hf_config_box_weights_honoured(canonical_state, tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    d2 = to_d2(canonical_state)
    d2["roi_heads.box_predictor.bbox_pred.weight"] /= torch.tensor([10.0, 10.0, 5.0, 5.0]).repeat(1600)[:, None]
    d2["roi_heads.box_predictor.bbox_pred.bias"] /= torch.tensor([10.0, 10.0, 5.0, 5.0]).repeat(1600)
    torch.save(d2, hf / "pytorch_model.bin")
    (hf / "config.yaml").write_text("model:\n  roi_box_head:\n    bbox_reg_weights: [1, 1, 1, 1]\n")
    loaded = load_butd_weights(hf, canonical_state)
    assert loaded.box_weights == (1.0, 1.0, 1.0, 1.0)
    torch.testing.assert_close(loaded.state_dict["roi_heads.box_predictor.bbox_pred.weight"][4:],
                               canonical_state["roi_heads.box_predictor.bbox_pred.weight"][4:])


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/itmflow-pwned-by-pickle",))


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = "/tmp/itmflow-pwned-by-pickle"
    if os.path.exists(marker):
        os.remove(marker)
    path = tmp_path / "faster_rcnn_from_caffe_attr.pkl"
    with open(path, "wb") as handle:
        pickle.dump({"model": {"backbone.stem.conv1.weight": np.zeros(3)}, "x": _Evil()}, handle)
    with pytest.raises(UnsafeCheckpointError, match="system"):
        load_butd_weights(path)
    assert not os.path.exists(marker)


def test_torch_load_is_weights_only(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"a": torch.zeros(1)}, "x": _Evil()}, path)
    with pytest.raises(CheckpointLayoutError, match="weights_only"):
        load_butd_weights(path)


def test_checkpoint_anchor_table_used_verbatim(canonical_state, tmp_path):
    from tests._support.butd_layouts import ANCHORS

    from detectors.butd import BUTDModel

    state = dict(canonical_state)
    state[ANCHORS] = torch.arange(48, dtype=torch.float32).view(12, 4) - 20  # any table
    loaded = load_butd_weights(write_milvlg(state, tmp_path / "anchors.pth"), canonical_state)
    model = BUTDModel()
    model.load_state_dict(loaded.state_dict)
    assert torch.equal(model.proposal_generator.anchor_generator.table, state[ANCHORS])
