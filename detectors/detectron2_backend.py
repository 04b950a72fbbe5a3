"""A :class:`~detectors.base.Detector` on a detectron2 model (optional; detectron2 is not a dependency).

For users who already run a detectron2-based BUTD port (airsplay's fork, MILVLG's pinned v0.2.1):
the model is built from their config and checkpoint with detectron2's own builders, and its RoI
outputs go through our region selection, so the rows are comparable with the native backend.
Without detectron2 installed, constructing it raises a :class:`ConfigError` that says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from detectors.base import PreparedImage, VGVocab
from detectors.butd.postprocess import regions_for_image
from itmflow.regions import RegionPolicy
from detectors.butd.preprocess import batch_images
from itmflow.errors import ConfigError
from itmflow.files import sha256_file


def require_detectron2() -> Any:
    """Import detectron2 or raise a clear :class:`ConfigError`."""
    try:
        import detectron2  # noqa: F401
        from detectron2 import config, checkpoint, modeling
    except ImportError as exc:
        raise ConfigError(
            f"the detectron2 backend needs detectron2, which is not importable here ({exc}); "
            "install a detectron2 build matching your torch (see detectron2's install guide) or "
            "use the built-in backend: detectors.butd.build_detector / itmflow detect --weights"
        ) from None
    return config, checkpoint, modeling


class Detectron2Detector:
    """Runs a detectron2 Res5-RoI-heads BUTD model (bg-last classes, 12-logit RPN) behind our protocol."""

    name = "butd-detectron2"

    def __init__(self, config_file: str | Path, weights: str | Path, *, device: str = "cpu",
                 regions: str = "36", vocab_dir: str | Path | None = None,
                 post_nms_topk: int = 300) -> None:
        d2_config, d2_checkpoint, d2_modeling = require_detectron2()
        cfg = d2_config.get_cfg()
        cfg.merge_from_file(str(config_file))
        cfg.MODEL.WEIGHTS = str(weights)
        cfg.MODEL.DEVICE = device
        cfg.MODEL.RPN.POST_NMS_TOPK_TEST = post_nms_topk
        self.cfg = cfg
        self.model = d2_modeling.build_model(cfg).eval()
        d2_checkpoint.DetectionCheckpointer(self.model).load(str(weights))
        self.device = torch.device(device)
        self.policy = RegionPolicy.parse(regions)
        self.weights_file = Path(weights).name
        self.weights_sha256 = sha256_file(weights)
        self.vocab = VGVocab.load(vocab_dir) if vocab_dir else VGVocab.shipped()
        self.config_file = str(config_file)

    def settings(self) -> dict[str, Any]:
        """Every setting that changes the output."""
        return {"name": self.name, "config_file": Path(self.config_file).name,
                "region_policy": self.policy.to_manifest(),
                "post_nms_topk": int(self.cfg.MODEL.RPN.POST_NMS_TOPK_TEST)}

    @torch.no_grad()
    def detect(self, batch: list[PreparedImage]) -> list[dict[str, Any]]:
        """Backbone → RPN → res5 head of the detectron2 model, then our region selection."""
        from detectron2.structures import ImageList

        images, sizes = batch_images(batch)
        image_list = ImageList(images.to(self.device), sizes)
        features = self.model.backbone(image_list.tensor)
        proposals, _ = self.model.proposal_generator(image_list, features, None)
        heads = self.model.roi_heads
        boxes = [p.proposal_boxes for p in proposals]
        pooled = heads._shared_roi_transform([features[f] for f in heads.in_features], boxes)
        feats = pooled.mean(dim=[2, 3])
        outputs = heads.box_predictor(feats)
        logits, deltas = outputs[0], outputs[1]
        attr_logits = outputs[2] if len(outputs) > 2 else None
        # detectron2 ports put background (and "no attribute") last: move them first, and give
        # the background zero box rows, to match the canonical order regions_for_image expects
        cls_prob = torch.softmax(logits.float(), dim=1)
        cls_prob = torch.cat([cls_prob[:, -1:], cls_prob[:, :-1]], dim=1)
        weights = torch.tensor(self.cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS, dtype=torch.float32)
        d = deltas.float().view(len(feats), -1, 4) / weights.to(deltas.device)
        d = torch.cat([d.new_zeros(len(feats), 1, 4), d], dim=1).view(len(feats), -1)
        if attr_logits is not None:
            attr_prob = torch.softmax(attr_logits.float(), dim=1)
            attr_prob = torch.cat([attr_prob[:, -1:], attr_prob[:, :-1]], dim=1)
        else:
            attr_prob = torch.zeros(len(feats), 401, device=feats.device)
        out, start = [], 0
        for i, prep in enumerate(batch):
            n = len(boxes[i])
            sl = slice(start, start + n)
            start += n
            out.append(regions_for_image(
                boxes[i].tensor.float(), feats[sl].float(), cls_prob[sl], d[sl], attr_prob[sl],
                scale=prep.scale, resized_size=sizes[i],
                orig_size=(prep.orig_height, prep.orig_width), policy=self.policy))
        return out
