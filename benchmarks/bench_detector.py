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

``--agreement`` measures instead what each precision (and device) changes: on the same images
and weights, the regions each variant keeps against the fp32 CPU reference (boxes with IoU > 0.95,
one to one), the object ids of those matched regions, the relative Frobenius difference of their
features, and CPU seconds (CUDA: wall seconds) against fp32 on the same device. Its rows replace
the agreement rows of ``benchmarks/results/detector.json`` and keep the others.

    python benchmarks/bench_detector.py --agreement [--device cpu|cuda] [--variants fp32,bf16,mixed]
        [--agree-images N] [--agree-full N] [--proposals N] [--head-scale S]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
from pathlib import Path
import time
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from detectors.butd import BUTDSettings, build_detector
from detectors.butd.box_ops import nms_legacy
from detectors.butd.postprocess import per_class_nms_max_conf
from detectors.butd.preprocess import prepare
from benchlib import RESULTS_DIR, row, write_result


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


# -- agreement of precisions / devices with the fp32 CPU reference ----------------------------------

#: ``cls_score`` / ``attr_score`` scale of the agreement checkpoint (see :func:`peak_heads_`).
HEAD_SCALE = 2.0
#: Variants the agreement table can run: a precision name, or one of
#: ``detectors.butd.model.EXPERIMENTAL_PLANS`` (``mixed``, ``bf16-backbone``).


def peak_heads_(det, scale: float) -> None:
    """Scale the classifier and attribute logits of a random detector by ``scale``.

    The random init's class probabilities are flatter than a trained detector's, and near-ties
    exaggerate how often a small numerical change flips the selection; a trained BUTD model's
    kept regions mostly have a clear best class. Scaling the logits (weights and bias) sharpens
    the softmax without changing which class wins.
    """
    pred = det.model.roi_heads.box_predictor
    with torch.no_grad():
        for layer in (pred.cls_score, pred.attr_score):
            layer.weight.mul_(scale)
            layer.bias.mul_(scale)


def make_variant(weights_state, settings: BUTDSettings, variant: str, device: str):
    from dataclasses import replace

    from detectors.butd.model import EXPERIMENTAL_PLANS

    precision = "fp32" if variant in EXPERIMENTAL_PLANS else variant
    det = build_detector(None, replace(settings, precision=precision), random_init=True, seed=0,
                         device=device)
    det.model.load_state_dict(weights_state)
    if variant in EXPERIMENTAL_PLANS:
        det.plan = EXPERIMENTAL_PLANS[variant]
    return det


def match_regions(ref: dict, got: dict, iou_min: float = 0.95) -> list[tuple[int, int]]:
    """One-to-one pairs (ref row, got row) with box IoU > ``iou_min``, greedy by IoU."""
    from torchvision.ops import box_iou

    if not ref["num_regions"] or not got["num_regions"]:
        return []
    iou = box_iou(torch.from_numpy(ref["boxes"]).double(), torch.from_numpy(got["boxes"]).double())
    pairs = []
    used_r, used_g = set(), set()
    flat = torch.argsort(iou.flatten(), descending=True)
    for f in flat.tolist():
        r, g = divmod(f, iou.shape[1])
        if iou[r, g] <= iou_min:
            break
        if r in used_r or g in used_g:
            continue
        pairs.append((r, g))
        used_r.add(r)
        used_g.add(g)
    return pairs


def compare(ref: dict, got: dict) -> dict[str, float]:
    pairs = match_regions(ref, got)
    out = {"regions": ref["num_regions"], "matched": len(pairs)}
    if pairs:
        r, g = (np.array(x) for x in zip(*pairs))
        out["ids_agree"] = int((ref["object_ids"][r] == got["object_ids"][g]).sum())
        a = ref["features"][r].astype(np.float64)
        b = got["features"][g].astype(np.float64)
        out["feature_rel_diff"] = float(np.linalg.norm(a - b) / np.linalg.norm(a))
    else:
        out["ids_agree"], out["feature_rel_diff"] = 0, float("nan")
    return out


def timed_detect(det, prep, device: torch.device) -> tuple[dict, float, float]:
    """(regions, CPU seconds of this process, wall seconds)."""
    sync(device)
    c, w = time.process_time(), time.perf_counter()
    region = det.detect([prep])[0]
    sync(device)
    return region, time.process_time() - c, time.perf_counter() - w


def load_average() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def agreement(args) -> None:
    """The agreement table (see the module docstring)."""
    device = torch.device(args.device)
    variants = args.variants.split(",")
    proposals = args.proposals or 300
    images = photos()[: args.agree_images]
    sizes = [(600, 1000) if i < args.agree_full else (args.small_min, args.small_max)
             for i in range(len(images))]
    base = BUTDSettings(regions="36", post_nms_topk=proposals, pre_nms_topk=max(6000, proposals))
    ref_det = build_detector(None, base, random_init=True, seed=0, device="cpu")
    peak_heads_(ref_det, args.head_scale)
    state = {k: v.detach().clone() for k, v in ref_det.model.state_dict().items()}
    dets = {v: make_variant(state, base, v, str(device)) for v in variants}
    if device.type == "cpu" and "fp32" in dets:
        dets["fp32"] = ref_det  # the reference itself
    captured: dict[str, torch.Tensor] = {}
    forward = ref_det._forward

    def recording(*a):  # the max class probability of every proposal (distribution)
        out = forward(*a)
        captured["max_prob"] = out[2].cls_prob[:, 1:].amax(dim=1)
        return out

    ref_det._forward = recording
    if device.type == "cuda":  # cuDNN picks its kernels on the first call: not timed
        warm = prepare(images[0], min_size=sizes[0][0], max_size=sizes[0][1])
        for det in dets.values():
            det.detect([warm])
    load_before = load_average()
    per: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    seconds: dict[str, float] = {v: 0.0 for v in variants}
    conf_all, conf_kept = [], []
    shapes = []
    for img, (lo, hi) in zip(images, sizes):
        prep = prepare(img, min_size=lo, max_size=hi)
        shapes.append(tuple(prep.tensor.shape[1:]))
        ref, ref_cpu, _ = timed_detect(ref_det, prep, torch.device("cpu"))
        conf_kept.extend(ref["object_conf"].tolist())
        conf_all.extend(captured.pop("max_prob").tolist())
        for v in variants:  # interleaved: each variant sees the same load pattern
            if v == "fp32" and device.type == "cpu":
                got, cpu_s, wall_s = ref, ref_cpu, 0.0
            else:
                got, cpu_s, wall_s = timed_detect(dets[v], prep, device)
            per[v].append(compare(ref, got))
            seconds[v] += cpu_s if device.type == "cpu" else wall_s
        print(f"{shapes[-1]}: " + ", ".join(f"{v} {per[v][-1]['matched']}/{per[v][-1]['regions']}"
                                           for v in variants), flush=True)
    rows = []
    where = ("cpu" if device.type == "cpu" else device.type) + (f" [{args.tag}]" if args.tag else "")
    unit_time = "CPU s" if device.type == "cpu" else "wall s"
    base_time = seconds.get("fp32")
    for v in variants:
        p = per[v]
        regions = sum(x["regions"] for x in p)
        matched = sum(x["matched"] for x in p)
        ids = sum(x["ids_agree"] for x in p)
        diffs = [x["feature_rel_diff"] for x in p if not math.isnan(x["feature_rel_diff"])]
        rows.append(row(f"agreement {v} {where}: regions kept in common", matched, "regions",
                        baseline="fp32 cpu regions", baseline_value=regions,
                        per_image=[f"{x['matched']}/{x['regions']}" for x in p]))
        rows.append(row(f"agreement {v} {where}: object ids agree on matched", ids, "regions",
                        baseline="matched regions", baseline_value=matched))
        rows.append(row(f"agreement {v} {where}: feature rel. diff of matched (max over images)",
                        max(diffs) if diffs else float("nan"), "relative Frobenius",
                        per_image=diffs))
        rows.append(row(f"agreement {v} {where}: time per image", seconds[v] / len(images),
                        f"{unit_time}/image", baseline=f"fp32 {where}",
                        baseline_value=(base_time / len(images)) if base_time else None))
    q = lambda xs: [round(float(v), 3) for v in np.quantile(np.array(xs), [0.1, 0.25, 0.5, 0.75, 0.9])]
    config = {"device": str(device), "tag": args.tag, "threads": torch.get_num_threads(), "variants": variants,
              "images": shapes, "sizes": sizes, "post_nms_topk": proposals, "regions": "36",
              "iou_match": 0.95, "mixed_refine": dets.get("mixed").refine_factor if "mixed" in dets else None,
              "weights": f"random (seed 0), cls_score and attr_score scaled x{args.head_scale} (peaked)",
              "max_fg_prob_quantiles_10_25_50_75_90": {"all proposals": q(conf_all),
                                                       "kept regions (fp32)": q(conf_kept)},
              "load_before": load_before, "load_after": load_average(),
              "time": "CPU seconds of this process (time.process_time), variants interleaved per image"
                      if device.type == "cpu" else "wall seconds, CUDA synchronised",
              "reference": "fp32 on CPU, same weights and images"}
    merge_result("detector", config, rows, key=where)


def merge_result(area: str, config: dict[str, Any], rows: list[dict[str, Any]], key: str) -> None:
    """Replace the agreement rows of ``<area>.json`` for ``key`` (device [tag]); keep the others."""
    import fcntl
    import tempfile

    path = RESULTS_DIR / f"{area}.json"
    with open(Path(tempfile.gettempdir()) / f"itmflow-bench-{area}.lock", "w") as lock:  # two agreement runs may end together
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = json.loads(path.read_text()) if path.exists() else {"config": {}, "results": []}
        keep = [r for r in old["results"]
                if not (r["metric"].startswith("agreement ") and f" {key}:" in r["metric"])]
        cfg = dict(old.get("config", {}))
        cfg[f"agreement {key}"] = config
        cfg.pop("agreement_cpu", None)
        write_result(area, cfg, keep + rows)


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
    parser.add_argument("--agreement", action="store_true",
                        help="agreement of each precision/device with the fp32 CPU reference")
    parser.add_argument("--variants", default=None,
                        help="agreement variants (default cpu: fp32,bf16,mixed,bf16-backbone; "
                             "cuda: fp32,tf32,bf16,fp16,mixed)")
    parser.add_argument("--agree-images", type=int, default=5, help="photos in the agreement table")
    parser.add_argument("--agree-full", type=int, default=2,
                        help="how many of them at the real 600/1000 scale (the others: --small-*)")
    parser.add_argument("--small-min", type=int, default=300)
    parser.add_argument("--small-max", type=int, default=500)
    parser.add_argument("--head-scale", type=float, default=HEAD_SCALE)
    parser.add_argument("--tag", default="", help="label of this agreement run (rows of the same "
                        "device and tag are replaced)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.agreement:
        if args.variants is None:
            args.variants = ("fp32,bf16,mixed,bf16-backbone" if args.device == "cpu"
                             else "fp32,tf32,bf16,fp16,mixed")
        agreement(args)
        return
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
