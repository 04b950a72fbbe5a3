"""Decode images with Pillow and prepare them as the Caffe test tool did (docs/guide/detector.md).

Decoding: EXIF orientation applied; greyscale, palette, alpha, CMYK, 16-bit and 32-bit integer
images all become 8-bit RGB (alpha is dropped, as ``cv2.imread`` does). Pillow's
decompression-bomb limit stays in force and is reported as :class:`ImageDecodeError`.

Preparation: RGB → BGR float, subtract the Caffe pixel means, scale so the short side is
``min_size`` unless the long side would exceed ``max_size`` (then the long side is ``max_size``),
bilinear without antialiasing, with OpenCV's ``fx = fy = s`` sampling grid.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from detectors.base import PreparedImage
from itmflow.errors import ImageDecodeError

#: Caffe BGR pixel means of the BUTD models (``cfg.PIXEL_MEANS``).
PIXEL_MEANS_BGR = (102.9801, 115.9465, 122.7717)
MIN_RESIZED_SIDE = 8

__all__ = ["PIXEL_MEANS_BGR", "PreparedImage", "Preprocessing", "batch_images", "compute_scale",
           "load_image", "prepare", "to_rgb"]


def to_rgb(image: Image.Image) -> np.ndarray:
    """Any Pillow image as ``uint8 [H, W, 3]`` RGB."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit (and 32-bit integer, as Pillow opens 16-bit PNGs on some versions) greyscale:
        # map the 16-bit range onto 8 bits like an 8-bit export would (v / 257)
        arr = np.asarray(image, dtype=np.float64)
        grey = np.clip(np.round(arr / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        if arr.size and np.nanmax(arr) <= 1.0:  # float images usually hold [0, 1]
            arr = arr * 255.0
        grey = np.clip(np.round(np.nan_to_num(arr)), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode in ("RGB;16", "RGB;16B", "RGBA;16B"):  # rare raw 16-bit colour modes
        image = image.convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # Pillow's advice for palette + transparency
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def load_image(source: str | os.PathLike[str] | bytes) -> np.ndarray:
    """Decode a file path or encoded bytes into ``uint8 [H, W, 3]`` RGB (EXIF orientation applied).

    Raises :class:`ImageDecodeError` naming the file for missing, truncated or non-image files and
    for images over Pillow's decompression-bomb limit.
    """
    name = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
    try:
        with warnings.catch_warnings():
            # Pillow warns between 1× and 2× its pixel limit; treat that as the error it is at 2×
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else Path(source).open("rb")
            with handle, Image.open(handle) as image:
                image.load()
                image = ImageOps.exif_transpose(image)
                return to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(
            f"{name}: image is larger than Pillow's decompression-bomb limit "
            f"({Image.MAX_IMAGE_PIXELS} pixels): {exc}; downscale it or check where it came from"
        ) from None
    except FileNotFoundError:
        raise ImageDecodeError(f"{name}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"{name}: cannot decode the image ({exc}); the file is truncated "
                               "or not an image: re-download or remove it") from None


def compute_scale(height: int, width: int, min_size: int = 600, max_size: int = 1000) -> float:
    """Caffe's rule: short side → ``min_size`` unless ``round(s·long) > max_size``."""
    short, long = min(height, width), max(height, width)
    scale = float(min_size) / float(short)
    if np.round(scale * long) > max_size:
        scale = float(max_size) / float(long)
    return scale


def prepare(rgb: np.ndarray, *, min_size: int = 600, max_size: int = 1000) -> PreparedImage:
    """BGR, Caffe-mean subtracted, resized float32 ``C×H×W`` tensor plus the scale (CPU only)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"prepare() needs uint8 [H, W, 3] RGB, got {rgb.dtype} {rgb.shape}")
    h, w = rgb.shape[:2]
    scale = compute_scale(h, w, min_size, max_size)
    out_h, out_w = int(round(h * scale)), int(round(w * scale))  # cv2 dsize for fx = fy = s
    if min(out_h, out_w) < MIN_RESIZED_SIDE:
        # the stem's 3×3 max-pool needs a few rows; Caffe would crash here too
        raise ImageDecodeError(
            f"image {w}×{h} becomes {out_w}×{out_h} after resizing (short side {min_size}, long "
            f"side ≤ {max_size}); the detector needs ≥ {MIN_RESIZED_SIDE} px per side: the aspect "
            "ratio is too extreme, crop the image or raise max_size")
    bgr = torch.from_numpy(np.ascontiguousarray(rgb[:, :, ::-1])).permute(2, 0, 1).float()
    bgr -= torch.tensor(PIXEL_MEANS_BGR).view(3, 1, 1)  # commutes with bilinear (weights sum to 1)
    # aten's bilinear kernel with explicit scales maps dst→src as (x + 0.5)/s − 0.5, which is
    # OpenCV's INTER_LINEAR grid for fx = fy = s (F.interpolate(size=...) would use in/out ratios)
    resized = torch.ops.aten.upsample_bilinear2d(bgr[None], [out_h, out_w], False, scale, scale)[0]
    return PreparedImage(tensor=resized.contiguous(), scale=scale, orig_height=h, orig_width=w)


@dataclass(frozen=True)
class Preprocessing:
    """A detector's image preparation: :func:`prepare` with its ``min_size`` / ``max_size``.

    Small, frozen and picklable, so a Ray decode task runs exactly the preparation the detector
    was built for (get it from the detector or its settings, never build the sizes twice).
    """

    min_size: int = 600
    max_size: int = 1000

    def __call__(self, rgb: np.ndarray) -> PreparedImage:
        """``uint8 [H, W, 3]`` RGB → the prepared image (CPU only)."""
        return prepare(rgb, min_size=self.min_size, max_size=self.max_size)

    def prepare(self, rgb: np.ndarray) -> PreparedImage:
        """Same as calling the object."""
        return self(rgb)


def batch_images(batch: list[PreparedImage], size_divisibility: int = 1,
                 ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Zero-pad (after mean subtraction, i.e. with the mean colour) into one ``[B, 3, H, W]`` tensor.

    Returns the tensor and each image's real (h, w), which the network uses to clip and to mask.
    """
    sizes = [(int(p.tensor.shape[1]), int(p.tensor.shape[2])) for p in batch]
    hmax = max(h for h, _ in sizes)
    wmax = max(w for _, w in sizes)
    if size_divisibility > 1:
        hmax = -(-hmax // size_divisibility) * size_divisibility
        wmax = -(-wmax // size_divisibility) * size_divisibility
    out = batch[0].tensor.new_zeros(len(batch), 3, hmax, wmax)
    for i, p in enumerate(batch):
        out[i, :, : sizes[i][0], : sizes[i][1]] = p.tensor
    return out, sizes
