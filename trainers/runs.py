"""Run directories, the part that needs no torch: the name of the training-state file, the repair
of a checkpoint swap a crash interrupted, and whether a directory fits a new run or a resumed one.

:meth:`trainers.training.run_dir.RunDir.prepare` checks through :func:`check_run_dir`, and so
does ``itmflow train`` before it imports torch, so a wrong ``--out`` / ``--resume`` is answered at
once. The layout itself is described in :mod:`trainers.training.run_dir`.
"""

from __future__ import annotations

import os
from pathlib import Path

from itmflow.errors import ConfigError

STATE_FILE = "training_state.pt"
"""``last/``'s optimiser, scheduler and RNG state (what an exact ``--resume`` needs)."""


def recover_dir(final: Path) -> None:
    """If a crash hit between the two renames of
    :func:`trainers.training.run_dir.replace_dir`, put the old copy back."""
    old = final.with_name(f".{final.name}.old")
    if not final.exists() and old.exists():
        os.replace(old, final)


def check_run_dir(path: str | os.PathLike[str], *, resume: bool) -> None:
    """Refuse a run directory that does not fit: resuming, one without ``last/`` training state
    (after repairing an interrupted swap of ``last/``); starting, one that already holds a run.

    The saved configuration is compared with the new one later, by ``RunDir.prepare``.
    """
    path = Path(path)
    if resume:
        recover_dir(path / "last")
        if not (path / "last" / STATE_FILE).is_file():
            raise ConfigError(f"cannot resume: {path / 'last' / STATE_FILE} does not exist; "
                              "start the run without --resume")
    elif (path / "last").exists() or (path / ".last.old").exists() or \
            (path / "summary.json").exists():  # a finished --keep best run has no last/
        raise ConfigError(f"run directory {path} already holds a run; pass --resume to "
                          "continue it or choose another --out")


__all__ = ["STATE_FILE", "check_run_dir", "recover_dir"]
