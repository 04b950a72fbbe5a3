"""The Ray Train driver and the per-worker loop of multi-worker training.

:func:`run_workers` starts a ``TorchTrainer`` whose workers each run :func:`_worker_loop`: they
build the data and a :class:`~trainers.training.loop.Trainer` with their
:class:`~trainers.training.distributed.WorkerContext` and fit. The arithmetic (gathers, global
batch norm, sharding) is in :mod:`trainers.training.distributed`; this module only wires Ray
Train to the loop, so the loop itself never imports it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from itmflow.errors import ConfigError
from trainers.training.distributed import DistributedOptions, WorkerContext


def _worker_loop(cfg: dict[str, Any]) -> None:
    """``train_loop_per_worker``: build the data and a :class:`Trainer` on this worker, fit."""
    import ray.train
    import ray.train.torch

    from itmflow.config import from_dict
    from trainers.data import MatchingData
    from trainers.training.config import TrainConfig
    from trainers.training.loop import Trainer

    context = ray.train.get_context()
    config = from_dict(TrainConfig, cfg["config"], where="config")
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    checkpoint = ray.train.get_checkpoint()
    resume_dir = None
    local = None
    if checkpoint is not None:
        local = checkpoint.as_directory()
        resume_dir = Path(local.__enter__())
    ctx = WorkerContext(rank=context.get_world_rank(), world_size=context.get_world_size(),
                        device=device, gather=cfg["gather"], resume_dir=resume_dir,
                        kill_at=tuple(cfg["kill_at"]) if cfg["kill_at"] else None)
    try:
        data = MatchingData(cfg["regions"], cfg["captions"], model=config.model)
        trainer = Trainer(config, data, cfg["out"], resume=resume_dir is not None,
                          bert=cfg["bert"], inputs=cfg["inputs"], worker=ctx)
        summary = trainer.fit()
    finally:
        if local is not None:
            local.__exit__(None, None, None)
    ray.train.report({"summary": json.dumps(summary)})


def run_workers(config: Any, regions: str | os.PathLike[str], captions: str | os.PathLike[str],
                out: str | os.PathLike[str], options: DistributedOptions, *, resume: bool = False,
                bert: str | None = None, inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run :func:`_worker_loop` on ``options.workers`` Ray Train workers; returns the summary.

    Uses the Ray of this process (``ray.init`` first to join a cluster; the command does it for
    ``--address``), else starts a local one.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from itmflow.config import to_dict
    from trainers.training.config import check_precision
    from trainers.training.run_dir import RunDir

    out = Path(out).resolve()
    run = RunDir(out)
    run.prepare(config, resume=resume)  # refusals (existing run, changed config) before Ray starts
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 configure_logging=False)
    gpus = options.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if config.device != "cpu" and ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    use_gpu = gpus > 0
    if use_gpu and config.device == "cpu":
        raise ConfigError("--gpus-per-worker > 0 contradicts --device cpu")
    if not use_gpu and config.device.startswith("cuda"):
        raise ConfigError(f"--device {config.device} but no GPU per worker; give "
                          "--gpus-per-worker 1 (and a cluster with GPUs)")
    check_precision(config, "cuda" if use_gpu else "cpu")  # the workers' loop checks it again
    resources = {"CPU": options.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = gpus
    storage = options.storage_path or str(out / ".ray")
    if "://" not in storage:
        storage = str(Path(storage).resolve())
    # Workers print no progress bar (their output goes to Ray's logs).
    loop_config = {"config": {**to_dict(config), "progress": False}, "regions": str(Path(regions).resolve()),
                   "captions": str(Path(captions).resolve()), "out": str(out), "bert": bert,
                   "inputs": inputs or {}, "gather": options.gather,
                   "kill_at": list(options.kill_at) if options.kill_at else None}
    start = None
    if resume:
        from ray.train import Checkpoint

        start = Checkpoint.from_directory(str(out / "last"))
    trainer = TorchTrainer(
        _worker_loop, train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=options.workers, use_gpu=use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=out.name or "run", storage_path=storage,
                             failure_config=FailureConfig(max_failures=options.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
        resume_from_checkpoint=start)
    result = trainer.fit()
    if getattr(result, "error", None) is not None:
        raise result.error
    metrics = result.metrics or {}
    if "summary" in metrics:
        return json.loads(metrics["summary"])
    return json.loads((out / "summary.json").read_text("utf-8"))
