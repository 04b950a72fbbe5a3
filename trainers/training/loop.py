"""The training loop shared by TERN, TERAN and SGRAF.

One :class:`Trainer` runs a preset (:mod:`trainers.training.config`) on a region store + caption
store (:mod:`trainers.data`): Adam with the paper's closed-form LR schedule, VSE++ max-violation
hinge loss on the model's ``[B,B]`` scores, gradient clipping, mixed precision on CUDA (or, for
verification, everything in float64: ``dtype``), validation on the val split by rsum every
``val_every`` iterations and at each epoch end, into a run directory
(:mod:`trainers.training.run_dir`).

Resuming (``resume=True``) reloads ``last/`` — weights, optimiser, AMP scaler, epoch, position in
the epoch, global step, best score and every RNG state — so N steps + resume + M steps gives the
same weights as N+M steps in one go (tested bit for bit on CPU). The batch order is a pure
function of ``(seed, epoch)`` and every DataLoader has its own generator, so nothing but the
model's dropout draws from the global RNG.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader

from itmflow.config import to_dict
from itmflow.devices import resolve_device
from itmflow.files import atomic_write_json
from itmflow.marks import metadata as mark_metadata, random_init_of_manifest
from trainers.checkpoints import from_pretrained
from trainers.data import EpochBatchSampler, MatchingData, PairCollator, ShardedBatchSampler
from trainers.training.config import TrainConfig, check_precision, effective_warmup, learning_rate
from trainers.training.model import build_model, check_region_policy, make_optimizer
from trainers.training.rng import rng_state, seed_everything, set_rng_state
from trainers.training.run_dir import RunDir
from trainers.training.step import optimisation_step
from trainers.training.validation import evaluate_split

if TYPE_CHECKING:
    from rich.console import Console

    from trainers.training.distributed import WorkerContext

PLOT_EVERY_S = 60.0


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
                 console: Console | None = None, worker: WorkerContext | None = None) -> None:
        self.config = config
        self.data = data
        self.out = Path(out)
        self.bert = bert
        self.inputs = inputs or {}
        self.console = console
        # This process's place among Ray Train workers (trainers.training.distributed); None for
        # the in-process loop. Only rank 0 writes the run directory and validates.
        self.worker = worker
        self.is_main = worker is None or worker.is_main
        self.device = worker.device if worker is not None else resolve_device(config.device)
        check_precision(config, self.device.type)
        #: the floating dtype of the weights and inputs (``dtype``; float64 only for verification)
        self.dtype: torch.dtype = getattr(torch, config.dtype)
        self.progress = Progress()
        self.history: list[dict[str, Any]] = []
        self._plotted = -math.inf
        self.run = RunDir(self.out)
        #: set when the region store came from a random-weight detector (--random-init)
        self.random_init = random_init_of_manifest(data.images.manifest)
        resume_dir = self.out / "last"
        if worker is None:
            self.run.prepare(config, resume=resume)
        elif resume:
            # The driver checked the run directory; a worker (re)starts from the checkpoint Ray
            # Train hands it (rank 0's last/ as last reported, or --resume's last/).
            resume_dir = worker.resume_dir or resume_dir
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            if worker is not None and not resume and self.run.log_file.exists():
                self.run.log_file.unlink()  # a restart before the first checkpoint: start afresh
            record = {"model": config.model, "inputs": self.inputs, "bert": bert,
                      "device": str(self.device),
                      "train_captions": len(data.captions.rows_of("train")),
                      **mark_metadata(self.random_init)}
            if worker is not None:
                record["workers"] = worker.world_size
            self.run.write_config(config, record)
        seed_everything(config.seed)
        if resume:
            # The saved config.json rebuilds the architecture offline (no BERT download).
            self.model = from_pretrained(resume_dir, dtype=self._cast()).to(self.device)
        else:
            # Built (and initialised) in float32, then cast: a float64 run starts from the
            # float32 run's initial weights, exactly.
            self.model = build_model(config, data, bert=bert).to(self.device)
            if self._cast() is not None:
                self.model = self.model.to(dtype=self.dtype)
        check_region_policy(self.model, data)
        # What the optimisation step calls: the model, or DDP around the global-batch scorer.
        self.train_model: torch.nn.Module = self.model
        if worker is not None:
            from trainers.training.distributed import wrap_for_training

            self.train_model = wrap_for_training(self.model, worker)
        self.optimizer = make_optimizer(self.model, config)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self._amp_dtype() == torch.float16)
        self.pairs = data.train_pairs("train")
        if worker is not None:
            from trainers.training.distributed import check_batches

            check_batches(len(self.pairs), config.batch_size, worker.world_size)
        self.evalset = data.eval_set("val", max_images=config.val_images) if self.is_main else None
        self.per_epoch = EpochBatchSampler(len(self.pairs), config.batch_size,
                                           seed=config.seed).batches_per_epoch()
        self.total = config.epochs * self.per_epoch
        if config.max_steps is not None:
            self.total = min(self.total, config.max_steps)
        #: the warm-up length used (capped when the configured one is longer than the run)
        self.warmup, self._warmup_note = effective_warmup(config, self.total)
        if resume:
            self._load_state(resume_dir)

    # -- setup ---------------------------------------------------------------------------

    def _cast(self) -> torch.dtype | None:
        """The dtype models and batches are cast to; None for float32, where nothing is cast (the
        models are built in float32 and the collated features are float32)."""
        return None if self.dtype == torch.float32 else self.dtype

    def _amp_dtype(self) -> torch.dtype | None:
        if self.device.type != "cuda" or self.config.amp == "off":
            return None
        return torch.bfloat16 if self.config.amp == "bf16" else torch.float16

    # -- checkpoints ---------------------------------------------------------------------

    def _save(self, name: str, *, with_state: bool, metrics: dict[str, Any] | None = None) -> None:
        p = self.progress
        if not self.is_main:
            if name == "last" and self.worker is not None:
                self._report_last()
            return
        state = None
        if with_state:
            state = {**({"optimizer": self.optimizer.state_dict()}
                        if self.config.save_optimizer_state else {}),
                     "scaler": self.scaler.state_dict(), "warmup_iters": self.warmup,
                     "epoch": p.epoch, "batch_in_epoch": p.batch_in_epoch, "step": p.step,
                     "best_score": p.best_score, "best_step": p.best_step,
                     "best_metrics": json.dumps(p.best_metrics), "rng": rng_state()}
        self.run.save(name, self.model, extra={"step": p.step, "epoch": p.epoch,
                                               "train_config": to_dict(self.config)},
                      state=state, metrics=metrics)
        if name == "last" and self.worker is not None:
            self._report_last()

    def _report_last(self) -> None:
        # Workers: every save of last/ is also Ray Train's checkpoint (a barrier of all workers).
        from trainers.training.distributed import report_checkpoint

        p = self.progress
        report_checkpoint(self.worker, self.out / "last", {"step": p.step, "epoch": p.epoch})

    def _load_state(self, last: Path | None = None) -> None:
        state = self.run.load_state(last)
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
        else:
            self._say("[yellow]last/ holds no optimiser state (--no-save-optimizer-state): Adam's "
                      "moments restart from zero, so this resume is not exact[/]")
        if "warmup_iters" in state:  # the warm-up the run started with (maybe capped)
            self.warmup, self._warmup_note = int(state["warmup_iters"]), None
        self.scaler.load_state_dict(state["scaler"])
        self.progress = Progress(epoch=state["epoch"], batch_in_epoch=state["batch_in_epoch"],
                                 step=state["step"], best_score=state["best_score"],
                                 best_step=state["best_step"],
                                 best_metrics=json.loads(state["best_metrics"]))
        set_rng_state(state["rng"])
        if self.is_main and self.run.log_file.is_file():
            self.history = self.run.trim_log(self.progress.step)

    # -- logging ---------------------------------------------------------------------------

    def _say(self, text: str) -> None:
        """A line for the person running (stderr)."""
        from rich.console import Console

        (self.console or Console(stderr=True)).print(text, highlight=False, soft_wrap=True)

    def startup_line(self) -> str:
        """Model, parameters, data sizes, device, learning rate and length of this run."""
        cfg = self.config
        params = sum(p.numel() for p in self.model.parameters())
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        n_images = len({self.pairs.captions.image_ids[r] for r in self.pairs.rows})
        train_txt = f"{len(self.pairs)} captions of {n_images} images"
        first = learning_rate(cfg, 0, 0, self.warmup)
        lr_txt = f"lr {cfg.lr:g}" + (f" (warm-up {self.warmup} it: first step {first:.3g})"
                                     if self.warmup > 0 else " (no warm-up)")
        return (f"{cfg.model}: {params / 1e6:.2f} M parameters ({trainable / 1e6:.2f} M trained); "
                f"train {train_txt}, val {len(self.evalset.image_ids)} images; device "
                f"{self.device}; {lr_txt}; {self.total} steps ({self.per_epoch} per epoch), batch "
                f"{cfg.batch_size}")

    def _log(self, record: dict[str, Any]) -> None:
        if not self.is_main:
            return
        self.history.append(record)
        self.run.append_log(record)

    def plot(self) -> Path:
        """Write ``curves.png``: training loss and validation scores against the iteration."""
        from trainers.plots import plot_curves

        path = self.out / "curves.png"
        if not self.is_main:
            return path
        self._plotted = time.perf_counter()
        plot_curves(self.history, path, title=f"{self.config.model} — {self.out.name}",
                    val_every=self.config.val_every,
                    random_init=bool(self.random_init))
        return path

    # -- validation ------------------------------------------------------------------------

    def validate(self) -> dict[str, Any]:
        """Score the val split, log it, and save ``best`` when the selected metric improves.

        With several workers only rank 0 validates (the others wait at the next collective).
        """
        if not self.is_main:
            return {}
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
        if improved and self.config.keep != "last":
            self._save("best", with_state=False, metrics=record)
        self.model.train()
        return record

    # -- training --------------------------------------------------------------------------

    def _loader(self, epoch: int, start_batch: int) -> DataLoader:
        sampler: EpochBatchSampler | ShardedBatchSampler = EpochBatchSampler(
            len(self.pairs), self.config.batch_size, seed=self.config.seed, epoch=epoch,
            start_batch=start_batch)
        if self.worker is not None:
            sampler = ShardedBatchSampler(sampler, self.worker.rank, self.worker.world_size)
        # A private generator: creating the iterator must not draw from the global RNG.
        return DataLoader(self.pairs, batch_sampler=sampler, collate_fn=PairCollator(self.data.needs),
                          num_workers=self.config.workers,
                          generator=torch.Generator().manual_seed(self.config.seed),
                          pin_memory=self.device.type == "cuda")

    def train_step(self, images: dict[str, torch.Tensor], captions: dict[str, torch.Tensor]
                   ) -> float:
        """One optimiser step at the scheduled LR; returns the loss."""
        p = self.progress
        if self.worker is not None:
            from trainers.training.distributed import split_sizes, step_seed

            torch.manual_seed(step_seed(self.config.seed, p.step, self.worker.rank))
            n, size = len(self.pairs), self.config.batch_size
            counts = split_sizes(min(size, n - p.batch_in_epoch * size), self.worker.world_size)
            self.train_model.module.set_counts(counts)  # type: ignore[union-attr,operator]
        return optimisation_step(self.train_model, self.optimizer, self.scaler, images, captions,
                                 self.config, lr=learning_rate(self.config, p.epoch, p.step,
                                                               self.warmup),
                                 device=self.device, amp_dtype=self._amp_dtype(), step=p.step,
                                 dtype=self._cast())

    def fit(self) -> dict[str, Any]:
        """Train to the end (or ``max_steps``); returns a summary (best score, steps, seconds)."""
        cfg, p = self.config, self.progress
        per_epoch, total = self.per_epoch, self.total
        if self.is_main:  # one start-up report per run, not one per worker
            self._say(self.startup_line())
            if self._warmup_note:
                self._say(f"[yellow]warning: {self._warmup_note}[/]")
            from trainers.evaluation.recall import small_split_note

            note = small_split_note(len(self.evalset.image_ids), what="validation")
            if note:
                self._say(f"[yellow]note: {note}[/]")
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
                    if self.worker is not None and self.worker.kill_at is not None:
                        _maybe_kill(self.worker, p.step)
                    p.batch_in_epoch += 1
                    steps_run += 1
                    its = 1.0 / max(time.perf_counter() - tick, 1e-9)
                    bar.advance(loss, its)
                    if p.step % cfg.log_every == 0 or p.step == 1:
                        self._log({"kind": "train", "step": p.step, "epoch": p.epoch,
                                   "loss": loss,
                                   "lr": learning_rate(cfg, p.epoch, p.step - 1, self.warmup),
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
        if cfg.keep == "best" and (self.out / "best" / "config.json").is_file() \
                and not stop.requested:
            shutil.rmtree(self.out / "last")  # --keep best: the finished run keeps best/ only
        seconds = time.perf_counter() - started
        if stop.requested:
            self._log({"kind": "stop", "step": p.step, "epoch": p.epoch, "signal": stop.requested})
        summary = {"steps": p.step, "epochs_done": p.epoch, "steps_this_run": steps_run,
                   "workers": self.worker.world_size if self.worker is not None else 1,
                   "stopped_by": stop.requested,
                   "seconds": seconds, "best_score": p.best_score, "best_step": p.best_step,
                   "best": p.best_metrics, "skipped_captions": self.data.skipped,
                   **mark_metadata(self.random_init)}
        if self.is_main:
            atomic_write_json(self.out / "summary.json", summary)
        return summary


def _maybe_kill(worker: WorkerContext, step: int) -> None:
    """Fault-test hook: the chosen worker SIGKILLs itself once, after the chosen step."""
    rank, at, marker = worker.kill_at  # type: ignore[misc]
    if worker.rank == rank and step == at and not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)


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

    def __init__(self, total: int, done: int, *, enabled: bool, console: Console | None, label: str):
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
