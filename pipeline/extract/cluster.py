"""Joining a Ray cluster, or starting a quiet embedded one, and sizing the work to it.

Facts this follows (measured on Ray 2.60, see the pipeline spec): ``ray.init()`` with no address
attaches to the *latest cluster started on this machine*, so the embedded mode passes
``address="local"``; token auth would write into ``$HOME`` on a fresh local cluster, so the
embedded mode disables it (it listens on localhost only); a GPU request on a cluster without GPUs
waits forever, so GPUs are requested only when ``ray.cluster_resources()`` lists them.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator

# Embedded Ray only. Workers at normal priority: Ray's default niceness 15 makes the detector
# yield to every other process on a shared machine (measured: the job crawled next to other jobs).
_QUIET_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
              "RAY_DEDUP_LOGS": "0", "RAY_worker_niceness": "0"}
_MIB = 1024 * 1024


@dataclass
class ClusterInfo:
    """What the job learned about the Ray it runs on."""

    embedded: bool
    address: str
    cpus: float
    gpus: float
    log_dir: str | None


def object_store_bytes(in_flight_images: int, max_size: int) -> int:
    """An object store big enough for the in-flight work, never more than 30% of RAM or /dev/shm.

    A prepared image is at most 3 × max_size² float32; double it for the results and Ray's own
    copies, plus 256 MiB of headroom.
    """
    need = 2 * in_flight_images * 3 * max_size * max_size * 4 + 256 * _MIB
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    cap = int(0.3 * total)
    with contextlib.suppress(OSError):
        stat = os.statvfs("/dev/shm")
        cap = min(cap, int(0.8 * stat.f_bavail * stat.f_frsize))
    return max(128 * _MIB, min(need, cap))


@contextlib.contextmanager
def ray_session(address: str | None, *, num_cpus: int | None = None,
                object_store: int | None = None) -> Iterator[ClusterInfo]:
    """Use the Ray already initialised in this process, join ``address`` / ``RAY_ADDRESS``, or
    start an embedded local Ray (no dashboard, logs in its session directory) and stop it after."""
    import ray

    owned = False
    if not ray.is_initialized():
        target = address or os.environ.get("RAY_ADDRESS") or None
        if target:
            ray.init(address=target, log_to_driver=False, logging_level="ERROR",
                     configure_logging=False)
        else:
            for key, value in _QUIET_ENV.items():
                os.environ.setdefault(key, value)
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                     object_store_memory=object_store, log_to_driver=False,
                     logging_level="ERROR", configure_logging=False)
        owned = True
    try:
        resources = ray.cluster_resources()
        context = ray.get_runtime_context()
        log_dir = None
        with contextlib.suppress(Exception):  # private API, only used to tell people where logs are
            log_dir = os.path.join(ray._private.worker._global_node.get_session_dir_path(), "logs")
        yield ClusterInfo(embedded=not (address or os.environ.get("RAY_ADDRESS")),
                          address=str(getattr(context, "gcs_address", "") or "local"),
                          cpus=float(resources.get("CPU", 0)), gpus=float(resources.get("GPU", 0)),
                          log_dir=log_dir)
    finally:
        if owned:
            ray.shutdown()


@dataclass
class WorkerShape:
    """How many detector actors, on which device, with which resources and threads."""

    count: int
    device: str
    num_gpus: float
    num_cpus: float
    threads: int
    decode_cpus: float
    decode_in_actor: bool = False
    """Actors decode their own batches (no decode tasks): CPU actors whose threads cover every core."""


def plan_workers(info: ClusterInfo, *, workers: int | None, device: str) -> WorkerShape:
    """One actor per GPU (``num_gpus=1``) when GPUs exist and the device allows; otherwise
    ``workers`` CPU actors sharing the CPUs, leaving a quarter of them for decode tasks. CPU actors
    whose threads cover every core decode their own batches instead (``decode_in_actor``): a decode
    task would only preempt their threads.

    CPU actors take a fractional CPU share so decode tasks can always be scheduled: an actor
    holding a whole CPU each would starve them on a 2-CPU machine (measured: a deadlock).
    """
    from itmflow.errors import ConfigError

    cpus = max(info.cpus, 1.0)
    if device == "cuda" and info.gpus < 1:
        raise ConfigError("--device cuda: the Ray cluster reports no GPU; use --device cpu or auto")
    if info.gpus >= 1 and device in ("auto", "cuda"):
        count = min(int(info.gpus), workers or int(info.gpus))
        return WorkerShape(count=count, device="cuda", num_gpus=1.0, num_cpus=1.0,
                           threads=max(1, int(cpus // max(count, 1)) - 1), decode_cpus=1.0)
    count = workers or 1
    share = round(0.75 * cpus / count, 3)
    threads = max(1, int(cpus // count))
    return WorkerShape(count=count, device="cpu", num_gpus=0.0, num_cpus=max(share, 0.01),
                       threads=threads, decode_cpus=round(max(0.25 * cpus / max(count, 1), 0.1), 3),
                       decode_in_actor=count * threads >= cpus)
