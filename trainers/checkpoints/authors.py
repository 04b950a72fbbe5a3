"""Import of the authors' released TERN / TERAN / SGRAF checkpoints into our models.

The releases are ``torch.save`` pickles (legacy non-zip format for the torch-1.x SGRAF files).
:func:`read_torch_checkpoint` opens them with ``torch.load(weights_only=True)`` and an allow-list of
``argparse.Namespace`` (SGRAF/TERN ``opt``) and numpy scalars/dtypes (a metric such as
``best_ndcg`` may be a numpy float); anything else is refused with :class:`UnsafeCheckpointError`
naming the global. :func:`load_authors_checkpoint` maps the keys strictly: every missing key and
every unused key is named; the tensors the authors' models compute but never use (docs/guide/models.md) are
expected, and listed in the import report.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from itmflow.errors import CheckpointLayoutError, ConfigError, InputFileError, UnsafeCheckpointError
from trainers.checkpoints.ours import key_list, load_strict
from trainers.models import MODEL_CLASSES
from trainers.models.common import MatchingModel
from trainers.models.sgraf import SgrafConfig
from trainers.models.teran import TeranConfig
from trainers.models.tern import TernConfig


def _safe_globals() -> list[Any]:
    """Namespace plus numpy scalars/dtypes under both numpy module names (1.x and 2.x pickles)."""
    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]
    allowed: list[Any] = [argparse.Namespace, np.dtype]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed.append((multiarray.scalar, f"{module}.scalar"))
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:  # numpy >= 1.25 pickles a dtype as its class
        allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return allowed


def read_torch_checkpoint(path: str | os.PathLike[str]) -> Any:
    """``torch.load(weights_only=True)`` of an untrusted file (zip or legacy format), CPU tensors.

    Admits tensors, plain containers, ``argparse.Namespace`` and numpy scalars; any other global
    raises :class:`UnsafeCheckpointError` naming it.
    """
    file = Path(path)
    if not file.is_file():
        raise InputFileError(f"checkpoint {file} does not exist")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        match = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if match or "weights_only" in text.lower() or "Weights only" in text:
            what = match.group(1) if match else "an object outside the allow-list"
            raise UnsafeCheckpointError(
                f"{file}: refused — the pickle asks for {what}, and only tensors, plain "
                "containers, argparse.Namespace and numpy scalars are admitted. The file is not "
                "an unmodified TERN/TERAN/SGRAF release; check where it came from") from None
        raise CheckpointLayoutError(f"{file}: not a readable torch checkpoint ({text[:300]})") from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointLayoutError(f"{file}: not a readable torch checkpoint ({exc})") from None


@dataclass
class ImportReport:
    """What :func:`load_authors_checkpoint` did with the file's keys."""

    path: str
    kind: str
    loaded: int
    """Number of tensors copied into the model."""
    unused_expected: list[str] = field(default_factory=list)
    """Tensors the authors' model holds but never uses (docs/guide/models.md): dropped on purpose."""
    filled: list[str] = field(default_factory=list)
    """Buffers absent from the file that keep their initial value (``num_batches_tracked``)."""
    info: dict[str, Any] = field(default_factory=dict)
    """``epoch``, ``Eiters``, ``best_rsum`` ... copied from the checkpoint."""


# Keys (after removing the ``img_txt_enc.`` prefix) the TERN/TERAN code saves but never uses.
_TERN_UNUSED = re.compile(r"^(img_enc\.fc\.(weight|bias)|txt_enc\.map\.(weight|bias)|"
                          r"txt_enc\.bert_model\.pooler\.dense\.(weight|bias)|"
                          r"txt_enc\.word_embeddings\.weight|"
                          r"txt_enc\.bert_model\.embeddings\.position_ids)$")
_TERN_PREFIX = "img_txt_enc."


def detect_kind(ckpt: Any, path: str = "") -> str:
    """``tern``, ``teran`` or ``sgraf`` from the structure of a loaded checkpoint."""
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointLayoutError(f"{path}: expected a dict with a 'model' entry (TERN/TERAN/"
                                    "SGRAF torch.save layout); got "
                                    f"{type(ckpt).__name__} with keys "
                                    f"{sorted(ckpt)[:10] if isinstance(ckpt, dict) else '-'}")
    model = ckpt["model"]
    if isinstance(model, (list, tuple)):
        return "sgraf"
    if isinstance(model, dict) and any(str(k).startswith(_TERN_PREFIX) for k in model):
        config = ckpt.get("config")
        if isinstance(config, dict):
            name = str((config.get("model") or {}).get("name", ""))
            loss = str((config.get("training") or {}).get("loss-type", ""))
            return "teran" if name == "teran" or "alignment" in loss else "tern"
        # No config: a separate image top transformer only exists in TERAN.
        return "teran" if any(".transformer_encoder_2." in str(k) for k in model) else "tern"
    raise CheckpointLayoutError(f"{path}: cannot tell whether this is a TERN, TERAN or SGRAF "
                                "checkpoint; pass kind='tern'|'teran'|'sgraf'")


def _section(config: dict[str, Any], name: str, path: str) -> dict[str, Any]:
    sec = config.get(name)
    if not isinstance(sec, dict):
        raise CheckpointLayoutError(f"{path}: checkpoint config has no {name!r} section")
    return sec


def _bert_config_from_state(state: dict[str, Tensor], prefix: str, path: str) -> dict[str, Any]:
    """The BERT architecture implied by the tensors (bert-base defaults for what shapes cannot say)."""
    try:
        vocab, hidden = state[f"{prefix}embeddings.word_embeddings.weight"].shape
        max_pos = state[f"{prefix}embeddings.position_embeddings.weight"].shape[0]
        type_vocab = state[f"{prefix}embeddings.token_type_embeddings.weight"].shape[0]
        inter = state[f"{prefix}encoder.layer.0.intermediate.dense.weight"].shape[0]
    except KeyError as exc:
        raise CheckpointLayoutError(f"{path}: missing BERT tensor {exc.args[0]}") from None
    layers = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix)
                                                               + r"encoder\.layer\.(\d+)\.", k))}
    # Heads cannot be read from shapes; BERT models use 64-d heads (bert-base: 12 × 64).
    return {"vocab_size": int(vocab), "hidden_size": int(hidden), "num_hidden_layers": len(layers),
            "num_attention_heads": max(1, int(hidden) // 64), "intermediate_size": int(inter),
            "max_position_embeddings": int(max_pos), "type_vocab_size": int(type_vocab),
            "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
            "layer_norm_eps": 1e-12, "pad_token_id": 0}


def tern_config_from_checkpoint(ckpt: dict[str, Any], state: dict[str, Tensor], kind: str,
                                path: str = "", bert: str | None = None) -> TernConfig:
    """Rebuild a :class:`TernConfig` / :class:`TeranConfig` from the checkpoint's ``config``."""
    config = ckpt.get("config")
    if not isinstance(config, dict):
        raise CheckpointLayoutError(f"{path}: no 'config' dict in the checkpoint; TERN/TERAN "
                                    "releases carry their YAML config there")
    text, image, model = (_section(config, n, path) for n in ("text-model", "image-model", "model"))
    try:
        if text.get("name", "bert") != "bert" or int(text.get("layers", 0)) != 0:
            raise ConfigError(f"text-model {text.get('name')!r} with {text.get('layers')} extra "
                              "layers is not supported (only BERT with layers: 0, as released)")
        if image.get("pos-encoding", "concat-and-process") != "concat-and-process":
            raise ConfigError(f"image-model.pos-encoding {image.get('pos-encoding')!r} is not "
                              "supported (only concat-and-process, as released)")
        for agg in ("text-aggregation", "image-aggregation"):
            if model.get(agg, "first") != "first":
                raise ConfigError(f"model.{agg} {model.get(agg)!r} is not supported (only 'first')")
        values: dict[str, Any] = dict(
            bert=bert or str(text.get("pretrain", "bert-base-uncased")),
            bert_layers=int(text.get("extraction-hidden-layer", 6)),
            feature_dim=int(image.get("feat-dim", 2048)),
            visual_layers=int(image.get("transformer-layers", 4)),
            visual_dropout=float(image.get("dropout", 0.1)),
            embed_size=int(model.get("embed-size", 1024)),
            layers=int(model.get("layers", 2)),
            dropout=float(model.get("dropout", 0.1)),
            shared_transformer=bool(model.get("shared-transformer", kind == "tern")),
        )
        # The authors hard-code FF 2048; read it off the tensors so any file loads consistently.
        ff = state.get("transformer_encoder_1.layers.0.linear1.weight")
        if ff is not None:
            values["ff_dim"] = int(ff.shape[0])
    except ConfigError as exc:
        raise CheckpointLayoutError(f"{path}: {exc}") from None
    bert_prefix = "txt_enc.bert_model."
    if bert and (Path(bert) / "config.json").is_file():
        from transformers import BertConfig

        bert_cfg = BertConfig.from_pretrained(bert).to_dict()
    else:
        bert_cfg = _bert_config_from_state(state, bert_prefix, path)
    values["bert_config"] = bert_cfg
    if kind == "teran":
        training = config.get("training") or {}
        mode = str(training.get("alignment-mode", "MrSw"))
        if mode not in ("MrSw", "MwSr", "symm"):
            raise CheckpointLayoutError(f"{path}: training.alignment-mode {mode!r} is not "
                                        "supported (MrSw, MwSr, symm)")
        # Their evaluation pads captions to 88 tokens with zeros that take part in MwSr's max.
        return TeranConfig(**values, aggregation=mode,  # type: ignore[arg-type]
                           mwsr_zero_floor=mode in ("MwSr", "symm"))
    return TernConfig(**values)


def sgraf_config_from_checkpoint(ckpt: dict[str, Any], states: list[dict[str, Tensor]],
                                 path: str = "") -> SgrafConfig:
    """Rebuild a :class:`SgrafConfig` from the checkpoint's ``opt`` (an argparse.Namespace)."""
    opt = ckpt.get("opt")
    if isinstance(opt, argparse.Namespace):
        opt = vars(opt)
    if not isinstance(opt, dict):
        raise CheckpointLayoutError(f"{path}: no 'opt' (argparse.Namespace) in the checkpoint; "
                                    "SGRAF releases carry their options there")
    sim = states[2]
    bn = sim.get("v_global_w.embedding_local.1.weight")
    module = str(opt.get("module_name", "SGR"))
    if module not in ("SGR", "SAF"):
        raise CheckpointLayoutError(f"{path}: opt.module_name {module!r} is not SGR or SAF")
    embed = states[1].get("embed.weight")
    return SgrafConfig(
        module=module,  # type: ignore[arg-type]
        vocab_size=int(opt.get("vocab_size", embed.shape[0] if embed is not None else 0)),
        feature_dim=int(opt.get("img_dim", 2048)),
        word_dim=int(opt.get("word_dim", 300)),
        embed_size=int(opt.get("embed_size", 1024)),
        sim_dim=int(opt.get("sim_dim", 256)),
        sgr_step=int(opt.get("sgr_step", 3)),
        num_layers=int(opt.get("num_layers", 1)),
        bi_gru=bool(opt.get("bi_gru", True)),
        no_imgnorm=bool(opt.get("no_imgnorm", False)),
        no_txtnorm=bool(opt.get("no_txtnorm", False)),
        num_regions=int(bn.shape[0]) if bn is not None else 36,
    )


def _plain_state(obj: Any, what: str, path: str) -> dict[str, Tensor]:
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointLayoutError(f"{path}: {what} is not a state dict of tensors")
    return {str(k): v for k, v in obj.items()}


def load_authors_checkpoint(path: str | os.PathLike[str], kind: str | None = None, *,
                            bert: str | None = None, device: str | torch.device = "cpu"
                            ) -> MatchingModel:
    """Load a released TERN / TERAN / SGRAF ``.pth(.tar)`` into our model (eval mode).

    ``kind`` is detected from the file when None. ``bert`` optionally names a local BERT directory
    whose ``config.json`` describes the architecture (otherwise it is read off the tensor shapes;
    the weights always come from the checkpoint). The returned model carries
    ``model.import_report`` (:class:`ImportReport`): the expected-unused keys it dropped, buffers
    it filled, and epoch / iteration information from the file.
    """
    src = str(path)
    ckpt = read_torch_checkpoint(path)
    asked = (kind or "").lower()
    kind = (kind or detect_kind(ckpt, src)).lower()
    if kind.startswith("sgraf"):
        kind = "sgraf"
    if kind not in MODEL_CLASSES:
        raise ConfigError(f"unknown checkpoint kind {kind!r}; use tern, teran or sgraf")
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointLayoutError(f"{src}: expected a dict with a 'model' entry")
    unused: list[str] = []
    if kind == "sgraf":
        parts = ckpt["model"]
        if not isinstance(parts, (list, tuple)) or len(parts) != 3:
            raise CheckpointLayoutError(f"{src}: SGRAF 'model' must be a list of 3 state dicts "
                                        "[img_enc, txt_enc, sim_enc]")
        states = [_plain_state(p, f"model[{i}]", src) for i, p in enumerate(parts)]
        config: Any = sgraf_config_from_checkpoint(ckpt, states, src)
        if asked in ("sgraf-sgr", "sgraf-saf") and asked != f"sgraf-{config.module.lower()}":
            raise CheckpointLayoutError(f"{src}: asked for {asked} but the checkpoint is an "
                                        f"SGRAF {config.module} model (opt.module_name)")
        state = {f"{prefix}.{k}": v for prefix, part in zip(("img_enc", "txt_enc", "sim_enc"), states)
                 for k, v in part.items()}
    else:
        raw = _plain_state(ckpt["model"], "model", src)
        outside = sorted(k for k in raw if not k.startswith(_TERN_PREFIX))
        if outside:
            raise CheckpointLayoutError(f"{src}: keys outside '{_TERN_PREFIX}' ({len(outside)}): "
                                        f"{key_list(outside)}")
        state = {k[len(_TERN_PREFIX):]: v for k, v in raw.items()}
        unused = sorted(k for k in state if _TERN_UNUSED.match(k))
        state = {k: v for k, v in state.items() if k not in unused}
        config = tern_config_from_checkpoint(ckpt, state, kind, src, bert)
        layers_in_file = config.bert_config["num_hidden_layers"]
        if layers_in_file != config.bert_layers:
            raise CheckpointLayoutError(f"{src}: config says extraction-hidden-layer "
                                        f"{config.bert_layers} but the file holds "
                                        f"{layers_in_file} BERT layers")
    model = MODEL_CLASSES[kind][1](config)
    filled = load_strict(model, {k: v.float() if v.is_floating_point() else v
                                 for k, v in state.items()},
                         source=src, allow_missing=("num_batches_tracked",))
    info = {k: _plain(ckpt[k]) for k in ("epoch", "Eiters", "best_rsum", "best_ndcg")
            if k in ckpt}
    model.import_report = ImportReport(path=src, kind=kind, loaded=len(state),  # type: ignore[attr-defined]
                                       unused_expected=unused, filled=filled, info=info)
    return model.to(device).eval()


def _plain(value: Any) -> Any:
    """numpy / tensor scalars → Python numbers (for JSON reports)."""
    if isinstance(value, Tensor) and value.numel() == 1:
        return value.item()
    if hasattr(value, "item") and not isinstance(value, (list, dict)):
        try:
            return value.item()
        except (TypeError, ValueError):
            return value
    return value


__all__ = ["ImportReport", "detect_kind", "load_authors_checkpoint", "read_torch_checkpoint",
           "sgraf_config_from_checkpoint", "tern_config_from_checkpoint"]
