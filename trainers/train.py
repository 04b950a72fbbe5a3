"""The training loop shared by TERN, TERAN and SGRAF.

One :class:`Trainer` runs a preset (:mod:`trainers.presets`) on a region store + caption store
(:mod:`trainers.data`): Adam with the paper's closed-form LR schedule, VSE++ max-violation hinge
loss on the model's ``[B,B]`` scores, gradient clipping, mixed precision on CUDA, validation on the
val split by rsum every ``val_every`` iterations and at each epoch end, and a run directory:

```
RUN/config.yaml          effective configuration (preset + file + options)
RUN/run.json             what produced the run: inputs (store paths, manifests), provenance
RUN/log.jsonl            one JSON object per logged step ("train") and validation ("val")
RUN/curves.png           training loss and validation rsum / R@1 against the iteration
RUN/last/                model.safetensors + config.json (trainers.checkpoints) + training_state.pt
RUN/best/                model.safetensors + config.json + metrics.json (best validation score)
```

Resuming (``resume=True``) reloads ``last/`` — weights, optimiser, AMP scaler, epoch, position in
the epoch, global step, best score and every RNG state — so N steps + resume + M steps gives the
same weights as N+M steps in one go (tested bit for bit on CPU). The batch order is a pure
function of ``(seed, epoch)`` and every DataLoader has its own generator, so nothing but the
model's dropout draws from the global RNG.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from itmflow.config import from_dict, to_dict
from itmflow.errors import ConfigError, StoreError
from itmflow.files import atomic_write_bytes, atomic_write_json
from itmflow.provenance import provenance
from trainers.data import EvalSet, MatchingData, PairCollator, CaptionCollator, EpochBatchSampler, collate_images
from trainers.presets import RESUMABLE_CHANGES, TrainConfig, config_diff, learning_rate

STATE_FILE = "training_state.pt"
STATE_FORMAT = "itmflow.training_state"
PLOT_EVERY_S = 60.0


# --------------------------------------------------------------------------- small helpers


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device {name!r} is not a valid torch device: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but torch sees no CUDA device; use --device cpu")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA) — the authors set no seed at all."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from, as tensors/plain data (``weights_only`` loadable)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_gauss": [int(np_state[3]), float(np_state[4])],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    gauss = state["numpy_gauss"]
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"],
                         int(gauss[0]), float(gauss[1])))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _replace_dir(tmp: Path, final: Path) -> None:
    """Swap a freshly written directory in for ``final`` (old copy kept until the swap is done)."""
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def _recover_dir(final: Path) -> None:
    """If a crash hit between the two renames of :func:`_replace_dir`, put the old copy back."""
    old = final.with_name(f".{final.name}.old")
    if not final.exists() and old.exists():
        os.replace(old, final)


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


# --------------------------------------------------------------------------- model plumbing


def model_config(config: TrainConfig, data: MatchingData | None = None, *,
                 bert: str | None = None) -> Any:
    """The model's config dataclass: its defaults, what the stores decide, then ``model_config``.

    The stores decide the region feature size (``feature_dim`` of the region store) and, for SGRAF,
    the word-vocabulary size; ``bert`` (``--bert``) names the BERT directory or hub id. Explicit
    ``model_config`` keys win over both.
    """
    from trainers.models import make_config

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
                bert: str | None = None) -> nn.Module:
    """The model of ``config.model`` built from :func:`model_config`."""
    from trainers.models import build_model as build

    return build(config.model, model_config(config, data, bert=bert))


def contrastive_loss(scores: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """VSE++ hinge on the ``[B,B]`` scores (image rows, caption columns), summed over the batch."""
    from trainers.losses import contrastive_loss as hinge

    return hinge(scores.float(), margin=config.margin, max_violation=config.max_violation)


@torch.no_grad()
def similarity_matrix(model: nn.Module, evalset: EvalSet, *, needs: frozenset[str],
                      batch_size: int, device: torch.device, workers: int = 0) -> np.ndarray:
    """``[n_images, 5·n_images]`` scores of a model on an evaluation set (block scoring)."""
    from trainers.scoring import score_matrix

    gen = torch.Generator().manual_seed(0)
    images = DataLoader(evalset.images, batch_size=batch_size, shuffle=False,
                        collate_fn=collate_images, num_workers=workers, generator=gen)
    captions = DataLoader(evalset.captions, batch_size=batch_size, shuffle=False,
                          collate_fn=CaptionCollator(needs), num_workers=workers, generator=gen)
    return score_matrix(model, images, captions, device=device)


def evaluate_split(model: nn.Module, data: MatchingData, split: str = "test", *,
                   max_images: int | None = None, batch_size: int = 128,
                   device: torch.device | str = "cpu", evalset: EvalSet | None = None) -> Any:
    """Recall metrics (:class:`trainers.evaluation.RetrievalMetrics`) of ``model`` on ``split``.

    Images of the split with 5 captions and their first 5 captions (caption ``c`` ↔ image
    ``c // 5``), scored in blocks and ranked with the originals' semantics.
    """
    from trainers.evaluation import evaluate_sims

    evalset = evalset or data.eval_set(split, max_images=max_images)
    sims = similarity_matrix(model, evalset, needs=data.needs, batch_size=batch_size,
                             device=torch.device(device))
    return evaluate_sims(sims, 5).metrics


def optimisation_step(model: nn.Module, optimizer: torch.optim.Optimizer,
                      scaler: torch.amp.GradScaler, images: dict[str, torch.Tensor],
                      captions: dict[str, torch.Tensor], config: TrainConfig, *, lr: float,
                      device: torch.device, amp_dtype: torch.dtype | None = None,
                      step: int = 0) -> float:
    """Forward, VSE++ loss, backward, clip to ``config.grad_clip``, Adam step; returns the loss.

    Every parameter group runs at ``lr × group['lr_scale']``. ``amp_dtype`` (CUDA only) runs the
    forward pass under autocast; the loss is computed in float32.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    images, captions = _to_device(images, device), _to_device(captions, device)
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        scores = model(images, captions)
    loss = contrastive_loss(scores, config)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if config.grad_clip > 0:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    value = float(loss.detach())
    if not math.isfinite(value):
        raise FloatingPointError(f"training loss became {value} at step {step}; lower the "
                                 "learning rate or use amp: off")
    return value


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


def _check_region_policy(model: nn.Module, data: MatchingData) -> None:
    """Fail before training, naming the store, when a model needs a fixed K the store lacks.

    SGRAF's VisualSA has one BatchNorm channel per region, so every image needs exactly
    ``num_regions`` (36) regions; the model itself would only notice at the first batch.
    """
    from itmflow.errors import ModelInputError

    k = getattr(getattr(model, "config", None), "num_regions", None)
    if k is None:
        return
    policy = data.images.manifest.get("region_policy") or {}
    if policy.get("kind") != "fixed" or int(policy.get("k", -1)) != int(k):
        raise ModelInputError(
            f"region store {data.images.path} has region policy {policy}, but "
            f"{getattr(model, 'kind', 'this model')} needs exactly {k} regions per image; extract "
            f"with --regions {k} (fixed) or import {k}-region features")


# --------------------------------------------------------------------------- the loop


@dataclass
class Progress:
    """Where a run is: the counters :func:`learning_rate` and the batch sampler need."""

    epoch: int = 0
    batch_in_epoch: int = 0
    step: int = 0
    best_score: float = -math.inf
    best_step: int = -1
    best_metrics: dict[str, Any] = field(default_factory=dict)


class Trainer:
    """Train one model on one pair of stores into a run directory (see the module docstring)."""

    def __init__(self, config: TrainConfig, data: MatchingData, out: str | os.PathLike[str], *,
                 resume: bool = False, bert: str | None = None,
                 inputs: dict[str, Any] | None = None,
                 console: Any | None = None) -> None:
        self.config = config
        self.data = data
        self.out = Path(out)
        self.bert = bert
        self.inputs = inputs or {}
        self.console = console
        self.device = resolve_device(config.device)
        self.progress = Progress()
        self.history: list[dict[str, Any]] = []
        self._plotted = -math.inf
        self._prepare_dir(resume)
        seed_everything(config.seed)
        if resume:
            # The saved config.json rebuilds the architecture offline (no BERT download).
            from trainers.checkpoints import from_pretrained

            self.model = from_pretrained(self.out / "last").to(self.device)
        else:
            self.model = build_model(config, data, bert=bert).to(self.device)
        _check_region_policy(self.model, data)
        self.optimizer = make_optimizer(self.model, config)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self._amp_dtype() == torch.float16)
        self.pairs = data.train_pairs("train")
        self.evalset = data.eval_set("val", max_images=config.val_images)
        if resume:
            self._load_state()

    # -- setup ---------------------------------------------------------------------------

    def _prepare_dir(self, resume: bool) -> None:
        cfg_file = self.out / "config.yaml"
        if resume:
            _recover_dir(self.out / "last")
            if not (self.out / "last" / STATE_FILE).is_file():
                raise ConfigError(f"cannot resume: {self.out / 'last' / STATE_FILE} does not exist; "
                                  "start the run without --resume")
            if cfg_file.is_file():
                import yaml

                saved = from_dict(TrainConfig, yaml.safe_load(cfg_file.read_text("utf-8")) or {},
                                  where=str(cfg_file))
                changed = [k for k in config_diff(saved, self.config) if k not in RESUMABLE_CHANGES]
                if changed:
                    raise ConfigError(
                        f"cannot resume {self.out}: the configuration differs from the saved "
                        f"{cfg_file} in {changed}; use the same settings (only "
                        f"{sorted(RESUMABLE_CHANGES)} may change) or start a new run directory")
        elif (self.out / "last").exists() or (self.out / ".last.old").exists():
            raise ConfigError(f"run directory {self.out} already holds a run; pass --resume to "
                              "continue it or choose another --out")
        elif (self.out / "log.jsonl").exists():
            # A run that stopped before its first checkpoint: nothing to resume, start afresh.
            (self.out / "log.jsonl").unlink()
        self.out.mkdir(parents=True, exist_ok=True)
        self._write_config()

    def _write_config(self) -> None:
        import yaml

        text = yaml.safe_dump(to_dict(self.config), sort_keys=False)
        atomic_write_bytes(self.out / "config.yaml", text.encode("utf-8"))
        atomic_write_json(self.out / "run.json", {
            "model": self.config.model, "inputs": self.inputs,
            "bert": self.bert, "device": str(self.device),
            "train_captions": len(self.data.captions.rows_of("train")),
            "provenance": provenance()})

    def _amp_dtype(self) -> torch.dtype | None:
        if self.device.type != "cuda" or self.config.amp == "off":
            return None
        return torch.bfloat16 if self.config.amp == "bf16" else torch.float16

    # -- checkpoints ---------------------------------------------------------------------

    def _save(self, name: str, *, with_state: bool, metrics: dict[str, Any] | None = None) -> None:
        from trainers.checkpoints import save_pretrained

        final = self.out / name
        tmp = self.out / f".{name}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        p = self.progress
        save_pretrained(self.model, tmp, extra={"step": p.step, "epoch": p.epoch,
                                                "train_config": to_dict(self.config)})
        if with_state:
            state = {"format": STATE_FORMAT, "version": 1,
                     "optimizer": self.optimizer.state_dict(),
                     "scaler": self.scaler.state_dict(),
                     "epoch": p.epoch, "batch_in_epoch": p.batch_in_epoch, "step": p.step,
                     "best_score": p.best_score, "best_step": p.best_step,
                     "best_metrics": json.dumps(p.best_metrics), "rng": rng_state()}
            torch.save(state, tmp / STATE_FILE)
        if metrics is not None:
            atomic_write_json(tmp / "metrics.json", metrics)
        _replace_dir(tmp, final)

    def _load_state(self) -> None:
        last = self.out / "last"
        try:
            state = torch.load(last / STATE_FILE, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated or foreign file: say which and what to do
            raise StoreError(f"{last / STATE_FILE} cannot be read ({exc}); the run cannot be "
                             "resumed exactly — start a new run from last/ weights") from None
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise StoreError(f"{last / STATE_FILE} is not an itmflow training state")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.progress = Progress(epoch=state["epoch"], batch_in_epoch=state["batch_in_epoch"],
                                 step=state["step"], best_score=state["best_score"],
                                 best_step=state["best_step"],
                                 best_metrics=json.loads(state["best_metrics"]))
        set_rng_state(state["rng"])
        self._trim_log(self.progress.step)

    # -- logging ---------------------------------------------------------------------------

    def _trim_log(self, step: int) -> None:
        """Drop log lines written after the checkpoint we resume from (a crash left them)."""
        log = self.out / "log.jsonl"
        if not log.is_file():
            return
        kept = []
        for line in log.read_text("utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a half-written last line
            if rec.get("step", 0) <= step:
                kept.append(rec)
        self.history = kept
        atomic_write_bytes(log, "".join(json.dumps(r) + "\n" for r in kept).encode("utf-8"))

    def _log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        with open(self.out / "log.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def plot(self) -> Path:
        """Write ``curves.png``: training loss and validation scores against the iteration."""
        from trainers.plots import plot_curves

        path = self.out / "curves.png"
        self._plotted = time.perf_counter()
        plot_curves(self.history, path, title=f"{self.config.model} — {self.out.name}")
        return path

    # -- validation ------------------------------------------------------------------------

    def validate(self) -> dict[str, Any]:
        """Score the val split, log it, and save ``best`` when the selected metric improves."""
        self.model.eval()
        metrics = evaluate_split(self.model, self.data, batch_size=self.config.eval_batch_size,
                                 device=self.device, evalset=self.evalset)
        score = metrics.rsum if self.config.select_by == "rsum" else metrics.t2i.rsum
        p = self.progress
        record = {"kind": "val", "step": p.step, "epoch": p.epoch, "score": score,
                  "n_images": len(self.evalset.image_ids), **metrics.to_dict()}
        improved = score > p.best_score
        if improved:
            p.best_score, p.best_step, p.best_metrics = score, p.step, record
        record["best"] = improved
        self._log(record)
        if improved:
            self._save("best", with_state=False, metrics=record)
        self.model.train()
        return record

    # -- training --------------------------------------------------------------------------

    def _loader(self, epoch: int, start_batch: int) -> DataLoader:
        sampler = EpochBatchSampler(len(self.pairs), self.config.batch_size, seed=self.config.seed,
                                    epoch=epoch, start_batch=start_batch)
        # A private generator: creating the iterator must not draw from the global RNG.
        return DataLoader(self.pairs, batch_sampler=sampler, collate_fn=PairCollator(self.data.needs),
                          num_workers=self.config.workers,
                          generator=torch.Generator().manual_seed(self.config.seed),
                          pin_memory=self.device.type == "cuda")

    def train_step(self, images: dict[str, torch.Tensor], captions: dict[str, torch.Tensor]
                   ) -> float:
        """One optimiser step at the scheduled LR; returns the loss."""
        p = self.progress
        return optimisation_step(self.model, self.optimizer, self.scaler, images, captions,
                                 self.config, lr=learning_rate(self.config, p.epoch, p.step),
                                 device=self.device, amp_dtype=self._amp_dtype(), step=p.step)

    def fit(self) -> dict[str, Any]:
        """Train to the end (or ``max_steps``); returns a summary (best score, steps, seconds)."""
        cfg, p = self.config, self.progress
        per_epoch = EpochBatchSampler(len(self.pairs), cfg.batch_size, seed=cfg.seed).batches_per_epoch()
        total = cfg.epochs * per_epoch
        if cfg.max_steps is not None:
            total = min(total, cfg.max_steps)
        self.model.train()
        started = time.perf_counter()
        steps_run = 0
        bar = _ProgressBar(total, p.step, enabled=cfg.progress, console=self.console,
                           label=cfg.model)
        stop = _StopRequest()
        with bar, stop:
            while p.epoch < cfg.epochs and p.step < total and not stop.requested:
                tick = time.perf_counter()
                for images, captions in self._loader(p.epoch, p.batch_in_epoch):
                    loss = self.train_step(images, captions)
                    p.step += 1
                    p.batch_in_epoch += 1
                    steps_run += 1
                    its = 1.0 / max(time.perf_counter() - tick, 1e-9)
                    bar.advance(loss, its)
                    if p.step % cfg.log_every == 0 or p.step == 1:
                        self._log({"kind": "train", "step": p.step, "epoch": p.epoch,
                                   "loss": loss, "lr": learning_rate(cfg, p.epoch, p.step - 1),
                                   "it_s": its})
                    if cfg.val_every and p.step % cfg.val_every == 0 and p.batch_in_epoch < per_epoch:
                        self.validate()
                        self._save("last", with_state=True)
                        # Drawing costs ~1 s: mid-epoch refreshes at most once a minute.
                        if time.perf_counter() - self._plotted > PLOT_EVERY_S:
                            self.plot()
                    if p.step >= total or stop.requested:
                        break
                    tick = time.perf_counter()  # it/s measures the step, not validation/saving
                if p.batch_in_epoch >= per_epoch:
                    p.epoch += 1
                    p.batch_in_epoch = 0
                    self.validate()
                self._save("last", with_state=True)
                if time.perf_counter() - self._plotted > PLOT_EVERY_S:
                    self.plot()
        self.plot()
        seconds = time.perf_counter() - started
        if stop.requested:
            self._log({"kind": "stop", "step": p.step, "epoch": p.epoch, "signal": stop.requested})
        summary = {"steps": p.step, "epochs_done": p.epoch, "steps_this_run": steps_run,
                   "stopped_by": stop.requested,
                   "seconds": seconds, "best_score": p.best_score, "best_step": p.best_step,
                   "best": p.best_metrics, "skipped_captions": self.data.skipped}
        atomic_write_json(self.out / "summary.json", summary)
        return summary


class _StopRequest:
    """SIGINT / SIGTERM during training: finish the current step, save ``last/``, return.

    A pre-empted cluster job (SIGTERM) or a Ctrl-C then loses nothing, and ``--resume`` continues
    exactly. A second signal interrupts at once (the previous handler runs). Outside the main
    thread, where Python cannot install handlers, this does nothing.
    """

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None:
            previous = self._previous.get(signum)
            if callable(previous):
                previous(signum, frame)
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


class _ProgressBar:
    """A rich progress bar with the last loss and it/s (silent when disabled)."""

    def __init__(self, total: int, done: int, *, enabled: bool, console: Any | None, label: str):
        self.enabled = enabled
        self._progress = None
        if enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self._progress = Progress(
                TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[its]:.2f} it/s"),
                TimeElapsedColumn(), TimeRemainingColumn(), console=console)
            self._task = self._progress.add_task("train", total=total, completed=done,
                                                 loss=float("nan"), its=0.0)

    def __enter__(self) -> _ProgressBar:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()

    def advance(self, loss: float, its: float) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, loss=loss, its=its)


def train(config: TrainConfig, regions: str | os.PathLike[str], captions: str | os.PathLike[str],
          out: str | os.PathLike[str], *, resume: bool = False, bert: str | None = None,
          vocab: str | os.PathLike[str] | None = None, console: Any | None = None) -> dict[str, Any]:
    """Train ``config.model`` on a region store and a caption store into run directory ``out``.

    ``vocab`` (SGRAF) is the word-vocabulary JSON copied into the run; by default the caption
    store's own ``vocab.json``.
    """
    data = MatchingData(regions, captions, model=config.model)
    inputs = {"regions": str(regions), "captions": str(captions),
              "region_store": {k: data.images.manifest.get(k) for k in
                               ("format", "schema_version", "storage", "feature_dim", "detector",
                                "region_policy") if k in data.images.manifest},
              "caption_store": {k: v for k, v in data.captions.manifest.items()
                                if k not in ("provenance",)}}
    trainer = Trainer(config, data, out, resume=resume, bert=bert, inputs=inputs, console=console)
    source = Path(vocab) if vocab is not None else Path(captions) / "vocab.json"
    if "words" in data.needs and source.is_file() and \
            (vocab is not None or not (trainer.out / "vocab.json").exists()):
        # The word ids only mean something with their vocabulary: keep it beside the weights.
        shutil.copyfile(source, trainer.out / "vocab.json")
    return trainer.fit()

