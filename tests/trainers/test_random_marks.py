"""Random weights never travel unmarked (issue #12 item 4): a region store written by a detector
with random weights says so in `store inspect`, and every run, evaluation, embedding and search
result made from it warns on stderr, records ``random_init_regions`` and draws a red banner on
its PNGs."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from itmflow.marks import BANNER_RGB, stamp_image
from pipeline.cli import app
from tests._support.synthetic_collection import write_synthetic_stores
from tests._support.tiny_bert import tiny_bert

TERN_TINY = {"bert_config": tiny_bert(max_position_embeddings=64, type_vocab_size=2),
             "bert_layers": 1, "visual_layers": 1, "embed_size": 16, "layers": 1, "ff_dim": 32}
SPLITS = {"train": 8, "val": 5, "test": 5}


def banner_is_red(png: Path, rows: int = 6) -> bool:
    """The top ``rows`` pixel rows (outside the banner text at the right edge) are the banner colour."""
    with Image.open(png) as im:
        arr = np.asarray(im.convert("RGB")).astype(int)
    band = arr[1:rows, -8:-1]  # right end: the text starts at the left
    return bool(np.all(np.abs(band - np.array(BANNER_RGB)) <= 3))


def stderr_console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=300), buf


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path):
    """The same synthetic collection twice: regions from a random-weight detector, and clean."""
    root = tmp_path_factory.mktemp("marks")
    rand = write_synthetic_stores(root / "rand", minilm_dir, splits=SPLITS, feature_dim=16, seed=3,
                                  random_init_seed=7)
    clean = write_synthetic_stores(root / "clean", minilm_dir, splits=SPLITS, feature_dim=16, seed=3)
    return rand, clean


@pytest.fixture(scope="module")
def random_run(stores, tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path):
    """A 2-step TERN run on the random-weight store, through `itmflow train`."""
    from trainers.training.config import build_config
    from trainers.training import train

    rand, _ = stores
    run = tmp_path_factory.mktemp("run") / "tern"
    cfg = build_config("tern", overrides={
        "batch_size": 8, "lr": 1e-3, "warmup_iters": 0, "max_steps": 2, "val_every": 0,
        "progress": False, "device": "cpu", "log_every": 1,
        "model_config": {**TERN_TINY, "bert": str(minilm_dir)}})
    console, buf = stderr_console()
    train(cfg, rand.regions, rand.captions, run, console=console)
    return run, buf.getvalue()


def test_stamp_image_adds_a_red_banner_above() -> None:
    img = Image.new("RGB", (200, 100), "white")
    out = stamp_image(img)
    assert out.width == 200 and out.height > 100
    arr = np.asarray(out)
    assert tuple(arr[2, -3]) == BANNER_RGB
    assert tuple(arr[-1, 0]) == (255, 255, 255)  # the picture itself is below, not covered


def test_curves_png_carries_the_banner_only_when_random(tmp_path: Path) -> None:
    from trainers.plots import plot_curves

    history = [{"kind": "train", "step": s, "loss": 1.0 / s} for s in range(1, 4)]
    plot_curves(history, tmp_path / "r.png", random_init=True)
    plot_curves(history, tmp_path / "c.png")
    assert banner_is_red(tmp_path / "r.png")
    assert not banner_is_red(tmp_path / "c.png")


def test_store_inspect_shows_random_init_and_seed(stores, tmp_path: Path) -> None:
    rand, clean = stores
    out = tmp_path / "inspect.json"
    res = CliRunner().invoke(app, ["store", "inspect", str(rand.regions), "--out", str(out)])
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if "random_init" in ln)
    assert "true" in line
    seed_line = next(ln for ln in res.output.splitlines() if "seed" in ln)
    assert "7" in seed_line
    summary = json.loads(out.read_text())
    assert summary["random_init"] is True and summary["seed"] == 7
    res = CliRunner().invoke(app, ["store", "inspect", str(clean.regions), "--out", str(out)])
    assert json.loads(out.read_text())["random_init"] is False


@pytest.mark.slow
def test_train_warns_and_marks_run_and_curves(random_run) -> None:
    run, err = random_run
    assert "WARNING" in err and "RANDOM-WEIGHT" in err and "seed 7" in err
    record = json.loads((run / "run.json").read_text())
    assert record["random_init_regions"] is True and record["random_init_seed"] == 7
    assert json.loads((run / "summary.json").read_text())["random_init_regions"] is True
    assert banner_is_red(run / "curves.png")


@pytest.mark.slow
def test_train_on_clean_store_is_unmarked(stores, tmp_path: Path, minilm_dir: Path) -> None:
    from trainers.training.config import build_config
    from trainers.training import train

    _, clean = stores
    cfg = build_config("tern", overrides={
        "batch_size": 8, "warmup_iters": 0, "max_steps": 1, "val_every": 0, "progress": False,
        "device": "cpu", "model_config": {**TERN_TINY, "bert": str(minilm_dir)}})
    console, buf = stderr_console()
    train(cfg, clean.regions, clean.captions, tmp_path / "run", console=console)
    assert "RANDOM" not in buf.getvalue()
    assert "random_init_regions" not in json.loads((tmp_path / "run" / "run.json").read_text())
    assert not banner_is_red(tmp_path / "run" / "curves.png")


@pytest.mark.slow
def test_evaluate_marks_the_report(stores, random_run, tmp_path: Path) -> None:
    from trainers.evaluation.run import EvalConfig, evaluate

    _, clean = stores
    run, _ = random_run
    # clean regions, but a model trained on random-weight regions: still marked
    console, buf = stderr_console()
    result = evaluate(EvalConfig(regions=clean.regions, captions=clean.captions, run=run,
                                 split="test", out=tmp_path / "ev", device="cpu", progress=False),
                      console=console)
    assert "RANDOM-WEIGHT" in buf.getvalue() and str(run) in buf.getvalue()
    assert "R@1 by chance = 1/5" in buf.getvalue()  # item 5: a 5-image split is near chance
    report = json.loads(result.paths["json"].read_text())
    assert report["random_init_regions"] is True and report["random_init_seed"] == 7


@pytest.mark.slow
def test_embed_from_random_run_and_search_are_marked(stores, random_run, tmp_path: Path,
                                                     photo_paths: list[Path], capsys) -> None:
    from pipeline.search.embed import EmbedConfig, embed
    from pipeline.search.query import SearchConfig, search
    from stores import open_region_store

    _, clean = stores
    run, _ = random_run
    images = tmp_path / "images"
    images.mkdir()
    for n, image_id in enumerate(open_region_store(clean.regions).ids()):
        shutil.copy(photo_paths[n % len(photo_paths)], images / f"{image_id}.jpg")
    console, buf = stderr_console()
    embed(EmbedConfig(model=run, regions=clean.regions, captions=clean.captions,
                      out=tmp_path / "emb", images=images, device="cpu", progress=False),
          console=console)
    assert "RANDOM-WEIGHT" in buf.getvalue()
    manifest = json.loads((tmp_path / "emb" / "manifest.json").read_text())
    assert manifest["random_init_regions"] is True and manifest["random_init_seed"] == 7

    capsys.readouterr()
    res = search(SearchConfig(directory=tmp_path / "emb", text="a red car", top=3,
                              png=tmp_path / "q.png"))
    assert res.random_init_regions
    assert "RANDOM-WEIGHT" in capsys.readouterr().err
    assert banner_is_red(tmp_path / "q.png")
    first_id = open_region_store(clean.regions).ids()[0]
    res = search(SearchConfig(directory=tmp_path / "emb", image=first_id, top=3,
                              png=tmp_path / "i.png"))
    assert banner_is_red(tmp_path / "i.png")
    # the command: the warning goes to stderr, the table to stdout
    cli = CliRunner().invoke(app, ["search", str(tmp_path / "emb"), "--image", first_id,
                                   "--png", str(tmp_path / "c.png")])
    assert cli.exit_code == 0, cli.output
    assert "RANDOM-WEIGHT" in cli.stderr and "RANDOM-WEIGHT" not in cli.stdout


@pytest.mark.slow
def test_detect_visualize_png_carries_the_banner(photo_dir: Path, tmp_path: Path,
                                                  vg_vocab_dir: Path) -> None:
    vis = tmp_path / "png"
    res = CliRunner().invoke(app, [
        "detect", str(photo_dir / "chelsea.jpg"), "--random-init", "--regions", "10-100",
        "--vocab", str(vg_vocab_dir), "--min-size", "160", "--max-size", "240",
        "--proposals", "12", "--visualize", str(vis)])
    assert res.exit_code == 0, res.output
    assert banner_is_red(vis / "chelsea.png")


def test_demo_grid_carries_the_banner(tmp_path: Path, photo_paths: list[Path]) -> None:
    from tests._support.store_fixtures import make_rows
    from stores import RegionStoreWriter
    from workflows.demo import detections_png

    rows = make_rows(2, dim=8)
    root = tmp_path / "images"
    for row, photo in zip(rows, photo_paths):
        (root / row["file"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, root / row["file"])
    for name, det in (("rand", {"name": "x", "settings": {"random_init": True, "seed": 1}}),
                      ("clean", {"name": "x"})):
        with RegionStoreWriter(tmp_path / name, storage="parquet", feature_dim=8,
                               feature_dtype="float32", region_policy={"kind": "fixed", "k": 36},
                               detector=det) as writer:
            for row in rows:
                writer.add(row)
        detections_png(tmp_path / name, root, tmp_path / f"{name}.png", count=2)
    assert banner_is_red(tmp_path / "rand.png")
    assert not banner_is_red(tmp_path / "clean.png")
