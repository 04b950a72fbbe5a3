"""Training on several workers with Ray Train: the same optimisation as one process, same global batch.

``itmflow train MODEL ... --workers N`` runs :class:`~trainers.training.loop.Trainer` in N Ray
Train workers (``TorchTrainer``; gloo on CPU, NCCL on GPUs). Every global batch of the
single-process run (:class:`~trainers.data.EpochBatchSampler`, a pure function of
``(seed, epoch)``) is cut into N contiguous slices, worker ``r`` loading slice ``r`` only
(:class:`~trainers.data.ShardedBatchSampler`).

The losses are batch-wise — the hardest negative of every image and caption over the *whole*
batch — so each step is (:class:`GlobalBatchScorer`):

1. every worker encodes its local images and captions;
2. the image embeddings (TERN vectors, TERAN region tokens, SGRAF regions + VisualSA vector) are
   all-gathered with :func:`gather_rows`, an autograd-aware gather: its backward sums the
   gradient over the workers and hands each one the rows it owns;
3. worker ``r`` scores *all* images against *its* captions, a ``[B, B_r]`` block (for SGRAF and
   TERAN this cross-attention is the expensive part, and the N blocks partition the ``B × B``
   pairs); the blocks are all-gathered the same way into the full ``[B, B]`` matrix;
4. every worker computes the same VSE++ loss ``L`` on that matrix and back-propagates.

The gradient arithmetic: the collectives differentiate ``J = Σ_workers L = N·L`` (every worker's
backward sums the gradients of all N identical losses), so each worker's parameter gradient is
``N · ∂L/∂θ`` restricted to the paths through its own samples, and the sum over workers is
``N · ∂L/∂θ``. DDP *averages* the gradients (divides the sum by N): every replica ends with
exactly ``∂L/∂θ``, the single-process gradient of the same global batch — no loss scaling needed.
Gradient clipping then sees the same global norm, Adam takes the same step.

Batch statistics follow the global batch too: SGRAF's VisualSA ``BatchNorm1d`` layers normalise
with the statistics of the whole global batch (:class:`GlobalBatchNorm1d`, an all-reduce of the
sums), and SAF's per-caption BatchNorm — statistics over all images of the batch, which the
``[B, B_r]`` block has — gets its running averages merged in caption order
(:func:`_merge_saf_running_stats`), so buffers also equal the single-process ones.

Dropout draws from the global torch RNG, reseeded every step from ``(seed, step, rank)``
(:func:`step_seed`): a restarted or resumed run (on any number of workers) draws the same masks
for the same step, so resuming needs no RNG state.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from itmflow.errors import ConfigError
from trainers.models.common import Embeddings, at_least_float32


@dataclass
class DistributedOptions:
    """How a run is spread over Ray Train workers (not part of :class:`TrainConfig`: it does not
    change what is trained, only where)."""

    workers: int = 1
    """Ray Train workers (processes); 1 = today's in-process loop, no Ray."""
    gpus_per_worker: float | None = None
    """GPUs per worker; None = 1 when ``device`` is not ``cpu`` and the cluster has GPUs, else 0."""
    storage_path: str | None = None
    """Where Ray Train keeps its copies of the checkpoints (shared on a multi-machine cluster);
    default ``<out>/.ray``."""
    max_failures: int = 3
    """Restart the worker group from the last checkpoint at most this many times."""
    cpus_per_worker: float = 1.0
    gather: bool = True
    """Debug switch: False scores each worker's local batch only (plain DDP) — not equivalent."""
    kill_at: tuple[int, int, str] | None = field(default=None, repr=False)
    """Test hook ``(rank, step, marker file)``: that worker SIGKILLs itself after that step,
    once (the marker file records that it happened)."""


@dataclass
class WorkerContext:
    """Where this process sits in the worker group."""

    rank: int
    world_size: int
    device: torch.device
    gather: bool = True
    resume_dir: Path | None = None
    kill_at: tuple[int, int, str] | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def split_sizes(n: int, world_size: int) -> list[int]:
    """Contiguous slice sizes of a global batch of ``n`` (the first ``n % N`` get one more)."""
    base, extra = divmod(n, world_size)
    return [base + (1 if r < extra else 0) for r in range(world_size)]


def step_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed of worker ``rank`` for global step ``step`` (dropout draws)."""
    digest = hashlib.blake2b(f"{seed}:{step}:{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def check_batches(n: int, batch_size: int, world_size: int) -> None:
    """Refuse a run where some global batch would leave a worker without samples."""
    if batch_size < world_size:
        raise ConfigError(f"batch_size {batch_size} is smaller than --workers {world_size}; every "
                          "worker needs at least one sample of each global batch")
    tail = n % batch_size
    if 0 < tail < world_size:
        raise ConfigError(
            f"the last batch of every epoch holds {tail} of the {n} training captions, fewer than "
            f"--workers {world_size}; choose a batch_size or a number of workers that leaves each "
            "worker at least one sample")


# --------------------------------------------------------------------------------------------------
# Autograd-aware gathers
# --------------------------------------------------------------------------------------------------
class _GatherRows(torch.autograd.Function):
    """All-gather along dim 0 with per-worker row counts; backward: sum over workers, own rows."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, counts: list[int], rank: int) -> Tensor:  # type: ignore[override]
        ctx.counts, ctx.rank = counts, rank
        most = max(counts)
        padded = tensor.contiguous()
        if padded.shape[0] < most:
            pad = padded.new_zeros((most - padded.shape[0],) + tuple(padded.shape[1:]))
            padded = torch.cat([padded, pad], dim=0)
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded)
        return torch.cat([p[:c] for p, c in zip(parts, counts)], dim=0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.counts[:ctx.rank])
        return grad[start:start + ctx.counts[ctx.rank]], None, None


def gather_rows(tensor: Tensor, counts: list[int], rank: int) -> Tensor:
    """Concatenate every worker's ``tensor`` (``counts[r]`` rows on worker r) in rank order.

    Floating tensors keep their graph: the backward pass all-reduces the gradient of the whole
    gathered tensor (summing what every worker's loss sends to each row) and returns this worker's
    rows. Other tensors (masks) are gathered without gradient. All dims but the first must agree.
    """
    if tensor.is_floating_point():
        return _GatherRows.apply(tensor, counts, rank)
    as_int = tensor.to(torch.uint8) if tensor.dtype == torch.bool else tensor
    with torch.no_grad():
        out = _GatherRows.apply(as_int, counts, rank)
    return out.to(torch.bool) if tensor.dtype == torch.bool else out


def _max_over_workers(values: list[int], device: torch.device) -> list[int]:
    t = torch.tensor(values, dtype=torch.long, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [int(v) for v in t.tolist()]


def gather_embeddings(emb: Embeddings, counts: list[int], rank: int) -> Embeddings:
    """:func:`gather_rows` of an embedding (a tensor or a dict of tensors). Per-token tensors of
    different lengths on different workers are padded to the longest with zeros (masks with False,
    so the padding is invisible to every similarity, as in :func:`concat_embeddings`)."""
    if not isinstance(emb, dict):
        return gather_rows(emb, counts, rank)
    keys = sorted(emb)
    device = emb[keys[0]].device
    widths = _max_over_workers([emb[k].shape[1] if emb[k].dim() >= 2 else 0 for k in keys], device)
    out = {}
    for key, width in zip(keys, widths):
        t = emb[key]
        if t.dim() >= 2 and t.shape[1] < width:
            pad = t.new_zeros((t.shape[0], width - t.shape[1]) + tuple(t.shape[2:]))
            t = torch.cat([t, pad], dim=1)
        out[key] = gather_rows(t, counts, rank)
    return out


# --------------------------------------------------------------------------------------------------
# Batch statistics over the global batch
# --------------------------------------------------------------------------------------------------
class _AllReduceSum(torch.autograd.Function):
    """Sum over workers; backward sums the gradients (the derivative of ``Σ_workers loss``)."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:  # type: ignore[override]
        out = tensor.contiguous().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """``BatchNorm1d`` whose training statistics are those of the global batch (all workers).

    Same parameters, buffers and state-dict keys as ``BatchNorm1d`` (:func:`globalise_batchnorm`
    swaps the class of existing layers). Mean and variance are two-pass sums all-reduced over the
    workers, the running averages are updated with the global (unbiased) variance, exactly as one
    process holding the whole batch would. Outside a process group, or in eval mode, it is plain
    ``BatchNorm1d``. Works on CPU (gloo) and GPU (NCCL), unlike ``nn.SyncBatchNorm``.
    """

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        if not (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(x)
        dims = [0] if x.dim() == 2 else [0, 2]
        shape = [1, -1] + ([1] if x.dim() == 3 else [])
        xf = at_least_float32(x)  # float32 statistics under autocast, float64 in a float64 run
        count = torch.tensor(float(x.numel() // x.shape[1]), device=x.device, dtype=xf.dtype)
        dist.all_reduce(count, op=dist.ReduceOp.SUM)
        mean = _AllReduceSum.apply(xf.sum(dim=dims)) / count
        centred = xf - mean.view(shape)
        var = _AllReduceSum.apply(centred.pow(2).sum(dim=dims)) / count
        out = centred / torch.sqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked)) if self.momentum is None \
                    else self.momentum
                unbiased = var.detach() * count / (count - 1).clamp(min=1)
                self.running_mean.mul_(1 - m).add_(m * mean.detach().to(self.running_mean))
                self.running_var.mul_(1 - m).add_(m * unbiased.to(self.running_var))
        return out.to(x.dtype)


def globalise_batchnorm(module: nn.Module) -> int:
    """Make every ``BatchNorm1d`` of ``module`` a :class:`GlobalBatchNorm1d`; returns how many."""
    n = 0
    for m in module.modules():
        if type(m) is nn.BatchNorm1d:
            m.__class__ = GlobalBatchNorm1d
            n += 1
    return n


def _saf_batchnorms(model: nn.Module) -> list[nn.BatchNorm1d]:
    from trainers.models.sgraf import AttentionFiltration

    return [m.bn for m in model.modules() if isinstance(m, AttentionFiltration)]


def _merge_saf_running_stats(bns: list[nn.BatchNorm1d], before: list[tuple[Tensor, Tensor, Tensor]],
                             counts: list[int], rank: int) -> None:
    """After each worker scored its captions, make SAF's running averages those of one process
    scoring all captions in order.

    SAF updates its BatchNorm running averages once per caption (caption order, momentum m): after
    the B captions of a batch, ``run = (1-m)^B · run₀ + Σ_k m (1-m)^(B-1-k) · stat_k``. Worker r
    applied the same recursion to its captions only (global indices ``start_r .. end_r-1``), so
    its increment ``D_r = run_r - (1-m)^(n_r) run₀`` carries weights ``m (1-m)^(end_r-1-k)``;
    scaled by ``(1-m)^(B-end_r)`` these are the global weights. Summing the scaled increments over
    the workers and adding ``(1-m)^B run₀`` gives the single-process result.
    """
    total = sum(counts)
    end = sum(counts[:rank + 1])
    with torch.no_grad():
        for bn, (mean0, var0, tracked0) in zip(bns, before):
            m = bn.momentum if bn.momentum is not None else 0.1
            keep_local = (1 - m) ** counts[rank]
            scale = (1 - m) ** (total - end)
            parts = torch.stack([(bn.running_mean - keep_local * mean0) * scale,
                                 (bn.running_var - keep_local * var0) * scale])
            dist.all_reduce(parts, op=dist.ReduceOp.SUM)
            bn.running_mean.copy_((1 - m) ** total * mean0 + parts[0])
            bn.running_var.copy_((1 - m) ** total * var0 + parts[1])
            bn.num_batches_tracked.copy_(tracked0 + total)


class GlobalBatchScorer(nn.Module):
    """The training forward pass of one worker: local encodings → the global ``[B, B]`` scores.

    Wrapped in ``DistributedDataParallel``; see the module docstring for the steps and the
    gradient arithmetic. ``counts`` (set before each call, :meth:`set_counts`) are the per-worker
    slice sizes of the current global batch. With ``gather=False`` (debug) each worker scores its
    local batch only, as plain DDP would.
    """

    def __init__(self, model: nn.Module, rank: int, world_size: int, *, gather: bool = True):
        super().__init__()
        self.model = model
        self.rank, self.world_size, self.gather = rank, world_size, gather
        self.counts: list[int] = []
        self._saf = _saf_batchnorms(model)

    def set_counts(self, counts: list[int]) -> None:
        self.counts = counts

    def forward(self, images: dict[str, Tensor], captions: dict[str, Tensor]) -> Tensor:
        model = self.model
        if not self.gather:
            return model(images, captions)
        counts, rank = self.counts, self.rank
        img_all = gather_embeddings(model.encode_images(images), counts, rank)
        cap = model.encode_captions(captions)
        before = [(bn.running_mean.clone(), bn.running_var.clone(),
                   bn.num_batches_tracked.clone()) for bn in self._saf]
        block = model.similarity(img_all, cap)                     # [B, B_r]
        if self._saf:
            _merge_saf_running_stats(self._saf, before, counts, rank)
        return gather_rows(at_least_float32(block).t(), counts, rank).t()     # [B, B]


def wrap_for_training(model: nn.Module, ctx: WorkerContext) -> nn.Module:
    """The module the optimisation step calls: DDP around :class:`GlobalBatchScorer`."""
    from torch.nn.parallel import DistributedDataParallel

    globalise_batchnorm(model)
    scorer = GlobalBatchScorer(model, ctx.rank, ctx.world_size, gather=ctx.gather)
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    # Buffers (BatchNorm running averages) are kept equal on every worker by construction.
    return DistributedDataParallel(scorer, device_ids=ids, broadcast_buffers=False)


# --------------------------------------------------------------------------------------------------
# Ray Train checkpoints (the driver and the per-worker loop are in trainers.training.ray_train)
# --------------------------------------------------------------------------------------------------
def report_checkpoint(ctx: WorkerContext, directory: Path, metrics: dict[str, Any]) -> None:
    """Every worker: hand ``directory`` (rank 0's ``last/``) to Ray Train as the checkpoint a
    restarted worker group resumes from. A barrier across the workers."""
    import ray.train

    checkpoint = ray.train.Checkpoint.from_directory(str(directory)) if ctx.is_main else None
    ray.train.report(metrics, checkpoint=checkpoint, delete_local_checkpoint_after_upload=False)
