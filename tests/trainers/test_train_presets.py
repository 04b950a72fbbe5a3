"""Presets reproduce the papers' hyper-parameters and LR schedules; YAML overrides are strict."""

from __future__ import annotations

import math

import pytest
import torch

from itmflow.config import load_yaml
from itmflow.errors import ConfigError
from trainers.training.config import build_config, config_diff, learning_rate, preset


def test_tern_preset_and_effective_lr_formula() -> None:
    cfg = preset("tern")
    assert (cfg.batch_size, cfg.epochs, cfg.lr, cfg.lr_step_epochs, cfg.warmup_iters,
            cfg.val_every, cfg.grad_clip, cfg.margin, cfg.max_violation) == \
        (80, 30, 2e-6, 30, 1000, 500, 2.0, 0.2, True)
    # spec §2.2: iteration t uses 2e-6 · 0.1^(epoch//30) · min(1, (t+2)/1000).
    assert learning_rate(cfg, 0, 0) == pytest.approx(2e-6 * 2 / 1000, rel=1e-12)
    assert learning_rate(cfg, 0, 500) == pytest.approx(2e-6 * 502 / 1000, rel=1e-12)
    assert learning_rate(cfg, 1, 998) == pytest.approx(2e-6, rel=1e-12)
    assert learning_rate(cfg, 5, 50_000) == pytest.approx(2e-6, rel=1e-12)
    assert learning_rate(cfg, 30, 50_000) == pytest.approx(2e-7, rel=1e-12)


def test_tern_lr_matches_torch_steplr_with_dampened_warmup() -> None:
    """Replay the authors' loop: StepLR.step(epoch) then a linear warm-up dampening per iteration."""
    cfg = preset("tern")
    cfg.lr_step_epochs = 2  # make the step decay fire inside a short replay
    cfg.warmup_iters = 7
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_step_epochs, gamma=cfg.lr_gamma)
    warm_step = 1  # pytorch_warmup's constructor already performs dampening step 1
    t = 0
    for epoch in range(5):
        for _ in range(4):
            closed = cfg.lr * cfg.lr_gamma ** (epoch // cfg.lr_step_epochs)  # StepLR closed form
            warm_step += 1
            expected = closed * min(1.0, warm_step / cfg.warmup_iters)
            assert learning_rate(cfg, epoch, t) == pytest.approx(expected, rel=1e-12)
            t += 1
        opt.step()  # (no gradients: only keeps torch from warning about the call order)
        sched.step()
        assert sched.get_last_lr()[0] == pytest.approx(
            cfg.lr * cfg.lr_gamma ** ((epoch + 1) // cfg.lr_step_epochs), rel=1e-12)


def test_teran_presets_coco_and_f30k() -> None:
    coco, f30k = preset("teran", "coco"), preset("teran", "f30k")
    assert (coco.lr, coco.batch_size, coco.lr_step_epochs, coco.warmup_iters) == (1e-5, 40, 20, 0)
    assert (f30k.lr, f30k.batch_size, f30k.lr_step_epochs, f30k.warmup_iters) == (1e-5, 30, 20, 1000)
    assert learning_rate(coco, 0, 0) == 1e-5  # no warm-up on COCO
    assert learning_rate(coco, 20, 0) == pytest.approx(1e-6)
    assert learning_rate(f30k, 0, 0) == pytest.approx(1e-5 * 2 / 1000)


@pytest.mark.parametrize("model,dataset,epochs,update", [
    ("sgraf-sgr", "coco", 20, 10), ("sgraf-saf", "coco", 20, 10),
    ("sgraf-sgr", "f30k", 40, 30), ("sgraf-saf", "f30k", 30, 20)])
def test_sgraf_presets(model: str, dataset: str, epochs: int, update: int) -> None:
    cfg = preset(model, dataset)
    assert (cfg.lr, cfg.batch_size, cfg.epochs, cfg.lr_step_epochs, cfg.warmup_iters,
            cfg.val_every) == (2e-4, 128, epochs, update, 0, 1000)
    # lr = 2e-4 · 0.1^(epoch // lr_update), constant within an epoch
    for epoch in range(epochs):
        assert math.isclose(learning_rate(cfg, epoch, 12345), 2e-4 * 0.1 ** (epoch // update),
                            rel_tol=1e-12)


def test_yaml_overrides_are_strict(tmp_path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("dataset: f30k\nbatch_size: 16\nlr: 0.001\nmodel_config:\n  embed_size: 64\n")
    cfg = build_config("teran", overrides=load_yaml(good), where=str(good))
    assert (cfg.batch_size, cfg.lr, cfg.warmup_iters, cfg.model_config) == \
        (16, 0.001, 1000, {"embed_size": 64})  # f30k preset chosen, then overridden

    bad = tmp_path / "bad.yaml"
    bad.write_text("batch_sise: 16\n")
    with pytest.raises(ConfigError, match="batch_sise"):
        build_config("tern", overrides=load_yaml(bad), where=str(bad))
    with pytest.raises(ConfigError, match="lr"):
        build_config("tern", overrides={"lr": "fast"})
    with pytest.raises(ConfigError, match="contradicts"):
        build_config("tern", overrides={"model": "teran"})
    with pytest.raises(ConfigError, match="batch_size"):
        build_config("tern", overrides={"batch_size": 0})
    with pytest.raises(ConfigError, match="unknown model"):
        preset("vsepp")


def test_config_diff_names_fields() -> None:
    a = preset("tern")
    b = build_config("tern", overrides={"lr": 1e-3, "model_config": {"layers": 1}})
    assert config_diff(a, b) == ["lr", "model_config.layers"]
