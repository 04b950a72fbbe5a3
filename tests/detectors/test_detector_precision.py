"""Precision modes of the BUTD detector: the TF32 switches, the experimental ``mixed`` plan keeping
fp32's regions, and
what a store manifest records (issue #17)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detectors.butd import BUTDSettings, build_detector
from detectors.butd.model import EXPERIMENTAL_PLANS, PLANS, fp32_math, tf32_enabled
from detectors.butd.preprocess import prepare
from detectors.butd.settings import PRECISIONS
from itmflow.errors import ConfigError
from tests._support.butd_layouts import SMALL


def test_every_precision_has_a_plan():
    assert set(PLANS) == set(PRECISIONS)
    assert {"fp32", "tf32", "bf16", "fp16"} <= set(PRECISIONS)
    for name in PRECISIONS:
        assert BUTDSettings(precision=name).validate().precision == name
    with pytest.raises(ConfigError, match="--precision 'tf16'"):
        BUTDSettings(precision="tf16").validate()
    assert not PLANS["fp32"].tf32 and PLANS["tf32"].tf32
    mixed = EXPERIMENTAL_PLANS["mixed"]
    assert mixed.backbone is None and mixed.refine and "mixed" not in PRECISIONS


@pytest.mark.parametrize("before", [(True, True), (False, False), (True, False)])
def test_fp32_math_scopes_tf32_and_restores(before):
    """The switches can be set and read without a GPU: fp32 turns both off, tf32 both on, and
    whatever the process had is back afterwards (also after an exception)."""
    with fp32_math(before[0]):  # a known starting state, restored at the end of the test
        matmul = torch.backends.cuda.matmul
        conv = getattr(torch.backends.cudnn, "conv", None)
        if conv is not None and hasattr(conv, "fp32_precision"):
            conv.fp32_precision = "tf32" if before[1] else "ieee"
        else:
            torch.backends.cudnn.allow_tf32 = before[1]
        assert tf32_enabled() == before
        with fp32_math(False):
            assert tf32_enabled() == (False, False)
            with fp32_math(True):
                assert tf32_enabled() == (True, True)
            assert tf32_enabled() == (False, False)
        assert tf32_enabled() == before
        with pytest.raises(RuntimeError), fp32_math(True):
            raise RuntimeError("boom")
        assert tf32_enabled() == before
        del matmul


def _recording(det):
    seen = []
    forward = det._forward

    def wrapped(*args):
        seen.append(tf32_enabled())
        return forward(*args)

    det._forward = wrapped
    return seen


@pytest.fixture(scope="module")
def tiny_prep(small_photo):
    return prepare(small_photo, min_size=SMALL["min_size"], max_size=SMALL["max_size"])


def test_detect_runs_fp32_without_tf32_and_tf32_on_request(random_detector, tiny_prep, monkeypatch):
    """PyTorch's default lets cuDNN run fp32 convolutions as TF32: the detector's fp32 turns that
    off while it runs (and restores the process's switches); ``tf32`` turns it on."""
    det = random_detector
    seen = _recording(det)
    try:
        with fp32_math(True):  # the process allows TF32 (cuDNN's default)
            det.detect([tiny_prep])
            assert tf32_enabled() == (True, True)
            monkeypatch.setattr(det, "plan", PLANS["tf32"])
            with fp32_math(False):
                det.detect([tiny_prep])
                assert tf32_enabled() == (False, False)
    finally:
        del det._forward
    assert seen == [(False, False), (True, True)]


def _peaked(det, scale: float = 2.0):
    """Sharper class probabilities, like a trained detector's (see benchmarks/bench_detector.py)."""
    pred = det.model.roi_heads.box_predictor
    with torch.no_grad():
        for layer in (pred.cls_score, pred.attr_score):
            layer.weight.mul_(scale)
            layer.bias.mul_(scale)
    return det


@pytest.fixture(scope="module")
def fp32_and_mixed():
    """fp32 and mixed detectors with the same (peaked) random weights, small settings."""
    settings = BUTDSettings(regions="10-100", **SMALL)
    ref = _peaked(build_detector(None, settings, random_init=True, seed=0))
    mixed = build_detector(None, settings, random_init=True, seed=0)
    mixed.model.load_state_dict(ref.model.state_dict())
    mixed.plan = EXPERIMENTAL_PLANS["mixed"]
    assert mixed.settings()["plan"] == "mixed" and mixed.settings()["mixed_refine"] == 1.5
    return ref, mixed


def _assert_same_regions(a, b):
    assert a["num_regions"] == b["num_regions"]
    np.testing.assert_array_equal(a["boxes"], b["boxes"])
    np.testing.assert_array_equal(a["object_ids"], b["object_ids"])
    np.testing.assert_array_equal(a["attr_ids"], b["attr_ids"])
    np.testing.assert_allclose(a["object_conf"], b["object_conf"], rtol=1e-4, atol=1e-6)
    rel = np.linalg.norm(a["features"] - b["features"]) / np.linalg.norm(a["features"])
    assert rel < 1e-4, rel


@pytest.mark.parametrize("refine_factor", [None, 0.01])
def test_mixed_keeps_the_fp32_regions(fp32_and_mixed, tiny_prep, monkeypatch, refine_factor):
    """mixed: fp32 proposals, bf16 ranking, fp32 kept rows. With ``refine_factor`` 0.01 only one
    candidate per image is recomputed up front: the loop must still end with every kept region
    recomputed in fp32 (features equal to fp32's, not bf16's)."""
    ref, mixed = fp32_and_mixed
    if refine_factor is not None:
        monkeypatch.setattr(mixed, "refine_factor", refine_factor)
    counts = []
    refine = mixed._refine
    monkeypatch.setattr(mixed, "_refine", lambda *a: counts.append(refine(*a)) or counts[-1])
    _assert_same_regions(ref.detect([tiny_prep])[0], mixed.detect([tiny_prep])[0])
    assert counts and counts[0] >= 1


def test_mixed_batches_and_maxnms(fp32_and_mixed, small_photo, tiny_prep, monkeypatch):
    """Per-image candidate rows in a batch of two sizes; the maxnms selection too."""
    ref, mixed = fp32_and_mixed
    other = prepare(np.ascontiguousarray(small_photo[:, ::-1][:300]), min_size=SMALL["min_size"],
                    max_size=SMALL["max_size"])
    monkeypatch.setattr(mixed, "refine_factor", 0.05)
    for a, b in zip(ref.detect([tiny_prep, other]), mixed.detect([tiny_prep, other])):
        _assert_same_regions(a, b)
    for det in (ref, mixed):
        monkeypatch.setattr(det, "config", BUTDSettings(regions="10-100", selection="maxnms", **SMALL))
    _assert_same_regions(ref.detect([tiny_prep])[0], mixed.detect([tiny_prep])[0])


def test_manifest_records_precision_and_device():
    """The store manifest's detector block carries the precision (a store never mixes two), and
    each part's ``workers`` entries the device that computed it."""
    from pipeline.extract.worker import DetectorWorker, detector_kwargs

    threads = torch.get_num_threads()
    try:
        worker = DetectorWorker(BUTDSettings(precision="tf32", **SMALL),
                                detector_kwargs(weights=None, random_init=True, seed=0, device="cpu",
                                                vocab=None), threads=1)
    finally:
        torch.set_num_threads(threads)
    described = worker.describe()
    assert described["settings"]["precision"] == "tf32"
    assert worker.shape()["device"] == "cpu"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_fp32_keeps_the_cpu_regions(tiny_prep):
    """On CUDA the detector's fp32 is fp32 (TF32 off): the CPU's regions, features within 1e-4."""
    ref = _peaked(build_detector(None, BUTDSettings(regions="10-100", **SMALL), random_init=True, seed=0))
    gpu = build_detector(None, BUTDSettings(regions="10-100", **SMALL), random_init=True, seed=0,
                         device="cuda")
    gpu.model.load_state_dict(ref.model.state_dict())
    seen = _recording(gpu)
    with fp32_math(True):
        got = gpu.detect([tiny_prep])[0]
    assert seen == [(False, False)]
    _assert_same_regions(ref.detect([tiny_prep])[0], got)
