"""The model names a user types (``itmflow train MODEL``), importable without torch.

The model modules declare their names (``SPECS``) and the registry (:mod:`trainers.models`) reads
them; this tuple is what the command line checks an argument against before torch is imported.
The registry compares it with the declarations when it is imported and refuses to load if they
differ (:func:`check_declared`), so the two cannot drift apart: adding a model means adding its
name here too, in the order of the registry.
"""

from __future__ import annotations

from collections.abc import Iterable

MODEL_NAMES: tuple[str, ...] = ("tern", "teran", "sgraf-sgr", "sgraf-saf")
"""Every model a user can name, in the registry's order (the order ``--help`` lists them)."""


def check_declared(declared: Iterable[str]) -> None:
    """Raise unless ``declared`` (the names the model modules' ``SPECS`` give, in registry order)
    is :data:`MODEL_NAMES`."""
    declared = tuple(declared)
    if declared != MODEL_NAMES:
        raise RuntimeError(f"trainers/model_names.py lists the models {MODEL_NAMES} but the model "
                           f"modules declare {declared} (their SPECS, in registry order); make "
                           "MODEL_NAMES there the declared names")


__all__ = ["MODEL_NAMES", "check_declared"]
