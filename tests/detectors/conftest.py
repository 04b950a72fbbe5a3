"""Detector fixtures: one random canonical BUTD model, saved in the three checkpoint layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests._support.butd_layouts import SMALL


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # the box is shared by several people: keep torch on one core per test process
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def random_detector():
    """A random canonical detector (seed 0) with the small test settings."""
    from detectors.butd import BUTDSettings, build_detector

    return build_detector(None, BUTDSettings(regions="10-100", **SMALL), random_init=True, seed=0)


@pytest.fixture(scope="session")
def canonical_state(random_detector) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in random_detector.model.state_dict().items()}


@pytest.fixture(scope="session")
def layout_files(canonical_state, tmp_path_factory) -> dict[str, Path]:
    """The random canonical model written in all three layouts."""
    from tests._support.butd_layouts import write_airsplay, write_hf, write_milvlg

    root = tmp_path_factory.mktemp("ckpt")
    return {"milvlg": write_milvlg(canonical_state, root / "bua-caffe-frcn-r101-k36.pth"),
            "airsplay": write_airsplay(canonical_state, root / "faster_rcnn_from_caffe_attr.pkl"),
            "hf": write_hf(canonical_state, root / "frcnn-vg-finetuned")}


@pytest.fixture(scope="session")
def small_photo(photo_dir) -> np.ndarray:
    from detectors.butd.preprocess import load_image

    return load_image(photo_dir / "astronaut.jpg")
