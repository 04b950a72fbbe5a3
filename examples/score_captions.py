"""Score free-text captions against the images of a region store with a trained TERN or TERAN run.

    python examples/score_captions.py runs/tern --regions stores/regions \
        --text "a cat looks to the side" --text "a rocket on the launch pad"

Prints, for each caption, the images ranked by the model's score.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from pipeline.text.bert import encode_captions, load_bert_tokenizer
from trainers.checkpoints import load_model
from trainers.data import ImageItems, RegionImages, collate_images
from trainers.evaluation.report import run_model_dir
from trainers.models import spec_of


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="run directory of `itmflow train` (or a model directory)")
    parser.add_argument("--regions", type=Path, required=True)
    parser.add_argument("--text", action="append", required=True, help="a caption (repeatable)")
    parser.add_argument("--top", type=int, default=3)
    args = parser.parse_args(argv)

    model = load_model(run_model_dir(args.run))
    if "bert" not in spec_of(model).needs:
        raise SystemExit(f"{args.run}: this example tokenizes with BERT; {model.kind} reads word ids")
    tokenizer = load_bert_tokenizer(model.config.bert)     # the tokenizer the run was trained with
    ids, _ = encode_captions(tokenizer, args.text)
    captions = {"bert_ids": torch.nn.utils.rnn.pad_sequence([torch.tensor(i) for i in ids],
                                                            batch_first=True),
                "bert_lengths": torch.tensor([len(i) for i in ids])}
    store = RegionImages(args.regions, need_geometry=True)
    items = ImageItems(store, store.ids)
    images = collate_images([items[i] for i in range(len(items))])
    with torch.no_grad():
        scores = model(images, captions)                    # [images, captions]
    for c, text in enumerate(args.text):
        order = torch.argsort(scores[:, c], descending=True)[:args.top].tolist()
        ranked = ", ".join(f"{store.ids[i]} ({scores[i, c]:.3f})" for i in order)
        print(f"{text!r}: {ranked}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
