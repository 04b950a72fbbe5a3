"""The detector worker: one Ray actor holds one detector and runs it on decoded batches.

The class is plain Python (no Ray decorator) so the benchmark's in-process baseline and the tests
can drive exactly the same code; :mod:`pipeline.extract.job` wraps it with ``ray.remote`` and the
resources of the cluster (``num_gpus=1`` only where GPUs exist).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from detectors.memory import limit_shape_caches
from itmflow.regions import ARRAY_FIELDS, FEATURES, SCALAR_FIELDS, RegionRow
from pipeline.extract.decode import DecodedBatch, Failure, decode_items, failure_reason
from pipeline.extract.plan import WorkItem

# Read once when torch loads, so this must run before the actor imports torch: bounded oneDNN
# per-shape caches keep a long run over varying image sizes flat (see detectors/memory.py).
limit_shape_caches()

if TYPE_CHECKING:
    from detectors.butd.preprocess import Preprocessing
    from detectors.butd.settings import BUTDSettings


@dataclass
class BatchResult:
    """Store rows of one batch (batch order), its failures, and who computed it how fast."""

    number: int
    rows: list[RegionRow] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    pid: int = 0
    detect_seconds: float = 0.0
    worker: dict[str, Any] = field(default_factory=dict)
    """The shape of the worker that computed it: device, threads, host (see :meth:`DetectorWorker.shape`)."""


def detector_kwargs(*, weights: str | None, random_init: bool, seed: int, device: str,
                    vocab: str | None) -> dict[str, Any]:
    """Keyword arguments of :func:`detectors.butd.build_detector` besides its settings: where the
    weights come from and where the detector runs."""
    return {"weights": weights, "random_init": random_init, "seed": seed, "device": device,
            "vocab_dir": vocab}


class DetectorWorker:
    """Builds the detector once (from ``settings``) and turns decoded batches into store rows."""

    def __init__(self, settings: BUTDSettings, kwargs: dict[str, Any], threads: int,
                 feature_dtype: str = "float16") -> None:
        import torch

        from detectors.butd import build_detector

        # Fixed thread count: CPU results depend on how reductions are split, and a restarted or
        # resumed worker must compute the same bytes as the one it replaces.
        torch.set_num_threads(max(1, threads))
        self.detector = build_detector(settings=settings, **kwargs)
        self.feature_dtype = feature_dtype
        self.pid = os.getpid()
        self._shape = self._describe_shape(kwargs.get("device", "cpu"))

    @staticmethod
    def _describe_shape(device: str) -> dict[str, Any]:
        import socket

        import torch

        if str(device).startswith("cuda") and torch.cuda.is_available():
            device = f"cuda ({torch.cuda.get_device_name()})"
        return {"device": str(device), "threads": int(torch.get_num_threads()),
                "host": socket.gethostname()}

    def shape(self) -> dict[str, Any]:
        """Device, torch threads and host of this worker: the things CPU/GPU reductions depend on
        (features differ at ~1e-4 relative between shapes; recorded per store part)."""
        return dict(self._shape)

    def describe(self) -> dict[str, Any]:
        """The detector block of the store manifest (name, weights file and hash, settings)."""
        det = self.detector
        weights_file = det.weights_file
        return {"name": det.name,
                "weights_file": os.path.basename(weights_file) if weights_file else None,
                "weights_sha256": det.weights_sha256, "settings": det.settings()}

    def ping(self) -> int:
        """The worker's process id (the tests use it to kill a worker mid-run)."""
        return self.pid

    def decode_and_detect(self, number: int, root: str, items: list[WorkItem],
                          preprocess: Preprocessing) -> BatchResult:
        """Decode a batch here, then detect: for CPU actors whose threads take every core, where a
        separate decode task would preempt the detector's threads (measured on 2 cores: a batch
        overlapping a decode task detected in 6.6 s instead of 4.3 s). Decoding runs on one thread,
        as in a decode task, so both paths prepare the same pixels."""
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            decoded = decode_items(number, root, items, preprocess)
        finally:
            torch.set_num_threads(threads)
        return self.detect(decoded)

    def detect(self, decoded: DecodedBatch) -> BatchResult:
        """Run the detector on the prepared images of ``decoded``; rows keep batch order."""
        import numpy as np

        result = BatchResult(decoded.number, failures=list(decoded.failures), pid=self.pid,
                             worker=self.shape())
        if not decoded.prepared:
            return result
        start = time.perf_counter()
        try:
            outputs = self.detector.detect(decoded.prepared)
        except Exception:
            # A batch-level error: run the images one by one so only the guilty one is lost.
            outputs = []
            for item, prep in zip(decoded.items, decoded.prepared):
                try:
                    outputs.append(self.detector.detect([prep])[0])
                except Exception as exc:
                    outputs.append(Failure(item.image_id, item.file, f"detector: {failure_reason(exc)}"))
        result.detect_seconds = time.perf_counter() - start
        for item, out in zip(decoded.items, outputs):
            if isinstance(out, Failure):
                result.failures.append(out)
                continue
            row: dict[str, Any] = {"image_id": item.image_id, "file": item.file}
            for key in SCALAR_FIELDS:
                row[key] = int(out[key])
            for key in ARRAY_FIELDS:
                value = out.get(key)
                row[key] = None if value is None else np.asarray(value)
            # Cast here, not in the committer: half the bytes cross the object store.
            row[FEATURES] = row[FEATURES].astype(self.feature_dtype, copy=False)
            result.rows.append(row)  # type: ignore[arg-type]  # all RegionRow fields are set
        return result
