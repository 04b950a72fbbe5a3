"""One command-line language (issue #14, section 1): the same flag means the same thing in every
command, help shows metavars and choices, bad choices are usage errors (exit 2), argument errors
come back before anything heavy is loaded, nothing is replaced without --force."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from pipeline.cli import app
from tests._support.synthetic_collection import write_synthetic_stores

runner = CliRunner()


def _commands() -> list[list[str]]:
    """Every command path of the app (``["store", "inspect"]``, ...)."""
    found: list[list[str]] = []

    def walk(cmd, prefix: list[str]) -> None:
        subs = getattr(cmd, "commands", None) or {}
        if prefix and not subs:
            found.append(prefix)
        for name, sub in subs.items():
            walk(sub, prefix + [name])

    walk(typer.main.get_command(app), [])
    return found


def _params(path: list[str]) -> dict[str, object]:
    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    return {opt: p for p in cmd.params for opt in getattr(p, "opts", [])}


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path):
    root = tmp_path_factory.mktemp("cli-language")
    return write_synthetic_stores(root, minilm_dir, splits={"train": 5, "val": 5, "test": 5},
                                  feature_dim=16, seed=1)


@pytest.fixture
def collection(tmp_path: Path, photo_dir: Path) -> Path:
    out = tmp_path / "photos.parquet"
    res = runner.invoke(app, ["ingest", str(photo_dir), "--format", "folder", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


# -- help -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", _commands(), ids=lambda p: " ".join(p))
def test_help_shows_metavars_not_python_types(path: list[str]) -> None:
    res = runner.invoke(app, [*path, "--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    text = res.output
    for bad in ("<bool>", "<str>", "<int>", "<path>", "<float>", "list[", "<Path>"):
        assert bad not in text, f"`itmflow {' '.join(path)} --help` shows {bad}"
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert "{" not in usage, usage


def test_one_vocabulary_across_commands() -> None:
    # --workers is Ray workers; DataLoader processes are --loader-workers
    assert "--workers" in _params(["extract"])
    for command in (["evaluate"], ["embed"], ["train"]):
        params = _params(command)
        assert "--loader-workers" in params, command
        assert "--workers" not in params or params["--workers"].hidden or command == ["train"]
    # the two vocabularies have names of their own; the old spelling is hidden
    for command in (["detect"], ["extract"]):
        params = _params(command)
        assert "--labels" in params and params["--vocab"].hidden
    for command in (["tokenize"], ["train"]):
        params = _params(command)
        assert "--word-vocab" in params and params["--vocab"].hidden
    # --device defaults to auto wherever a command has one
    for command in _commands():
        device = _params(command).get("--device")
        if device is not None:
            assert device.default in ("auto", None), command  # None: train's preset (auto)
    # --json on every command whose result a script wants
    for command in (["store", "inspect"], ["ingest"], ["extract"], ["tokenize"], ["train"],
                    ["evaluate"], ["embed"], ["search"]):
        assert "--json" in _params(command), command


@pytest.mark.parametrize("argv", [
    ["ingest", "x.json", "--format", "voc", "--out", "c.parquet"],
    ["extract", "c.parquet", "--out", "s", "--storage", "zarr"],
    ["extract", "c.parquet", "--out", "s", "--regions", "50"],
    ["detect", "a.jpg", "--selection", "nms"],
    ["detect", "a.jpg", "--precision", "int8"],
    ["embed", "run", "--regions", "r", "--out", "o", "--index", "annoy"],
    ["search", "emb", "--text", "x", "--target", "videos"],
    ["evaluate", "run", "--regions", "r", "--captions", "c", "--buffer-dtype", "int8"],
    ["store", "convert", "a", "b", "--to", "zarr"],
    ["store", "export", "a", "--format", "npy", "--out", "o"],
])
def test_bad_choice_is_a_usage_error_listing_the_choices(argv: list[str]) -> None:
    start = time.perf_counter()
    res = runner.invoke(app, argv)
    elapsed = time.perf_counter() - start
    assert res.exit_code == 2, res.output
    assert "is not one of" in res.output
    assert elapsed < 1.0


def test_wrong_split_in_evaluate_is_answered_at_once_with_the_splits(stores, tmp_path: Path) -> None:
    start = time.perf_counter()
    res = runner.invoke(app, ["evaluate", str(tmp_path / "no-run"), "--regions", str(stores.regions),
                              "--captions", str(stores.captions), "--split", "tset"])
    elapsed = time.perf_counter() - start
    assert res.exit_code == 1
    message = str(res.exception)
    assert "'tset'" in message and "test (25 captions)" in message and "val" in message
    assert elapsed < 1.0, elapsed
    res = runner.invoke(app, ["evaluate", str(tmp_path / "no-run"), "--regions", str(tmp_path / "nope"),
                              "--captions", str(stores.captions)])
    assert res.exit_code == 1 and "--regions" in str(res.exception)


def test_wrong_split_in_embed_is_answered_before_loading(stores, tmp_path: Path) -> None:
    start = time.perf_counter()
    res = runner.invoke(app, ["embed", str(tmp_path / "no-run"), "--regions", str(stores.regions),
                              "--captions", str(stores.captions), "--split", "dev",
                              "--out", str(tmp_path / "e")])
    assert res.exit_code == 1 and "its splits are" in str(res.exception)
    assert time.perf_counter() - start < 1.0


# Runs CLI calls in a fresh interpreter and says whether torch was imported by the end.
_PROBE = """
import json, sys, time
from typer.testing import CliRunner
from pipeline.cli import app
results = []
for argv in json.loads(sys.argv[1]):
    start = time.perf_counter()
    res = CliRunner().invoke(app, argv)
    results.append({"exit": res.exit_code, "seconds": time.perf_counter() - start,
                    "message": str(res.exception) if res.exit_code == 1 else res.output})
print(json.dumps({"results": results, "torch": "torch" in sys.modules}))
"""


def _fresh_cli(calls: list[list[str]]) -> dict:
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(calls)], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_wrong_model_in_train_is_a_usage_error_listing_the_models(tmp_path: Path) -> None:
    from trainers.model_names import MODEL_NAMES

    start = time.perf_counter()
    res = runner.invoke(app, ["train", "nosuchmodel", "--regions", str(tmp_path / "r"), "--captions",
                              str(tmp_path / "c"), "--out", str(tmp_path / "o")], terminal_width=200)
    assert time.perf_counter() - start < 1.0
    assert res.exit_code == 2, res.output
    assert "'nosuchmodel' is not a model" in res.output
    assert all(name in res.output for name in MODEL_NAMES)


def test_argument_errors_are_answered_before_torch_is_imported(stores, tmp_path: Path) -> None:
    regions, captions = str(stores.regions), str(stores.captions)
    (tmp_path / "not-a-store").mkdir()
    held = tmp_path / "held"
    held.mkdir()
    (held / "summary.json").write_text("{}")
    out = str(tmp_path / "run")
    calls = [  # (argv, exit status, words of the message)
        (["train", "nosuchmodel", "--regions", regions, "--captions", captions, "--out", out], 2,
         ["'nosuchmodel' is not a model", "sgraf-saf"]),
        (["train", "tern", "--regions", str(tmp_path / "nope"), "--captions", captions, "--out", out],
         1, [f"{tmp_path / 'nope'} is not a region store", "itmflow extract"]),
        (["train", "tern", "--regions", str(tmp_path / "not-a-store"), "--captions", captions,
          "--out", out], 1, [f"{tmp_path / 'not-a-store'} is not a region store"]),
        (["train", "tern", "--regions", regions, "--captions", str(tmp_path / "nope"), "--out", out],
         1, [f"{tmp_path / 'nope'} is not a caption store"]),
        (["train", "tern", "--regions", regions, "--captions", captions, "--out", str(held)], 1,
         [f"run directory {held} already holds a run", "--resume"]),
        (["train", "tern", "--regions", regions, "--captions", captions, "--out", out, "--resume"], 1,
         ["cannot resume", "training_state.pt does not exist"]),
        (["train", "tern", "--regions", regions, "--captions", captions, "--out", out,
          "--config", str(tmp_path / "no.yaml")], 1, [f"{tmp_path / 'no.yaml'} does not exist"]),
        (["train", "sgraf-saf", "--regions", regions, "--captions", captions, "--out", out,
          "--word-vocab", str(tmp_path / "no.json")], 1, [f"--word-vocab {tmp_path / 'no.json'}"]),
        (["train", "tern", "--regions", regions, "--captions", captions, "--out", out,
          "--address", "127.0.0.1:6379"], 1, ["--address and --gpus-per-worker need --workers"]),
        (["evaluate", str(tmp_path / "no-run"), "--regions", regions, "--captions", captions], 1,
         [f"{tmp_path / 'no-run'} is not a run directory"]),
        (["evaluate", "--checkpoint", str(tmp_path / "no.pth"), "--regions", regions, "--captions",
          captions], 1, [f"checkpoint {tmp_path / 'no.pth'} does not exist"]),
        (["evaluate", "--sims", str(tmp_path / "no.npy"), "--regions", regions, "--captions",
          captions], 1, [f"similarity file {tmp_path / 'no.npy'} does not exist"]),
        (["embed", str(tmp_path / "no-run"), "--regions", regions, "--out", str(tmp_path / "e")], 1,
         [f"checkpoint {tmp_path / 'no-run'} does not exist"]),
        (["search", str(tmp_path / "no-emb"), "--text", "a dog"], 1,
         [f"{tmp_path / 'no-emb'} is not an embedding directory"]),
        (["serve", str(tmp_path / "no-emb")], 1, [f"{tmp_path / 'no-emb'} is not an embedding directory"]),
    ]
    doc = _fresh_cli([argv for argv, _, _ in calls])
    for (argv, status, words), got in zip(calls, doc["results"]):
        assert got["exit"] == status, (argv, got)
        assert all(w in got["message"] for w in words), (argv, got["message"])
        if status == 1:
            assert "\n" not in got["message"], got["message"]  # one line
        assert got["seconds"] < 1.0, (argv, got["seconds"])
    assert doc["torch"] is False
    assert not (tmp_path / "run").exists() and not (tmp_path / "e").exists()


# -- --force ----------------------------------------------------------------------------------


def test_ingest_and_tokenize_refuse_to_replace_without_force(collection: Path, tmp_path: Path,
                                                             photo_dir: Path) -> None:
    res = runner.invoke(app, ["ingest", str(photo_dir), "--format", "folder", "--out", str(collection)])
    assert res.exit_code == 1 and "--force" in str(res.exception)
    res = runner.invoke(app, ["ingest", str(photo_dir), "--format", "folder", "--out", str(collection),
                              "--force"])
    assert res.exit_code == 0, res.output
    store = tmp_path / "captions"
    args = ["tokenize", str(collection), "--out", str(store), "--no-bert", "--word-vocab", "coco_precomp"]
    assert runner.invoke(app, args).exit_code == 0
    before = (store / "manifest.json").read_bytes()
    res = runner.invoke(app, args)
    assert res.exit_code == 1 and "--force" in str(res.exception)
    assert (store / "manifest.json").read_bytes() == before
    res = runner.invoke(app, [*args, "--force"])
    assert res.exit_code == 0, res.output


def test_deprecated_vocab_spelling_still_works_with_a_note(collection: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["tokenize", str(collection), "--out", str(tmp_path / "c"), "--no-bert",
                              "--vocab", "coco_precomp"])
    assert res.exit_code == 0, res.output
    assert "--vocab is deprecated" in res.stderr and "--word-vocab" in res.stderr
    res = runner.invoke(app, ["tokenize", str(collection), "--out", str(tmp_path / "d"), "--no-bert",
                              "--vocab", "coco_precomp", "--word-vocab", "f30k_precomp"])
    assert res.exit_code == 1 and "--word-vocab only" in str(res.exception)


def test_detect_and_export_refuse_to_replace_without_force(stores, tmp_path: Path,
                                                           photo_paths: list[Path]) -> None:
    out = tmp_path / "npz"
    out.mkdir()
    (out / f"{photo_paths[0].stem}.npz").write_bytes(b"earlier result")
    start = time.perf_counter()
    res = runner.invoke(app, ["detect", str(photo_paths[0]), "--random-init", "--out", str(out)])
    assert res.exit_code == 1 and "--force" in str(res.exception)
    assert time.perf_counter() - start < 1.0  # before the detector is built
    export = tmp_path / "export"
    export.mkdir()
    (export / "keep.txt").write_text("x")
    res = runner.invoke(app, ["store", "export", str(stores.regions), "--format", "tern", "--out",
                              str(export)])
    assert res.exit_code == 1 and "--force" in str(res.exception)


def test_ingest_coco_on_a_karpathy_file_says_use_karpathy(karpathy_coco: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["ingest", str(karpathy_coco), "--format", "coco", "--out",
                              str(tmp_path / "c.parquet")])
    assert res.exit_code == 1
    assert "looks like a Karpathy split file: use --format karpathy" in str(res.exception)


def test_two_searches_never_share_a_picture_name() -> None:
    from pipeline.search.query import png_name

    names = {png_name("image", "42", "images"), png_name("image", "42", "captions"),
             png_name("text", "42", "images"), png_name("text", "42", "captions")}
    assert len(names) == 4
    assert all(re.fullmatch(r"search-[a-z0-9-]+\.png", n) for n in names)
