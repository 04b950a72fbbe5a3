"""Writers of the three BUTD checkpoint layouts, independent of ``detectors.butd.weights``.

They apply the *forward* conversions of spec §5.5 (canonical → MILVLG / airsplay / HF), so a loader
that rolled classes the wrong way, dropped the wrong box rows or mis-converted objectness fails the
equality tests.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

PRED = "roi_heads.box_predictor."
OBJ = "proposal_generator.rpn_head.objectness_logits."
ANCHORS = "proposal_generator.anchor_generator.cell_anchors.0"
D2_WEIGHTS = torch.tensor([10.0, 10.0, 5.0, 5.0])
# small settings so a forward pass costs ~1–2 s on one core (res5 on 14×14 RoIs dominates)
SMALL = dict(min_size=160, max_size=240, post_nms_topk=12, pre_nms_topk=600)


def to_milvlg(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Caffe order, cls_embed / attr_linear1 / attr_linear2, 24-channel bg|fg objectness, 6404 rows."""
    gen = torch.Generator().manual_seed(1)
    out = {}
    for k, v in sd.items():
        k = k.replace(PRED + "cls_embedding.", PRED + "cls_embed.")
        k = k.replace(PRED + "fc_attr.", PRED + "attr_linear1.")
        k = k.replace(PRED + "attr_score.", PRED + "attr_linear2.")
        out[k] = v.clone()
    for suffix in ("weight", "bias"):
        fg_minus_bg = out[OBJ + suffix]
        bg = torch.randn(fg_minus_bg.shape, generator=gen) * 0.05  # any bg works: only fg−bg matters
        out[OBJ + suffix] = torch.cat([bg, fg_minus_bg + bg], dim=0)  # channels 0..11 bg, 12..23 fg
    return out


def to_d2(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """detectron2 order: background / "no attribute" last, 6400 box rows scaled by (10,10,5,5)."""
    out = {k: v.clone() for k, v in sd.items()}
    for k in ("cls_score.weight", "cls_score.bias", "cls_embedding.weight", "attr_score.weight",
              "attr_score.bias"):
        t = out[PRED + k]
        out[PRED + k] = torch.cat([t[1:], t[:1]], dim=0)
    w = out[PRED + "bbox_pred.weight"][4:]  # drop the background rows
    b = out[PRED + "bbox_pred.bias"][4:]
    out[PRED + "bbox_pred.weight"] = w * D2_WEIGHTS.repeat(1600)[:, None]
    out[PRED + "bbox_pred.bias"] = b * D2_WEIGHTS.repeat(1600)
    return out


def write_milvlg(sd: dict[str, torch.Tensor], path: Path) -> Path:
    torch.save({"model": to_milvlg(sd)}, path)
    return path


def write_airsplay(sd: dict[str, torch.Tensor], path: Path) -> Path:
    d2 = to_d2(sd)
    d2.pop(ANCHORS)  # whether the pkl carries anchors is unverified: test the Caffe-table path
    model = {k: v.numpy() for k, v in d2.items()}
    with open(path, "wb") as handle:
        pickle.dump({"model": model, "__author__": "airsplay"}, handle)
    return path


def write_hf(sd: dict[str, torch.Tensor], directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    d2 = to_d2(sd)
    for k in list(d2):
        if k.endswith(".norm.running_var"):
            d2[k[: -len("running_var")] + "num_batches_tracked"] = torch.tensor(0)
    torch.save(d2, directory / "pytorch_model.bin")
    (directory / "config.yaml").write_text(
        "model:\n  roi_heads:\n    num_classes: 1600\n  roi_box_head:\n    res5halve: false\n"
        "    bbox_reg_weights: [10.0, 10.0, 5.0, 5.0]\n  max_pool: true\n", encoding="utf-8")
    return directory
