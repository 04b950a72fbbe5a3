"""The extraction job: plan, start the workers, stream batches through them, commit in order.

Design (argued in docs/design.md, "Extraction"): Ray core, not Ray Data. The driver is the only committer. It
keeps a bounded window of batches in flight; each batch is one CPU decode task whose result
reference goes straight into a detector actor call (the driver never touches the pixels), and the
finished batches are committed strictly in collection order through a small reorder buffer, so a
resumed run writes exactly the bytes an uninterrupted one does. Memory is bounded by the window
(``workers × in_flight`` batches) plus one store part, whatever the collection size.
"""

from __future__ import annotations

import collections
import os
import json
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from itmflow.errors import ItmflowError, StoreError
from itmflow.files import sha256_file
from detectors.memory import shape_cache_env
from pipeline.extract.config import ExtractConfig
from pipeline.extract.plan import (Batch, Plan, make_plan, missing_now_present, read_failures,
                                   select_images)

#: Actor restarts / task retries before a batch is given up (a worker killed by the OOM killer or
#: a lost node is restarted by Ray and its calls replayed; a batch that keeps killing it is not).
MAX_RESTARTS = 4
MAX_TASK_RETRIES = 3
#: Driver-level resubmissions of a batch whose worker stayed dead.
MAX_BATCH_ATTEMPTS = 2


@dataclass
class ExtractSummary:
    """What a run did; ``to_dict()`` is the JSON written by ``--summary``."""

    store: Path
    selected: int = 0
    processed: int = 0
    already_done: int = 0
    failed: int = 0
    rows_in_store: int = 0
    seconds: float = 0.0
    steady_seconds: float = 0.0
    workers: int = 0
    device: str = "cpu"
    log_dir: str | None = None
    steady_count: int = 0
    skipped_failed: int = 0
    """Images that failed in earlier runs and were not tried again (``--retry-failed`` would)."""
    retried_missing: int = 0
    """Images whose file was missing in an earlier run, exists now, and was tried again."""
    failures: list[dict[str, str]] = field(default_factory=list)
    padded: int = 0
    """Images of this run whose detector kept fewer regions than the store's fixed K: kept, their
    rows padded to K (``num_regions`` holds the real count)."""
    fixed_k: int | None = None

    @property
    def images_per_second(self) -> float:
        """Images attempted in this run (processed + failed) per wall-clock second."""
        return (self.processed + self.failed) / self.seconds if self.seconds > 0 else 0.0

    @property
    def steady_images_per_second(self) -> float:
        """Images per second after the first batch came back (worker start-up excluded)."""
        return self.steady_count / self.steady_seconds if self.steady_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["store"] = str(self.store)
        out["images_per_second"] = self.images_per_second
        out["steady_images_per_second"] = self.steady_images_per_second
        return out


def committed_ids(store: Path) -> set[str]:
    """Image ids already committed to ``store`` (empty when the store does not exist yet)."""
    if not (store / "manifest.json").is_file():
        return set()
    from stores import open_region_store

    with open_region_store(store) as reader:
        return set(reader.ids())


def _failed_to_skip(out: Path, images: list, root: Any) -> tuple[set[str], int]:
    """Ids of failures.jsonl to skip, and how many earlier "missing file" failures are retried
    because their file exists now."""
    failures = read_failures(out)
    retry = missing_now_present(failures, images, root) if root is not None else set()
    return set(failures) - retry, len(retry)


def plan_run(cfg: ExtractConfig) -> tuple[Any, Plan]:
    """Read the collection and compute what is left to do; no Ray, no torch."""
    from pipeline.collections import read_collection

    collection = read_collection(cfg.collection, cfg.images_root)
    images = select_images(collection.images, cfg.splits)
    failed, _ = _failed_to_skip(Path(cfg.out), images, collection.images_root)
    plan = make_plan(images, committed=committed_ids(Path(cfg.out)), failed=failed,
                     batch_size=cfg.batch_size, retry_failed=cfg.retry_failed)
    return collection, plan


class ExtractInterrupted(Exception):
    """The run was stopped by SIGINT / SIGTERM; what was committed stays."""

    def __init__(self, signum: int, committed: int) -> None:
        self.signum = signum
        self.committed = committed
        super().__init__(f"interrupted: {committed} images committed; rerun the same command to resume")

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process killed by it (130, 143)."""
        return 128 + self.signum


class _Stop(BaseException):
    """Raised in the driver's main thread by the SIGINT / SIGTERM handler (a BaseException, so no
    ``except Exception`` on the way swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _Signals:
    """SIGINT and SIGTERM stop the run; the first one also ignores any further ones, so cleanup
    (commit of the whole batches already added, Ray shutdown) is not cut short.

    Before Ray runs, the handler raises :class:`_Stop` at once. While Ray runs (:attr:`deferred`)
    it only sets :attr:`signum`: an exception raised inside ``ray.wait`` / ``ray.get`` comes out
    as a ``SystemError``, so the driver loop waits with a timeout and calls :meth:`check`.
    :meth:`install` again after ``ray.init``, which sets Ray's own SIGTERM handler.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    POLL_S = 0.5

    def __init__(self) -> None:
        self.saved: dict[int, Any] = {}
        self.active = threading.current_thread() is threading.main_thread()
        self.signum: int | None = None
        self.deferred = False

    def _handle(self, signum: int, frame: Any) -> None:
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        self.signum = signum
        if not self.deferred:
            raise _Stop(signum)

    def check(self) -> None:
        """Raise :class:`_Stop` if a signal came."""
        if self.signum is not None:
            raise _Stop(self.signum)

    def install(self) -> None:
        if not self.active:
            return
        for sig in self.SIGNALS:
            current = signal.getsignal(sig)
            if current == signal.SIG_IGN:
                continue  # stopping already, or ignored on purpose (nohup, a background job)
            self.saved.setdefault(sig, current)
            signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)


def _get(ref: Any, signals: _Signals) -> Any:
    """``ray.get(ref)`` that notices a stop signal while it waits."""
    import ray

    while not ray.wait([ref], timeout=signals.POLL_S)[0]:
        signals.check()
    return ray.get(ref)


def _rows_in_store(out: Path) -> int:
    """Rows the manifest lists as committed (0 when there is no readable manifest)."""
    try:
        return int(json.loads((out / "manifest.json").read_text(encoding="utf-8")).get("num_rows", 0))
    except (OSError, ValueError, AttributeError):
        return 0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _unwrap_start_error(exc: BaseException) -> ItmflowError:
    """Our own error when a detector worker failed to start because of user input."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ItmflowError):
            return cur
        cause = getattr(cur, "cause", None)
        cur = cause if isinstance(cause, BaseException) else cur.__cause__
    text = str(exc).strip().splitlines()
    tail = [line for line in text if "Error" in line][-1:] or text[-1:]
    return ItmflowError(f"the detector worker could not start: {' '.join(tail)}")


class _Workers:
    """The detector actors and how many batches each has in flight."""

    def __init__(self, shape: Any, cfg: ExtractConfig) -> None:
        import ray

        from pipeline.extract.worker import DetectorWorker, detector_kwargs

        self.settings = cfg.detector
        self.kwargs = detector_kwargs(weights=cfg.weights, random_init=cfg.random_init, seed=cfg.seed,
                                      device=shape.device, vocab=cfg.vocab)
        # The shape-cache caps must be in the environment before torch is imported, so the actor
        # gets them at process start (a pooled worker that ran a decode task has torch loaded).
        self.cls = ray.remote(DetectorWorker).options(
            num_cpus=shape.num_cpus, num_gpus=shape.num_gpus, max_restarts=MAX_RESTARTS,
            max_task_retries=MAX_TASK_RETRIES,
            runtime_env={"env_vars": shape_cache_env()})
        self.shape = shape
        self.feature_dtype = cfg.feature_dtype
        self.actors = [self._new() for _ in range(shape.count)]
        self.load = [0] * shape.count

    def _new(self) -> Any:
        return self.cls.remote(self.settings, self.kwargs, self.shape.threads, self.feature_dtype)

    def replace(self, slot: int, dead: Any) -> None:
        """Start a fresh actor in ``slot`` if ``dead`` (which used up its restarts) is still there;
        the other batches that were queued on it report the same death and must not replace the
        new actor."""
        import ray

        if self.actors[slot] is not dead:
            return
        ray.kill(dead, no_restart=True)
        self.actors[slot] = self._new()

    def pick(self) -> int:
        """The least loaded actor."""
        return min(range(len(self.actors)), key=self.load.__getitem__)


def run_extract(cfg: ExtractConfig, *, console: Console | None = None,
                on_batch: Callable[[dict[str, Any]], None] | None = None) -> ExtractSummary:
    """Run (or resume) the extraction described by ``cfg`` and return its summary.

    ``on_batch`` is called in the driver after each batch is committed to the writer, with the
    batch number, the worker's process id and the running counts (progress hooks, tests).

    SIGINT / SIGTERM (in the main thread) stop the run: the whole batches already handed to the
    writer are committed, Ray is shut down, and :class:`ExtractInterrupted` is raised. An error
    of the store writer (disk full) ends the run the same way, as a one-line
    :class:`~itmflow.errors.StoreError`.
    """
    cfg.validate()
    console = console or Console(stderr=True)
    signals = _Signals()
    signals.install()
    try:
        return _run(cfg, console, on_batch, signals)
    except _Stop as stop:
        raise ExtractInterrupted(stop.signum, _rows_in_store(Path(cfg.out))) from None
    except SystemExit as exit_:
        # ray.init puts in its own SIGTERM handler (``sys.exit(signum)``) until ours is back
        # (``signals.install`` after it): a SIGTERM while Ray starts arrives as this.
        if exit_.code != signal.SIGTERM:
            raise
        raise ExtractInterrupted(signal.SIGTERM, _rows_in_store(Path(cfg.out))) from None
    finally:
        signals.restore()


def _run(cfg: ExtractConfig, console: Console, on_batch: Callable[[dict[str, Any]], None] | None,
         signals: _Signals) -> ExtractSummary:
    out = Path(cfg.out)
    check_store_settings(cfg, out)  # before anything, also when nothing is left to do
    collection, plan = plan_run(cfg)
    summary = ExtractSummary(store=out, selected=plan.selected, already_done=plan.already_done)
    start = time.perf_counter()
    _note_failures(cfg, out, collection, plan, summary, console)
    if not plan.batches:
        summary.rows_in_store = plan.committed
        summary.seconds = time.perf_counter() - start
        return summary
    if cfg.weights is not None:
        from pipeline.extract.preflight import check_weights

        check_weights(cfg.weights)  # before Ray: a bad file is one line, not 80
    if cfg.device.startswith("cuda") and cfg.address is None and not os.environ.get("RAY_ADDRESS"):
        from pipeline.extract.preflight import check_local_cuda

        check_local_cuda(cfg.device)  # an embedded Ray has this machine's GPUs: say so before it starts

    import ray

    from pipeline.extract.cluster import object_store_bytes, plan_workers, ray_session
    from pipeline.extract.decode import decode_batch
    from stores import RegionStoreWriter
    from stores.schema import RegionPolicy

    window_guess = (cfg.workers or 1) * cfg.in_flight * cfg.batch_size
    store_bytes = object_store_bytes(window_guess, cfg.detector.max_size)
    with ray_session(cfg.address, num_cpus=cfg.num_cpus, object_store=store_bytes,
                     connect_timeout=cfg.connect_timeout) as info:
        signals.deferred = True
        signals.install()  # ray.init replaced the SIGTERM handler with its own
        signals.check()
        shape = plan_workers(info, workers=cfg.workers, device=cfg.device)
        summary.workers, summary.device, summary.log_dir = shape.count, shape.device, info.log_dir
        if info.log_dir:
            console.print(f"[dim]Ray logs: {info.log_dir}[/]")
        workers = _Workers(shape, cfg)
        try:
            detector_meta = _get(workers.actors[0].describe.remote(), signals)
        except ray.exceptions.RayError as exc:
            raise _unwrap_start_error(exc) from None
        settings = detector_meta.get("settings", {})
        policy = settings.get("region_policy")
        try:
            writer = RegionStoreWriter(
                out, storage=cfg.storage, feature_dim=int(settings.get("feature_dim", 2048)),
                feature_dtype=cfg.feature_dtype,
                region_policy=RegionPolicy.from_manifest(policy) if policy else cfg.region_policy(),
                detector=detector_meta,
                # parts are cut by the driver on batch boundaries, never inside add(), so a failed
                # commit (disk full) is raised as the run's error, not as one image's failure
                rows_per_part=cfg.part_size + cfg.batch_size,
                extra={"extract": {"collection": Path(cfg.collection).name,
                                   "collection_file": str(Path(cfg.collection).resolve()),
                                   "collection_sha256": sha256_file(cfg.collection),
                                   "batch_size": cfg.batch_size, "splits": list(cfg.splits)}})
            with writer:
                # The writer removed crash debris; its committed ids are the truth from here on.
                images = select_images(collection.images, cfg.splits)
                failed, _ = _failed_to_skip(out, images, collection.images_root)
                plan = make_plan(images, committed=set(writer.committed_ids()), failed=failed,
                                 batch_size=cfg.batch_size, retry_failed=cfg.retry_failed)
                summary.already_done = plan.already_done
                summary.fixed_k = writer.settings.fixed_k
                decode = ray.remote(decode_batch).options(num_cpus=shape.decode_cpus, max_retries=3)
                _stream(plan, cfg, str(collection.images_root), decode, workers, writer, summary,
                        console, on_batch, signals)
        except OSError as exc:  # the store's disk is full, or read-only, or gone
            raise StoreError(
                f"cannot write the store {out}: {_first_line(exc)}; {_rows_in_store(out)} images are "
                "committed and stay. Free space (or fix the cause), then rerun the same command to "
                "resume") from None
        summary.rows_in_store = len(writer.committed_ids())
    summary.seconds = time.perf_counter() - start
    return summary


def check_store_settings(cfg: ExtractConfig, out: Path) -> None:
    """Refuse a run whose settings differ from those of the existing store at ``out``, naming each
    differing leaf (``detector.settings.min_size: 600 -> 300``).

    Runs before the plan, so a complete store (nothing left to do) refuses other settings too
    instead of exiting 0. It compares what the run's config knows without building the detector:
    storage, feature dtype, region policy and every :class:`BUTDSettings` field, ``random_init``
    and ``seed``; the writer compares the full detector block (weights hash included) once the
    detector is built, when there is work left.
    """
    from stores.manifest import _leaf_diffs, load_manifest, manifest_path, MAX_LISTED_DIFFS

    if not manifest_path(out).is_file():
        return
    manifest = load_manifest(out)
    recorded_settings = (manifest.get("detector") or {}).get("settings") or {}
    wanted_settings: dict[str, Any] = {**asdict(cfg.detector), "region_policy": cfg.region_policy().to_manifest(),
                                       "random_init": bool(cfg.random_init)}
    if cfg.random_init:
        wanted_settings["seed"] = cfg.seed
    recorded = {"storage": manifest.get("storage"), "feature_dtype": manifest.get("feature_dtype"),
                "region_policy": manifest.get("region_policy"),
                "detector": {"settings": {k: recorded_settings.get(k) for k in wanted_settings}}}
    wanted = {"storage": cfg.storage, "feature_dtype": cfg.feature_dtype,
              "region_policy": cfg.region_policy().to_manifest(), "detector": {"settings": wanted_settings}}
    recorded = json.loads(json.dumps(recorded, sort_keys=True))
    wanted = json.loads(json.dumps(wanted, sort_keys=True))
    diffs: list[str] = []
    _leaf_diffs("", recorded, wanted, diffs)
    if diffs:
        if len(diffs) > MAX_LISTED_DIFFS:
            diffs = diffs[:MAX_LISTED_DIFFS] + [f"... and {len(diffs) - MAX_LISTED_DIFFS} more"]
        raise StoreError(f"{out} was written with other settings (store -> this run); refusing to mix them "
                         "in one store:\n  " + "\n  ".join(diffs) + "\nuse a new --out directory or the "
                         "store's settings")


def _note_failures(cfg: ExtractConfig, out: Path, collection: Any, plan: Plan,
                   summary: ExtractSummary, console: Console) -> None:
    """Say which earlier failures are skipped and which are retried, and why."""
    images = select_images(collection.images, cfg.splits)
    _, retried = _failed_to_skip(out, images, collection.images_root)
    summary.retried_missing = 0 if cfg.retry_failed else retried
    summary.skipped_failed = 0 if cfg.retry_failed else plan.failed_before
    from pipeline.extract.progress import resume_line

    line = resume_line(plan, retry_failed=cfg.retry_failed)
    if line:
        console.print(line, highlight=False)
    if summary.retried_missing:
        console.print(f"[yellow]{summary.retried_missing} image(s) whose file was missing in an earlier "
                      "run exist now and are tried again[/]")
    if summary.skipped_failed:
        console.print(f"[yellow]{summary.skipped_failed} image(s) that failed in earlier runs are "
                      f"skipped (reasons in {out / 'failures.jsonl'}); fix them, then add "
                      "--retry-failed to try them again[/]")


def _stream(plan: Plan, cfg: ExtractConfig, root: str, decode: Any, workers: _Workers,
            writer: Any, summary: ExtractSummary, console: Console,
            on_batch: Callable[[dict[str, Any]], None] | None, signals: _Signals) -> None:
    """The driver loop: keep the window full, collect results, commit them in batch order."""
    import ray

    from pipeline.extract.decode import Failure
    from pipeline.extract.progress import LOG_EVERY_S, advance, make_progress, progress_line
    from pipeline.extract.worker import BatchResult

    window = max(1, workers.shape.count * cfg.in_flight)
    preprocess = cfg.detector.preprocessing()  # what the actors' model was built for
    todo = collections.deque(plan.batches)
    order = collections.deque(b.number for b in plan.batches)
    in_flight: dict[Any, tuple[Batch, int, Any, int]] = {}  # ref -> (batch, slot, actor, attempt)
    ready: dict[int, BatchResult] = {}
    batches_in_part = 0
    part_workers: list[dict[str, Any]] = []  # shapes of the workers whose rows the pending part holds
    last_line = time.perf_counter()
    first_result: float | None = None
    steady_start_count = 0

    def submit(batch: Batch, attempt: int) -> None:
        slot = workers.pick()
        actor = workers.actors[slot]
        if workers.shape.decode_in_actor:
            ref = actor.decode_and_detect.remote(batch.number, root, batch.items, preprocess)
        else:
            decoded = decode.remote(batch.number, root, batch.items, preprocess)
            ref = actor.detect.remote(decoded)
        in_flight[ref] = (batch, slot, actor, attempt)
        workers.load[slot] += 1

    with make_progress(console) as progress:
        task = progress.add_task("extract", total=plan.todo, failed=0, processed=0)
        while todo or in_flight:
            while todo and len(in_flight) + len(ready) < window:
                submit(todo.popleft(), 1)
            signals.check()
            done, _ = ray.wait(list(in_flight), num_returns=1, timeout=signals.POLL_S)
            for ref in done:
                batch, slot, actor, attempt = in_flight.pop(ref)
                workers.load[slot] -= 1
                try:
                    ready[batch.number] = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    if isinstance(exc, ray.exceptions.RayActorError):
                        workers.replace(slot, actor)
                    if attempt < MAX_BATCH_ATTEMPTS:
                        submit(batch, attempt + 1)
                        continue
                    reason = f"worker failed {attempt} times: {str(exc).strip().splitlines()[0]}"
                    ready[batch.number] = BatchResult(
                        batch.number, failures=[Failure(i.image_id, i.file, reason) for i in batch.items])
            while order and order[0] in ready:
                result = ready.pop(order.popleft())
                added = 0
                for row in result.rows:
                    try:
                        writer.add(row)
                    except StoreError as exc:  # e.g. features too large for float16: that image only
                        result.failures.append(Failure(row["image_id"], row["file"], f"store: {exc}"))
                    else:
                        added += 1
                        if summary.fixed_k is not None and int(row["num_regions"]) < summary.fixed_k:
                            summary.padded += 1
                if added and result.worker and result.worker not in part_workers:
                    part_workers.append(result.worker)
                    writer.part_extra = {"workers": list(part_workers)}
                for fail in result.failures:
                    writer.record_failure(fail.image_id, fail.file, fail.reason)
                    summary.failures.append({"image_id": fail.image_id, "file": fail.file,
                                             "reason": fail.reason})
                summary.processed += added  # a row the store refused is counted as failed only
                summary.failed += len(result.failures)
                batches_in_part += 1
                if batches_in_part >= cfg.part_batches:
                    writer.commit()  # parts end on batch boundaries (see plan.py)
                    batches_in_part = 0
                    part_workers.clear()
                    writer.part_extra = {}
                now = time.perf_counter()
                if first_result is None:
                    first_result, steady_start_count = now, summary.processed + summary.failed
                summary.steady_seconds = now - first_result
                summary.steady_count = summary.processed + summary.failed - steady_start_count
                advance(progress, task, processed=added, failed=len(result.failures),
                        total_processed=summary.processed, total_failed=summary.failed)
                if not console.is_terminal and now - last_line >= LOG_EVERY_S:
                    # no live bar in logs / CI: a plain line now and then instead
                    last_line = now
                    console.print(progress_line(progress.tasks[0]))
                if on_batch is not None:
                    on_batch({"number": result.number, "pid": result.pid,
                              "processed": summary.processed, "failed": summary.failed})
        writer.commit()
    if summary.padded:
        console.print(f"[yellow]fewer regions than K={summary.fixed_k}: {summary.padded} images, padded "
                      "(num_regions holds the real count; models mask the padding)[/]")
    if summary.failed:
        console.print(f"[yellow]{summary.failed} image(s) failed; reasons in "
                      f"{Path(cfg.out) / 'failures.jsonl'}[/]")
