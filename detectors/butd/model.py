"""The BUTD network (:class:`BUTDModel`) and the detector around it (:class:`BUTDDetector`).

``BUTDModel`` composes the parts: :class:`~detectors.butd.backbone.ResNetC4` →
:class:`~detectors.butd.rpn.RPN` → :class:`~detectors.butd.roi_heads.RoIHeads`.
``BUTDDetector`` implements :class:`detectors.base.Detector`: it pads a batch of prepared images,
runs the network in the requested precision (:data:`PLANS`) and selects each image's regions with
:mod:`detectors.butd.postprocess`.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detectors.base import REGION_KEYS, PreparedImage, VGVocab
from detectors.butd.backbone import ResNetC4
from detectors.butd.postprocess import (per_class_nms_max_conf, regions_for_image, select_caffe,
                                         select_maxnms)
from detectors.butd.preprocess import PIXEL_MEANS_BGR, Preprocessing, batch_images
from detectors.butd.roi_heads import RoIHeads, RoIOutputs
from detectors.butd.rpn import RPN, RPNSettings
from detectors.butd.settings import BUTDSettings
from detectors.butd.weights import ANCHOR_KEY, LoadedWeights, load_checkpoint
from detectors.memory import release_free_heap
from itmflow.errors import ConfigError
from itmflow.regions import DetectedRegions


@dataclass(frozen=True)
class PrecisionPlan:
    """How one ``--precision`` runs the network (post-processing is always fp32).

    ``backbone`` / ``head``: autocast dtype of backbone + RPN / of res5 + predictor on every
    proposal (None: fp32). ``refine``: recompute the head in fp32 for each image's best
    candidates (``ceil(MIXED_REFINE × max regions)`` by their reduced-precision ``max_conf``)
    before the selection runs again. ``tf32``: allow TF32 for fp32 convolutions and matmuls
    (CUDA on Ampere and later; no effect on CPU).
    """

    backbone: torch.dtype | None = None
    head: torch.dtype | None = None
    refine: bool = False
    tf32: bool = False


#: One plan per :data:`detectors.butd.settings.PRECISIONS` name.
PLANS = {
    "fp32": PrecisionPlan(),
    "tf32": PrecisionPlan(tf32=True),
    "bf16": PrecisionPlan(backbone=torch.bfloat16, head=torch.bfloat16),
    "fp16": PrecisionPlan(backbone=torch.float16, head=torch.float16),
}
#: Plans measured by ``benchmarks/bench_detector.py --agreement`` but not ``--precision`` choices
#: (set ``detector.plan`` to use one). ``mixed``: fp32 backbone + RPN (the proposals are fp32's),
#: bf16 res5 on all proposals to rank them, fp32 res5 again for the candidates, so the kept
#: regions' features and scores are fp32's; it kept 71/72 of fp32's regions but saved only 2% of
#: the CPU time at 300 proposals (no bf16 units here): a choice once a GPU shows it pays off.
#: ``bf16-backbone``: the reverse split, to show that bf16 proposals alone move the regions.
EXPERIMENTAL_PLANS = {
    "mixed": PrecisionPlan(head=torch.bfloat16, refine=True),
    "bf16-backbone": PrecisionPlan(backbone=torch.bfloat16),
}
#: Candidates recomputed in fp32 by ``mixed``, as a multiple of the policy's max regions.
MIXED_REFINE = 1.5


@contextlib.contextmanager
def fp32_math(allow_tf32: bool) -> Iterator[None]:
    """Scope PyTorch's TF32 switches for CUDA convolutions and matmuls; restored on exit.

    PyTorch runs fp32 cuDNN convolutions as TF32 by default (10-bit mantissa on Ampere and
    later), which moves the detector's regions like a reduced precision would. The detector's
    ``fp32`` therefore turns TF32 off while it runs; ``tf32`` turns it on. The switches are
    process-wide flags (no GPU needed to set them), so this is also testable on CPU.
    """
    value = "tf32" if allow_tf32 else "ieee"
    cudnn_conv = getattr(torch.backends.cudnn, "conv", None)
    matmul = torch.backends.cuda.matmul
    if cudnn_conv is not None and hasattr(cudnn_conv, "fp32_precision"):  # torch >= 2.9
        saved = (matmul.fp32_precision, cudnn_conv.fp32_precision)
        matmul.fp32_precision, cudnn_conv.fp32_precision = value, value
        try:
            yield
        finally:
            matmul.fp32_precision, cudnn_conv.fp32_precision = saved
    else:  # the legacy switches
        saved = (matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allow_tf32
        try:
            yield
        finally:
            matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def tf32_enabled() -> tuple[bool, bool]:
    """(matmul, cuDNN conv) TF32 switches as PyTorch has them now."""
    cudnn_conv = getattr(torch.backends.cudnn, "conv", None)
    if cudnn_conv is not None and hasattr(cudnn_conv, "fp32_precision"):
        conv = cudnn_conv.fp32_precision
        if conv == "none":
            conv = torch.backends.cudnn.fp32_precision
        matmul = torch.backends.cuda.matmul.fp32_precision
        if matmul == "none":
            matmul = torch.backends.fp32_precision
        return matmul == "tf32", conv == "tf32"
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


DETECTOR_NAME = "butd-r101-vg"


class BUTDModel(nn.Module):
    """ResNet-101 C4 Faster R-CNN with the VG attribute head; canonical state-dict keys."""

    def __init__(self, settings: BUTDSettings | None = None, objectness: str = "sigmoid") -> None:
        super().__init__()
        self.settings = settings or BUTDSettings()
        s = self.settings
        rpn = RPNSettings(pre_nms_topk=s.pre_nms_topk, post_nms_topk=s.post_nms_topk,
                          nms_thresh=s.rpn_nms_thresh, min_size=s.rpn_min_size)
        self.backbone = ResNetC4()
        self.proposal_generator = RPN(self.backbone.out_channels, 512, objectness, rpn)
        self.roi_heads = RoIHeads(res5_dilation=2)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, sizes: list[tuple[int, int]], scales: list[float],
                ) -> tuple[list[torch.Tensor], RoIOutputs]:
        """Proposals per image (resized px) and the head's outputs for all of them, concatenated."""
        features, mask = self.backbone(images, sizes)
        proposals = [boxes for boxes, _ in self.proposal_generator(features, mask, sizes, scales)]
        return proposals, self.roi_heads(features, proposals)


def random_init_(model: BUTDModel, seed: int = 0) -> BUTDModel:
    """Seeded random weights that keep activations in a sensible range through 100+ layers.

    Convs get He-normal weights; frozen BNs get random statistics and affine terms, with the last
    BN of every residual branch scaled down so the residual sums do not blow up; the heads get
    scales that give peaked (not uniform) class probabilities. Only for smoke runs and tests.
    """
    gen = torch.Generator().manual_seed(seed)

    def normal(t: torch.Tensor, std: float) -> None:
        t.copy_(torch.randn(t.shape, generator=gen) * std)

    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
                normal(module.weight, math.sqrt(2.0 / fan_in))
                if module.bias is not None:
                    normal(module.bias, 0.1)
            norm = getattr(module, "norm", None)
            if norm is not None:
                c = norm.weight.shape[0]
                branch_end = name.endswith("conv3")
                norm.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
                norm.running_var.copy_(torch.rand(c, generator=gen) * 0.5 + 0.75)
                norm.weight.copy_((torch.rand(c, generator=gen) * 0.5 + 0.5) * (0.2 if branch_end else 1.0))
                norm.bias.copy_(torch.randn(c, generator=gen) * 0.05)
        pred = model.roi_heads.box_predictor
        head = model.proposal_generator.rpn_head
        normal(head.objectness_logits.weight, 0.05)
        normal(head.anchor_deltas.weight, 0.005)
        head.anchor_deltas.bias.zero_()
        # pooled features of this random net have an RMS of a few tens: these scales give logits
        # and deltas of order 1 (peaked but varied class / attribute probabilities)
        for layer, std in ((pred.cls_score, 0.002), (pred.bbox_pred, 0.0002), (pred.fc_attr, 0.001),
                           (pred.attr_score, 0.1)):
            normal(layer.weight, std)
            normal(layer.bias, 0.01)
        # the pooled features are all positive with a large shared component; zero-mean rows keep
        # one class from winning every region
        pred.cls_score.weight -= pred.cls_score.weight.mean(dim=1, keepdim=True)
        normal(pred.cls_embedding.weight, 1.0)
    return model


class BUTDDetector:
    """The bottom-up-attention detector behind the :class:`detectors.base.Detector` protocol."""

    name = DETECTOR_NAME

    def __init__(self, model: BUTDModel, *, device: str = "cpu",
                 weights_file: str | None = None, weights_sha256: str | None = None,
                 weights_layout: str | None = None, vocab: VGVocab | None = None,
                 random_init: bool = False, seed: int | None = None) -> None:
        #: The settings the model was built from (one object: the RPN reads the same one).
        self.config: BUTDSettings = model.settings.validate()
        self.policy = self.config.policy()
        #: The image preparation this detector expects (picklable: hand it to decode tasks).
        self.preprocessing: Preprocessing = self.config.preprocessing()
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.weights_file = weights_file
        self.weights_sha256 = weights_sha256
        self.weights_layout = weights_layout
        self.vocab = vocab
        self.random_init = random_init
        self.seed = seed
        #: How the network runs for ``config.precision`` (see :data:`PLANS`).
        self.plan: PrecisionPlan = PLANS[self.config.precision]
        self.refine_factor = MIXED_REFINE

    def settings(self) -> dict[str, Any]:
        """Every setting that changes the output (for store manifests)."""
        out = asdict(self.config)
        out.update(name=self.name, backbone="resnet101-c4 caffe", pixel_means_bgr=list(PIXEL_MEANS_BGR),
                   roi_pool=14, res5="stride1-dilation2", box_coding="legacy+1",
                   region_policy=self.policy.to_manifest(), weights_layout=self.weights_layout,
                   random_init=self.random_init)
        if self.random_init:
            out["seed"] = self.seed
        if self.plan != PLANS[self.config.precision]:  # an experimental plan set by hand
            out["plan"] = next((k for k, v in EXPERIMENTAL_PLANS.items() if v == self.plan),
                               repr(self.plan))
        if self.plan.refine:
            out["mixed_refine"] = self.refine_factor
        return out

    def _autocast(self, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _forward(self, images: torch.Tensor, sizes: list[tuple[int, int]], scales: list[float],
                 ) -> tuple[list[torch.Tensor], torch.Tensor, RoIOutputs]:
        plan, model = self.plan, self.model
        with self._autocast(plan.backbone):
            features, mask = model.backbone(images, sizes)
            proposals = [boxes.float() for boxes, _ in
                         model.proposal_generator(features, mask, sizes, scales)]
        pooled = model.roi_heads.pool(features, proposals)
        del features
        with self._autocast(plan.head):
            outs = model.roi_heads.head(pooled)
        return proposals, pooled, outs

    def _refine(self, batch: list[PreparedImage], proposals: list[torch.Tensor],
                pooled: torch.Tensor, outs: RoIOutputs) -> int:
        """Recompute in fp32 (in place) the head rows of each image's candidates: its best
        ``ceil(refine_factor × max regions)`` rows by reduced-precision ``max_conf``, then any row
        the selection keeps that is still not fp32, until the kept rows are all fp32 rows.
        Returns how many rows were recomputed."""
        limit = math.ceil(self.refine_factor * self.policy.max_regions)
        starts = [0]
        for boxes in proposals:
            starts.append(starts[-1] + len(boxes))
        exact = torch.zeros(starts[-1], dtype=torch.bool, device=outs.cls_prob.device)
        todo = []
        for i, prep in enumerate(batch):
            if starts[i + 1] > starts[i]:
                score = self._selection_scores(i, prep, proposals, outs, starts)
                top = torch.sort(score, descending=True, stable=True).indices[:limit]
                todo.append(top + starts[i])
        while todo:
            idx = torch.cat(todo)
            idx = idx[~exact[idx]]
            if not len(idx):
                break
            again = self.model.roi_heads.head(pooled[idx])
            for name in ("features", "cls_prob", "box_deltas", "attr_prob"):
                getattr(outs, name)[idx] = getattr(again, name)
            exact[idx] = True
            todo = []
            for i, prep in enumerate(batch):  # the selection on the updated rows
                sl = slice(starts[i], starts[i + 1])
                keep = self._keep(i, prep, proposals, outs, starts)
                missing = keep[~exact[sl][keep]]
                if len(missing):
                    todo.append(missing + starts[i])
        return int(exact.sum())

    def _selection_scores(self, i: int, prep: PreparedImage, proposals: list[torch.Tensor],
                          outs: RoIOutputs, starts: list[int]) -> torch.Tensor:
        prob = outs.cls_prob[starts[i]:starts[i + 1]]
        if self.config.selection == "caffe":
            return per_class_nms_max_conf(proposals[i] / prep.scale, prob[:, 1:],
                                          self.config.class_nms_thresh)
        return prob[:, 1:].amax(dim=1)

    def _keep(self, i: int, prep: PreparedImage, proposals: list[torch.Tensor], outs: RoIOutputs,
              starts: list[int]) -> torch.Tensor:
        sl = slice(starts[i], starts[i + 1])
        if self.config.selection == "caffe":
            return select_caffe(self._selection_scores(i, prep, proposals, outs, starts), self.policy)
        size = (prep.tensor.shape[-2], prep.tensor.shape[-1])
        return select_maxnms(proposals[i], outs.cls_prob[sl], outs.box_deltas[sl], size,
                             self.policy)[0]

    @torch.no_grad()
    def detect(self, batch: list[PreparedImage]) -> list[DetectedRegions]:
        """One region dict per prepared image (keys :data:`detectors.base.REGION_KEYS`)."""
        if not batch:
            return []
        images, sizes = batch_images(batch)
        scales = [p.scale for p in batch]
        with fp32_math(self.plan.tf32):
            proposals, pooled, outs = self._forward(images.to(self.device), sizes, scales)
            if self.plan.refine:
                self._refine(batch, proposals, pooled, outs)
            del pooled
        results = []
        start = 0
        for i, prep in enumerate(batch):
            n = len(proposals[i])
            sl = slice(start, start + n)
            start += n
            region = regions_for_image(
                proposals[i], outs.features[sl], outs.cls_prob[sl], outs.box_deltas[sl],
                outs.attr_prob[sl], scale=prep.scale, resized_size=sizes[i],
                orig_size=(prep.orig_height, prep.orig_width), policy=self.policy,
                selection=self.config.selection, nms_thresh=self.config.class_nms_thresh)
            assert set(region) == set(REGION_KEYS)
            results.append(region)
        del proposals, outs, images
        release_free_heap()  # varying activation sizes fragment the heap: give free pages back
        return results

    def label(self, object_id: int, attr_id: int | None = None) -> str:
        """"attribute object" with vocabulary names, or numeric ids without a vocabulary."""
        obj = self.vocab.object_name(object_id) if self.vocab else f"obj{object_id}"
        if attr_id is None:
            return obj
        attr = self.vocab.attribute_name(attr_id) if self.vocab else f"attr{attr_id}"
        return f"{attr} {obj}"


def load_butd_weights(spec: str | os.PathLike[str], model_state: dict[str, torch.Tensor] | None = None,
                      *, box_weights: tuple[float, float, float, float] | None = None) -> LoadedWeights:
    """Read a MILVLG ``.pth`` / airsplay ``.pkl`` / HF directory and map it to canonical keys.

    ``model_state`` (a canonical ``state_dict()``) is what the keys and shapes are checked against;
    by default a fresh :class:`BUTDModel`'s. ``box_weights`` overrides the detectron2 box weights
    assumed for airsplay / bare HF files. (:func:`detectors.butd.weights.load_checkpoint` does the
    work; it lives there without the model so that the two modules do not import each other.)
    """
    if model_state is None:
        model_state = BUTDModel().state_dict()
    return load_checkpoint(spec, model_state, box_weights=box_weights)


def build_detector(weights: str | None, settings: BUTDSettings | None = None, *,
                   random_init: bool = False, seed: int = 0, device: str = "cpu",
                   vocab_dir: str | Path | None = None) -> BUTDDetector:
    """Build the detector from a checkpoint (path, URL or hub id) or with seeded random weights.

    ``settings`` (default: the Caffe BUTD test settings) is everything that changes the output;
    the model is built from it. The VG vocabulary is read from ``vocab_dir``, else from the
    weights' directory (a checkpoint's own lists win), else the 1600/400 lists shipped with the
    package are used.
    """
    if (weights is None) == (not random_init):
        raise ConfigError("give exactly one of a weights path (--weights) or random_init "
                          "(--random-init)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for but torch sees no CUDA device; use --device cpu")
    settings = (settings or BUTDSettings()).validate()
    model = BUTDModel(settings)
    if random_init:
        random_init_(model, seed)
        file = sha = layout = None
        weights_dir = None
    else:
        loaded = load_checkpoint(weights, model.state_dict())
        missing, unexpected = model.load_state_dict(loaded.state_dict, strict=False)
        # strictness was enforced by load_checkpoint; only the optional anchor table may be absent
        assert not unexpected and set(missing) <= {ANCHOR_KEY}
        file, sha, layout = loaded.path.name, loaded.sha256, loaded.layout
        weights_dir = loaded.directory
    if vocab_dir is not None:
        vocab = VGVocab.load(vocab_dir)
    else:
        vocab = VGVocab.find(weights_dir) or VGVocab.shipped()
    return BUTDDetector(model, device=device, weights_file=file, weights_sha256=sha,
                        weights_layout=layout, vocab=vocab, random_init=random_init,
                        seed=seed if random_init else None)
