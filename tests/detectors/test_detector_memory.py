"""Memory of a long-running detector process stays flat when tensor shapes keep changing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from detectors.memory import limit_shape_caches, release_free_heap

ROOT = Path(__file__).resolve().parents[2]

# A fresh process runs 3x3 convolutions on ever-new input sizes (as a detector over a real
# collection does) and prints how much more heap is in use after 400 new shapes than before.
PROBE = r"""
import ctypes, sys
if sys.argv[1] == "worker":
    import pipeline.extract.worker  # the detector actor's module, imported before torch
import torch
import torch.nn.functional as F
torch.set_num_threads(1)
libc = ctypes.CDLL("libc.so.6")
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                "usmblks", "fsmblks", "uordblks", "fordblks",
                                                "keepcost")]
libc.mallinfo2.restype = MallInfo2
gen = torch.Generator().manual_seed(0)
weight = torch.randn(32, 16, 3, 3)
def step():
    h, w = (int(v) for v in torch.randint(8, 200, (2,), generator=gen))
    F.conv2d(torch.randn(1, 16, h, w), weight, padding=1)
for _ in range(100):
    step()
before = libc.mallinfo2().uordblks
for _ in range(400):
    step()
print((libc.mallinfo2().uordblks - before) / 2**20)
"""


def _heap_growth_mib(mode: str) -> float:
    env = {k: v for k, v in os.environ.items()
           if k not in ("LRU_CACHE_CAPACITY", "ONEDNN_PRIMITIVE_CACHE_CAPACITY")}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env=env, cwd=ROOT, check=True,
                         capture_output=True, text=True, timeout=300)
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallinfo2 is glibc (Linux) only")
def test_worker_process_has_bounded_per_shape_caches():
    plain = _heap_growth_mib("plain")
    worker = _heap_growth_mib("worker")
    # torch's default oneDNN / ideep caches keep one entry per new shape (measured ~18 MiB here)
    assert plain > 8.0, f"probe did not reproduce the per-shape growth ({plain:.1f} MiB)"
    # the detector worker caps them before torch loads: the heap in use stays flat
    assert worker < 3.0, f"heap in use grew {worker:.1f} MiB over 400 new shapes"


def test_shape_cache_limits_keep_a_value_the_user_set(monkeypatch):
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "500")
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    values = limit_shape_caches()
    assert values == {"LRU_CACHE_CAPACITY": "500", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64"}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc only")
def test_release_free_heap_uses_glibc_malloc_trim():
    assert release_free_heap() is True
