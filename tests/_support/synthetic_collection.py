"""A synthetic image-text collection whose meaning is controlled, written as REAL stores.

Each image shows two objects, each with a colour (12 objects × 6 colours = 72 concepts). Its 36
regions are: every (object, colour) pair on 3 regions — feature = object vector + colour vector +
noise — and 30 background regions of pure noise, at random boxes. Its 5 captions name the two
coloured objects in different templates ("a red car and a blue dog", "the blue dog is near the red
car", ...). A model can only match captions to images by learning which region directions the
words stand for, so retrieval well above chance on held-out images proves that the data → train →
evaluate path learns.

Everything goes through the public APIs: the region store via ``stores.RegionStoreWriter``; the
captions as a real collection table (``pipeline.collections.write_collection``), tokenized by
``pipeline.text.tokenize.tokenize_collection`` with the real WordPiece tokenizer and a word
vocabulary built the SCAN way (train+restval+val captions, threshold 4), written with
``stores.captions.write_caption_store`` — what ``itmflow tokenize --build-vocab`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

OBJECTS = ("car", "dog", "cat", "bird", "boat", "chair", "horse", "bus", "tree", "cup", "bench",
           "kite")
COLOURS = ("red", "blue", "green", "yellow", "black", "white")
TEMPLATES = (
    "a {c1} {o1} and a {c2} {o2}",
    "a {c2} {o2} next to a {c1} {o1}",
    "there is a {c1} {o1} with a {c2} {o2}",
    "a photo of a {c2} {o2} and a {c1} {o1}",
    "the {c1} {o1} is near the {c2} {o2}",
)
K = 36
REGIONS_PER_OBJECT = 3
WIDTH, HEIGHT = 640, 480


@dataclass
class SyntheticStores:
    """Paths of the written stores and what they hold."""

    regions: Path
    captions: Path
    vocab: Path
    feature_dim: int
    splits: dict[str, int]


def _concepts(rng: np.random.Generator, n: int) -> list[tuple[int, int, int, int]]:
    out = []
    for _ in range(n):
        o1, o2 = rng.choice(len(OBJECTS), size=2, replace=False)
        c1, c2 = rng.integers(len(COLOURS), size=2)
        out.append((int(o1), int(c1), int(o2), int(c2)))
    return out


def _regions(rng: np.random.Generator, concept: tuple[int, int, int, int], obj_vec: np.ndarray,
             col_vec: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    o1, c1, o2, c2 = concept
    feats = 0.5 * rng.standard_normal((K, dim)).astype(np.float32) / np.sqrt(dim)
    slots = rng.permutation(K)
    for n, (o, c) in enumerate(((o1, c1), (o2, c2))):
        for s in slots[n * REGIONS_PER_OBJECT:(n + 1) * REGIONS_PER_OBJECT]:
            feats[s] = obj_vec[o] + col_vec[c] + 0.3 * rng.standard_normal(dim) / np.sqrt(dim)
    # Bottom-up features are non-negative (post-ReLU pooling); keep the same flavour.
    feats = np.abs(feats).astype(np.float32)
    x1 = rng.uniform(0, WIDTH * 0.7, K)
    y1 = rng.uniform(0, HEIGHT * 0.7, K)
    x2 = np.minimum(x1 + rng.uniform(20, WIDTH * 0.3, K), WIDTH)
    y2 = np.minimum(y1 + rng.uniform(20, HEIGHT * 0.3, K), HEIGHT)
    boxes = np.stack([x1, y1, x2, y2], axis=1).astype(np.float32)
    return feats, boxes


def write_synthetic_stores(root: Path, bert_dir: Path, *, splits: dict[str, int] | None = None,
                           feature_dim: int = 64, seed: int = 0,
                           random_init_seed: int | None = None) -> SyntheticStores:
    """Write a region store and a caption store under ``root``; returns their paths.

    ``random_init_seed``: record in the region manifest that a random-weight detector (this seed)
    made the regions, as ``itmflow extract --random-init`` does."""
    from pipeline.collections import CaptionRecord, ImageRecord, read_collection, write_collection
    from pipeline.text.bert import load_bert_tokenizer
    from pipeline.text.tokenize import tokenize_collection, vocab_captions
    from pipeline.text.vocab import WordVocab
    from stores import RegionStoreWriter
    from stores.captions import write_caption_store
    from stores.schema import geometry_from_boxes

    splits = splits or {"train": 480, "restval": 120, "val": 50, "test": 100}
    rng = np.random.default_rng(seed)
    obj_vec = rng.standard_normal((len(OBJECTS), feature_dim)).astype(np.float32) / np.sqrt(feature_dim)
    col_vec = rng.standard_normal((len(COLOURS), feature_dim)).astype(np.float32) / np.sqrt(feature_dim)

    regions = root / "regions"
    image_rows: list[tuple[str, str, tuple[int, int, int, int]]] = []
    for split, n in splits.items():
        for i, concept in enumerate(_concepts(rng, n)):
            image_rows.append((f"{split}-{i:04d}", split, concept))

    detector: dict = {"name": "synthetic", "weights_file": None, "weights_sha256": None}
    if random_init_seed is not None:
        detector["settings"] = {"random_init": True, "seed": random_init_seed}
    with RegionStoreWriter(regions, storage="parquet", feature_dim=feature_dim,
                           feature_dtype="float32", region_policy={"kind": "fixed", "k": K},
                           detector=detector, rows_per_part=256) as writer:
        for image_id, _, concept in image_rows:
            feats, boxes = _regions(rng, concept, obj_vec, col_vec, feature_dim)
            writer.add({
                "image_id": image_id, "file": f"{image_id}.jpg", "width": WIDTH, "height": HEIGHT,
                "num_regions": K, "boxes": boxes,
                "geometry": geometry_from_boxes(boxes, WIDTH, HEIGHT), "features": feats,
                "object_ids": np.zeros(K, np.int16), "object_conf": np.ones(K, np.float32),
                "attr_ids": np.zeros(K, np.int16), "attr_conf": np.ones(K, np.float32)})

    images, caption_records = [], []
    for image_id, split, (o1, c1, o2, c2) in image_rows:
        images.append(ImageRecord(image_id=image_id, file=f"{image_id}.jpg", split=split))
        for n, template in enumerate(TEMPLATES):
            raw = template.format(o1=OBJECTS[o1], c1=COLOURS[c1], o2=OBJECTS[o2], c2=COLOURS[c2])
            caption_records.append(CaptionRecord(caption_id=f"{image_id}#{n}", image_id=image_id,
                                                 raw=raw))
    table_path = write_collection(root / "collection.parquet", images, caption_records,
                                  source_format="folder", images_root=root / "images")
    collection = read_collection(table_path)

    bert = load_bert_tokenizer(str(bert_dir))
    # SCAN builds its vocabulary from the train (+ restval, dev) captions with threshold 4.
    texts, which = vocab_captions(collection)
    vocab = WordVocab.build(texts, threshold=4)
    table, _ = tokenize_collection(collection, bert=bert, vocab=vocab)
    captions = root / "captions"
    write_caption_store(captions, table, {
        "tokenizer": {"name": bert.name, "vocab_sha256": bert.vocab_sha256,
                      "vocab_size": bert.vocab_size, "max_length": None},
        "vocab": {"name": "vocab.json", "source": f"built from {which}", "threshold": 4,
                  "size": len(vocab), "sha256": vocab.sha256}})
    vocab_path = vocab.save(captions / "vocab.json")
    return SyntheticStores(regions=regions, captions=captions, vocab=vocab_path,
                           feature_dim=feature_dim, splits=dict(splits))
