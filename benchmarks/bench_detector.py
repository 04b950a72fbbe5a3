"""Speed, FLOPs and memory of the BUTD detector (``itmflow.detectors``) on real photos.

Measures, in one run: images/s at the Caffe test scale (short side 600, long side ≤ 1000) for
batch 1 and 4 in fp32 and bf16 (autocast); FLOPs per image with ``torch.utils.flop_counter``;
achieved GFLOP/s against a conv / matmul peak measured in the same process; peak memory (RSS on
CPU, ``max_memory_allocated`` on CUDA); and the vectorised per-class NMS of the region selection
against the per-class loop of ``generate_tsv.py``.

Weights are random (seeded): speed does not depend on their values. On a 2-core CPU the full
model (300 proposals, ~1.8 TFLOP of res5 per image) takes minutes per image, so ``--quick`` (the
default here) keeps 20 proposals and one timed batch per configuration; ``--proposals 300`` gives
the paper setting. Writes ``benchmarks/results/detector.json``.

    python benchmarks/bench_detector.py [--quick | --full] [--device cpu|cuda] [--threads N]
"""

from __future__ import annotations

import argparse
import resource
import time
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from detectors.butd import BUTDSettings, build_detector
from detectors.butd.box_ops import nms_legacy
from detectors.butd.postprocess import per_class_nms_max_conf
from detectors.butd.preprocess import prepare
from benchlib import row, write_result


def photos() -> list[np.ndarray]:
    """Real photos of different aspect ratios (scikit-image, scikit-learn)."""
    import skimage.data as data
    from sklearn.datasets import load_sample_image

    return [data.astronaut(), data.chelsea(), data.coffee(), load_sample_image("china.jpg"),
            data.rocket(), load_sample_image("flower.jpg"), data.stereo_motorcycle()[0],
            data.hubble_deep_field()]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_gflops(device: torch.device, dtype: torch.dtype, repeat: int) -> dict[str, float]:
    """Best of a 2048² matmul and a res5-shaped dilated 3×3 conv, in GFLOP/s."""
    a = torch.randn(2048, 2048, device=device, dtype=dtype)
    b = torch.randn(2048, 2048, device=device, dtype=dtype)
    x = torch.randn(16, 512, 14, 14, device=device, dtype=dtype)
    w = torch.randn(512, 512, 3, 3, device=device, dtype=dtype)
    out = {}
    for name, fn, flops in (("matmul", lambda: a @ b, 2 * 2048**3),
                            ("conv3x3", lambda: F.conv2d(x, w, padding=2, dilation=2),
                             2 * 16 * 196 * 512 * 512 * 9)):
        fn()
        sync(device)
        t = time.perf_counter()
        for _ in range(repeat):
            fn()
        sync(device)
        out[name] = flops * repeat / (time.perf_counter() - t) / 1e9
    return out


def flops_per_image(det, prep) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        det.detect([prep])
    return float(counter.get_total_flops())


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def time_config(det, preps: list, batch: int, batches: int, device: torch.device) -> float:
    """Images per second over ``batches`` timed batches (after one warm-up batch)."""
    det.detect(preps[:batch])
    sync(device)
    t = time.perf_counter()
    done = 0
    for i in range(batches):
        start = (i * batch + batch) % max(1, len(preps) - batch + 1)
        det.detect(preps[start:start + batch])
        done += batch
    sync(device)
    return done / (time.perf_counter() - t)


def bench_nms(proposals: int, repeat: int, sharpness: float) -> tuple[float, float]:
    """Seconds per image: vectorised per-class NMS vs the 1600-iteration loop.

    ``sharpness`` scales random logits: 4 gives a peaked softmax like a trained classifier's,
    0.3 a nearly flat one (the worst case for the class pruning).
    """
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(proposals, 2, generator=gen) * 800
    boxes = torch.cat([xy, xy + torch.rand(proposals, 2, generator=gen) * 300 + 16], dim=1)
    prob = torch.softmax(torch.randn(proposals, 1601, generator=gen) * sharpness, dim=1)[:, 1:]
    t = time.perf_counter()
    for _ in range(repeat):
        fast = per_class_nms_max_conf(boxes, prob, 0.3)
    vec = (time.perf_counter() - t) / repeat
    t = time.perf_counter()
    slow = torch.zeros(proposals)
    for c in range(prob.shape[1]):
        keep = nms_legacy(boxes, prob[:, c], 0.3)
        slow[keep] = torch.maximum(slow[keep], prob[keep, c])
    loop = time.perf_counter() - t
    assert torch.equal(fast, slow)
    return vec, loop


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="20 proposals, one timed batch per configuration (the CPU default)")
    parser.add_argument("--full", action="store_true",
                        help="300 proposals and 3 timed batches (slow on CPU: tens of minutes)")
    parser.add_argument("--proposals", type=int, default=None, help="post-NMS proposals (quick: 20)")
    parser.add_argument("--batches", type=int, default=None, help="timed batches per config")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--batch-sizes", default="1,4")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    full = args.full or (device.type == "cuda" and not args.quick)
    proposals = args.proposals or (300 if full else 20)
    batches = args.batches or (3 if full else 1)
    precisions = args.precisions.split(",")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    preps = [prepare(p, min_size=600, max_size=1000) for p in photos()]
    config: dict[str, Any] = {
        "device": str(device), "threads": torch.get_num_threads(), "min_size": 600,
        "max_size": 1000, "post_nms_topk": proposals, "timed_batches": batches,
        "weights": "random (seed 0); speed does not depend on weight values",
        "images": [tuple(p.tensor.shape[1:]) for p in preps], "regions": "36"}
    rows: list[dict[str, Any]] = []
    for precision in precisions:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        peak = peak_gflops(device, dtype, repeat=5 if device.type == "cpu" else 50)
        peak_value = max(peak.values())
        for name, value in peak.items():
            rows.append(row(f"peak {name} {precision}", value, "GFLOP/s"))
        settings = BUTDSettings(regions="36", precision=precision, post_nms_topk=proposals,
                                pre_nms_topk=max(6000, proposals))
        det = build_detector(None, settings, random_init=True, seed=0, device=str(device))
        flops = flops_per_image(det, preps[0])
        rows.append(row(f"FLOPs per image {precision}", flops / 1e9, "GFLOP",
                        image=tuple(preps[0].tensor.shape[1:]), proposals=proposals))
        for batch in batch_sizes:
            ips = time_config(det, preps, batch, batches, device)
            achieved = ips * flops / 1e9
            rows.append(row(f"throughput {precision} batch {batch}", ips, "images/s"))
            rows.append(row(f"achieved {precision} batch {batch}", achieved, "GFLOP/s",
                            baseline=f"measured peak {precision}", baseline_value=peak_value))
            rows.append(row(f"peak memory after {precision} batch {batch}",
                            peak_memory_mb(device), "MiB"))
        del det
    for sharpness, kind in ((4.0, "peaked"), (0.3, "flat")):
        vec, loop = bench_nms(300, repeat=3, sharpness=sharpness)
        rows.append(row(f"per-class NMS, 300 proposals x 1600 classes, {kind} softmax", vec,
                        "s/image", baseline="loop of torchvision nms over classes (generate_tsv.py)",
                        baseline_value=loop))
    write_result("detector", config, rows)


if __name__ == "__main__":
    main()
