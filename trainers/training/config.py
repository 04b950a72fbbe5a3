"""The training configuration (:class:`TrainConfig`), the paper presets and the learning-rate schedule.

Every field can be overridden from a YAML file (``itmflow train --config FILE``) through
:func:`itmflow.config.merge`, which refuses unknown keys and wrong types. Each model declares its
authors' released values in its own module (``ModelSpec.preset``; spec ``trainers.md`` §2.2 TERN,
§3 TERAN, §4.3 SGRAF); :func:`preset` applies them.

The learning rate is a closed-form function of ``(epoch, global iteration)``
(:func:`learning_rate`), so resuming a run needs only those two counters to continue the schedule
exactly — there is no hidden scheduler state to drift.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from itmflow.config import merge
from itmflow.errors import ConfigError

DATASETS = ("coco", "f30k")

# Fields a resumed run may change without invalidating what was already trained.
RESUMABLE_CHANGES = frozenset({"epochs", "max_steps", "val_every", "device", "workers",
                               "log_every", "progress", "val_images", "save_optimizer_state",
                               "keep"})

#: A warm-up longer than the run is capped to this fraction of the run's steps.
WARMUP_CAP_FRACTION = 0.1


@dataclass
class TrainConfig:
    """Everything that decides how a model is trained (the effective config of a run)."""

    model: str = "tern"
    """Which model: a name of the registry (:data:`trainers.models.MODELS`)."""
    dataset: str = "coco"
    """Which paper preset the defaults come from: ``coco`` or ``f30k``."""
    batch_size: int = 80
    epochs: int = 30
    lr: float = 2e-6
    """Base learning rate (Adam)."""
    lr_step_epochs: int = 30
    """Multiply the LR by ``lr_gamma`` every this many epochs (TERN/TERAN StepLR, SGRAF lr_update)."""
    lr_gamma: float = 0.1
    warmup_iters: int = 1000
    """Linear warm-up length in iterations; 0 = none. Effective factor ``min(1, (t+2)/warmup)``."""
    bert_lr_scale: float = 1.0
    """LR multiplier for BERT parameters (the authors fine-tune BERT at the full LR)."""
    grad_clip: float = 2.0
    """Max global gradient norm (``clip_grad_norm_`` over all parameters); 0 disables."""
    margin: float = 0.2
    max_violation: bool = True
    val_every: int = 500
    """Validate every this many iterations (and at the end of every epoch); 0 = epoch ends only."""
    val_images: int | None = 1000
    """Validate on the first this many val images (the authors use 1,000); null = all."""
    select_by: Literal["rsum", "t2i_rsum"] = "rsum"
    """Metric that picks the ``best`` checkpoint: i2t+t2i R@1/5/10 sum, or t2i only (TERN's code)."""
    seed: int = 0
    max_steps: int | None = None
    """Stop after this many global iterations (null = run all epochs)."""
    amp: Literal["bf16", "fp16", "off"] = "bf16"
    """Mixed precision on CUDA (ignored on CPU, where training runs in ``dtype``)."""
    dtype: Literal["float32", "float64"] = "float32"
    """Floating dtype of the weights, the optimiser state, the batches' floating inputs and the
    loss. ``float64`` is for verification on CPU — arithmetic without float32 rounding, e.g. to show
    that N workers train the weights of one process — not for real training; on CUDA it needs
    ``amp: off``. Its checkpoints hold float64 tensors: ``--resume`` continues in float64, every
    other loader rounds them into the float32 model."""
    device: str = "auto"
    """``auto`` (CUDA if available), ``cpu``, ``cuda``, ``cuda:1`` ..."""
    workers: int = 0
    """DataLoader worker processes."""
    log_every: int = 10
    """Write a training-loss line to the JSONL log every this many iterations."""
    progress: bool = True
    """Show a rich progress bar."""
    eval_batch_size: int = 128
    save_optimizer_state: bool = True
    """Save the Adam moments in ``last/training_state.pt`` (twice the weights' size; needed for an
    exact ``--resume``). Without them a resumed run restarts Adam's moments from zero."""
    keep: Literal["best", "last", "both"] = "both"
    """Checkpoints left in the run directory: ``best`` removes ``last/`` when the run ends (it is
    still written during the run, for crash safety), ``last`` never writes ``best/``."""
    model_config: dict[str, Any] = field(default_factory=dict)
    """Overrides for the model's own config dataclass (dimensions, layers, BERT path, ...)."""


def preset(model: str, dataset: str = "coco") -> TrainConfig:
    """The authors' training configuration of ``model`` on ``dataset`` (``coco`` or ``f30k``).

    The values are each model's own declaration (``ModelSpec.preset`` in its module).
    """
    from trainers.models import model_spec

    spec = model_spec(model)
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset preset {dataset!r}; choose one of {list(DATASETS)}")
    return TrainConfig(model=model, dataset=dataset, **spec.preset(dataset))


def build_config(model: str, *, dataset: str | None = None,
                 overrides: dict[str, Any] | None = None, where: str = "config") -> TrainConfig:
    """Preset of ``model`` (dataset from ``overrides['dataset']`` or ``dataset``), then overrides.

    ``overrides`` usually comes from a YAML file; it may not change ``model`` (the command names
    it), and a ``dataset`` key in it selects the preset before the other keys apply.
    """
    overrides = dict(overrides or {})
    if "model" in overrides and overrides["model"] != model:
        raise ConfigError(f"{where}: model {overrides['model']!r} contradicts the command's "
                          f"model {model!r}; remove the key or train that model")
    ds = overrides.get("dataset", dataset or "coco")
    config = merge(preset(model, ds), overrides, where=where)
    validate(config, where=where)
    return config


def validate(config: TrainConfig, *, where: str = "config") -> None:
    """Refuse values no run could use, naming the key."""
    positive = {"batch_size": config.batch_size, "epochs": config.epochs,
                "lr_step_epochs": config.lr_step_epochs, "eval_batch_size": config.eval_batch_size,
                "log_every": config.log_every}
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{where}.{key}: must be positive, got {value}")
    nonneg = {"warmup_iters": config.warmup_iters, "val_every": config.val_every,
              "grad_clip": config.grad_clip, "workers": config.workers}
    for key, value in nonneg.items():
        if value < 0:
            raise ConfigError(f"{where}.{key}: must be >= 0, got {value}")
    if config.lr <= 0:
        raise ConfigError(f"{where}.lr: must be positive, got {config.lr}")
    if config.max_steps is not None and config.max_steps <= 0:
        raise ConfigError(f"{where}.max_steps: must be positive or null, got {config.max_steps}")
    if config.val_images is not None and config.val_images <= 0:
        raise ConfigError(f"{where}.val_images: must be positive or null, got {config.val_images}")
    if config.device != "auto":
        check_precision(config, config.device.split(":")[0], where=where)


def check_precision(config: TrainConfig, device_type: str, *, where: str = "config") -> None:
    """Refuse ``dtype: float64`` where it cannot mean what it says: on CUDA with ``amp`` on (the
    forward pass would run in bf16/fp16), and on Apple's ``mps`` (no float64). ``device_type`` is
    the resolved device's type (``auto`` is checked again once it is resolved)."""
    if config.dtype != "float64":
        return
    if device_type == "cuda" and config.amp != "off":
        raise ConfigError(f"{where}.dtype: float64 contradicts amp: {config.amp} on CUDA (autocast "
                          "would compute the forward pass in half precision); set amp: off, or "
                          "train in float32")
    if device_type == "mps":
        raise ConfigError(f"{where}.dtype: float64 is not supported on mps; use device: cpu")


def effective_warmup(config: TrainConfig, total_steps: int) -> tuple[int, str | None]:
    """The warm-up length a run of ``total_steps`` uses, and a warning when it differs.

    A warm-up longer than the whole run would never reach the base LR (the paper presets warm up
    for 1,000 iterations; a 20-step trial would train at 2 % of its LR and look broken): it is
    capped to :data:`WARMUP_CAP_FRACTION` of the run.
    """
    w = config.warmup_iters
    if w <= 0 or w <= total_steps:
        return w, None
    capped = int(total_steps * WARMUP_CAP_FRACTION)
    what = (f"capped to {capped} iterations ({WARMUP_CAP_FRACTION:.0%} of the run)" if capped
            else f"dropped ({WARMUP_CAP_FRACTION:.0%} of the run is under one iteration)")
    return capped, (f"warm-up of {w} iterations is longer than the run ({total_steps} steps): "
                    f"{what}, so the learning rate reaches its base value")


def learning_rate(config: TrainConfig, epoch: int, iteration: int,
                  warmup: int | None = None) -> float:
    """LR used by global training iteration ``iteration`` (0-based) during ``epoch`` (0-based).

    ``base · γ^(epoch // step) · min(1, (t + 2) / warmup)`` — docs/guide/training.md: the authors call
    ``StepLR.step(epoch)`` then ``LinearWarmup.dampen()`` each iteration, and the warm-up
    constructor already consumed one step, hence ``t + 2``. Without warm-up this is SGRAF's
    ``lr · 0.1^(epoch // lr_update)``. ``warmup`` overrides ``config.warmup_iters`` (the capped
    length of :func:`effective_warmup`).
    """
    lr = config.lr * config.lr_gamma ** (epoch // config.lr_step_epochs)
    w = config.warmup_iters if warmup is None else warmup
    if w > 0:
        lr *= min(1.0, (iteration + 2) / w)
    return lr


def config_diff(old: TrainConfig, new: TrainConfig) -> list[str]:
    """Names of fields that differ between two configs (nested model_config keys as ``a.b``)."""
    out: list[str] = []
    for f in dataclasses.fields(TrainConfig):
        a, b = getattr(old, f.name), getattr(new, f.name)
        if f.name == "model_config":
            for key in sorted(set(a) | set(b)):
                if a.get(key) != b.get(key):
                    out.append(f"model_config.{key}")
        elif a != b:
            out.append(f.name)
    return out
