"""What a region store holds, in words: the most frequent "attribute object" labels of its regions.

``itmflow store inspect`` and the ``itmflow extract`` summary show these names ("white shirt"),
never bare ids. The names come from the Visual Genome lists: a ``vocab_dir`` given (the labels a
checkpoint shipped with), else the 1600/400 lists shipped inside the package.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from detectors.base import VGVocab


def label_counts(store: str | Path) -> Counter[tuple[int, int]]:
    """``(attr_id, object_id)`` → regions, over the store's committed regions.

    Reads the id columns block by block (features stay unread). Padding regions (rows with fewer
    regions than a fixed K carry id -1) are left out. A store without labels (an import that had
    none) gives an empty counter.
    """
    from stores import open_region_store

    counts: Counter[tuple[int, int]] = Counter()
    with open_region_store(store) as reader:
        for _, block in reader.blocks():
            objs, attrs = block.regions.get("object_ids"), block.regions.get("attr_ids")
            if objs is None:
                return counts
            objs = np.asarray(objs, dtype=np.int64)
            attrs = np.full_like(objs, -1) if attrs is None else np.asarray(attrs, dtype=np.int64)
            keep = objs >= 0
            pairs = attrs[keep] * 4096 + objs[keep]      # one int per pair: a fast bincount
            values, n = np.unique(pairs, return_counts=True)
            for v, c in zip(values.tolist(), n.tolist()):
                counts[(v // 4096, v % 4096)] += c           # floor division: attr -1 stays -1
    return counts


def top_labels(store: str | Path, k: int = 8, *, vocab: VGVocab | None = None) -> list[dict]:
    """The ``k`` most frequent region labels: ``[{"label": "white shirt", "regions": 123}, ...]``."""
    names = vocab or VGVocab.shipped()
    out = []
    for (attr, obj), n in label_counts(store).most_common(k):
        label = names.object_name(obj) if attr < 0 else f"{names.attribute_name(attr)} {names.object_name(obj)}"
        out.append({"label": label, "regions": int(n)})
    return out


def top_labels_text(labels: list[dict]) -> str:
    """``white shirt (123), man (98), ...`` for a table cell."""
    return ", ".join(f"{item['label']} ({item['regions']})" for item in labels) or "none"


__all__ = ["label_counts", "top_labels", "top_labels_text"]
