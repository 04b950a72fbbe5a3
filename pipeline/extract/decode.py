"""Decoding and resizing one batch of images on a CPU worker (runs inside a Ray task).

Every per-image problem becomes a failure record with a reason a person can act on; the batch
always comes back, so one bad file never stops the job (Ray Data's ``read_images`` fails the whole
job on one corrupt JPEG, which is why decoding is ours).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.extract.plan import WorkItem

if TYPE_CHECKING:
    from detectors.base import PreparedImage
    from detectors.butd.preprocess import Preprocessing


@dataclass
class Failure:
    """An image that could not be processed, and why."""

    image_id: str
    file: str
    reason: str


@dataclass
class DecodedBatch:
    """The prepared images of a batch (in batch order) and the images that failed to decode."""

    number: int
    items: list[WorkItem] = field(default_factory=list)
    prepared: list[PreparedImage] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)


def failure_reason(exc: BaseException) -> str:
    """A one-line reason for ``failures.jsonl`` (our errors already name the file and the fix)."""
    from PIL import Image

    if isinstance(exc, Image.DecompressionBombError):
        return f"decompression bomb refused (Pillow's pixel limit): {exc}"
    text = str(exc) or type(exc).__name__
    return text if type(exc).__module__.startswith("itmflow") else f"{type(exc).__name__}: {text}"


def decode_one(root: Path, item: WorkItem, preprocess: Preprocessing) -> PreparedImage:
    """Load, orient, convert and prepare one image with the detector's ``preprocess``; raises with
    a reason on any problem."""
    from detectors.butd.preprocess import load_image
    from itmflow.errors import InputFileError
    from itmflow.files import safe_join

    path = safe_join(root, item.file, what=f"file of image {item.image_id!r}")
    if not path.exists():
        raise InputFileError(f"missing file: {path} does not exist")
    if not path.is_file():
        raise InputFileError(f"unreadable: {path} is not a regular file")
    if path.stat().st_size == 0:
        raise InputFileError(f"zero-byte file: {path} is empty")
    rgb = load_image(path)
    return preprocess(rgb)


def decode_batch(number: int, root: str, items: list[WorkItem], preprocess: Preprocessing) -> DecodedBatch:
    """Decode every image of a batch in a decode task (one torch thread); failures are recorded,
    never raised."""
    try:  # a decode worker uses one thread: parallelism comes from running several tasks
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    return decode_items(number, root, items, preprocess)


def decode_items(number: int, root: str, items: list[WorkItem], preprocess: Preprocessing) -> DecodedBatch:
    """Decode every image of a batch in the calling process, with its thread settings."""
    out = DecodedBatch(number)
    base = Path(root)
    for item in items:
        try:
            prepared = decode_one(base, item, preprocess)
        except Exception as exc:  # every per-image problem is recorded, the batch goes on
            out.failures.append(Failure(item.image_id, item.file, failure_reason(exc)))
            continue
        out.items.append(item)
        out.prepared.append(prepared)
    return out

