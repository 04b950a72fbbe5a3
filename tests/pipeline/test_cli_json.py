"""Scriptable (issue #14, section 2): ``--json`` prints one JSON document on stdout and nothing
else; ``itmflow run`` finds the bundled workflows by name, lists them, and ``--dry-run`` (run and
extract) prints the plan without starting Ray or loading a model. The --json of train, evaluate,
embed, search and a real extract run are tested where those commands' worlds are built
(tests/trainers/test_train_loop.py, test_eval_cli.py, test_search.py, tests/pipeline/test_extract_ray.py)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from tests._support.extract_support import TINY_CLI
from tests._support.synthetic_collection import write_synthetic_stores

runner = CliRunner()


def _json(res) -> dict:
    assert res.exit_code == 0, res.output + repr(res.exception)
    return json.loads(res.stdout)  # the whole of stdout is the one document


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path):
    root = tmp_path_factory.mktemp("cli-json")
    return write_synthetic_stores(root, minilm_dir, splits={"train": 5, "test": 5}, feature_dim=16,
                                  seed=2)


def test_store_inspect_json(stores, tmp_path: Path) -> None:
    doc = _json(runner.invoke(app, ["store", "inspect", str(stores.regions), "--json"]))
    assert doc["kind"] == "regions" and doc["rows"] == 10 and doc["feature_dim"] == 16
    also = tmp_path / "inspect.json"
    doc = _json(runner.invoke(app, ["store", "inspect", str(stores.captions), "--json", "--out", str(also)]))
    assert doc["kind"] == "captions" and doc["captions"] == 50 and doc["splits"] == {"train": 25, "test": 25}
    assert json.loads(also.read_text()) == doc


def test_ingest_and_tokenize_json(photo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.parquet"
    doc = _json(runner.invoke(app, ["ingest", str(photo_dir), "--format", "folder", "--out", str(out),
                                    "--json"]))
    assert doc["collection"] == str(out) and doc["source_format"] == "folder"
    assert doc["images"] > 0 and doc["split_sizes"]
    assert doc["captions"] > 0 and Path(doc["report"]).is_file()
    doc = _json(runner.invoke(app, ["tokenize", str(out), "--out", str(tmp_path / "caps"), "--no-bert",
                                    "--word-vocab", "coco_precomp", "--json"]))
    assert doc["store"] == str(tmp_path / "caps") and doc["captions"] > 0
    assert doc["bert"] is None and doc["word_vocab"]["name"] == "coco_precomp"
    assert doc["word_tokens"] >= doc["captions"]


def test_extract_dry_run_plans_without_ray_or_torch(photo_dir: Path, tmp_path: Path) -> None:
    coll = tmp_path / "c.parquet"
    assert runner.invoke(app, ["ingest", str(photo_dir), "--format", "folder", "--out", str(coll)]).exit_code == 0
    ray_before, torch_before = "ray" in sys.modules, "torch" in sys.modules
    start = time.perf_counter()
    doc = _json(runner.invoke(app, ["extract", str(coll), "--out", str(tmp_path / "store"), *TINY_CLI,
                                    "--batch-size", "2", "--dry-run", "--json"]))
    assert time.perf_counter() - start < 2.0
    assert doc["selected"] == doc["to_process"] > 0 and doc["already_done"] == 0
    assert doc["failed_earlier"] == 0 and doc["batches"] == -(-doc["to_process"] // 2)
    assert not (tmp_path / "store").exists()  # a plan writes nothing
    if not ray_before:
        assert "ray" not in sys.modules
    if not torch_before:
        assert "torch" not in sys.modules
    res = runner.invoke(app, ["extract", str(coll), "--out", str(tmp_path / "store"), *TINY_CLI,
                              "--dry-run"])
    assert res.exit_code == 0 and "to process now" in res.output


def test_run_list_names_the_bundled_workflows_with_their_variables() -> None:
    doc = _json(runner.invoke(app, ["run", "--list", "--json"]))
    flows = {f["name"]: f for f in doc["workflows"]}
    assert set(flows) >= {"sample", "coco", "flickr30k", "folder"}
    assert "random_init" in flows["folder"]["vars"] and "karpathy" in flows["coco"]["vars"]
    res = runner.invoke(app, ["run", "--list"], terminal_width=200)
    assert res.exit_code == 0 and "flickr30k" in res.output and "random_init=false" in res.output
    res = runner.invoke(app, ["run", "nonesuch"])
    assert res.exit_code == 1 and "coco, flickr30k, folder, sample" in str(res.exception)


def test_run_by_name_dry_run_runs_nothing(photo_dir: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    doc = _json(runner.invoke(app, ["run", "folder", "--set", f"images={photo_dir}", "--set",
                                    f"workdir={work}", "--set", "random_init=true", "--dry-run",
                                    "--json"]))
    assert doc["workflow"] == "folder" and doc["dry_run"] is True
    status = {s["name"]: s["status"] for s in doc["stages"]}
    assert status == {"ingest": "would run", "extract": "would run", "tokenize": "would run",
                      "train": "off"}
    extract = next(s for s in doc["stages"] if s["name"] == "extract")
    assert "--random-init" in extract["argv"] and "--weights" not in extract["argv"]
    assert not work.exists()


def test_run_sample_dry_run_by_name(tmp_path: Path) -> None:
    doc = _json(runner.invoke(app, ["run", "sample", "--set", f"workdir={tmp_path / 'w'}", "--dry-run",
                                    "--json"]))
    assert [s["name"] for s in doc["stages"]] == ["photos", "ingest", "extract", "tokenize", "train",
                                                  "evaluate"]
    assert all(s["status"] == "would run" for s in doc["stages"])
