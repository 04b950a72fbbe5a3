"""The run directory of one training run and the files in it.

```
RUN/config.yaml          effective configuration (preset + file + options)
RUN/run.json             what produced the run: inputs (store paths, manifests), provenance
RUN/log.jsonl            one JSON object per logged step ("train") and validation ("val")
RUN/curves.png           training loss and validation rsum / R@1 against the iteration
RUN/last/                model.safetensors + config.json (trainers.checkpoints) + training_state.pt
                         (without the Adam moments under --no-save-optimizer-state; removed at
                         the end under --keep best)
RUN/best/                model.safetensors + config.json + metrics.json (best validation score;
                         not written under --keep last)
RUN/summary.json         what :meth:`Trainer.fit` returned
```

A checkpoint directory is written under a temporary name and swapped in (:func:`replace_dir`), so
``last/`` and ``best/`` are always complete; a crash between the two renames is repaired on resume
(:func:`recover_dir`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from itmflow.config import from_dict, to_dict
from itmflow.errors import ConfigError, StoreError
from itmflow.files import atomic_path, atomic_write_bytes, atomic_write_json, fsync_dir
from itmflow.provenance import provenance
from trainers.checkpoints import save_pretrained
from trainers.models import MatchingModel
from trainers.runs import STATE_FILE, check_run_dir
from trainers.training.config import RESUMABLE_CHANGES, TrainConfig, config_diff

STATE_FORMAT = "itmflow.training_state"


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a freshly written directory in for ``final`` (old copy kept until the swap is done).

    Not :func:`itmflow.files.atomic_path`: that renames a file over its target in one step, and a
    directory cannot be renamed over a non-empty one. So the old copy is moved aside first and
    removed only after the new one is in place; :func:`trainers.runs.recover_dir` repairs a
    crash in between.
    The files inside were made durable when written; the parent is fsynced after the swap.
    """
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    if old.exists():
        shutil.rmtree(old)


class RunDir:
    """The files of one run directory (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    @property
    def log_file(self) -> Path:
        return self.path / "log.jsonl"

    def prepare(self, config: TrainConfig, *, resume: bool) -> None:
        """Check the directory fits a new run (or, resuming, the saved run) and create it."""
        cfg_file = self.path / "config.yaml"
        check_run_dir(self.path, resume=resume)  # no last/ state to resume, or a run already there
        if resume:
            if cfg_file.is_file():
                import yaml

                saved = from_dict(TrainConfig, yaml.safe_load(cfg_file.read_text("utf-8")) or {},
                                  where=str(cfg_file))
                changed = [k for k in config_diff(saved, config) if k not in RESUMABLE_CHANGES]
                if changed:
                    raise ConfigError(
                        f"cannot resume {self.path}: the configuration differs from the saved "
                        f"{cfg_file} in {changed}; use the same settings (only "
                        f"{sorted(RESUMABLE_CHANGES)} may change) or start a new run directory")
        elif self.log_file.exists():
            # A run that stopped before its first checkpoint: nothing to resume, start afresh.
            self.log_file.unlink()
        self.path.mkdir(parents=True, exist_ok=True)

    def write_config(self, config: TrainConfig, record: dict[str, Any]) -> None:
        """``config.yaml`` (the effective config) and ``run.json`` (``record`` + provenance)."""
        import yaml

        text = yaml.safe_dump(to_dict(config), sort_keys=False)
        atomic_write_bytes(self.path / "config.yaml", text.encode("utf-8"))
        atomic_write_json(self.path / "run.json", {**record, "provenance": provenance()})

    def save(self, name: str, model: MatchingModel, *, extra: dict[str, Any],
             state: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None) -> None:
        """Write checkpoint directory ``name`` (``last`` / ``best``): weights, optional training
        state and metrics, swapped in whole."""
        final = self.path / name
        tmp = self.path / f".{name}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        save_pretrained(model, tmp, extra=extra)
        if state is not None:
            with atomic_path(tmp / STATE_FILE) as state_tmp:  # fsynced like the weights
                torch.save({"format": STATE_FORMAT, "version": 1, **state}, state_tmp)
        if metrics is not None:
            atomic_write_json(tmp / "metrics.json", metrics)
        replace_dir(tmp, final)

    def load_state(self, last: Path | None = None) -> dict[str, Any]:
        """The training state saved with ``last/`` (or the checkpoint directory ``last``)."""
        last = last or self.path / "last"
        try:
            state = torch.load(last / STATE_FILE, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated or foreign file: say which and what to do
            raise StoreError(f"{last / STATE_FILE} cannot be read ({exc}); the run cannot be "
                             "resumed exactly — start a new run from last/ weights") from None
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise StoreError(f"{last / STATE_FILE} is not an itmflow training state")
        return state

    def trim_log(self, step: int) -> list[dict[str, Any]]:
        """Drop log lines written after ``step`` (a crash left them); returns the lines kept."""
        if not self.log_file.is_file():
            return []
        kept = []
        for line in self.log_file.read_text("utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a half-written last line
            if rec.get("step", 0) <= step:
                kept.append(rec)
        atomic_write_bytes(self.log_file, "".join(json.dumps(r) + "\n" for r in kept).encode("utf-8"))
        return kept

    def append_log(self, record: dict[str, Any]) -> None:
        """One JSON line in ``log.jsonl``."""
        with open(self.log_file, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
