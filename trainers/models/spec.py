"""What a matching model declares about itself, once, next to its code.

Each model module ends with ``SPECS``: one :class:`ModelSpec` per name a user can type
(``tern``; ``sgraf-sgr`` and ``sgraf-saf`` are one class with a config value fixed by the name).
The registry (:mod:`trainers.models`) collects them; data loading (what to read from the stores),
training presets, evaluation, ``embed`` (global vectors) and the CLI's model choice read them.
Adding a model: write its module with its ``SPECS``, list the module in the registry and its
names in :mod:`trainers.model_names` (checked against ``SPECS`` when the registry is imported).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from trainers.models.common import MatchingModel

Input = Literal["bert", "words", "geometry"]
"""What a model reads besides region features: BERT WordPiece ids, SCAN word ids, box geometry."""
INPUTS: tuple[Input, ...] = ("bert", "words", "geometry")


@dataclass(frozen=True)
class ModelSpec:
    """One model name: its classes, the inputs it needs, its global vectors and its preset."""

    name: str
    """What a user types: ``tern``, ``teran``, ``sgraf-sgr`` ..."""
    kind: str
    """The architecture (``MatchingModel.kind``, stored in checkpoints): several names may share it."""
    config_class: type
    model_class: type[MatchingModel]
    needs: frozenset[Input]
    """Inputs read from the stores (region features always)."""
    global_vectors: bool
    """One vector per image / caption (cosine search with ``itmflow embed``); SGRAF has none."""
    preset: Callable[[str], dict[str, Any]]
    """Dataset preset (``coco`` / ``f30k``) → the paper's :class:`TrainConfig` values."""
    fixed_config: dict[str, Any] = field(default_factory=dict)
    """Config values the name implies (``sgraf-saf`` → ``module: SAF``)."""

    def describes(self, model: MatchingModel) -> bool:
        """True when a loaded model is this name (its kind and the values the name fixes)."""
        config = getattr(model, "config", None)
        return getattr(model, "kind", None) == self.kind and all(
            getattr(config, key, None) == value for key, value in self.fixed_config.items())


def union_of_needs(specs: Iterable[ModelSpec]) -> frozenset[Input]:
    """Inputs an ensemble of models needs: every field any of them reads."""
    out: frozenset[Input] = frozenset()
    for spec in specs:
        out |= spec.needs
    return out
