"""The training loop on real (synthetic-content) stores: run directory, exact resume, clipping,
the LR actually applied, refusals, and the `itmflow train` command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from itmflow.errors import ConfigError
from tests._support.tiny_bert import tiny_bert
from trainers.training.config import TrainConfig, build_config, learning_rate
from trainers.training import Trainer, train
from tests._support.runs import losses

TINY_BERT = tiny_bert(max_position_embeddings=64, type_vocab_size=2)
TINY = {
    "tern": {"bert_config": TINY_BERT, "bert_layers": 1, "visual_layers": 1, "embed_size": 32,
             "layers": 1, "ff_dim": 64},
    "sgraf-saf": {"embed_size": 32, "word_dim": 16, "sim_dim": 16},
}


def tiny_config(model: str, **overrides: Any) -> TrainConfig:
    base = {"batch_size": 8, "lr": 1e-3, "warmup_iters": 4, "epochs": 50, "val_every": 4,
            "progress": False, "device": "cpu", "log_every": 1, "model_config": TINY[model]}
    return build_config(model, overrides={**base, **overrides})


def weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "last" / "model.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tern", "sgraf-saf"])
def test_resume_continues_bit_for_bit(model: str, small_stores, tmp_path: Path) -> None:
    """N steps + resume + M steps == N+M steps: weights, losses, best score (crosses an epoch end)."""
    regions, captions = small_stores.regions, small_stores.captions
    # 80 captions / batch 8 = 10 batches per epoch; stop at 7 (mid-epoch), go on to 13.
    straight = train(tiny_config(model, max_steps=13), regions, captions, tmp_path / "a")
    first = train(tiny_config(model, max_steps=7), regions, captions, tmp_path / "b")
    assert first["steps"] == 7 and first["epochs_done"] == 0
    resumed = train(tiny_config(model, max_steps=13), regions, captions, tmp_path / "b",
                    resume=True)
    assert resumed["steps"] == 13 and resumed["steps_this_run"] == 6
    assert straight["epochs_done"] == resumed["epochs_done"] == 1

    wa, wb = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"weights differ after resume: {different[:5]}"
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    assert straight["best_score"] == resumed["best_score"]
    # ... and the weights really moved from their initial values (the test can fail).
    fresh = Trainer(tiny_config(model), _data(small_stores, model), tmp_path / "c").model
    moved = [k for k, v in fresh.state_dict().items() if v.is_floating_point()
             and not torch.equal(v, wa[k])]
    assert moved


@pytest.mark.slow
def test_float64_run_resumes_exactly_and_its_checkpoint_evaluates(small_stores, tmp_path: Path
                                                                  ) -> None:
    """``dtype: float64``: weights, optimiser state and checkpoints in float64, from the float32
    run's initial weights; resume is bit-exact; the checkpoint loads (rounded to float32) and
    evaluates; float32 + float64 agree on the first loss to float32 rounding."""
    from trainers.checkpoints import from_pretrained
    from trainers.training.validation import evaluate_split

    regions, captions = small_stores.regions, small_stores.captions
    f64 = {"dtype": "float64", "val_every": 3, "warmup_iters": 2}
    straight = train(tiny_config("sgraf-saf", max_steps=5, **f64), regions, captions,
                     tmp_path / "a")
    train(tiny_config("sgraf-saf", max_steps=3, **f64), regions, captions, tmp_path / "b")
    resumed = train(tiny_config("sgraf-saf", max_steps=5, **f64), regions, captions,
                    tmp_path / "b", resume=True)
    wa, wb = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert {v.dtype for v in wa.values() if v.is_floating_point()} == {torch.float64}
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    assert straight["best_score"] == resumed["best_score"]
    state = torch.load(tmp_path / "a" / "last" / "training_state.pt", weights_only=False)
    moments = [v for s in state["optimizer"]["state"].values() for k, v in s.items()
               if k.startswith("exp_avg")]
    assert moments and {m.dtype for m in moments} == {torch.float64}
    # The same initial weights as float32, so the first loss agrees to float32 rounding.
    train(tiny_config("sgraf-saf", max_steps=1, val_every=0, warmup_iters=2), regions, captions,
          tmp_path / "c")
    assert losses(tmp_path / "c")[1] == pytest.approx(losses(tmp_path / "a")[1], rel=1e-5)
    # Outside --resume the checkpoint loads into the float32 model and evaluates as usual.
    model = from_pretrained(tmp_path / "a" / "best")
    assert next(model.parameters()).dtype == torch.float32
    metrics = evaluate_split(model, _data(small_stores, "sgraf-saf"), "val")
    assert metrics.rsum >= 0


def test_float64_is_refused_with_amp_on_cuda() -> None:
    from trainers.training.config import check_precision

    with pytest.raises(ConfigError, match=r"config\.dtype: float64 contradicts amp: bf16 on CUDA"):
        tiny_config("sgraf-saf", dtype="float64", device="cuda")
    tiny_config("sgraf-saf", dtype="float64", device="cuda", amp="off")  # no GPU needed to check
    auto = tiny_config("sgraf-saf", dtype="float64", device="auto", amp="fp16")
    check_precision(auto, "cpu")  # amp does nothing on CPU
    with pytest.raises(ConfigError, match="set amp: off"):
        check_precision(auto, "cuda")  # device auto: checked once it is resolved
    with pytest.raises(ConfigError, match="dtype"):
        tiny_config("sgraf-saf", dtype="float16")


def _data(stores, model: str):
    from trainers.data import MatchingData

    return MatchingData(stores.regions, stores.captions, model=model)


@pytest.mark.slow
def test_run_directory_and_best_checkpoint(small_stores, tmp_path: Path) -> None:
    from trainers.checkpoints import from_pretrained

    run = tmp_path / "run"
    cfg = tiny_config("tern", max_steps=12)
    summary = train(cfg, small_stores.regions, small_stores.captions, run)
    for name in ("config.yaml", "run.json", "log.jsonl", "curves.png", "summary.json",
                 "last/model.safetensors", "last/config.json", "last/training_state.pt",
                 "best/model.safetensors", "best/config.json", "best/metrics.json"):
        assert (run / name).is_file(), name
    with Image.open(run / "curves.png") as png:
        assert png.format == "PNG" and png.size[0] > 500
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    vals = [r for r in records if r["kind"] == "val"]
    # every 4 iterations and at the epoch end (10 batches per epoch)
    assert [r["step"] for r in vals] == [4, 8, 10, 12]
    assert summary["best_score"] == max(r["rsum"] for r in vals)
    best = json.loads((run / "best" / "metrics.json").read_text())
    assert best["step"] == summary["best_step"] and best["rsum"] == summary["best_score"]
    # the LR in the log is the closed-form schedule (warm-up of 4 iterations)
    trains = {r["step"]: r for r in records if r["kind"] == "train"}
    assert trains[1]["lr"] == pytest.approx(learning_rate(cfg, 0, 0)) == pytest.approx(1e-3 * 2 / 4)
    assert trains[5]["lr"] == pytest.approx(1e-3)
    # best/ loads without any training state and scores like the model that was saved
    model = from_pretrained(run / "best")
    assert model.kind == "tern" and not model.training
    saved = json.loads((run / "best" / "config.json").read_text())
    assert saved["extra"]["step"] == summary["best_step"]
    effective = (run / "config.yaml").read_text()
    assert "batch_size: 8" in effective and "max_steps: 12" in effective


@pytest.mark.slow
def test_gradient_clipping_bounds_the_update_norm(small_stores, tmp_path: Path) -> None:
    trainer = Trainer(tiny_config("tern", grad_clip=0.01), _data(small_stores, "tern"),
                      tmp_path / "clip")
    loader = trainer._loader(0, 0)
    images, captions = next(iter(loader))
    trainer.train_step(images, captions)
    norm = torch.norm(torch.stack([p.grad.norm() for p in trainer.model.parameters()
                                   if p.grad is not None]))
    assert float(norm) <= 0.01 * 1.001


def test_refuses_to_overwrite_or_resume_with_other_settings(small_stores, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny_config("sgraf-saf", max_steps=2, val_every=0), small_stores.regions,
          small_stores.captions, run)
    with pytest.raises(ConfigError, match="--resume"):
        train(tiny_config("sgraf-saf", max_steps=2), small_stores.regions, small_stores.captions, run)
    with pytest.raises(ConfigError, match=r"\['lr'\]"):
        train(tiny_config("sgraf-saf", max_steps=4, lr=0.5), small_stores.regions,
              small_stores.captions, run, resume=True)
    with pytest.raises(ConfigError, match="does not exist"):
        train(tiny_config("sgraf-saf"), small_stores.regions, small_stores.captions,
              tmp_path / "empty", resume=True)
    # A run that died before its first checkpoint starts afresh (its stale log is dropped).
    early = tmp_path / "early"
    early.mkdir()
    (early / "log.jsonl").write_text('{"kind": "train", "step": 1, "loss": -1.0}\n')
    train(tiny_config("sgraf-saf", max_steps=2, val_every=0), small_stores.regions,
          small_stores.captions, early)
    assert sorted(losses(early)) == [1, 2] and losses(early)[1] != -1.0


@pytest.mark.slow
def test_cli_train_and_resume(small_stores, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pipeline.cli import app

    import yaml

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"batch_size": 8, "lr": 1e-3, "warmup_iters": 0,
                                      "val_every": 0, "model_config": TINY["sgraf-saf"]}))
    run = tmp_path / "run"
    args = ["train", "sgraf-saf", "--regions", str(small_stores.regions), "--captions",
            str(small_stores.captions), "--out", str(run), "--config", str(config),
            "--device", "cpu", "--no-progress"]
    result = CliRunner().invoke(app, args + ["--max-steps", "3"])
    assert result.exit_code == 0, result.output
    assert "no validation ran (3 steps" in result.output  # val_every 0 and no full epoch
    assert json.loads((run / "summary.json").read_text())["steps"] == 3
    assert (run / "vocab.json").is_file()  # the caption store's vocabulary travels with the run
    result = CliRunner().invoke(app, args + ["--max-steps", "5", "--resume", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "summary.json").read_text())["steps"] == 5
    printed = json.loads(result.stdout)  # --json: the summary is all there is on stdout
    assert printed["steps"] == 5 and printed["run"] == str(run) and printed["model"] == "sgraf-saf"
    bad = CliRunner().invoke(app, ["train", "sgraf-saf", "--regions", str(tmp_path / "nowhere"),
                                   "--captions", str(small_stores.captions), "--out",
                                   str(tmp_path / "r2"), "--no-progress"])
    assert bad.exit_code != 0


@pytest.mark.slow
def test_worker_processes_give_the_same_training(small_stores, tmp_path: Path) -> None:
    """Loading batches in 2 DataLoader workers yields the same losses and weights as in-process."""
    a = train(tiny_config("sgraf-saf", max_steps=4, val_every=0), small_stores.regions,
              small_stores.captions, tmp_path / "w0")
    b = train(tiny_config("sgraf-saf", max_steps=4, val_every=0, workers=2), small_stores.regions,
              small_stores.captions, tmp_path / "w2")
    assert a["steps"] == b["steps"] == 4
    assert losses(tmp_path / "w0") == losses(tmp_path / "w2")
    wa, wb = weights(tmp_path / "w0"), weights(tmp_path / "w2")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (mixed precision)")
def test_mixed_precision_training_on_gpu(small_stores, tmp_path: Path) -> None:
    run = tmp_path / "gpu"
    summary = train(tiny_config("tern", max_steps=6, device="cuda", amp="bf16"),
                    small_stores.regions, small_stores.captions, run)
    assert summary["steps"] == 6
    assert all(torch.isfinite(torch.tensor(v)) for v in losses(run).values())
    resumed = train(tiny_config("tern", max_steps=8, device="cuda", amp="bf16"),
                    small_stores.regions, small_stores.captions, run, resume=True)
    assert resumed["steps"] == 8 and resumed["steps_this_run"] == 2


@pytest.mark.slow
def test_sigterm_finishes_the_step_saves_and_resumes_exactly(small_stores, tmp_path: Path) -> None:
    """A pre-empted job (SIGTERM mid-run) loses nothing: last/ is saved, --resume continues."""
    import signal

    straight = train(tiny_config("sgraf-saf", max_steps=6, val_every=0), small_stores.regions,
                     small_stores.captions, tmp_path / "a")
    data = _data(small_stores, "sgraf-saf")
    trainer = Trainer(tiny_config("sgraf-saf", max_steps=6, val_every=0), data, tmp_path / "b")
    step = trainer.train_step

    def step_then_signal(images, captions):
        loss = step(images, captions)
        if trainer.progress.step == 2:  # the 3rd step is running
            signal.raise_signal(signal.SIGTERM)
        return loss

    trainer.train_step = step_then_signal  # type: ignore[method-assign]
    before = signal.getsignal(signal.SIGTERM)  # Ray installs its own handler once it has started
    stopped = trainer.fit()
    assert stopped["stopped_by"] == "SIGTERM" and stopped["steps"] == 3
    assert signal.getsignal(signal.SIGTERM) == before  # the caller's handler is restored
    resumed = train(tiny_config("sgraf-saf", max_steps=6, val_every=0), small_stores.regions,
                    small_stores.captions, tmp_path / "b", resume=True)
    assert resumed["steps"] == 6 and resumed["stopped_by"] is None
    wa, wb = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert straight["steps"] == 6
