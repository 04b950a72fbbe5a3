"""A hub id / catalog name from a pre-filled Hugging Face cache with HF_HUB_OFFLINE=1: the cache
layout is built by hand, the checkpoint is random-valued in the real HF layout, and
`itmflow detect --weights frcnn-vg-finetuned IMAGE` runs end to end without any network."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tests._support.butd_layouts import SMALL, write_hf

REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory) -> Path:
    """HF_HUB_CACHE with models--unc-nlp--frcnn-vg-finetuned/{refs/main, snapshots/<rev>/...}."""
    from detectors.butd import BUTDSettings, build_detector

    torch.set_num_threads(1)
    det = build_detector(None, BUTDSettings(regions="10-100", **SMALL), random_init=True, seed=0)
    state = {k: v.detach().clone() for k, v in det.model.state_dict().items()}
    root = tmp_path_factory.mktemp("hf-hub")
    repo = root / "models--unc-nlp--frcnn-vg-finetuned"
    write_hf(state, repo / "snapshots" / REVISION)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)
    return root


@pytest.fixture
def offline_hub(hub_cache, monkeypatch, tmp_path) -> Path:
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("ITMFLOW_CACHE", str(tmp_path / "itmflow-cache"))
    # any attempt to reach the network fails loudly
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    return hub_cache / "models--unc-nlp--frcnn-vg-finetuned" / "snapshots" / REVISION


def test_name_and_hub_id_resolve_from_the_offline_cache(offline_hub):
    from itmflow import weights as W

    assert W.resolve("frcnn-vg-finetuned") == offline_hub
    assert W.resolve("unc-nlp/frcnn-vg-finetuned") == offline_hub
    assert W.download("frcnn-vg-finetuned") == offline_hub
    assert W.cached_path(W.CATALOG["frcnn-vg-finetuned"]) == offline_hub
    res = CliRunner().invoke(_app(), ["weights", "list"])
    assert res.exit_code == 0 and "cached" in res.output


def test_offline_and_not_cached_fails_in_one_line(offline_hub, monkeypatch, tmp_path):
    from itmflow import weights as W

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(W.DownloadError) as info:
        W.resolve("frcnn-vg-finetuned")
    assert "HF_HUB_OFFLINE" in str(info.value) and "\n" not in str(info.value)


def test_extract_preflight_accepts_the_name(offline_hub):
    from pipeline.extract.preflight import check_weights

    assert check_weights("frcnn-vg-finetuned") == "airsplay"  # detectron2 key names


def _app():
    from pipeline.cli import app

    return app


@pytest.mark.slow
def test_detect_with_a_catalog_name_loads_from_the_offline_cache(offline_hub, photo_dir, tmp_path):
    image = photo_dir / "astronaut.jpg"
    out = tmp_path / "regions"
    res = CliRunner().invoke(_app(), [
        "detect", "--weights", "frcnn-vg-finetuned", str(image), "--regions", "10-100",
        "--selection", "maxnms", "--min-size", str(SMALL["min_size"]),
        "--max-size", str(SMALL["max_size"]), "--proposals", str(SMALL["post_nms_topk"]),
        "--out", str(out)])
    assert res.exit_code == 0, (res.output, res.exception)
    # the title names the weights directory (the cached snapshot) and its layout
    assert REVISION in res.output and "(hf, sha256" in res.output
    from itmflow.files import sha256_file

    digest = sha256_file(offline_hub / "pytorch_model.bin")
    assert digest[:4] in res.output
    assert (out / "astronaut.npz").is_file()
