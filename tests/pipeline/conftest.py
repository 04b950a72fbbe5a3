"""Small collections in each real source format, written by hand for the pipeline tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def _sentences(sentids: list[int], imgid: int, texts: list[str]) -> list[dict]:
    return [{"tokens": t.lower().strip(".").split(), "raw": t, "imgid": imgid, "sentid": s}
            for s, t in zip(sentids, texts)]


@pytest.fixture
def karpathy_coco(tmp_path: Path) -> Path:
    """A dataset_coco.json with three images (one with six captions) in the Karpathy layout."""
    texts = ["A man riding a wave on top of a surfboard.", "A surfer rides a big wave.",
             "Person on a surfboard in the ocean.", "A man surfing a large wave.",
             "Someone surfing in the sea.", "An extra sixth caption."]
    doc = {"dataset": "coco", "images": [
        {"filepath": "val2014", "filename": "COCO_val2014_000000391895.jpg", "cocoid": 391895,
         "imgid": 0, "split": "test", "sentids": [770337, 771687, 772707, 776154, 781998, 790001],
         "sentences": _sentences([770337, 771687, 772707, 776154, 781998, 790001], 0, texts)},
        {"filepath": "train2014", "filename": "COCO_train2014_000000057870.jpg", "cocoid": 57870,
         "imgid": 1, "split": "restval", "sentids": [1, 2, 3, 4, 5],
         "sentences": _sentences([1, 2, 3, 4, 5], 1, [f"A restaurant table number {i}." for i in range(5)])},
        {"filepath": "train2014", "filename": "COCO_train2014_000000384029.jpg", "cocoid": 384029,
         "imgid": 2, "split": "train", "sentids": [11, 12, 13, 14, 15],
         "sentences": _sentences([11, 12, 13, 14, 15], 2, [f"A cat on a sofa {i}." for i in range(5)])},
    ]}
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    return path


@pytest.fixture
def karpathy_f30k(tmp_path: Path) -> Path:
    """A dataset_flickr30k.json with two images (file-stem ids)."""
    doc = {"dataset": "flickr30k", "images": [
        {"filename": "1000092795.jpg", "imgid": 0, "split": "train", "sentids": [0, 1, 2, 3, 4],
         "sentences": _sentences([0, 1, 2, 3, 4], 0, [f"Two young guys talk {i}." for i in range(5)])},
        {"filename": "10002456.jpg", "imgid": 1, "split": "val", "sentids": [5, 6, 7, 8, 9],
         "sentences": _sentences([5, 6, 7, 8, 9], 1, [f"Workers on a building {i}." for i in range(5)])},
    ]}
    path = tmp_path / "dataset_flickr30k.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path
