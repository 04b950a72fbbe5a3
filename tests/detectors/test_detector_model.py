"""Network shapes, batch = single-image results, region dicts, vocabulary, backends, the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests._support.butd_layouts import SMALL
from detectors.base import REGION_KEYS, Detector, VGVocab
from detectors.butd import BUTDSettings, build_detector
from detectors.butd.backbone import ResNetC4, conv_out_size
from detectors.butd.preprocess import load_image, prepare
from itmflow.errors import ConfigError, InputFileError


def _res4_size(n: int) -> int:
    n = conv_out_size(n, 7, 2, 3)
    n = conv_out_size(n, 3, 2, 0, ceil_mode=True)
    return conv_out_size(conv_out_size(n, 1, 2, 0), 1, 2, 0)


def test_spatial_sizes_follow_caffe():
    # spec §2.4: 600×1000 → pool1 150×250 → res4 38×63
    assert conv_out_size(conv_out_size(600, 7, 2, 3), 3, 2, 0, ceil_mode=True) == 150
    assert (_res4_size(600), _res4_size(1000)) == (38, 63)
    backbone = ResNetC4(depth_res4=1).eval()  # same strides, a fraction of the cost
    with torch.no_grad():
        out, _ = backbone(torch.zeros(1, 3, 97, 131))
    assert tuple(out.shape) == (1, 1024, _res4_size(97), _res4_size(131))


def test_protocol_and_settings(random_detector):
    assert isinstance(random_detector, Detector)
    s = random_detector.settings()
    assert s["region_policy"] == {"kind": "adaptive", "min": 10, "max": 100, "conf": 0.2}
    assert s["post_nms_topk"] == SMALL["post_nms_topk"] and s["random_init"] is True
    assert random_detector.weights_file is None


@pytest.mark.slow
def test_batch_equals_single_images(random_detector, photo_dir):
    # different sizes and aspect ratios so padding really happens (and one image is greyscale)
    photos = [load_image(photo_dir / n) for n in ("chelsea.jpg", "camera.png")]
    preps = [prepare(p, min_size=SMALL["min_size"], max_size=SMALL["max_size"]) for p in photos]
    assert len({tuple(p.tensor.shape) for p in preps}) == 2
    batch = random_detector.detect(preps)
    for prep, got in zip(preps, batch):
        alone = random_detector.detect([prep])[0]
        assert set(got) == set(REGION_KEYS)
        assert got["num_regions"] == alone["num_regions"]
        assert np.array_equal(got["object_ids"], alone["object_ids"])
        np.testing.assert_allclose(got["boxes"], alone["boxes"], rtol=1e-4, atol=0.05)
        rel = np.abs(got["features"] - alone["features"]).max() / np.abs(alone["features"]).max()
        assert rel < 1e-3


def test_region_dict_fields(random_detector, small_photo):
    prep = prepare(small_photo, min_size=SMALL["min_size"], max_size=SMALL["max_size"])
    r = random_detector.detect([prep])[0]
    k = r["num_regions"]
    assert 10 <= k <= SMALL["post_nms_topk"]
    assert (r["width"], r["height"]) == (small_photo.shape[1], small_photo.shape[0])
    assert r["boxes"].shape == (k, 4) and r["boxes"].dtype == np.float32
    assert r["features"].shape == (k, 2048) and r["features"].dtype == np.float32
    assert r["geometry"].shape == (k, 5) and r["object_ids"].dtype == np.int16
    assert r["attr_ids"].dtype == np.int16 and r["object_conf"].dtype == np.float32
    assert (r["object_ids"] >= 0).all() and (r["object_ids"] < 1600).all()
    assert (r["attr_ids"] >= 0).all() and (r["attr_ids"] < 400).all()
    assert ((r["object_conf"] > 0) & (r["object_conf"] <= 1)).all()
    # Caffe clips proposals to W'−1 in the resized image, then divides by the scale
    assert (r["boxes"][:, 2] <= (round(r["width"] * prep.scale) - 1) / prep.scale + 1e-3).all()
    assert (r["boxes"] >= 0).all() and (r["boxes"][:, 2] > r["boxes"][:, 0]).all()
    np.testing.assert_allclose(r["geometry"][:, 2], r["boxes"][:, 2] / r["width"], rtol=1e-6)
    assert np.isfinite(r["features"]).all() and r["features"].std() > 0


@pytest.mark.slow
def test_bf16_autocast_runs_close(small_photo):
    small = dict(SMALL, post_nms_topk=6)  # bf16 matmuls are emulated on CPUs without AVX512-BF16
    det = build_detector(None, BUTDSettings(regions="4", precision="bf16", **small), random_init=True, seed=0)
    assert det.settings()["precision"] == "bf16"
    prep = prepare(small_photo, min_size=SMALL["min_size"], max_size=SMALL["max_size"])
    r = det.detect([prep])[0]
    assert r["features"].dtype == np.float32 and np.isfinite(r["features"]).all()
    assert r["num_regions"] == 4


def test_build_errors():
    with pytest.raises(ConfigError, match="exactly one"):
        build_detector(None)
    with pytest.raises(ConfigError, match="precision"):
        build_detector(None, BUTDSettings(precision="int4"), random_init=True)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            build_detector(None, random_init=True, device="cuda")
    with pytest.raises(InputFileError, match="not found"):
        build_detector("/nonexistent/weights.pth")


def test_vg_vocab(vg_vocab_dir, tmp_path):
    vocab = VGVocab.load(vg_vocab_dir)
    assert len(vocab.objects) == 1600 and len(vocab.attributes) == 400
    raw = (vg_vocab_dir / "objects_vocab.txt").read_text(encoding="utf-8").splitlines()
    synonym = next(i for i, line in enumerate(raw) if "," in line)
    assert vocab.objects[synonym] == raw[synonym].split(",")[0].lower().strip()
    assert len(set(vocab.objects)) == 1600
    # the MILVLG copies use CRLF: same names
    for name in ("objects_vocab.txt", "attributes_vocab.txt"):
        text = (vg_vocab_dir / name).read_text(encoding="utf-8")
        (tmp_path / name).write_bytes(text.replace("\n", "\r\n").encode("utf-8"))
    assert VGVocab.load(tmp_path).objects == vocab.objects
    with pytest.raises(InputFileError, match="objects_vocab.txt"):
        VGVocab.load(tmp_path / "nowhere")


def test_detectron2_backend_clear_error(tmp_path):
    from detectors.detectron2_backend import Detectron2Detector

    try:
        import detectron2  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="detectron2"):
            Detectron2Detector(tmp_path / "cfg.yaml", tmp_path / "w.pth")
    else:  # pragma: no cover - only where detectron2 is installed
        pytest.skip("detectron2 is installed here; the missing-backend error cannot be shown")


@pytest.mark.slow
def test_cli_detect_random_init(photo_dir, tmp_path, vg_vocab_dir):
    from pipeline.cli import app

    out, vis = tmp_path / "npz", tmp_path / "png"
    args = ["detect", str(photo_dir / "chelsea.jpg"), str(photo_dir / "coins.png"),
            "--random-init", "--regions", "10-100", "--labels", str(vg_vocab_dir),
            "--min-size", "160", "--max-size", "240", "--proposals", "12",
            "--out", str(out), "--visualize", str(vis)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "RANDOM WEIGHTS" in result.output and "--random-init" in result.output
    assert "chelsea.jpg" in result.output and "coins.png" in result.output
    from PIL import Image

    for stem in ("chelsea", "coins"):
        data = np.load(out / f"{stem}.npz")
        assert set(data.files) == set(REGION_KEYS)
        assert data["features"].shape == (int(data["num_regions"]), 2048)
        with Image.open(vis / f"{stem}.png") as png:
            # the picture, below the red "random weights" banner (itmflow.marks.stamp_image)
            w, h = int(data["width"]), int(data["height"])
            assert png.format == "PNG" and png.size == (w, h + max(20, h // 18))


def test_cli_detect_errors(photo_dir, tmp_path):
    from pipeline.cli import app

    result = CliRunner().invoke(app, ["detect", str(photo_dir / "chelsea.jpg")])
    assert isinstance(result.exception, ConfigError) and "--random-init" in str(result.exception)
    bad = tmp_path / "broken.jpg"
    bad.write_text("not an image")
    result = CliRunner().invoke(app, ["detect", str(bad), "--random-init", "--min-size", "160",
                                      "--max-size", "240", "--proposals", "12"])
    assert result.exception is not None and "broken.jpg" in str(result.exception)
    assert "RANDOM WEIGHTS" in result.output


def test_shipped_vg_vocab_is_the_default():
    """The 1600/400 label lists ship inside the package; with no --vocab, names are shown."""
    from pathlib import Path

    import detectors
    from detectors.base import SHIPPED_VOCAB_DIR

    vocab = VGVocab.shipped()
    assert len(vocab.objects) == 1600 and len(vocab.attributes) == 400
    assert vocab.objects[:2] == ("yolk", "goal") and vocab.attributes[0] == "gray"
    assert SHIPPED_VOCAB_DIR.is_relative_to(Path(detectors.__file__).parent)
    det = build_detector(None, BUTDSettings(regions="36"), random_init=True)
    assert det.vocab == vocab and det.label(0, 0) == "gray yolk"
