"""Training on several Ray Train workers (trainers.training.distributed): 2 CPU workers (gloo) with
B/2 samples each train the same weights as 1 process with batch B, for TERN, TERAN and SGRAF; the
gather is what makes it so; a SIGKILLed worker is restarted from the last checkpoint and the run
ends with the weights of an uninterrupted one; a run trained on 2 workers resumes on 1.

"The same weights" is checked to 1e-5 relative per layer. The two runs compute the same sums in
other orders (and in other BLAS blockings), so they differ by rounding; TERN, TERAN and SGRAF-SAF
keep float32 rounding well below 1e-5 after 6 Adam steps, but SGR's graph reasoning layers amplify
it: in float32 one process alone, run with another BLAS thread count, ends 3e-5 (3 steps) to 1.5e-4
(6 steps) away from itself. SGR is therefore trained in float64 (``dtype: float64``, both runs:
weights, optimiser state, inputs and loss), which separates the arithmetic — what the gathers must
get right — from float32 rounding; the float64 runs start from the float32 initial weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from trainers.training import train
from trainers.training.config import TrainConfig, build_config
from trainers.training.distributed import DistributedOptions, split_sizes
from tests._support.runs import losses

NO_DROPOUT_BERT = {"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 1,
                   "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64,
                   "type_vocab_size": 2, "hidden_dropout_prob": 0.0,
                   "attention_probs_dropout_prob": 0.0}
TRANSFORMER = {"bert_config": NO_DROPOUT_BERT, "bert_layers": 1, "visual_layers": 1,
               "embed_size": 32, "layers": 1, "ff_dim": 64, "dropout": 0.0, "visual_dropout": 0.0}
SGRAF = {"embed_size": 32, "word_dim": 16, "sim_dim": 16, "dropout": 0.0}
TINY = {"tern": TRANSFORMER, "teran": TRANSFORMER, "sgraf-sgr": SGRAF, "sgraf-saf": SGRAF}
#: Models trained in float64 here: float32 rounding alone moves SGR by more than RTOL (docstring).
DTYPE = {"sgraf-sgr": "float64"}
STEPS = 6
RTOL = 1e-5


@pytest.fixture(scope="module")
def stores(small_stores):
    """The shared small synthetic stores (tests/trainers/conftest.py)."""
    return small_stores


def config(model: str, **overrides: Any) -> TrainConfig:
    base = {"batch_size": 8, "lr": 1e-3, "warmup_iters": 2, "epochs": 5, "val_every": 2,
            "max_steps": STEPS, "progress": False, "device": "cpu", "log_every": 1,
            "model_config": TINY[model], "dtype": DTYPE.get(model, "float32")}
    return build_config(model, overrides={**base, **overrides})


def weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "last" / "model.safetensors"))


# Entries whose gradient is exactly zero in real arithmetic, so that only rounding noise moves
# them — and Adam's normalisation turns noise into lr-sized random steps in *any* two runs whose
# arithmetic differs in the last bit (one process with another BLAS thread count, too):
# * attention key biases: ``q·(k + b)`` shifts every logit of a query equally, softmax ignores it
#   (BERT's ``key.bias``; the middle third of ``nn.MultiheadAttention.in_proj_bias``; SGR's
#   ``graph_key_w.bias``, keys of the softmax over graph nodes);
# * the bias of SGRAF's scalar attention scores before a softmax (``embedding_common.0.bias``);
# * a Linear bias right before a BatchNorm over the same channel (VisualSA ``embedding_global.0``,
#   SAF ``attn_sim_w``): training-mode BatchNorm subtracts it again;
# and the BatchNorm running means that average those noisy biases in.
GRADIENT_FREE = ("attention.self.key.bias", "graph_key_w.bias", "embedding_common.0.bias",
                 "v_global_w.embedding_global.0.bias", "SAF_module.attn_sim_w.bias",
                 "v_global_w.embedding_global.1.running_mean", "SAF_module.bn.running_mean")


def _with_gradient(key: str, t: torch.Tensor) -> torch.Tensor | None:
    """The part of a tensor that has a gradient at all (see :data:`GRADIENT_FREE`)."""
    if key.endswith(GRADIENT_FREE):
        return None
    if key.endswith("in_proj_bias"):
        e = t.shape[0] // 3
        return torch.cat([t[:e], t[2 * e:]])
    return t


def relative_differences(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per layer ``||a - b|| / ||b||`` over its floating tensors (weight and bias together,
    buffers included), :data:`GRADIENT_FREE` entries left out."""
    assert a.keys() == b.keys()
    diff: dict[str, float] = {}
    norm: dict[str, float] = {}
    for key in a:
        if a[key].is_floating_point():
            x, y = _with_gradient(key, a[key].double()), _with_gradient(key, b[key].double())
            if x is None:
                continue
            layer = key.rsplit(".", 1)[0]
            diff[layer] = diff.get(layer, 0.0) + float((x - y).pow(2).sum())
            norm[layer] = norm.get(layer, 0.0) + float(y.pow(2).sum())
    return {layer: (diff[layer] / max(norm[layer], 1e-24)) ** 0.5 for layer in diff}


_RUNS: dict[str, Path] = {}


def single(model: str, stores, root: Path) -> Path:
    """The 1-process reference run of ``model`` (batch 8), trained once per module."""
    if model not in _RUNS:
        out = root / f"{model}-single"
        train(config(model), stores.regions, stores.captions, out)
        _RUNS[model] = out
    return _RUNS[model]


def test_split_sizes_and_shards() -> None:
    from trainers.data import EpochBatchSampler, ShardedBatchSampler

    assert split_sizes(8, 2) == [4, 4] and split_sizes(7, 3) == [3, 2, 2]
    whole = EpochBatchSampler(23, 8, seed=5, epoch=1)
    shards = [list(ShardedBatchSampler(EpochBatchSampler(23, 8, seed=5, epoch=1), r, 3))
              for r in range(3)]
    for b, batch in enumerate(whole):
        assert sum((s[b] for s in shards), []) == batch
        assert [len(s[b]) for s in shards] == split_sizes(len(batch), 3)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tern", "teran", "sgraf-sgr", "sgraf-saf"])
def test_two_workers_train_the_single_process_weights(model: str, stores, ray_local,
                                                      tmp_path_factory) -> None:
    root = tmp_path_factory.getbasetemp() / "dist-runs"
    ref = single(model, stores, root)
    out = root / f"{model}-2w"
    summary = train(config(model), stores.regions, stores.captions, out,
                    distributed=DistributedOptions(workers=2))
    assert summary["steps"] == STEPS and summary["workers"] == 2
    wa, wb = weights(out), weights(ref)
    dtype = getattr(torch, DTYPE.get(model, "float32"))
    assert {v.dtype for v in wa.values() if v.is_floating_point()} == {dtype}
    diff = relative_differences(wa, wb)
    worst = max(diff, key=diff.get)
    print(f"\n{model} ({dtype}): 2 workers vs 1 process after {STEPS} steps: max relative weight "
          f"difference {diff[worst]:.2e} ({worst})")
    assert diff[worst] <= RTOL, f"{worst}: {diff[worst]:.2e}"
    la, lb = losses(ref), losses(out)
    assert la.keys() == lb.keys()
    assert all(abs(la[s] - lb[s]) <= 1e-4 * max(1.0, abs(la[s])) for s in la)
    # The weights moved, so agreement is not trivial.
    init = root / f"{model}-init"
    train(config(model, max_steps=1, lr=1e-12, warmup_iters=0), stores.regions, stores.captions,
          init)
    moved = relative_differences(weights(ref), weights(init))
    assert max(moved.values()) > 1e-3
    _RUNS[f"{model}-2w"] = out


@pytest.mark.slow
def test_without_the_gather_two_workers_train_other_weights(stores, ray_local,
                                                            tmp_path_factory) -> None:
    """The debug switch: each worker scores only its 4 local samples (plain DDP) — not the same."""
    root = tmp_path_factory.getbasetemp() / "dist-runs"
    ref = single("tern", stores, root)
    out = root / "tern-2w-nogather"
    train(config("tern"), stores.regions, stores.captions, out,
          distributed=DistributedOptions(workers=2, gather=False))
    diff = relative_differences(weights(out), weights(ref))
    print(f"\ntern without gather: max relative weight difference {max(diff.values()):.2e}")
    assert max(diff.values()) > 100 * RTOL


@pytest.mark.slow
def test_killed_worker_restarts_from_checkpoint(stores, ray_local, tmp_path: Path,
                                                tmp_path_factory) -> None:
    """SIGKILL worker 1 after step 5 (checkpoints every 2 steps): Ray Train restarts the group
    from the last checkpoint and the finished run has the weights of the uninterrupted run."""
    root = tmp_path_factory.getbasetemp() / "dist-runs"
    straight = _RUNS.get("tern-2w")
    if straight is None:
        straight = root / "tern-2w-straight"
        train(config("tern"), stores.regions, stores.captions, straight,
              distributed=DistributedOptions(workers=2))
    marker = tmp_path / "killed"
    out = tmp_path / "run"
    summary = train(config("tern"), stores.regions, stores.captions, out,
                    distributed=DistributedOptions(workers=2, max_failures=2,
                                                   kill_at=(1, 5, str(marker))))
    assert marker.is_file(), "the worker was not killed"
    assert summary["steps"] == STEPS
    # Restarted from a checkpoint (step 4, or step 2 when the controller had not yet registered
    # the step-4 report when the worker died), not from scratch.
    assert summary["steps_this_run"] in (STEPS - 4, STEPS - 2)
    wa, wb = weights(straight), weights(out)
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    diff = relative_differences(wb, wa)
    print(f"\nkilled + restarted vs uninterrupted: {len(different)} tensors differ, max relative "
          f"difference {max(diff.values()):.2e}")
    assert not different, f"weights differ after the restart: {different[:5]}"
    assert losses(straight) == losses(out)


@pytest.mark.slow
def test_two_worker_run_resumes_on_one(stores, ray_local, tmp_path: Path,
                                       tmp_path_factory) -> None:
    """4 steps on 2 workers, then --resume in-process to 6 == 6 steps in one process."""
    root = tmp_path_factory.getbasetemp() / "dist-runs"
    ref = single("sgraf-saf", stores, root)
    out = tmp_path / "run"
    train(config("sgraf-saf", max_steps=4), stores.regions, stores.captions, out,
          distributed=DistributedOptions(workers=2))
    summary = train(config("sgraf-saf"), stores.regions, stores.captions, out, resume=True)
    assert summary["steps"] == STEPS and summary["steps_this_run"] == 2
    diff = relative_differences(weights(out), weights(ref))
    assert max(diff.values()) <= RTOL
