"""The scripts in examples/ run on the bundled sample collection (real photos, 5 captions each):
four of its photos (two train, one val, one test, to stay fast on 2 cores), a random-init detector
at a small scale, the real (offline MiniLM) tokenizer, a tiny TERN trained for two steps through
the library API."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from tests._support.tiny_bert import tiny_bert
from workflows.sample import materialize_sample

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TINY_TERN = {"bert_config": tiny_bert(),
             "bert_layers": 1, "visual_layers": 1, "embed_size": 16, "layers": 1, "ff_dim": 32}


def run_example(script: str, *args: object) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, str(ROOT / "examples" / script), *map(str, args)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("examples")
    full = materialize_sample(root / "sample")
    images = root / "images"
    images.mkdir()
    wanted = {"train": 2, "val": 1, "test": 1}
    kept = []
    for line in (full / "captions.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if wanted.get(entry["split"], 0) > 0:
            wanted[entry["split"]] -= 1
            kept.append(line)
            shutil.copy(full / entry["file"], images / entry["file"])
    (images / "captions.jsonl").write_text("\n".join(kept) + "\n")
    printed = run_example("detect_folder.py", images, "--store", root / "regions", "--random-init",
                          "--regions", "10-100", "--min-size", "96", "--max-size", "128",
                          "--proposals", "4")
    (root / "detect.txt").write_text(printed)
    res = CliRunner().invoke(app, ["ingest", str(images), "--format", "folder",
                                   "--out", str(root / "collection.parquet")])
    assert res.exit_code == 0, res.output

    from pipeline.text.tokenize import TokenizeConfig, tokenize
    from trainers.training import build_config, train

    tokenize(TokenizeConfig(collection=root / "collection.parquet", out=root / "captions",
                            tokenizer=str(minilm_dir)))
    config = build_config("tern", overrides={"max_steps": 2, "batch_size": 4, "val_every": 0,
                                             "device": "cpu", "progress": False,
                                             "model_config": TINY_TERN})
    train(config, root / "regions", root / "captions", root / "run", bert=str(minilm_dir))
    return {"root": root, "images": images, "regions": root / "regions",
            "captions": root / "captions", "run": root / "run"}


def test_detect_folder_writes_a_region_store(sample: dict[str, Path]) -> None:
    from pipeline.collections.folder import scan_images
    from stores import open_region_store

    printed = (sample["root"] / "detect.txt").read_text()
    assert "regions, e.g." in printed and "RANDOM WEIGHTS" in printed
    store = open_region_store(sample["regions"])
    assert sorted(store.ids()) == sorted(scan_images(sample["images"])) and len(store) == 4
    assert store.manifest["detector"]["settings"]["random_init"] is True


def test_read_store_into_numpy_and_pandas(sample: dict[str, Path]) -> None:
    printed = run_example("read_store.py", sample["regions"], "--captions", sample["captions"])
    assert "4 images, feature_dim 2048" in printed
    assert "mean region features: (4, 2048)" in printed
    assert "20 captions" in printed and "'test': 5" in printed


def test_score_captions_ranks_every_image_with_a_trained_run(sample: dict[str, Path]) -> None:
    printed = run_example("score_captions.py", sample["run"], "--regions", sample["regions"],
                          "--text", "A tabby cat looks to the side.", "--text", "a rocket",
                          "--top", "4")
    lines = [ln for ln in printed.splitlines() if ln.startswith("'")]
    assert len(lines) == 2
    assert all(ln.count("(") == 4 for ln in lines)           # every image ranked, with its score
