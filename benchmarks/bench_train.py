"""Training step time and peak memory of TERN, TERAN, SGRAF-SGR and SGRAF-SAF at the papers' sizes.

Each model is built with the architecture of its paper (TERN/TERAN: BERT-base truncated to 6
layers — built from its config with random weights, which costs the same as the real ones — a
4-layer visual transformer at d = 2048, 36 regions; SGRAF: 1024-d embeddings, 300-d words, bi-GRU,
256-d similarity vectors) and timed on the real training step (`trainers.training.step.optimisation_step`:
forward, VSE++ loss, backward, clip 2.0, Adam). Batches are synthetic in the store layout: 36
regions of 2048-d features with TERN geometry, COCO-length captions (14 WordPieces / 13 words).

On CPU the batch is scaled down (the paper batches would take minutes per step on 2 cores); on a
GPU the paper batch sizes are used and CUDA peak memory is reported. Each model runs in its own
process so the CPU peak RSS of one does not hide another's.

    python benchmarks/bench_train.py [--steps 2] [--device auto|cpu|cuda] [--models tern,teran,...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

MODELS = ("tern", "teran", "sgraf-sgr", "sgraf-saf")
CPU_BATCH = {"tern": 8, "teran": 8, "sgraf-sgr": 16, "sgraf-saf": 16}
BERT_BASE = {"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 6,
             "num_attention_heads": 12, "intermediate_size": 3072, "hidden_act": "gelu",
             "max_position_embeddings": 512, "type_vocab_size": 2}
CAPTION_WORDPIECES = 14  # COCO: 10.5 words on average → ~12 pieces + [CLS]/[SEP]
CAPTION_WORDS = 13       # 11 tokens + <start>/<end>
SCAN_VOCAB = 11353       # SGRAF's shipped COCO vocabulary
WARMUP = 1               # untimed first step (allocations, Adam state creation)


def _batch(model: str, batch: int, seed: int = 0):
    import torch

    gen = torch.Generator().manual_seed(seed)
    k = 36
    xy = torch.rand(batch, k, 2, generator=gen) * 0.6
    wh = torch.rand(batch, k, 2, generator=gen) * 0.4
    boxes = torch.cat([xy, xy + wh], dim=-1)
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    images = {"features": torch.rand(batch, k, 2048, generator=gen) * 2,
              "geometry": torch.cat([boxes, area[..., None]], dim=-1),
              "num_regions": torch.full((batch,), k, dtype=torch.long)}
    lengths = torch.randint(CAPTION_WORDPIECES - 3, CAPTION_WORDPIECES + 4, (batch,), generator=gen)
    ids = torch.zeros(batch, int(lengths.max()), dtype=torch.long)
    words = torch.zeros(batch, int(lengths.max()), dtype=torch.long)
    for n, length in enumerate(lengths.tolist()):
        ids[n, 0], ids[n, length - 1] = 101, 102
        ids[n, 1:length - 1] = torch.randint(1996, 30000, (length - 2,), generator=gen)
        words[n, 0], words[n, length - 1] = 1, 2
        words[n, 1:length - 1] = torch.randint(4, SCAN_VOCAB, (length - 2,), generator=gen)
    captions = {"bert_ids": ids, "bert_lengths": lengths, "word_ids": words,
                "word_lengths": lengths.clone()}
    return images, captions


def run_one(model: str, batch: int, steps: int, device_name: str) -> dict:
    """Time ``steps`` training steps of ``model`` (after one warm-up step) in this process."""
    import torch

    from trainers.training.config import build_config
    from itmflow.devices import resolve_device
    from trainers.training.model import build_model, make_optimizer
    from trainers.training.step import optimisation_step

    device = resolve_device(device_name)
    model_config = {"bert_config": BERT_BASE, "bert_layers": 6} if model in ("tern", "teran") \
        else {"vocab_size": SCAN_VOCAB}
    cfg = build_config(model, overrides={"batch_size": batch, "model_config": model_config,
                                         "device": str(device)})
    torch.manual_seed(0)
    net = build_model(cfg).to(device).train()
    optimizer = make_optimizer(net, cfg)
    amp = torch.bfloat16 if device.type == "cuda" and cfg.amp == "bf16" else None
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    images, captions = _batch(model, batch)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for step in range(steps + WARMUP):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        optimisation_step(net, optimizer, scaler, images, captions, cfg, lr=cfg.lr, device=device,
                          amp_dtype=amp, step=step)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= WARMUP:
            times.append(time.perf_counter() - t0)
    times.sort()
    median = times[len(times) // 2]
    out = {"model": model, "batch": batch, "device": str(device), "steps": steps,
           "step_s_median": median, "step_s_min": times[0], "pairs_per_s": batch / median,
           "params_m": sum(p.numel() for p in net.parameters()) / 1e6,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        out["amp"] = cfg.amp
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2, help="timed steps per model (after 1 warm-up)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:  # child process: one model, JSON on stdout
        print(json.dumps(run_one(args.one, args.batch, args.steps, args.device)))
        return

    from benchlib import row, write_result
    from itmflow.devices import resolve_device

    device = resolve_device(args.device)
    # Other jobs on a shared box slow every step down: keep the load beside the numbers.
    load_before = os.getloadavg()
    rows, details = [], []
    for model in args.models.split(","):
        if device.type == "cuda":
            from trainers.training.config import preset

            batch = preset(model).batch_size  # the paper's batch on a GPU
        else:
            batch = CPU_BATCH[model]
        cmd = [sys.executable, __file__, "--one", model, "--batch", str(batch), "--steps",
               str(args.steps), "--device", str(device), "--threads", str(args.threads)]
        done = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace", env={**os.environ})
        if done.returncode != 0:
            raise SystemExit(f"{model} failed:\n{done.stderr[-3000:]}")
        res = json.loads(done.stdout.strip().splitlines()[-1])
        details.append(res)
        rows.append(row(f"{model} train step (batch {batch})", res["step_s_median"], "s",
                        device=res["device"]))
        rows.append(row(f"{model} throughput", res["pairs_per_s"], "pairs/s", device=res["device"]))
        mem_key = "peak_cuda_mb" if "peak_cuda_mb" in res else "peak_rss_mb"
        rows.append(row(f"{model} peak memory ({'CUDA' if mem_key == 'peak_cuda_mb' else 'RSS'})",
                        res[mem_key], "MiB", device=res["device"]))
    write_result("train", {"device": str(device), "steps": args.steps, "threads": args.threads
                           or torch.get_num_threads(), "cpu_batch": CPU_BATCH,
                           "bert": "bert-base architecture, 6 layers, random weights",
                           "regions": 36, "feature_dim": 2048, "caption_wordpieces": CAPTION_WORDPIECES,
                           "load_average_1m": {"before": load_before[0],
                                               "after": os.getloadavg()[0]},
                           "details": details}, rows)


if __name__ == "__main__":
    main()
