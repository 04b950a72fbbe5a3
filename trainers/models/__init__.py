"""The three matching models and a registry that builds them by name.

Names: ``tern``, ``teran``, ``sgraf`` (module from the config) and the shorthands ``sgraf-sgr`` /
``sgraf-saf`` used by ``itmflow train``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from itmflow.config import from_dict, merge
from itmflow.errors import ConfigError
from trainers.models.common import (
    Embeddings,
    MatchingModel,
    concat_embeddings,
    embeddings_to,
    index_embeddings,
    num_items,
)
from trainers.models.sgraf import SGRAF, SgrafConfig
from trainers.models.teran import TERAN, TeranConfig
from trainers.models.tern import TERN, TernConfig

MODEL_CLASSES: dict[str, tuple[type, type[MatchingModel]]] = {
    "tern": (TernConfig, TERN),
    "teran": (TeranConfig, TERAN),
    "sgraf": (SgrafConfig, SGRAF),
}
MODEL_NAMES = ("tern", "teran", "sgraf-sgr", "sgraf-saf")


def resolve_kind(name: str) -> tuple[str, dict[str, Any]]:
    """``(kind, implied config overrides)`` for a model name such as ``sgraf-saf``."""
    key = name.lower()
    if key in MODEL_CLASSES:
        return key, {}
    if key in ("sgraf-sgr", "sgraf-saf"):
        return "sgraf", {"module": key.split("-")[1].upper()}
    raise ConfigError(f"unknown model {name!r}; choose one of {list(MODEL_NAMES) + ['sgraf']}")


def make_config(name: str, overrides: dict[str, Any] | Any | None = None,
                *, where: str = "model_config") -> Any:
    """The model's config dataclass: paper defaults, then ``overrides`` (dict or dataclass)."""
    kind, implied = resolve_kind(name)
    cls = MODEL_CLASSES[kind][0]
    if dataclasses.is_dataclass(overrides):
        return overrides
    data = dict(overrides or {})
    if "module" in implied and data.get("module", implied["module"]) != implied["module"]:
        raise ConfigError(f"{where}.module: {data['module']!r} contradicts model {name!r}")
    return merge(cls(), {**data, **implied}, where=where) if data or implied else cls()


def build_model(name: str, config: dict[str, Any] | Any | None = None) -> MatchingModel:
    """Build ``tern`` / ``teran`` / ``sgraf`` / ``sgraf-sgr`` / ``sgraf-saf`` from a config.

    TERN/TERAN read BERT weights from ``config.bert`` unless ``config.bert_config`` is set (then
    the BERT architecture is built empty, to be filled from a checkpoint).
    """
    kind, _ = resolve_kind(name)
    cfg = make_config(name, config)
    return MODEL_CLASSES[kind][1](cfg)


def config_from_dict(kind: str, data: dict[str, Any], *, where: str = "config") -> Any:
    """Strictly rebuild a stored config dict (unknown keys are errors)."""
    kind, _ = resolve_kind(kind)
    return from_dict(MODEL_CLASSES[kind][0], data, where=where)


__all__ = [
    "Embeddings", "MODEL_NAMES", "MatchingModel", "SGRAF", "SgrafConfig", "TERAN", "TERN",
    "TeranConfig", "TernConfig", "build_model", "concat_embeddings", "config_from_dict",
    "embeddings_to", "index_embeddings", "make_config", "num_items", "resolve_kind",
]
