"""Extraction throughput: the full Ray job against a bare in-process loop over the same detector.

On the sample photos at a reduced scale (short side 300, long side <= 500, 50 RPN proposals,
random-init detector, fixed 36 regions), measured in one run:

- ``bare loop``: load_image + prepare + detect in this process, batches of ``--batch-size``, with
  the same torch thread count the single Ray actor gets (the baseline);
- ``ray job, 1 CPU actor`` and ``ray job, 2 CPU actors``: :func:`pipeline.extract.run_extract` on
  an embedded Ray, writing a real Parquet store (decode tasks, actor, ordered commits included).

Ray figures are reported twice: end to end (Ray already started, actor start-up included) and
steady state (from the first committed batch on, which is what a 123,000-image run sees). The
target is steady-state ray/bare >= 0.85.

    .venv/bin/python benchmarks/bench_extract.py [--repeat 2] [--proposals 50]

``--soak``: memory over a long run instead of speed. ``--soak-images`` small JPEGs of random sizes
(every side 40-420 px, so nearly every batch has new tensor shapes) go through the real job (Ray,
one CPU actor, the driver committing a Parquet store); the resident memory of the driver, of each
detector actor and of every other process under the driver (Ray's own) is sampled every
``--sample-every`` images. Written to ``benchmarks/results/extract_soak.json``: growth in MiB per
1,000 images after warm-up (least-squares slope over the samples past the first quarter of the
images) per process kind; the target is < 20 MiB per 1,000 images.

    .venv/bin/python benchmarks/bench_extract.py --soak [--soak-images 1000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# As `itmflow extract` starts its embedded Ray (pipeline/extract/cluster.py): workers at normal
# priority. Ray's default niceness 15 let the driver's own work preempt the detector actor
# (measured on a 2-core EPYC: 0.60x of the bare loop at niceness 15).
os.environ.setdefault("RAY_worker_niceness", "0")


if TYPE_CHECKING:
    from detectors.butd import BUTDSettings


def bare_loop(root: Path, files: list[str], settings: "BUTDSettings", kwargs: dict, threads: int,
              batch_size: int) -> float:
    """Images per second of the in-process loop (detector build excluded)."""
    import torch

    from detectors.butd import build_detector
    from detectors.butd.preprocess import load_image

    torch.set_num_threads(threads)
    detector = build_detector(settings=settings, **kwargs)
    prepare = detector.preprocessing
    detector.detect([prepare(load_image(root / files[0]))])  # warm-up, as the actor's first call
    start = time.perf_counter()
    for i in range(0, len(files), batch_size):
        batch = [prepare(load_image(root / f)) for f in files[i:i + batch_size]]
        detector.detect(batch)
    return len(files) / (time.perf_counter() - start)


def _rss_mib(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).memory_info().rss / 2**20
    except psutil.Error:
        return None


def _slope_per_1000(points: list[tuple[int, float]], warm_up: int) -> float | None:
    """Least-squares growth in MiB per 1,000 images of the samples taken after ``warm_up`` images."""
    import numpy as np

    pts = [(x, y) for x, y in points if x >= warm_up and y is not None]
    if len(pts) < 3:
        return None
    xs, ys = np.array(pts, dtype=np.float64).T
    return float(np.polyfit(xs, ys, 1)[0] * 1000.0)


def soak(args: argparse.Namespace) -> None:
    """Random-size images through the real extraction path, resident memory of every process."""
    import numpy as np
    import ray  # also puts Ray's bundled psutil on sys.path
    import psutil
    from PIL import Image

    from benchlib import row, write_result
    from detectors.butd import BUTDSettings
    from pipeline.collections import ImageRecord, write_collection
    from pipeline.extract import ExtractConfig, run_extract

    work = Path(tempfile.mkdtemp(prefix="bench_soak_"))
    try:
        root = work / "images"
        root.mkdir()
        rng = np.random.default_rng(0)
        records = []
        for i in range(args.soak_images):
            h, w = (int(v) for v in rng.integers(40, 421, size=2))
            # smooth random colour fields: JPEG-sized files, not noise
            small = rng.integers(0, 256, size=(max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
            name = f"soak_{i:05d}.jpg"
            Image.fromarray(small).resize((w, h), Image.BILINEAR).save(root / name, quality=85)
            records.append(ImageRecord(f"soak-{i}", name, "train"))
        coll = write_collection(work / "c.parquet", records, [], source_format="folder", images_root=root)
        cpus = os.cpu_count() or 2
        driver = psutil.Process()
        samples: list[dict] = []
        actor_pids: set[int] = set()
        next_sample = [0]

        def on_batch(info: dict) -> None:
            actor_pids.add(int(info["pid"]))
            done = info["processed"] + info["failed"]
            if done < next_sample[0]:
                return
            next_sample[0] = done + args.sample_every
            others = 0.0
            for child in driver.children(recursive=True):
                if child.pid in actor_pids:
                    continue
                with contextlib.suppress(psutil.Error):
                    others += child.memory_info().rss / 2**20
            samples.append({"images": done, "seconds": round(time.perf_counter() - start, 1),
                            "driver": _rss_mib(driver.pid),
                            "actors": {str(p): _rss_mib(p) for p in sorted(actor_pids)},
                            "other_ray_processes": others})

        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR", configure_logging=False, object_store_memory=512 * 1024**2)
        try:
            settings = BUTDSettings(regions="10-100", min_size=args.min_size, max_size=args.max_size,
                                    post_nms_topk=args.proposals)
            cfg = ExtractConfig(collection=coll, out=work / "store", random_init=True, detector=settings,
                                batch_size=args.batch_size, workers=1, part_size=256)
            start = time.perf_counter()
            summary = run_extract(cfg, on_batch=on_batch)
            assert summary.processed == args.soak_images and summary.failed == 0, summary
        finally:
            ray.shutdown()
        warm_up = args.soak_images // 4
        rows = []
        for pid in sorted(actor_pids):
            pts = [(s["images"], s["actors"].get(str(pid))) for s in samples]
            first = next((y for x, y in pts if x >= warm_up and y is not None), None)
            rows.append(row("detector actor RSS growth after warm-up", _slope_per_1000(pts, warm_up),
                            "MiB/1000 images", target="< 20", pid=pid,
                            rss_after_warm_up_mib=first, rss_end_mib=pts[-1][1]))
        pts = [(s["images"], s["driver"]) for s in samples]
        rows.append(row("driver (committer) RSS growth after warm-up", _slope_per_1000(pts, warm_up),
                        "MiB/1000 images", target="< 20",
                        rss_after_warm_up_mib=next(y for x, y in pts if x >= warm_up),
                        rss_end_mib=pts[-1][1]))
        pts = [(s["images"], s["other_ray_processes"]) for s in samples]
        rows.append(row("other Ray processes (total) RSS growth after warm-up",
                        _slope_per_1000(pts, warm_up), "MiB/1000 images"))
        rows.append(row("throughput, steady state", summary.steady_images_per_second, "images/s"))
        config = {"mode": "soak", "images": args.soak_images, "image_sides_px": [40, 420],
                  "min_size": args.min_size, "max_size": args.max_size,
                  "proposals": args.proposals, "regions": "10-100", "batch_size": args.batch_size,
                  "workers": 1, "detector": "butd random-init fp32 cpu", "cpus": cpus,
                  "warm_up_images": warm_up, "sample_every_images": args.sample_every,
                  "wall_seconds": round(summary.seconds, 1),
                  "note": "sized to about 10 minutes on a shared 2-core box; tiny detector "
                          "settings, but every batch has new tensor shapes",
                  "samples": samples}
        write_result("extract_soak", config, rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=2, help="copies of the 12 photos (images = 12 x repeat)")
    parser.add_argument("--proposals", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--min-size", type=int, default=300)
    parser.add_argument("--max-size", type=int, default=500)
    parser.add_argument("--soak", action="store_true",
                        help="memory soak over random-size images instead of the speed comparison")
    parser.add_argument("--soak-images", type=int, default=1000,
                        help="about 4-5 minutes on an idle 2-core CPU box")
    parser.add_argument("--sample-every", type=int, default=50, help="images between RSS samples")
    args = parser.parse_args()
    if args.soak:
        if "--min-size" not in " ".join(sys.argv):
            args.min_size, args.max_size = 64, 400
        if "--proposals" not in " ".join(sys.argv):
            args.proposals = 2
        soak(args)
        return

    import ray

    from benchlib import row, write_result
    from detectors.butd import BUTDSettings
    from pipeline.collections import ImageRecord, write_collection
    from pipeline.extract import ExtractConfig, run_extract
    from pipeline.extract.worker import detector_kwargs
    from workflows.sample import materialize_sample

    work = Path(tempfile.mkdtemp(prefix="bench_extract_"))
    try:
        root = materialize_sample(work / "images")
        photos = sorted(p.name for p in root.iterdir() if p.suffix in {".jpg", ".png", ".gif"})
        files = photos * args.repeat
        records = [ImageRecord(f"{Path(f).stem}-{i}", f, "train") for i, f in enumerate(files)]
        coll = write_collection(work / "c.parquet", records, [], source_format="folder", images_root=root)
        cpus = os.cpu_count() or 2
        settings = BUTDSettings(regions="36", min_size=args.min_size, max_size=args.max_size,
                                precision="fp32", post_nms_topk=args.proposals)
        kwargs = detector_kwargs(weights=None, random_init=True, seed=0, device="cpu", vocab=None)
        load_before = os.getloadavg()[0]
        bare = bare_loop(root, files, settings, kwargs, threads=cpus, batch_size=args.batch_size)

        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR", configure_logging=False, object_store_memory=512 * 1024**2)
        results = {}
        try:
            for workers in (1, 2):
                cfg = ExtractConfig(collection=coll, out=work / f"store{workers}", random_init=True,
                                    detector=settings, batch_size=args.batch_size,
                                    workers=workers, part_size=64)
                summary = run_extract(cfg)
                assert summary.processed == len(files) and summary.failed == 0
                results[workers] = summary
        finally:
            ray.shutdown()
        load_after = os.getloadavg()[0]

        one, two = results[1], results[2]
        rows = [
            row("bare in-process loop", bare, "images/s"),
            row("ray job, 1 CPU actor, steady state", one.steady_images_per_second, "images/s",
                baseline="bare in-process loop", baseline_value=bare),
            row("ray job, 1 CPU actor, end to end", one.images_per_second, "images/s",
                baseline="bare in-process loop", baseline_value=bare),
            row("ray job, 2 CPU actors, steady state", two.steady_images_per_second, "images/s",
                baseline="ray job, 1 CPU actor, steady state",
                baseline_value=one.steady_images_per_second),
            row("ray job, 2 CPU actors, end to end", two.images_per_second, "images/s",
                baseline="ray job, 1 CPU actor, end to end", baseline_value=one.images_per_second),
        ]
        config = {"images": len(files), "photos": len(photos), "min_size": args.min_size,
                  "max_size": args.max_size, "proposals": args.proposals, "regions": "36",
                  "batch_size": args.batch_size, "detector": "butd random-init fp32 cpu",
                  "torch_threads_bare": cpus, "cpus": cpus,
                  "load_average_before_after": [round(load_before, 2), round(load_after, 2)],
                  "note": "the box is shared with other jobs; compare ratios, not absolute values"}
        write_result("extract", config, rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
