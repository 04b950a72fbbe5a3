"""A first, short training run does not look broken (issue #12 item 5): a start-up line, a capped
warm-up with a warning, --log-every, curves that show every point and say when there is no
validation yet, a note on near-chance recall of a tiny split, and small run directories
(--no-save-optimizer-state, --keep)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from trainers.training.config import build_config, effective_warmup, learning_rate

SAF = {"embed_size": 32, "word_dim": 16, "sim_dim": 16}


def saf_config(**overrides):
    base = {"batch_size": 8, "lr": 1e-3, "epochs": 50, "val_every": 0, "progress": False,
            "device": "cpu", "log_every": 1, "model_config": SAF}
    return build_config("sgraf-saf", overrides={**base, **overrides})


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_warmup_longer_than_the_run_is_capped_with_a_warning() -> None:
    cfg = saf_config(warmup_iters=1000)
    warmup, note = effective_warmup(cfg, 20)
    assert warmup == 2
    assert "1000" in note and "20 steps" in note
    assert effective_warmup(cfg, 5000) == (1000, None)
    assert effective_warmup(saf_config(warmup_iters=0), 20) == (0, None)
    # the capped schedule reaches the base LR inside the run
    assert learning_rate(cfg, 0, 5, warmup) == pytest.approx(1e-3)
    assert learning_rate(cfg, 0, 5) == pytest.approx(1e-3 * 7 / 1000)


def test_small_split_note_names_chance() -> None:
    from trainers.evaluation.recall import small_split_note

    note = small_split_note(5)
    assert "R@1 by chance = 1/5 = 20.0 %" in note
    assert small_split_note(1000) is None


def test_curves_show_every_point_and_say_no_validation_yet() -> None:
    from trainers.plots import curves_figure

    history = [{"kind": "train", "step": s, "loss": 3.0 - s * 0.1} for s in (1, 2, 3)]
    fig = curves_figure(history, val_every=500)
    ax_loss, ax_val = fig.axes[:2]
    raw = ax_loss.lines[0]
    assert list(raw.get_xdata()) == [1, 2, 3] and raw.get_marker() == "o"
    texts = [t.get_text() for t in ax_val.texts]
    assert any("no validation yet" in t and "500" in t for t in texts)
    many = [{"kind": "train", "step": s, "loss": 1.0} for s in range(1, 500)]
    assert curves_figure(many).axes[0].lines[0].get_marker() in (None, "None", "")


@pytest.mark.slow
def test_short_run_says_what_it_is_and_caps_the_warmup(small_stores, tmp_path: Path) -> None:
    from trainers.training import train

    buf = io.StringIO()
    run = tmp_path / "run"
    train(saf_config(warmup_iters=1000, max_steps=20), small_stores.regions, small_stores.captions,
          run, console=Console(file=buf, width=400))
    err = buf.getvalue()
    start = next(line for line in err.splitlines() if "parameters" in line)
    for part in ("sgraf-saf", "train 80 captions of 16 images", "val 5 images", "device cpu",
                 "lr 0.001", "warm-up 2 it", "20 steps"):
        assert part in start, (part, start)
    assert "warm-up of 1000 iterations is longer than the run (20 steps)" in err
    assert "R@1 by chance = 1/5" in err
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    lrs = {r["step"]: r["lr"] for r in log if r["kind"] == "train"}
    assert lrs[20] == pytest.approx(1e-3)  # the capped warm-up is over: the base LR


@pytest.mark.slow
def test_cli_log_every_and_small_run_directories(small_stores, tmp_path: Path) -> None:
    from pipeline.cli import app

    common = ["train", "sgraf-saf", "--regions", str(small_stores.regions), "--captions",
              str(small_stores.captions), "--max-steps", "10", "--batch-size", "8", "--device",
              "cpu", "--no-progress"]
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("model_config: {embed_size: 32, word_dim: 16, sim_dim: 16}\nwarmup_iters: 0\n")
    full, small = tmp_path / "full", tmp_path / "small"
    res = CliRunner().invoke(app, [*common, "--config", str(cfg), "--out", str(full)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    res = CliRunner().invoke(app, [*common, "--config", str(cfg), "--out", str(small),
                                   "--log-every", "3", "--no-save-optimizer-state",
                                   "--keep", "best"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    log = [json.loads(line) for line in (small / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["kind"] == "train"] == [1, 3, 6, 9]
    assert (full / "last").is_dir() and (full / "best").is_dir()
    assert (small / "best" / "model.safetensors").is_file() and not (small / "last").exists()
    assert dir_bytes(small) < dir_bytes(full) / 2
    # a finished --keep best run is not overwritten by a fresh start
    res = CliRunner().invoke(app, [*common, "--config", str(cfg), "--out", str(small)])
    assert res.exit_code != 0 and "already holds a run" in str(res.exception)


@pytest.mark.slow
def test_no_optimizer_state_still_resumes_and_says_so(small_stores, tmp_path: Path) -> None:
    import torch

    from trainers.training import train

    run = tmp_path / "run"
    train(saf_config(warmup_iters=0, max_steps=3, save_optimizer_state=False),
          small_stores.regions, small_stores.captions, run)
    state = torch.load(run / "last" / "training_state.pt", weights_only=True)
    assert "optimizer" not in state and state["step"] == 3
    buf = io.StringIO()
    summary = train(saf_config(warmup_iters=0, max_steps=5, save_optimizer_state=False),
                    small_stores.regions, small_stores.captions, run, resume=True,
                    console=Console(file=buf, width=400))
    assert summary["steps"] == 5
    assert "no optimiser state" in buf.getvalue()
