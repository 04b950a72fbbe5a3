"""Decoding every image mode, EXIF orientation, the bomb limit, the Caffe resize rule, batching."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from detectors.butd.preprocess import (
    PIXEL_MEANS_BGR,
    batch_images,
    compute_scale,
    load_image,
    prepare,
)
from itmflow.errors import ImageDecodeError


def test_sample_photos_all_decode_to_rgb(photo_paths):
    modes = set()
    for path in photo_paths:
        with Image.open(path) as im:
            modes.add(im.mode)
        rgb = load_image(path)
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
        assert rgb.std() > 1  # a real photo, not a blank
    assert {"RGB", "L", "RGBA", "P"} <= modes and modes & {"I;16", "I"}


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_every_mode_becomes_rgb(small_photo):
    base = Image.fromarray(small_photo[:64, :96])
    grey = np.asarray(base.convert("L"))
    cases = {
        "L": _encode(base.convert("L"), "PNG"),
        "LA": _encode(base.convert("LA"), "PNG"),
        "P": _encode(base.convert("P"), "PNG"),
        "RGBA": _encode(base.convert("RGBA"), "PNG"),
        "CMYK": _encode(base.convert("CMYK"), "TIFF"),
        "1": _encode(base.convert("1"), "PNG"),
        "I;16": _encode(Image.fromarray(grey.astype(np.uint16) * 257), "PNG"),
        "I": _encode(Image.fromarray(grey.astype(np.int32) * 257, mode="I"), "TIFF"),
        "F": _encode(Image.fromarray(grey.astype(np.float32) / 255.0, mode="F"), "TIFF"),
    }
    for mode, data in cases.items():
        rgb = load_image(data)
        assert rgb.shape == (64, 96, 3) and rgb.dtype == np.uint8, mode
    # 16-bit and float greyscale keep their values (v·257 → v, v/255 → v)
    for mode in ("I;16", "I", "F", "L"):
        rgb = load_image(cases[mode])
        assert np.abs(rgb[:, :, 0].astype(int) - grey).max() <= 1, mode
        assert (rgb[:, :, 0] == rgb[:, :, 2]).all(), mode
    # alpha is dropped (as cv2.imread does), colour kept
    assert np.array_equal(load_image(cases["RGBA"]), small_photo[:64, :96])


def test_exif_orientation_applied(small_photo):
    image = Image.fromarray(small_photo[:40, :80])
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    rgb = load_image(_encode(image, "JPEG", exif=exif.tobytes()))
    assert rgb.shape[:2] == (80, 40)


def test_decompression_bomb_limit_kept(monkeypatch, photo_dir):
    assert Image.MAX_IMAGE_PIXELS is not None  # nobody switched the limit off
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageDecodeError, match="decompression-bomb") as info:
        load_image(photo_dir / "chelsea.jpg")
    assert "chelsea.jpg" in str(info.value)


def test_bad_files_name_the_file(tmp_path, photo_dir):
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes((photo_dir / "chelsea.jpg").read_bytes()[:2000])
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    for path in (truncated, not_image, tmp_path / "missing.jpg"):
        with pytest.raises(ImageDecodeError, match=path.name):
            load_image(path)


def test_caffe_scale_rule():
    assert compute_scale(480, 640) == pytest.approx(600 / 480)  # 800 ≤ 1000
    assert compute_scale(300, 1200) == pytest.approx(1000 / 1200)  # long side capped
    assert compute_scale(100, 100, 160, 240) == pytest.approx(1.6)


def _cv2_linear(img: np.ndarray, scale: float) -> np.ndarray:
    """OpenCV INTER_LINEAR with fx = fy = scale, written out (float input, no antialias)."""
    h, w = img.shape[:2]
    oh, ow = int(round(h * scale)), int(round(w * scale))

    def axis(n_out, n_in):
        src = (np.arange(n_out) + 0.5) / scale - 0.5
        src = np.clip(src, 0, None)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    y0, y1, fy = axis(oh, h)
    x0, x1, fx = axis(ow, w)
    top = img[y0][:, x0] * (1 - fx)[None, :, None] + img[y0][:, x1] * fx[None, :, None]
    bot = img[y1][:, x0] * (1 - fx)[None, :, None] + img[y1][:, x1] * fx[None, :, None]
    return top * (1 - fy)[:, None, None] + bot * fy[:, None, None]


def test_prepare_is_bgr_mean_subtracted_cv2_bilinear(small_photo):
    rgb = small_photo[:50, :70]
    prep = prepare(rgb, min_size=80, max_size=200)
    assert prep.scale == pytest.approx(1.6) and (prep.orig_height, prep.orig_width) == (50, 70)
    assert prep.tensor.dtype == torch.float32 and tuple(prep.tensor.shape) == (3, 80, 112)
    bgr = rgb[:, :, ::-1].astype(np.float64) - np.array(PIXEL_MEANS_BGR)
    ref = _cv2_linear(bgr, prep.scale).transpose(2, 0, 1)
    assert np.abs(prep.tensor.numpy() - ref).max() < 1e-3
    # picklable for Ray tasks
    again = pickle.loads(pickle.dumps(prep))
    assert torch.equal(again.tensor, prep.tensor) and again.scale == prep.scale


def test_batch_images_zero_pads_and_reports_sizes(small_photo):
    a = prepare(small_photo[:50, :70], min_size=80, max_size=200)
    b = prepare(small_photo[:90, :40], min_size=80, max_size=200)
    images, sizes = batch_images([a, b])
    assert sizes == [(80, 112), (180, 80)]
    assert tuple(images.shape) == (2, 3, 180, 112)
    assert torch.equal(images[0, :, :80, :112], a.tensor)
    assert images[0, :, 80:].abs().sum() == 0 and images[1, :, :, 80:].abs().sum() == 0


def test_extreme_aspect_ratio_is_a_clear_error():
    with pytest.raises(ImageDecodeError, match="aspect ratio"):
        prepare(np.zeros((3, 400, 3), np.uint8), min_size=16, max_size=40)
