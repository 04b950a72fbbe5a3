"""Training step of SGRAF (SGR, SAF) against the original's structure, TERAN's alignment against a
per-caption loop, and one full step of every model at the papers' sizes.

Parts (``--parts``; a part not run keeps its rows from the existing ``results/train.json``):

* ``sgraf`` — SGR and SAF at batch 32/64/128 with the paper's sizes (1024-d embeddings, 300-d
  words, bi-GRU, 256-d similarity vectors, 36 regions of 2048-d, COCO vocabulary) on random
  data: one training step (encoders, similarity matrix, hardest-negative hinge, backward, clip
  2.0, Adam: `trainers.training.step.optimisation_step`) with itmflow's model against the same
  model (same seed, same batch) whose similarity is SGRAF's own `forward_sim` loop
  (:func:`original_forward_sim`: per caption, its words against all images, then SGR/SAF).
  Each variant runs in its own process (clean peak RSS); per step the wall time, CPU (user +
  system) seconds, system seconds and minor page faults (``getrusage``) after one warm-up step.
  Ratios are original / itmflow (> 1: itmflow faster or smaller).
* ``teran`` — TERAN's MrSw alignment part of a step (scores, hinge, backward into the token
  vectors) at batch 40/80/128: the vectorised ``alignment_scores`` against one caption at a time.
* ``steps`` — one full optimisation step of TERN, TERAN, SGR, SAF (CPU: batch 8/8/16/16; GPU: the
  presets' batches) with step time and peak memory.

    python benchmarks/bench_train.py [--parts sgraf,teran,steps] [--threads 2] [--steps 2]
        [--rounds 1] [--batches 32,64,128] [--concurrent 32,64] [--device auto|cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
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


# ------------------------------------------------------------------ SGRAF: itmflow vs the original
SGRAF_BATCHES = (32, 64, 128)
TERAN_BATCHES = (40, 80, 128)
ORIGINAL = "original structure: per-caption forward_sim over the batch (SGRAF model.py)"


def _l2_original(x, dim=-1, eps=1e-8):
    """SGRAF's ``l2norm``: ``X / (sqrt(sum X²) + eps)``."""
    import torch

    return torch.div(x, torch.pow(x, 2).sum(dim=dim, keepdim=True).sqrt() + eps)


def _scan_attention_original(query, context, smooth, eps=1e-8):
    """SGRAF ``SCAN_attention`` verbatim: query ``[n, L, d]`` (words), context ``[n, R, d]``."""
    import torch
    import torch.nn.functional as F

    attn = torch.bmm(context, torch.transpose(query, 1, 2))
    attn = F.leaky_relu(attn, 0.1)
    attn = _l2_original(attn, 2)
    attn = torch.transpose(attn, 1, 2).contiguous()
    attn = F.softmax(attn * smooth, dim=2)
    attn_t = torch.transpose(attn, 1, 2).contiguous()
    weighted = torch.bmm(torch.transpose(context, 1, 2), attn_t)
    return _l2_original(torch.transpose(weighted, 1, 2), dim=-1)


def _self_attention_original(module, local, raw_global):
    """SGRAF ``VisualSA.forward`` / ``TextSA.forward`` on this model's layers."""
    import torch

    l_emb = module.embedding_local(local)
    g_emb = module.embedding_global(raw_global).unsqueeze(1).repeat(1, l_emb.size(1), 1)
    weights = torch.softmax(module.embedding_common(l_emb.mul(g_emb)).squeeze(2), dim=1)
    return _l2_original((weights.unsqueeze(2) * local).sum(dim=1), dim=-1)


def original_forward_sim(sim, img_emb, cap_emb, cap_lens):
    """SGRAF ``EncoderSimilarity.forward`` verbatim (python3.6 branch), this model's layers."""
    import torch

    sim_all = []
    n_image = img_emb.size(0)
    img_glo = _self_attention_original(sim.v_global_w, img_emb, torch.mean(img_emb, 1))
    for i in range(cap_emb.size(0)):
        n_word = cap_lens[i]
        cap_i = cap_emb[i, :n_word, :].unsqueeze(0)
        cap_i_expand = cap_i.repeat(n_image, 1, 1)
        cap_glo_i = _self_attention_original(sim.t_global_w, cap_i, torch.mean(cap_i, 1))
        context_img = _scan_attention_original(cap_i_expand, img_emb, smooth=sim.smooth)
        sim_loc = _l2_original(sim.sim_tranloc_w(torch.pow(torch.sub(context_img, cap_i_expand), 2)))
        sim_glo = _l2_original(sim.sim_tranglo_w(torch.pow(torch.sub(img_glo, cap_glo_i), 2)))
        sim_emb = torch.cat([sim_glo.unsqueeze(1), sim_loc], 1)
        if sim.module_name == "SGR":
            for module in sim.SGR_module:  # GraphReasoning.forward
                query = module.graph_query_w(sim_emb)
                key = module.graph_key_w(sim_emb)
                edge = torch.softmax(torch.bmm(query, key.permute(0, 2, 1)), dim=-1)
                sim_emb = torch.relu(module.sim_graph_w(torch.bmm(edge, sim_emb)))
            sim_vec = sim_emb[:, 0, :]
        else:  # AttentionFiltration.forward
            saf = sim.SAF_module
            attn = torch.sigmoid(saf.bn(saf.attn_sim_w(sim_emb).permute(0, 2, 1)))
            attn = attn / (torch.abs(attn).sum(dim=-1, keepdim=True) + 1e-8)
            sim_vec = _l2_original(torch.matmul(attn, sim_emb).squeeze(1), dim=-1)
        sim_all.append(torch.sigmoid(sim.sim_eval_w(sim_vec)))
    return torch.cat(sim_all, 1)


def _original_model(model):
    """``model`` trained the original way: the authors' encoders' arithmetic (the same as ours)
    and their per-caption similarity loop."""
    import torch

    class Original(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, images, captions):
            lengths = captions["word_lengths"]
            img_emb = self.model.img_enc(images["features"])
            cap_emb = self.model.txt_enc(captions["word_ids"][:, :int(lengths.max())], lengths)
            return original_forward_sim(self.model.sim_enc, img_emb, cap_emb, lengths.tolist())

    return Original()


def _usage():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), ru.ru_utime + ru.ru_stime, ru.ru_stime, ru.ru_minflt


def run_sgraf_variant(module: str, batch: int, variant: str, steps: int) -> dict:
    """``steps`` training steps (after one warm-up) of SGRAF-``module`` at the paper's sizes: the
    encoders, the similarity matrix (``itmflow``: the model's training path; ``original``: the
    authors' per-caption loop), the hardest-negative hinge, backward, clip 2.0, Adam."""
    import torch

    from trainers.models.sgraf import SGRAF, SgrafConfig
    from trainers.training.config import build_config
    from trainers.training.model import make_optimizer
    from trainers.training.step import optimisation_step

    cfg = build_config(f"sgraf-{module.lower()}", overrides={
        "batch_size": batch, "model_config": {"vocab_size": SCAN_VOCAB}, "device": "cpu"})
    torch.manual_seed(0)
    net = SGRAF(SgrafConfig(module=module, vocab_size=SCAN_VOCAB)).train()
    # itmflow's default training path (the length-grouped ``train_scores``; recorded below).
    fast_training = bool(net.sim_enc.fast_training)
    optimizer = make_optimizer(net, cfg)
    stepper = net if variant == "itmflow" else _original_model(net)
    images, captions = _batch("sgraf-sgr", batch)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    walls, cpus, syss, faults, losses = [], [], [], [], []
    for step in range(steps + WARMUP):
        w0, c0, s0, f0 = _usage()
        loss = optimisation_step(stepper, optimizer, scaler, images, captions, cfg, lr=cfg.lr,
                                 device=torch.device("cpu"), step=step)
        w1, c1, s1, f1 = _usage()
        losses.append(loss)
        if step >= WARMUP:
            walls.append(w1 - w0)
            cpus.append(c1 - c0)
            syss.append(s1 - s0)
            faults.append(f1 - f0)
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    return {"module": module, "batch": batch, "variant": variant, "steps": steps,
            "wall_s": med(walls), "cpu_s": med(cpus), "sys_s": med(syss),
            "minor_faults": med(faults), "wall_all": walls, "cpu_all": cpus,
            "first_loss": losses[0], "threads": torch.get_num_threads(),
            "fast_training": fast_training,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_teran_variant(batch: int, variant: str, steps: int) -> dict:
    """TERAN's alignment part of a training step (MrSw scores of every image × caption from
    unit token vectors, the hinge, backward into the token vectors): ``itmflow`` = the model's
    vectorised ``alignment_scores``; ``original`` = one caption (at its own length) at a time
    against all images. The encoders (BERT, the transformers) are the same on both and left out."""
    import torch

    from trainers.losses import contrastive_loss
    from trainers.models.teran import alignment_scores

    g = torch.Generator().manual_seed(0)
    n_words = torch.randint(8, 15, (batch,), generator=g)
    width = int(n_words.max())
    word_mask = torch.arange(width)[None] < n_words[:, None]
    region_mask = torch.ones(batch, 36, dtype=torch.bool)
    raw_regions = torch.randn(batch, 36, 1024, generator=g, requires_grad=True)
    raw_words = torch.randn(batch, width, 1024, generator=g, requires_grad=True)
    walls, cpus, syss, faults = [], [], [], []
    for step in range(steps + WARMUP):
        w0, c0, s0, f0 = _usage()
        regions = torch.nn.functional.normalize(raw_regions, dim=-1)
        words = torch.nn.functional.normalize(raw_words, dim=-1) * word_mask[..., None]
        if variant == "itmflow":
            scores = alignment_scores(regions, region_mask, words, word_mask)
        else:
            cols = [alignment_scores(regions, region_mask, words[c:c + 1, :int(n)],
                                     word_mask[c:c + 1, :int(n)]) for c, n in enumerate(n_words)]
            scores = torch.cat(cols, dim=1)
        raw_regions.grad = raw_words.grad = None
        contrastive_loss(scores).backward()
        w1, c1, s1, f1 = _usage()
        if step >= WARMUP:
            walls.append(w1 - w0)
            cpus.append(c1 - c0)
            syss.append(s1 - s0)
            faults.append(f1 - f0)
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    return {"module": "TERAN-MrSw-alignment", "batch": batch, "variant": variant, "steps": steps,
            "wall_s": med(walls), "cpu_s": med(cpus), "sys_s": med(syss),
            "minor_faults": med(faults), "wall_all": walls, "cpu_all": cpus,
            "threads": torch.get_num_threads(),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _children(arg_lists: list[list[str]]) -> list[dict]:
    """Run child processes at the same time (each pinned to its own core when there are enough)
    and return their JSON results."""
    procs = []
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    for n, args_list in enumerate(arg_lists):
        cmd = [sys.executable, __file__] + args_list
        if len(arg_lists) > 1 and len(cores) >= len(arg_lists) and shutil.which("taskset"):
            cmd = ["taskset", "-c", str(cores[n])] + cmd
        procs.append((args_list, subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                                  stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace")))
    out = []
    for args_list, proc in procs:
        stdout, stderr = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(args_list)} failed:\n{stderr[-3000:]}")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def compare(kind: str, configs: list[tuple[str, int]], steps_for, rounds: int,
            threads: int, concurrent: bool = False) -> tuple[list[dict], list[dict]]:
    """Interleaved runs (original, itmflow, then itmflow, original, ...), each in its own process
    (``concurrent``: the two variants at the same time, one core each, so both see the same load);
    per configuration the medians over rounds of the per-process medians."""
    from benchlib import row

    rows, details = [], []
    for module, batch in configs:
        runs: dict[str, list[dict]] = {"original": [], "itmflow": []}
        for r in range(rounds):
            order = ("original", "itmflow") if r % 2 == 0 else ("itmflow", "original")
            arg_lists = [["--compare-one", kind, "--module", module, "--batch", str(batch),
                          "--variant", variant, "--steps", str(steps_for(batch)),
                          "--threads", str(threads)] for variant in order]
            groups = [arg_lists] if concurrent else [[a] for a in arg_lists]
            for group in groups:
                load = os.getloadavg()[0]
                for res in _children(group):
                    res["load_1m_before"] = load
                    res["load_1m_after"] = os.getloadavg()[0]
                    res["concurrent"] = len(group) > 1
                    print(f"{module} batch {batch} {res['variant']}: cpu {res['cpu_s']:.2f} s/step, "
                          f"sys {res['sys_s']:.2f}, wall {res['wall_s']:.2f}, peak RSS "
                          f"{res['peak_rss_mb']:.0f} MiB, load {load:.1f}", flush=True)
                    runs[res["variant"]].append(res)
                    details.append(res)
        med = {v: {k: sorted(x[k] for x in rs)[len(rs) // 2]
                   for k in ("wall_s", "cpu_s", "sys_s", "minor_faults", "peak_rss_mb")}
               for v, rs in runs.items()}
        o, i = med["original"], med["itmflow"]
        loads = [x["load_1m_before"] for rs in runs.values() for x in rs]
        name = f"{module} train step, batch {batch}"
        extra = {"batch": batch, "load_1m": [min(loads), max(loads)], "rounds": rounds,
                 "steps_per_process": steps_for(batch)}
        rows.append(row(f"{name}: steps per CPU-second", 1 / i["cpu_s"], "1/s", baseline=ORIGINAL
                        if kind == "sgraf" else "per-caption loop", baseline_value=1 / o["cpu_s"],
                        note="ratio = original CPU s / itmflow CPU s", cpu_s=i["cpu_s"],
                        baseline_cpu_s=o["cpu_s"], sys_s=i["sys_s"], baseline_sys_s=o["sys_s"],
                        minor_faults=i["minor_faults"], baseline_minor_faults=o["minor_faults"],
                        **extra))
        rows.append(row(f"{name}: steps/s (wall)", 1 / i["wall_s"], "1/s",
                        baseline="same", baseline_value=1 / o["wall_s"],
                        note="ratio = original wall / itmflow wall (load-dependent)", **extra))
        mem = row(f"{name}: peak RSS", i["peak_rss_mb"], "MiB", baseline="same",
                  baseline_value=o["peak_rss_mb"], note="ratio = original / itmflow", **extra)
        mem["ratio"] = o["peak_rss_mb"] / i["peak_rss_mb"]
        rows.append(mem)
    return rows, details


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="sgraf,teran",
                        help="sgraf (SGR/SAF vs the original structure), teran (alignment vs a "
                             "per-caption loop), steps (one full step of every model); parts not "
                             "run keep their rows from the existing result file")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per process (after 1 warm-up)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved processes per variant")
    parser.add_argument("--concurrent", default="",
                        help="batch sizes whose two variants run at the same time, one core each "
                             "(same load for both; halves the wall time on a busy box)")
    parser.add_argument("--batches", default=",".join(map(str, SGRAF_BATCHES)))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (0: torch default)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--compare-one", help=argparse.SUPPRESS)
    parser.add_argument("--module", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:  # child process: one model, JSON on stdout
        print(json.dumps(run_one(args.one, args.batch, args.steps, args.device)))
        return
    if args.compare_one == "sgraf":
        print(json.dumps(run_sgraf_variant(args.module, args.batch, args.variant, args.steps)))
        return
    if args.compare_one == "teran":
        print(json.dumps(run_teran_variant(args.batch, args.variant, args.steps)))
        return

    from benchlib import RESULTS_DIR, row, write_result
    from itmflow.devices import resolve_device

    parts = set(args.parts.split(","))
    previous = {}
    old_path = RESULTS_DIR / "train.json"
    if old_path.exists():
        previous = json.loads(old_path.read_text(encoding="utf-8"))
    old_rows = previous.get("results", [])
    # Where and when the rows carried over from the previous file were measured (the file's
    # top-level date and machine describe this run only).
    earlier = {"date": previous.get("date"), "machine": previous.get("machine")}

    def carried(part: dict | None) -> dict | None:
        if isinstance(part, dict) and not {"measured_on", "measured"} & part.keys():
            part = {**part, "measured_on": earlier}
        return part

    # Timed steps per batch (sgraf) and for teran, kept from the previous file for parts and
    # batches not run now; whether the two variants ran at the same time is in each detail row.
    timed = previous.get("config", {}).get("timed_steps")
    timed = dict(timed) if isinstance(timed, dict) else {}
    config = {"threads": args.threads or torch.get_num_threads(), "timed_steps": timed,
              "concurrent": "details[].concurrent: true = both variants of a configuration at "
                            "the same time, one core each (taskset); false = one after the other",
              "rounds": args.rounds, "regions": 36, "feature_dim": 2048,
              "caption_words": "11-17 (uniform), SGRAF", "load_average_1m_before": os.getloadavg()[0]}
    rows: list[dict] = []

    def part_rows(tag: str) -> list[dict]:
        return [r for r in old_rows if r.get("part", "steps" if " throughput" in r["metric"]
                or " train step (batch" in r["metric"] or " peak memory (" in r["metric"]
                else None) == tag]

    if "sgraf" in parts:
        batches = [int(b) for b in args.batches.split(",")]
        together = {int(b) for b in args.concurrent.split(",") if b}
        timed.update({str(b): args.steps for b in batches})
        new, details = [], []
        for b in batches:
            r, d = compare("sgraf", [("SGR", b), ("SAF", b)], lambda _: args.steps, args.rounds,
                           args.threads, concurrent=b in together)
            new, details = new + r, details + d
        rows += [{**r, "part": "sgraf"} for r in new]
        kept = [r for r in part_rows("sgraf") if r.get("batch") not in batches]
        rows += kept
        old_details = (previous.get("config", {}).get("sgraf") or {}).get("details", [])
        details += [d if "measured_on" in d else {**d, "measured_on": earlier}
                    for d in old_details if d["batch"] not in batches]
        config["sgraf"] = {"sizes": "embed 1024, sim 256, word 300, bi-GRU, 36 regions of 2048-d, "
                           "vocab 11353 (the paper's)", "baseline": ORIGINAL, "details": details}
    else:
        rows += part_rows("sgraf")
        config["sgraf"] = carried(previous.get("config", {}).get("sgraf"))
    if "teran" in parts:
        configs = [("TERAN-MrSw", b) for b in TERAN_BATCHES]
        timed["teran"] = max(args.steps, 3)
        new, details = compare("teran", configs, lambda b: max(args.steps, 3), args.rounds,
                               args.threads)
        rows += [{**r, "part": "teran"} for r in new]
        config["teran"] = {"what": "alignment scores + hinge + backward into 1024-d token vectors; "
                           "36 regions, 8-14 words", "details": details}
    else:
        rows += part_rows("teran")
        config["teran"] = carried(previous.get("config", {}).get("teran"))
    if "steps" in parts:
        device = resolve_device(args.device)
        details = []
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
            dev = res["device"]
            rows.append(row(f"{model} train step (batch {batch})", res["step_s_median"], "s",
                            device=dev, part="steps"))
            rows.append(row(f"{model} throughput", res["pairs_per_s"], "pairs/s", device=dev,
                            part="steps"))
            mem_key = "peak_cuda_mb" if "peak_cuda_mb" in res else "peak_rss_mb"
            rows.append(row(f"{model} peak memory ({'CUDA' if mem_key == 'peak_cuda_mb' else 'RSS'})",
                            res[mem_key], "MiB", device=dev, part="steps"))
        config["full_steps"] = {"device": str(device), "cpu_batch": CPU_BATCH, "details": details,
                           "bert": "bert-base architecture, 6 layers, random weights",
                           "measured": "now"}
    else:
        kept = part_rows("steps")
        rows += [{**r, "part": "steps"} for r in kept]
        old_steps = previous.get("config", {}).get("full_steps")
        if old_steps is None and kept:  # the file written before the parts existed
            old = previous.get("config", {})
            old_steps = {k: old.get(k) for k in ("device", "cpu_batch", "details", "bert",
                                                  "load_average_1m", "threads")}
            old_steps["measured"] = previous.get("date")
        config["full_steps"] = carried(old_steps)
    config["load_average_1m_after"] = os.getloadavg()[0]
    write_result("train", config, rows)


if __name__ == "__main__":
    main()
