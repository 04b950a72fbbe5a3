"""``train``: the library entry point of ``itmflow train`` (one process, or Ray Train workers).

It opens the stores, checks what can be checked before a run directory exists (BERT weights,
training captions), then runs :class:`~trainers.training.loop.Trainer` in this process or, with
``DistributedOptions(workers=N > 1)``, on N Ray Train workers
(:func:`trainers.training.ray_train.run_workers`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from itmflow.marks import random_init_of_manifest, warn as warn_random
from trainers.data import MatchingData
from trainers.training.config import TrainConfig
from trainers.training.loop import Trainer
from trainers.training.model import check_bert

if TYPE_CHECKING:
    from rich.console import Console

    from trainers.training.distributed import DistributedOptions


def train(config: TrainConfig, regions: str | os.PathLike[str], captions: str | os.PathLike[str],
          out: str | os.PathLike[str], *, resume: bool = False, bert: str | None = None,
          vocab: str | os.PathLike[str] | None = None, console: Console | None = None,
          distributed: DistributedOptions | None = None) -> dict[str, Any]:
    """Train ``config.model`` on a region store and a caption store into run directory ``out``.

    ``vocab`` (SGRAF) is the word-vocabulary JSON copied into the run; by default the caption
    store's own ``vocab.json``. ``distributed`` with ``workers > 1`` runs the loop as a Ray Train
    job on that many workers (:mod:`trainers.training.ray_train`): the same optimisation, the
    same global batch; ``workers == 1`` (the default) is the in-process loop.
    """
    data = MatchingData(regions, captions, model=config.model)
    warn_random(console, f"region store {regions}", random_init_of_manifest(data.images.manifest))
    inputs = {"regions": str(regions), "captions": str(captions),
              "region_store": {k: data.images.manifest.get(k) for k in
                               ("format", "schema_version", "storage", "feature_dim", "detector",
                                "region_policy") if k in data.images.manifest},
              "caption_store": {k: v for k, v in data.captions.manifest.items()
                                if k not in ("provenance",)}}
    if not resume:
        check_bert(config, data, bert=bert)  # before --out is created: a bad BERT is one line
    source = Path(vocab) if vocab is not None else Path(captions) / "vocab.json"

    def copy_vocab(run: Path) -> None:
        if "words" in data.needs and source.is_file() and \
                (vocab is not None or not (run / "vocab.json").exists()):
            # The word ids only mean something with their vocabulary: keep it beside the weights.
            shutil.copyfile(source, run / "vocab.json")

    if distributed is not None and distributed.workers > 1:
        from trainers.training.ray_train import run_workers

        data.train_pairs("train")  # refuse stores without training captions before Ray starts
        summary = run_workers(config, regions, captions, out, distributed, resume=resume,
                              bert=bert, inputs=inputs)
        copy_vocab(Path(out))
        return summary
    trainer = Trainer(config, data, out, resume=resume, bert=bert, inputs=inputs, console=console)
    copy_vocab(trainer.out)
    return trainer.fit()



__all__ = ["train"]
