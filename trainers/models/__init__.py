"""The registry of matching models: every model module's declarations (``SPECS``) by name.

Names: ``tern``, ``teran``, ``sgraf-sgr`` and ``sgraf-saf`` (:data:`MODELS`); the architecture
kinds stored in checkpoints are ``tern``, ``teran`` and ``sgraf`` (its module taken from the
config). Adding a model: write its module with ``SPECS`` (:class:`ModelSpec`), add the module to
:data:`_MODULES` below and its names to :data:`trainers.model_names.MODEL_NAMES` (the torch-free
list the CLI checks arguments against; importing this registry fails while the two differ) — data
loading, presets, evaluation, ``embed`` and the CLI read the rest.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Union

from itmflow.config import from_dict, merge
from itmflow.errors import ConfigError
from trainers.model_names import check_declared
from trainers.models import sgraf, teran, tern
from trainers.models.common import (
    Embeddings,
    MatchingModel,
    concat_embeddings,
    embeddings_to,
    index_embeddings,
    num_items,
)
from trainers.models.sgraf import SGRAF, SgrafConfig
from trainers.models.spec import INPUTS, Input, ModelSpec, union_of_needs
from trainers.models.teran import TERAN, TeranConfig
from trainers.models.tern import TERN, TernConfig

_MODULES = (tern, teran, sgraf)
ModelConfig = Union[TernConfig, TeranConfig, SgrafConfig]
"""The config dataclass of any registered model."""

MODELS: dict[str, ModelSpec] = {spec.name: spec for module in _MODULES for spec in module.SPECS}
"""Every model a user can name, in the order ``--help`` lists them."""
MODEL_NAMES = tuple(MODELS)
check_declared(MODEL_NAMES)  # the torch-free copy the CLI checks arguments against (trainers.model_names)
MODEL_CLASSES: dict[str, tuple[type, type[MatchingModel]]] = {
    spec.kind: (spec.config_class, spec.model_class) for spec in MODELS.values()}
"""``kind`` (as stored in checkpoints) → ``(config class, model class)``."""


def model_spec(name: str) -> ModelSpec:
    """The declaration of model ``name`` (``tern``, ``sgraf-saf`` ...)."""
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose one of {list(MODEL_NAMES)}") from None


def spec_of(model: MatchingModel) -> ModelSpec:
    """The declaration a loaded model answers to (SGRAF: by its config's module)."""
    for spec in MODELS.values():
        if spec.describes(model):
            return spec
    raise ConfigError(f"a model of kind {getattr(model, 'kind', '')!r} is not in the registry "
                      f"(models: {list(MODEL_NAMES)})")


def resolve_kind(name: str) -> tuple[str, dict[str, Any]]:
    """``(kind, implied config values)`` for a model name (``sgraf-saf``) or a kind (``sgraf``)."""
    key = name.lower()
    if key in MODEL_CLASSES:
        return key, {}
    if key in MODELS:
        return MODELS[key].kind, dict(MODELS[key].fixed_config)
    kinds = [k for k in MODEL_CLASSES if k not in MODELS]
    raise ConfigError(f"unknown model {name!r}; choose one of {list(MODEL_NAMES) + kinds}")


def make_config(name: str, overrides: dict[str, Any] | Any | None = None,
                *, where: str = "model_config") -> ModelConfig:
    """The model's config dataclass: paper defaults, then ``overrides`` (dict or dataclass)."""
    kind, implied = resolve_kind(name)
    cls = MODEL_CLASSES[kind][0]
    if dataclasses.is_dataclass(overrides):
        return overrides
    data = dict(overrides or {})
    for key, value in implied.items():
        if data.get(key, value) != value:
            raise ConfigError(f"{where}.{key}: {data[key]!r} contradicts model {name!r}")
    return merge(cls(), {**data, **implied}, where=where) if data or implied else cls()


def build_model(name: str, config: dict[str, Any] | Any | None = None) -> MatchingModel:
    """Build ``tern`` / ``teran`` / ``sgraf`` / ``sgraf-sgr`` / ``sgraf-saf`` from a config.

    TERN/TERAN read BERT weights from ``config.bert`` unless ``config.bert_config`` is set (then
    the BERT architecture is built empty, to be filled from a checkpoint).
    """
    kind, _ = resolve_kind(name)
    cfg = make_config(name, config)
    return MODEL_CLASSES[kind][1](cfg)


def config_from_dict(kind: str, data: dict[str, Any], *, where: str = "config") -> ModelConfig:
    """Strictly rebuild a stored config dict (unknown keys are errors)."""
    kind, _ = resolve_kind(kind)
    return from_dict(MODEL_CLASSES[kind][0], data, where=where)


__all__ = [
    "Embeddings", "INPUTS", "Input", "MODELS", "MODEL_CLASSES", "MODEL_NAMES", "MatchingModel",
    "ModelConfig",
    "ModelSpec", "SGRAF", "SgrafConfig", "TERAN", "TERN", "TeranConfig", "TernConfig",
    "build_model", "concat_embeddings", "config_from_dict", "embeddings_to", "index_embeddings",
    "make_config", "model_spec", "num_items", "resolve_kind", "spec_of", "union_of_needs",
]
