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
import sys
import time
from dataclasses import dataclass
from typing import Iterator

# Embedded Ray only. Workers at normal priority: Ray's default niceness 15 makes the detector
# yield to every other process on a shared machine (measured: the job crawled next to other jobs).
_QUIET_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
              "RAY_DEDUP_LOGS": "0", "RAY_worker_niceness": "0"}
_MIB = 1024 * 1024
#: Seconds to wait for a Ray cluster's GCS port before giving up (``--connect-timeout`` /
#: ``ITMFLOW_RAY_CONNECT_TIMEOUT``): ``ray.init`` itself retries an unreachable address for minutes.
CONNECT_TIMEOUT_S = 15.0


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a Ray address (``host:port``, ``ray://host:port``, ``[v6]:port``);
    None for ``auto`` / ``local`` or anything else ``ray.init`` resolves by itself."""
    text = address.strip()
    if "://" in text:
        text = text.split("://", 1)[1]
    text = text.split("/", 1)[0]
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def check_reachable(address: str, timeout: float) -> None:
    """Refuse an address whose port does not answer within ``timeout`` seconds, naming it."""
    import socket

    from itmflow.errors import ConfigError

    target = _host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except OSError as exc:
        why = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise ConfigError(
            f"cannot reach the Ray cluster at {address} ({why} within {timeout:g} s); check --address "
            "/ RAY_ADDRESS and that `ray start --head` runs there, raise --connect-timeout, or leave "
            "--address out for an embedded local Ray") from None


def _one_line(exc: BaseException) -> str:
    """The exception's message on one line (Ray's can span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


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


_GCS_PROBE = ("import sys\n"
              "from ray._raylet import GcsClient\n"
              "GcsClient(address=sys.argv[1]).cluster_id\n")


def _join(address: str, timeout: float) -> None:
    """``ray.init(address)`` that gives up after about ``timeout`` seconds with one line naming the
    address. ``ray.init`` itself retries for minutes (a blackholed host) or forever (a port that
    accepts TCP but does not speak Ray), and not from Python, so no signal or timer can stop it.
    Hence: a TCP check, then a child process that asks the GCS for the cluster id, killed at the
    deadline; only then ``ray.init``."""
    import subprocess
    import sys

    import ray

    from itmflow.errors import ConfigError

    def refuse(why: str) -> ConfigError:
        return ConfigError(
            f"cannot reach the Ray cluster at {address} ({why}); check --address / RAY_ADDRESS and "
            "that `ray start --head` runs there (GCS port, 6379 by default), raise "
            "--connect-timeout, or leave --address out for an embedded local Ray")

    target = _host_port(address)
    if target is not None and "://" not in address:  # ray:// (client mode) has no GCS to ask
        start = time.monotonic()
        check_reachable(address, timeout)
        left = max(1.0, timeout - (time.monotonic() - start))
        try:
            probe = subprocess.run([sys.executable, "-c", _GCS_PROBE, f"{target[0]}:{target[1]}"],
                                   capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=left)
        except subprocess.TimeoutExpired:
            raise refuse(f"no Ray GCS answered within {timeout:g} s") from None
        if probe.returncode != 0:
            lines = [l for l in probe.stderr.splitlines() if "Error" in l]
            raise refuse(lines[-1].strip() if lines else f"the GCS probe exited {probe.returncode}")
    try:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR", configure_logging=False)
    except Exception as exc:
        if ray.is_initialized():
            ray.shutdown()
        text = str(exc).strip().splitlines()
        raise refuse(text[0] if text else type(exc).__name__) from None


@contextlib.contextmanager
def _signals_not_swallowed() -> Iterator[None]:
    """Re-raise, at the end of the block, a signal's exception that Python had to drop inside it.

    A signal handler's exception (``SystemExit`` from the SIGTERM handler ``ray.init`` installs,
    ``KeyboardInterrupt``, extract's stop) is raised wherever the main thread is when the signal
    arrives; inside a finalizer or an at-fork hook (``ray.init`` forks, and ``logging`` releases
    its lock after a fork) Python cannot raise it and only prints "Exception ignored in ...":
    seen here, the SIGTERM was lost and the run went on. Such exceptions reach
    ``sys.unraisablehook``; this keeps them (others go to the previous hook) and raises the first.
    """
    dropped: list[BaseException] = []
    previous = sys.unraisablehook

    def keep(unraisable: "sys.UnraisableHookArgs") -> None:
        exc = unraisable.exc_value
        if exc is not None and not isinstance(exc, Exception):  # SystemExit, KeyboardInterrupt, a stop
            dropped.append(exc)
        else:
            previous(unraisable)

    sys.unraisablehook = keep
    try:
        yield
    finally:
        sys.unraisablehook = previous
    if dropped:
        raise dropped[0]


@contextlib.contextmanager
def ray_session(address: str | None, *, num_cpus: int | None = None,
                object_store: int | None = None,
                connect_timeout: float = CONNECT_TIMEOUT_S) -> Iterator[ClusterInfo]:
    """Use the Ray already initialised in this process, join ``address`` / ``RAY_ADDRESS`` (after
    checking within ``connect_timeout`` seconds that it answers), or start an embedded local Ray
    (no dashboard, logs in its session directory) and stop it after."""
    import ray

    owned = False
    if not ray.is_initialized():
        target = address or os.environ.get("RAY_ADDRESS") or None
        if target:
            _join(target, connect_timeout)
        else:
            for key, value in _QUIET_ENV.items():
                os.environ.setdefault(key, value)
            try:
                with _signals_not_swallowed():
                    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                             object_store_memory=object_store, log_to_driver=False,
                             logging_level="ERROR", configure_logging=False)
            except BaseException as exc:  # a signal or an error while Ray starts: stop what it started
                with contextlib.suppress(Exception):
                    ray.shutdown()
                if not isinstance(exc, Exception):
                    raise
                from itmflow.errors import ClusterError

                raise ClusterError(
                    f"could not start a local Ray ({_one_line(exc)}); check RAY_TMPDIR (its socket paths must "
                    "stay under 108 bytes) and free space in /dev/shm, or start Ray with `ray start --head` "
                    "and pass --address") from None
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
