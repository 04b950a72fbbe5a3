"""One command-line language (issue #14, section 1): the same flag means the same thing in every
command, help shows metavars and choices, bad choices are usage errors (exit 2), argument errors
come back before anything heavy is loaded, nothing is replaced without --force."""

from __future__ import annotations

import json
import re
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
