"""The detector protocol every backend implements, the prepared-image record and the VG vocabulary.

A backend turns a batch of :class:`PreparedImage` into one region dict per image whose keys are
exactly the region-store field names (``boxes``, ``geometry``, ``features``, ``object_ids``,
``object_conf``, ``attr_ids``, ``attr_conf``, ``num_regions``, ``width``, ``height``), so the
pipeline can write them without knowing which backend produced them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from itmflow.errors import InputFileError
from itmflow.files import sha256_file
from itmflow.regions import DETECTED_FIELDS, DetectedRegions

if TYPE_CHECKING:  # torch stays an import-time-free dependency of this module
    import torch

#: Keys of the region dict returned by :meth:`Detector.detect` (the store field names, defined
#: once in :mod:`itmflow.regions`).
REGION_KEYS = DETECTED_FIELDS

OBJECTS_FILE = "objects_vocab.txt"
ATTRIBUTES_FILE = "attributes_vocab.txt"
#: The Visual Genome 1600/400 label lists shipped inside the package (``detectors/data``).
SHIPPED_VOCAB_DIR = Path(__file__).resolve().parent / "data"


@dataclass
class PreparedImage:
    """One image ready for the network (CPU only, picklable so Ray tasks can ship it).

    ``tensor`` is float32 C×H×W, BGR, Caffe-mean subtracted and resized by ``scale``;
    ``orig_height``/``orig_width`` are the size after EXIF orientation, before resizing.
    """

    tensor: "torch.Tensor"
    scale: float
    orig_height: int
    orig_width: int


@runtime_checkable
class Detector(Protocol):
    """What the pipeline needs from a region detector."""

    name: str
    weights_file: str | None
    weights_sha256: str | None
    vocab: "VGVocab | None"

    def settings(self) -> dict[str, Any]:
        """Every setting that changes the output (recorded in store manifests)."""
        ...

    def detect(self, batch: list[PreparedImage]) -> list[DetectedRegions]:
        """One region dict per image, keys :data:`REGION_KEYS`, numpy values."""
        ...


def _read_names(path: Path) -> list[str]:
    # The MILVLG copies use CRLF and some lines list synonyms ("stop sign,stopsign"): the display
    # name is the first synonym, lower-cased and stripped, as every BUTD tool does.
    text = path.read_text(encoding="utf-8")
    return [line.split(",")[0].lower().strip() for line in text.splitlines() if line.strip()]


@dataclass(frozen=True)
class VGVocab:
    """The Visual Genome label lists: ``objects[k]`` / ``attributes[k]`` for 0-based id ``k``."""

    objects: tuple[str, ...]
    attributes: tuple[str, ...]
    objects_sha256: str
    attributes_sha256: str

    @classmethod
    def load(cls, directory: str | Path) -> "VGVocab":
        """Read ``objects_vocab.txt`` and ``attributes_vocab.txt`` from ``directory``."""
        root = Path(directory)
        paths = {}
        for name in (OBJECTS_FILE, ATTRIBUTES_FILE):
            path = root / name
            if not path.is_file():
                raise InputFileError(
                    f"vocabulary file {path} not found; pass --vocab DIR pointing at a directory "
                    f"holding {OBJECTS_FILE} and {ATTRIBUTES_FILE} (bottom-up-attention "
                    "data/genome/1600-400-20)")
            paths[name] = path
        objects = _read_names(paths[OBJECTS_FILE])
        attributes = _read_names(paths[ATTRIBUTES_FILE])
        for what, names, want in (("objects", objects, 1600), ("attributes", attributes, 400)):
            if len(names) != want:
                raise InputFileError(
                    f"{root / (OBJECTS_FILE if what == 'objects' else ATTRIBUTES_FILE)} has "
                    f"{len(names)} {what}, the VG detector has {want}; use the 1600-400-20 lists")
        return cls(tuple(objects), tuple(attributes), sha256_file(paths[OBJECTS_FILE]),
                   sha256_file(paths[ATTRIBUTES_FILE]))

    @classmethod
    def shipped(cls) -> "VGVocab":
        """The bottom-up-attention 1600-400-20 lists shipped with itmflow (package data)."""
        return cls.load(SHIPPED_VOCAB_DIR)

    @classmethod
    def find(cls, *candidates: str | Path | None) -> "VGVocab | None":
        """Load the vocabulary from the first candidate directory that holds both files."""
        for cand in candidates:
            if cand is None:
                continue
            root = Path(cand)
            if (root / OBJECTS_FILE).is_file() and (root / ATTRIBUTES_FILE).is_file():
                return cls.load(root)
        return None

    def object_name(self, idx: int) -> str:
        """Name of object id ``idx`` (0-based)."""
        return self.objects[idx]

    def attribute_name(self, idx: int) -> str:
        """Name of attribute id ``idx`` (0-based)."""
        return self.attributes[idx]
