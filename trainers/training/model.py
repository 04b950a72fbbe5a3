"""The model a run trains: its config from the stores and ``model_config``, the optimiser, and
the checks made before the first step."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import torch
from torch import nn

from trainers.data import MatchingData
from trainers.models import MatchingModel, ModelConfig, build_model as build, make_config
from trainers.training.config import TrainConfig


def model_config(config: TrainConfig, data: MatchingData | None = None, *,
                 bert: str | None = None) -> ModelConfig:
    """The model's config dataclass: its defaults, what the stores decide, then ``model_config``.

    The stores decide the region feature size (``feature_dim`` of the region store) and, for SGRAF,
    the word-vocabulary size; ``bert`` (``--bert``) names the BERT directory or hub id. Explicit
    ``model_config`` keys win over both.
    """
    fields = {f.name for f in dataclasses.fields(make_config(config.model))}
    values: dict[str, Any] = {}
    if data is not None:
        dim = data.images.manifest.get("feature_dim")
        if "feature_dim" in fields and isinstance(dim, int):
            values["feature_dim"] = dim
        if "vocab_size" in fields and "words" in data.needs:
            size = data.word_vocab_size()
            if size is not None:
                values["vocab_size"] = size
    if bert is not None and "bert" in fields:
        values["bert"] = bert
    values.update(config.model_config)
    return make_config(config.model, values)


def build_model(config: TrainConfig, data: MatchingData | None = None, *,
                bert: str | None = None) -> MatchingModel:
    """The model of ``config.model`` built from :func:`model_config`."""
    return build(config.model, model_config(config, data, bert=bert))


def check_bert(config: TrainConfig, data: MatchingData | None = None, *,
               bert: str | None = None) -> None:
    """Fail at once, before a run directory exists, when the model needs BERT weights (TERN /
    TERAN without a ``bert_config``) that are neither a valid local directory nor cached/reachable
    (:func:`itmflow.weights.resolve_bert`: one line naming ``--bert DIR``)."""
    cfg = model_config(config, data, bert=bert)
    name = getattr(cfg, "bert", None)
    if name is None or getattr(cfg, "bert_config", None) is not None:
        return
    from itmflow.weights import resolve_bert

    resolve_bert(name)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam over all trainable parameters; BERT's group carries ``bert_lr_scale``."""
    bert, rest = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (bert if "bert" in name.lower() else rest).append(param)
    groups = [{"params": rest, "lr_scale": 1.0}]
    if bert:
        groups.append({"params": bert, "lr_scale": config.bert_lr_scale})
    return torch.optim.Adam(groups, lr=config.lr)


def check_region_policy(model: nn.Module, data: MatchingData) -> None:
    """Fail before training, naming the store, when a model needs a fixed K the store lacks.

    SGRAF's VisualSA has one BatchNorm channel per region, so every image needs exactly
    ``num_regions`` (36) regions; the model itself would only notice at the first batch.
    """
    k = getattr(getattr(model, "config", None), "num_regions", None)
    if k is None:
        return
    require_fixed_regions(data.images.manifest.get("region_policy"), int(k), store=str(data.images.path),
                          model_kind=getattr(model, "kind", "this model"))


def require_fixed_regions(record: Mapping[str, Any] | None, k: int, *, store: str,
                          model_kind: str = "this model") -> None:
    """Raise :class:`ModelInputError` unless the manifest's region policy ``record`` is fixed ``k``."""
    from itmflow.errors import ModelInputError
    from stores.schema import RegionPolicy

    policy = record or {}
    if not policy or RegionPolicy.from_manifest(policy).fixed_k != k:
        raise ModelInputError(
            f"region store {store} has region policy {policy}, but "
            f"{model_kind} needs exactly {k} regions per image; extract "
            f"with --regions {k} (fixed) or import {k}-region features")
