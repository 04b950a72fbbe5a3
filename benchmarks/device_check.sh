#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one run (for a lent GPU machine, or any CUDA box):
# GPU block scoring against the CPU, then the scoring benchmark on the device (target: >= 10x the
# originals' per-caption loop). Uses $PYTHON (default: the project's .venv if present, else
# python3 with the repository on PYTHONPATH); results land in benchmarks/results/eval.json and
# detector.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible')"
"$PYTHON" -m pytest -q -rs -p no:cacheprovider \
    "tests/trainers/test_eval_scoring.py::test_gpu_block_scoring_equals_cpu"
"$PYTHON" benchmarks/bench_eval.py --device cuda
# The detector (issue #17): CUDA fp32 (TF32 off) gives the CPU's regions, then the agreement table
# of every precision on the GPU against the fp32 CPU reference (5 photos at 600/1000, 300
# proposals); its rows are merged into benchmarks/results/detector.json.
"$PYTHON" -m pytest -q -rs -p no:cacheprovider \
    "tests/detectors/test_detector_precision.py::test_gpu_fp32_keeps_the_cpu_regions"
"$PYTHON" benchmarks/bench_detector.py --device cuda --agreement --agree-images 5 --agree-full 5 \
    --proposals 300 --tag "600/1000, 300 proposals"
# Training on several GPUs (Ray Train, NCCL): TERN at the paper's sizes on 1, 2 and 4 workers, one
# GPU each (as many as the machine has); target: scaling efficiency >= 0.85. Results land in
# benchmarks/results/train_workers_cuda.json.
GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
COUNTS=$(for n in 1 2 4; do [ "$n" -le "$GPUS" ] && printf '%s,' "$n"; done)
"$PYTHON" benchmarks/bench_train_workers.py --device cuda --workers "${COUNTS%,}"
