"""Training and evaluation data: a region store joined with a caption store by ``image_id``.

* Training: one item per caption of the training splits (``train`` + ``restval``, as all three
  authors train), the image looked up by id in the region store.
* Evaluation: the images of one split that have at least 5 captions, in caption-store order, and
  their first 5 captions in order — caption ``c`` belongs to image ``c // 5`` (docs/guide/training.md).

Collate functions build the batch dicts every model takes: images ``features`` [B,K,D] float32,
``geometry`` [B,K,5], ``num_regions`` [B]; captions ``bert_ids`` [B,L] (0-padded, [CLS]/[SEP]
from the store), ``bert_lengths`` [B], ``word_ids`` [B,L] (0-padded, with ``<start>``/``<end>``),
``word_lengths`` [B]. Padding is per batch (dynamic), as in the authors' collates.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from itmflow.errors import StoreError
from stores.schema import geometry_from_boxes
from trainers.evaluation.recall import CAPTIONS_PER_IMAGE
from trainers.models import Input, model_spec

# What each split name used for training/validation covers in a caption store.
SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("train", "restval"),
    "val": ("val",),
    "test": ("test",),
}


class _Ragged:
    """A list<int32> Parquet column kept as one flat array + offsets (cheap to pickle to workers)."""

    def __init__(self, column: Any) -> None:
        import pyarrow as pa

        arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        if isinstance(arr, pa.ChunkedArray):  # zero chunks
            arr = pa.array([], type=arr.type)
        self.valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        offsets = np.asarray(arr.offsets.to_numpy(), dtype=np.int64)
        self.offsets = offsets
        self.values = np.asarray(arr.values.to_numpy(zero_copy_only=False), dtype=np.int64)

    def __getitem__(self, i: int) -> np.ndarray | None:
        if not self.valid[i]:
            return None
        return self.values[self.offsets[i]:self.offsets[i + 1]]


@dataclass
class CaptionTable:
    """The caption store columns the trainers need, one entry per caption row."""

    path: Path
    manifest: dict[str, Any]
    caption_ids: list[str]
    image_ids: list[str]
    splits: list[str]
    raw: list[str]
    bert: _Ragged
    words: _Ragged

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> CaptionTable:
        """Read a caption store directory written by ``itmflow tokenize``."""
        from stores.captions import read_caption_store

        table, manifest = read_caption_store(path)
        for name in ("caption_id", "image_id", "split", "raw", "bert_ids", "word_ids"):
            if name not in table.column_names:
                raise StoreError(f"caption store {path}: column {name!r} is missing; "
                                 "re-create it with `itmflow tokenize`")
        return cls(path=Path(path), manifest=manifest,
                   caption_ids=table.column("caption_id").to_pylist(),
                   image_ids=table.column("image_id").to_pylist(),
                   splits=table.column("split").to_pylist(),
                   raw=table.column("raw").to_pylist(),
                   bert=_Ragged(table.column("bert_ids")),
                   words=_Ragged(table.column("word_ids")))

    def __len__(self) -> int:
        return len(self.caption_ids)

    def rows_of(self, split: str) -> list[int]:
        """Row indices of the captions in ``split`` (``train`` includes ``restval``)."""
        wanted = SPLITS.get(split, (split,))
        return [i for i, s in enumerate(self.splits) if s in wanted]

    def check(self, rows: Sequence[int], needs: Iterable[Input]) -> None:
        """Raise if a model needs BERT ids or word ids that the store does not hold."""
        needs = set(needs)
        for kind, ragged, fix in (("bert", self.bert, "run `itmflow tokenize` without --no-bert"),
                                  ("words", self.words, "run `itmflow tokenize` with a word vocab")):
            if kind not in needs:
                continue
            missing = [i for i in rows if not ragged.valid[i]]
            if missing:
                cid = self.caption_ids[missing[0]]
                raise StoreError(
                    f"caption store {self.path}: {len(missing)} caption(s) have no "
                    f"{'BERT' if kind == 'bert' else 'word'} ids (first: caption_id {cid!r}); {fix}")

    def caption(self, i: int) -> dict[str, Any]:
        """One caption's token ids (numpy int64 arrays, or None when the store has none)."""
        return {"bert_ids": self.bert[i], "word_ids": self.words[i]}


class RegionImages:
    """Region-store rows looked up by ``image_id`` (features as float32 tensors).

    Wraps :class:`stores.RegionDataset` (multi-worker safe); geometry comes from the store, or is
    computed from the boxes and image size (TERN eq. 2) when the store has none (imported
    features). Without boxes either, TERN/TERAN (``need_geometry``) get a clear error.
    """

    def __init__(self, path: str | os.PathLike[str], *, need_geometry: bool = False) -> None:
        from stores import RegionDataset

        self.path = Path(path)
        self._dataset = RegionDataset(self.path, dtype=torch.float32)
        self.ids: list[str] = list(self._dataset.ids)
        self.manifest: dict[str, Any] = self._dataset.manifest
        self.index = {image_id: n for n, image_id in enumerate(self.ids)}
        self.need_geometry = need_geometry

    def __len__(self) -> int:
        return len(self.ids)

    def get(self, image_id: str) -> dict[str, Any]:
        """The store row of ``image_id`` as tensors, ``geometry`` always filled in."""
        row = self._dataset[self.index[image_id]]
        if not bool(torch.isfinite(row["features"]).all()):
            raise StoreError(f"region store {self.path}: image {image_id!r} has non-finite features (NaN or "
                             "inf); the store was written outside itmflow's checks or is damaged; run "
                             "`itmflow store verify` on it, and re-extract or re-import the image")
        if row.get("geometry") is not None and not bool(torch.isfinite(row["geometry"]).all()):
            raise StoreError(f"region store {self.path}: image {image_id!r} has non-finite box geometry; "
                             "its image size is probably 0 (features imported without sizes): re-import "
                             "with --images ROOT or --captions-json FILE")
        if row.get("geometry") is None:
            k = int(row["features"].shape[0])  # regions held (a padded fixed-K row holds K)
            if row.get("boxes") is not None and not (int(row["width"]) > 0 and int(row["height"]) > 0):
                if self.need_geometry:
                    raise StoreError(
                        f"region store {self.path}: image {image_id!r} has boxes but no image size "
                        f"({int(row['width'])}x{int(row['height'])}), so TERN/TERAN's box geometry "
                        "(x/W, y/H) cannot be computed; re-import the features with `itmflow store "
                        "import --images ROOT` or `--captions-json FILE` (COCO annotations)")
                row["geometry"] = torch.zeros(k, 5)
            elif row.get("boxes") is not None:
                row["geometry"] = torch.from_numpy(geometry_from_boxes(
                    row["boxes"].numpy(), int(row["width"]), int(row["height"])))
            elif self.need_geometry:
                raise StoreError(
                    f"region store {self.path}: image {image_id!r} has neither geometry nor "
                    "boxes, which TERN/TERAN need; extract the regions with itmflow (or import "
                    "features that include boxes)")
            else:
                row["geometry"] = torch.zeros(k, 5)
        return row


class TrainPairs(Dataset):
    """One item per training caption: ``(image row, caption ids)``."""

    def __init__(self, images: RegionImages, captions: CaptionTable, rows: Sequence[int]) -> None:
        self.images = images
        self.captions = captions
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[dict[str, Any], dict[str, Any]]:
        row = self.rows[i]
        return self.images.get(self.captions.image_ids[row]), self.captions.caption(row)


class KeyedItems(Dataset):
    """Items ``get(key)`` for an ordered list of keys (evaluation images by id, captions by row).

    ``get`` is a bound method of a picklable object, so the Dataset travels to DataLoader workers.
    """

    def __init__(self, get: Callable[[Any], dict[str, Any]], keys: Sequence[Any]) -> None:
        self.get = get
        self.keys = list(keys)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.get(self.keys[i])


class ImageItems(KeyedItems):
    """The images ``ids`` of a region store, in order."""

    def __init__(self, images: RegionImages, ids: Sequence[str]) -> None:
        super().__init__(images.get, ids)


class CaptionItems(KeyedItems):
    """The caption-store rows ``rows``, in order."""

    def __init__(self, captions: CaptionTable, rows: Sequence[int]) -> None:
        super().__init__(captions.caption, rows)


@dataclass
class EvalSet:
    """Images of one split and their first 5 captions: caption ``c`` ↔ image ``c // 5``."""

    image_ids: list[str]
    caption_rows: list[int]
    images: ImageItems
    captions: CaptionItems


def _pad(seqs: Sequence[np.ndarray | None], what: str) -> tuple[torch.Tensor, torch.Tensor]:
    if any(s is None for s in seqs):
        raise StoreError(f"a caption in the batch has no {what}; tokenize the captions with it")
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)  # type: ignore[arg-type]
    out = torch.zeros(len(seqs), int(lengths.max()) if len(seqs) else 0, dtype=torch.long)
    for n, s in enumerate(seqs):
        out[n, :len(s)] = torch.from_numpy(np.asarray(s, dtype=np.int64))  # type: ignore[arg-type]
    return out, lengths


def collate_images(rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Image batch ``features`` [B,K,D], ``geometry`` [B,K,5], ``num_regions`` [B].

    Rows with fewer regions are zero-padded to the batch's largest K (``stores.collate_regions``).
    """
    from stores import collate_regions

    batch = collate_regions(list(rows))
    return {"features": batch["features"].float(), "geometry": batch["geometry"],
            "num_regions": batch["num_regions"]}


class CaptionCollator:
    """Pad the caption fields a model needs (``bert`` and/or ``words``) per batch."""

    def __init__(self, needs: Iterable[Input] = ("bert", "words")) -> None:
        self.needs = frozenset(needs)

    def __call__(self, caps: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if "bert" in self.needs:
            out["bert_ids"], out["bert_lengths"] = _pad([c["bert_ids"] for c in caps], "BERT ids")
        if "words" in self.needs:
            out["word_ids"], out["word_lengths"] = _pad([c["word_ids"] for c in caps], "word ids")
        return out


class PairCollator:
    """Collate ``(image, caption)`` pairs into ``(images batch, captions batch)``."""

    def __init__(self, needs: Iterable[Input] = ("bert", "words")) -> None:
        self.captions = CaptionCollator(needs)

    def __call__(self, items: Sequence[tuple[dict[str, Any], dict[str, Any]]]
                 ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        return collate_images([i for i, _ in items]), self.captions([c for _, c in items])


class EpochBatchSampler(Sampler[list[int]]):
    """Shuffled batches whose order depends only on ``(seed, epoch)``; can start mid-epoch.

    Resuming after ``k`` batches of an epoch yields exactly the batches an uninterrupted run would
    have seen next — the permutation is regenerated from its seed, not kept as state.
    """

    def __init__(self, n: int, batch_size: int, *, seed: int, epoch: int = 0,
                 start_batch: int = 0, shuffle: bool = True) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.start_batch, self.shuffle = epoch, start_batch, shuffle

    def batches_per_epoch(self) -> int:
        """Number of batches in a full epoch (the last one may be smaller)."""
        return (self.n + self.batch_size - 1) // self.batch_size

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.start_batch)

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=gen).tolist()
        else:
            order = list(range(self.n))
        for b in range(self.start_batch, self.batches_per_epoch()):
            yield order[b * self.batch_size:(b + 1) * self.batch_size]


class ShardedBatchSampler(Sampler[list[int]]):
    """Worker ``rank``'s contiguous slice of every global batch of an :class:`EpochBatchSampler`.

    With N workers, global batch ``[i_0 .. i_{B-1}]`` is cut into N contiguous slices (the first
    ``B % N`` one sample longer, :func:`trainers.training.distributed.split_sizes`); worker r
    reads only slice r from the stores. Concatenating the slices in rank order gives back the batch
    one process would see, so the sequence of global batches does not depend on N.
    """

    def __init__(self, batches: EpochBatchSampler, rank: int, world_size: int) -> None:
        self.batches, self.rank, self.world_size = batches, rank, world_size

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            base, extra = divmod(len(batch), self.world_size)
            start = self.rank * base + min(self.rank, extra)
            yield batch[start:start + base + (1 if self.rank < extra else 0)]


class MatchingData:
    """A region store and a caption store joined for one model: training pairs + evaluation sets.

    ``needs`` (default: what ``model`` declares, :attr:`trainers.models.ModelSpec.needs`) are the
    inputs read from the stores; an ensemble of models passes the union of theirs.
    """

    def __init__(self, regions: str | os.PathLike[str], captions: str | os.PathLike[str], *,
                 model: str = "tern", needs: frozenset[Input] | None = None) -> None:
        self.model = model
        self.needs: frozenset[Input] = model_spec(model).needs if needs is None else needs
        self.captions = CaptionTable.read(captions)
        self.images = RegionImages(regions, need_geometry="geometry" in self.needs)
        self._have = set(self.images.ids)
        self.skipped: dict[str, int] = {}
        """Per split: captions dropped because their image is not in the region store."""
        self.missing_images: dict[str, tuple[int, int]] = {}
        """Per split: (images without regions in the region store, images of the split)."""

    def _rows_with_images(self, split: str) -> list[int]:
        rows = self.captions.rows_of(split)
        kept = [r for r in rows if self.captions.image_ids[r] in self._have]
        self.skipped[split] = len(rows) - len(kept)
        images = {self.captions.image_ids[r] for r in rows}
        self.missing_images[split] = (len(images - self._have), len(images))
        return kept

    def train_pairs(self, split: str = "train") -> TrainPairs:
        """Every caption of ``split`` whose image has regions (``train`` = train + restval)."""
        rows = self._rows_with_images(split)
        if not rows:
            raise StoreError(
                f"no training captions: caption store {self.captions.path} has no caption in "
                f"split(s) {list(SPLITS.get(split, (split,)))} whose image is in region store "
                f"{self.images.path}; check the splits of the collection and that both stores "
                "come from it")
        self.captions.check(rows, self.needs)
        return TrainPairs(self.images, self.captions, rows)

    def eval_set(self, split: str = "val", max_images: int | None = None) -> EvalSet:
        """Images of ``split`` with >= 5 captions (store order) and their first 5 captions."""
        per_image: dict[str, list[int]] = {}
        for r in self._rows_with_images(split):
            per_image.setdefault(self.captions.image_ids[r], []).append(r)
        image_ids: list[str] = []
        rows: list[int] = []
        for image_id, caps in per_image.items():
            if len(caps) < CAPTIONS_PER_IMAGE:
                # Feature-only or sparsely captioned images cannot take part in c//5 indexing.
                continue
            image_ids.append(image_id)
            rows.extend(caps[:CAPTIONS_PER_IMAGE])
            if max_images is not None and len(image_ids) >= max_images:
                break
        if not image_ids:
            raise StoreError(
                f"no evaluation images: split {split!r} of caption store {self.captions.path} has "
                f"no image with {CAPTIONS_PER_IMAGE} captions and regions in {self.images.path}")
        self.captions.check(rows, self.needs)
        return EvalSet(image_ids=image_ids, caption_rows=rows,
                       images=ImageItems(self.images, image_ids),
                       captions=CaptionItems(self.captions, rows))

    def word_vocab_size(self) -> int | None:
        """Vocabulary size for SGRAF's word embedding (manifest, else largest id + 1)."""
        for key in ("vocab_size", "word_vocab_size"):
            value = self.captions.manifest.get(key)
            if isinstance(value, int):
                return value
        vocab = self.captions.manifest.get("vocab")
        if isinstance(vocab, dict) and isinstance(vocab.get("size"), int):
            return int(vocab["size"])
        values = self.captions.words.values
        return int(values.max()) + 1 if values.size else None
