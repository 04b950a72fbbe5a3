"""Load the community BUTD checkpoints into our canonical module (docs/guide/detector.md).

Three layouts are recognised and mapped to the canonical state dict of
:class:`detectors.butd.model.BUTDModel` (detectron2 module names; Caffe class order: background
first, "no attribute" first; RPN objectness as one logit per anchor; raw box deltas for all 1601
classes):

* ``milvlg`` — MILVLG/bottom-up-attention.pytorch ``bua-caffe-frcn-r101-*.pth``: Caffe order,
  24-channel bg/fg softmax objectness, 6404 box rows, ``cls_embed`` / ``attr_linear1`` /
  ``attr_linear2``. Objectness becomes ``fg − bg`` (``sigmoid(f−b) = softmax_fg``).
* ``airsplay`` — airsplay/py-bottom-up-attention ``faster_rcnn_from_caffe_attr*.pkl`` (a pickle of
  ``{"model": {name: ndarray}}``): background last, 12 logits, 6400 rows for the foreground classes
  scaled by detectron2's box weights (10, 10, 5, 5), ``cls_embedding`` / ``fc_attr`` /
  ``attr_score``, "no attribute" last. Read through the restricted unpickler.
* ``hf`` — Hugging Face ``unc-nlp/frcnn-vg-finetuned``: a directory with ``pytorch_model.bin``
  (airsplay names + ``num_batches_tracked`` + ``cell_anchors.0``) and ``config.yaml`` (its
  ``ROI_BOX_HEAD.BBOX_REG_WEIGHTS`` is honoured).

Loading is strict: keys the canonical model lacks or needs are named in the error. ``.pth``/``.bin``
go through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from itmflow.errors import CheckpointLayoutError, InputFileError, ItmflowError
from itmflow.files import sha256_file
from itmflow.safe_pickle import restricted_load

LAYOUTS = ("milvlg", "airsplay", "hf")
D2_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # detectron2's ROI_BOX_HEAD.BBOX_REG_WEIGHTS default
ANCHOR_KEY = "proposal_generator.anchor_generator.cell_anchors.0"
_PRED = "roi_heads.box_predictor."
_MILVLG_RENAMES = {"cls_embed.": "cls_embedding.", "attr_linear1.": "fc_attr.",
                   "attr_linear2.": "attr_score."}
HF_WEIGHTS = "pytorch_model.bin"
HF_CONFIG = "config.yaml"
HUB_FILES = (HF_WEIGHTS, HF_CONFIG)


@dataclass
class LoadedWeights:
    """A checkpoint mapped to canonical keys, with where it came from."""

    state_dict: dict[str, torch.Tensor]
    layout: str
    path: Path
    sha256: str
    has_anchors: bool
    box_weights: tuple[float, float, float, float]
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def directory(self) -> Path:
        """Directory holding the weights (searched for a VG vocabulary)."""
        return self.path if self.path.is_dir() else self.path.parent


# ---------------------------------------------------------------- reading files


def _unwrap(obj: Any, path: Path) -> dict[str, Any]:
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]  # detectron2 checkpoints / airsplay pickles wrap the weights
    if not isinstance(obj, dict) or not obj:
        raise CheckpointLayoutError(f"{path}: expected a state dict (name → array), got "
                                    f"{type(obj).__name__}; is this a BUTD checkpoint?")
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise CheckpointLayoutError(f"{path}: non-string key {key!r} in the state dict")
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        elif isinstance(value, (np.generic, int, float)):
            value = torch.as_tensor(value)
        if not isinstance(value, torch.Tensor):
            if key.startswith("__"):  # e.g. "__author__" of detectron2-native pickles
                continue
            raise CheckpointLayoutError(f"{path}: entry {key!r} is a {type(value).__name__}, "
                                        "not an array")
        out[key] = value
    return out


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses code objects: report, do not fall back
        raise CheckpointLayoutError(
            f"{path}: cannot be read with torch.load(weights_only=True) ({exc}); only plain "
            "tensor state dicts are accepted") from None
    return _unwrap(obj, path)


def _ci_get(mapping: Any, *keys: str) -> Any:
    """Nested lookup ignoring key case (HF's config.yaml may use either case)."""
    cur = mapping
    for key in keys:
        if not isinstance(cur, dict):
            return None
        found = [v for k, v in cur.items() if str(k).lower() == key.lower()]
        if not found:
            return None
        cur = found[0]
    return cur


def _read_hf_config(path: Path) -> dict[str, Any]:
    import yaml

    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise CheckpointLayoutError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(cfg, dict):
        raise CheckpointLayoutError(f"{path}: expected a mapping at the top level")
    return cfg


def detect_layout(state: dict[str, torch.Tensor]) -> str:
    """``milvlg`` or ``airsplay`` (detectron2 names) from the box-predictor key names."""
    names = set(state)
    if {_PRED + "cls_embed.weight", _PRED + "attr_linear1.weight"} & names:
        return "milvlg"
    if _PRED + "cls_embedding.weight" in names:
        return "airsplay"
    raise CheckpointLayoutError(
        "unknown checkpoint layout: no roi_heads.box_predictor.cls_embed(ding).weight key; "
        f"first keys: {sorted(names)[:5]}. Expected a MILVLG .pth, an airsplay .pkl or the HF "
        "unc-nlp/frcnn-vg-finetuned directory")


# ---------------------------------------------------------------- conversions


def _bg_last_to_first(t: torch.Tensor) -> torch.Tensor:
    return torch.cat([t[-1:], t[:-1]], dim=0)


def _from_milvlg(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in sd.items():
        for old, new in _MILVLG_RENAMES.items():
            if key.startswith(_PRED + old):
                key = _PRED + new + key[len(_PRED + old):]
        out[key] = value
    for suffix in ("weight", "bias"):
        key = f"proposal_generator.rpn_head.objectness_logits.{suffix}"
        if key in out and out[key].shape[0] == 24:
            # Caffe softmax: channels 0..11 background, 12..23 foreground → one logit fg − bg
            t = out[key].float()
            out[key] = t[12:] - t[:12]
    return out


def _from_d2(sd: dict[str, torch.Tensor], box_weights: tuple[float, ...]) -> dict[str, torch.Tensor]:
    out = dict(sd)
    for key in (_PRED + "cls_score.weight", _PRED + "cls_score.bias",
                _PRED + "cls_embedding.weight", _PRED + "attr_score.weight",
                _PRED + "attr_score.bias"):
        if key in out:
            out[key] = _bg_last_to_first(out[key])
    w = torch.tensor(box_weights, dtype=torch.float32)
    for suffix in ("weight", "bias"):
        key = _PRED + f"bbox_pred.{suffix}"
        if key not in out:
            continue
        t = out[key].float()
        if t.shape[0] % 4:
            continue  # wrong shape: reported by the shape check
        # rows are (dx, dy, dw, dh) per foreground class, scaled by the box weights at training
        # time in detectron2's convention; undo that and give background zero rows (never used)
        t = t.view(-1, 4, *t.shape[1:]) / w.view(1, 4, *([1] * (t.dim() - 1)))
        t = t.reshape(-1, *t.shape[2:])
        out[key] = torch.cat([t.new_zeros(4, *t.shape[1:]), t], dim=0)
    return out


def _rename_gamma_beta(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # the HF loader renames old TF-style BN names the same way before its strict load
    return {re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", k)): v for k, v in sd.items()}


def to_canonical(sd: dict[str, torch.Tensor], layout: str,
                 box_weights: tuple[float, ...] = D2_BOX_WEIGHTS) -> dict[str, torch.Tensor]:
    """Map a state dict of ``layout`` to canonical keys and class order (no checks)."""
    sd = {k: v for k, v in _rename_gamma_beta(sd).items() if not k.endswith("num_batches_tracked")}
    if layout == "milvlg":
        return _from_milvlg(sd)
    if layout in ("airsplay", "hf"):
        return _from_d2(sd, box_weights)
    raise CheckpointLayoutError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")


def check_against(model_state: dict[str, torch.Tensor], sd: dict[str, torch.Tensor],
                  source: str, layout: str) -> None:
    """Raise :class:`CheckpointLayoutError` naming missing / unexpected / mis-shaped keys."""
    optional = {ANCHOR_KEY}
    missing = sorted(k for k in model_state if k not in sd and k not in optional)
    unexpected = sorted(k for k in sd if k not in model_state)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {', '.join(missing[:8])}"
                        + (" …" if len(missing) > 8 else ""))
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {', '.join(unexpected[:8])}"
                        + (" …" if len(unexpected) > 8 else ""))
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
              for k, v in model_state.items() if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es) after conversion: {'; '.join(shapes[:5])}")
    if problems:
        raise CheckpointLayoutError(
            f"{source} (read as the {layout} layout) does not fit the BUTD ResNet-101 model: "
            + " | ".join(problems)
            + ". Use one of the MILVLG bua-caffe-frcn-r101 .pth, airsplay "
              "faster_rcnn_from_caffe_attr*.pkl or HF unc-nlp/frcnn-vg-finetuned checkpoints")


# ---------------------------------------------------------------- sources


def resolve_weights(spec: str | os.PathLike[str]) -> Path:
    """A local path as is; a catalog NAME (``itmflow weights list``), an ``http(s)://`` URL or a
    Hugging Face hub id through :func:`itmflow.weights.resolve` (cache first; downloaded where the
    entry allows it). Downloads happen only when a user names one (never in tests).
    """
    from itmflow.weights import resolve

    path = resolve(spec)
    if path is None:
        raise InputFileError(f"weights {str(spec)!r} not found: give a .pth / .pkl file, a directory "
                             f"with {HF_WEIGHTS} + {HF_CONFIG}, a name from `itmflow weights list`, "
                             "a URL or a hub id")
    return path


def read_pickle_checkpoint(path: Path) -> Any:
    """A ``.pkl`` checkpoint through the restricted unpickler; anything unreadable is one
    :class:`CheckpointLayoutError` naming the file (a refused global keeps its own error)."""
    try:
        return restricted_load(path)
    except ItmflowError:
        raise
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise CheckpointLayoutError(f"{path}: not a readable pickle ({first})") from None


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], str, Path, dict[str, Any]]:
    """Read raw (unconverted) weights: (state dict, layout, weights file, HF config)."""
    config: dict[str, Any] = {}
    if path.is_dir():
        file = path / HF_WEIGHTS
        cfg = path / HF_CONFIG
        for need in (file, cfg):
            if not need.is_file():
                raise CheckpointLayoutError(
                    f"{path} is a directory but lacks {need.name}; a Hugging Face BUTD checkpoint "
                    f"(unc-nlp/frcnn-vg-finetuned) holds {HF_WEIGHTS} and {HF_CONFIG}")
        config = _read_hf_config(cfg)
        sd = _torch_load(file)
        layout = detect_layout(sd)
        if layout != "airsplay":
            raise CheckpointLayoutError(f"{file}: expected detectron2/HF key names, found {layout}")
        return sd, "hf", file, config
    if not path.is_file():
        raise InputFileError(f"weights file {path} not found")
    if path.suffix == ".pkl":
        sd = _unwrap(read_pickle_checkpoint(path), path)
        layout = detect_layout(sd)
        return sd, layout, path, config
    sd = _torch_load(path)
    layout = detect_layout(sd)
    if layout == "airsplay" and path.suffix == ".bin":
        layout = "hf"  # a bare HF pytorch_model.bin without its config: d2 defaults apply
    return sd, layout, path, config


def hf_box_weights(config: dict[str, Any]) -> tuple[float, float, float, float]:
    """``MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS`` of an HF config.yaml (detectron2 default if absent)."""
    value = _ci_get(config, "MODEL", "ROI_BOX_HEAD", "BBOX_REG_WEIGHTS")
    if value is None:
        return D2_BOX_WEIGHTS
    try:
        weights = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        weights = ()
    if len(weights) != 4:
        raise CheckpointLayoutError(f"config.yaml MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS = {value!r}; "
                                    "expected four numbers")
    return weights  # type: ignore[return-value]


def _check_hf_config(config: dict[str, Any], where: Path) -> None:
    if _ci_get(config, "MODEL", "ROI_BOX_HEAD", "RES5HALVE") is True:
        raise CheckpointLayoutError(f"{where}: MODEL.ROI_BOX_HEAD.RES5HALVE is true (stride-2 res5); "
                                    "the BUTD test net runs res5 with stride 1, dilation 2")
    classes = _ci_get(config, "MODEL", "ROI_HEADS", "NUM_CLASSES")
    if classes is not None and int(classes) != 1600:
        raise CheckpointLayoutError(f"{where}: MODEL.ROI_HEADS.NUM_CLASSES = {classes}, expected 1600")


def load_checkpoint(spec: str | os.PathLike[str], model_state: dict[str, torch.Tensor],
                    *, box_weights: tuple[float, float, float, float] | None = None) -> LoadedWeights:
    """Read a MILVLG ``.pth`` / airsplay ``.pkl`` / HF directory and map it to canonical keys.

    ``model_state`` (a canonical ``state_dict()``) is what the keys and shapes are strictly checked
    against. ``box_weights`` overrides the detectron2 box weights assumed for airsplay / bare HF
    files. :func:`detectors.butd.load_butd_weights` supplies a fresh model's state by default.
    """
    path = resolve_weights(spec)
    raw, layout, file, config = read_checkpoint(path)
    if layout == "milvlg":
        weights = (1.0, 1.0, 1.0, 1.0)
    elif layout == "hf" and config:
        _check_hf_config(config, path / HF_CONFIG)
        weights = box_weights or hf_box_weights(config)
    else:
        weights = box_weights or D2_BOX_WEIGHTS
    sd = to_canonical(raw, layout, weights)
    check_against(model_state, sd, str(path), layout)
    return LoadedWeights(state_dict=sd, layout=layout, path=path, sha256=sha256_file(file),
                         has_anchors=ANCHOR_KEY in sd, box_weights=weights, config=config)
