"""Where TERN / TERAN need BERT *weights* and none can be had (offline and not cached, or the hub
unreachable, or a missing --bert directory), `itmflow train` fails at once in one line naming
--bert DIR and what it holds, and leaves nothing in --out."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests._support.synthetic_collection import write_synthetic_stores

from itmflow.errors import ConfigError  # noqa: E402

# small TERN sizes, but no bert_config: the BERT weights must be loaded
SMALL_TERN = {"bert_layers": 1, "visual_layers": 1, "embed_size": 32, "layers": 1, "ff_dim": 64}


@pytest.fixture(scope="module")
def stores(tmp_path_factory, minilm_dir):
    # import what `train` imports (torch: seconds on a busy box) so the timings below measure the
    # failing call, not the first import of torch
    import trainers.models  # noqa: F401
    import trainers.training  # noqa: F401

    root = tmp_path_factory.mktemp("bert-stores")
    return write_synthetic_stores(root, minilm_dir, splits={"train": 6, "val": 5}, feature_dim=16,
                                  seed=1)


@pytest.fixture
def config_file(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({"batch_size": 4, "val_every": 0, "model_config": SMALL_TERN}))
    return path


@pytest.fixture
def empty_hub(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hf-empty"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _train(stores, config_file: Path, out: Path, *extra: str):
    from pipeline.cli import app

    args = ["train", "tern", "--regions", str(stores.regions), "--captions", str(stores.captions),
            "--out", str(out), "--config", str(config_file), "--device", "cpu", "--no-progress",
            "--max-steps", "1", *extra]
    start = time.perf_counter()
    res = CliRunner().invoke(app, args)
    return res, time.perf_counter() - start


def _assert_one_line_failure(res, elapsed: float, out: Path) -> str:
    assert res.exit_code == 1, res.output
    assert isinstance(res.exception, ConfigError), repr(res.exception)
    text = str(res.exception)
    assert "\n" not in text
    assert elapsed < 3.0, f"took {elapsed:.2f} s"
    assert not out.exists(), sorted(out.rglob("*"))
    return text


def test_offline_without_cached_bert_fails_fast(stores, config_file, empty_hub, monkeypatch,
                                                tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "run"
    res, elapsed = _train(stores, config_file, out)
    text = _assert_one_line_failure(res, elapsed, out)
    assert "bert-base-uncased" in text and "HF_HUB_OFFLINE" in text
    assert "--bert DIR" in text and "config.json" in text and "model.safetensors" in text
    assert "vocab.txt" in text


def test_unreachable_hub_without_cached_bert_fails_fast(stores, config_file, empty_hub,
                                                        monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")  # nothing listens
    out = tmp_path / "run"
    res, elapsed = _train(stores, config_file, out)
    text = _assert_one_line_failure(res, elapsed, out)
    assert "cannot be reached" in text and "--bert DIR" in text and "config.json" in text


def test_missing_bert_directory_is_reported_as_missing(stores, config_file, empty_hub,
                                                       monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = tmp_path / "no-such-bert"
    out = tmp_path / "run"
    res, elapsed = _train(stores, config_file, out, "--bert", str(missing))
    text = _assert_one_line_failure(res, elapsed, out)
    assert str(missing) in text and "does not exist" in text


def test_bert_directory_without_weights_is_named(stores, config_file, minilm_dir, tmp_path):
    partial = tmp_path / "partial-bert"
    partial.mkdir()
    (partial / "config.json").write_text((minilm_dir / "config.json").read_text())
    out = tmp_path / "run"
    res, elapsed = _train(stores, config_file, out, "--bert", str(partial))
    text = _assert_one_line_failure(res, elapsed, out)
    assert "model.safetensors or pytorch_model.bin" in text and str(partial) in text


def test_resolve_bert_accepts_a_valid_directory_and_a_cached_hub_id(minilm_dir, empty_hub,
                                                                    monkeypatch):
    from itmflow.weights import resolve_bert

    assert resolve_bert(str(minilm_dir)) == minilm_dir
    rev = "a" * 40
    snap = empty_hub / "models--bert-base-uncased" / "snapshots" / rev
    snap.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "vocab.txt"):
        (snap / name).symlink_to(minilm_dir / name)
    (empty_hub / "models--bert-base-uncased" / "refs").mkdir()
    (empty_hub / "models--bert-base-uncased" / "refs" / "main").write_text(rev)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_bert("bert-base-uncased") == snap


@pytest.mark.slow
def test_a_valid_bert_directory_trains(stores, config_file, minilm_dir, empty_hub, monkeypatch,
                                       tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "run"
    res, _ = _train(stores, config_file, out, "--bert", str(minilm_dir))
    assert res.exit_code == 0, (res.output, res.exception)
    assert (out / "last").is_dir()
