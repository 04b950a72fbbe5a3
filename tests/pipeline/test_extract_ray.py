"""The extraction job on a real local Ray: bad files, reruns, added images, a killed actor and a
SIGKILLed run that resumes to the same bytes as an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests._support.extract_support import (GOOD, TINY, TINY_CLI, copy_photos, make_collection, store_contents,
                             write_bad_files)
from pipeline.extract import ExtractConfig, run_extract

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _cfg(coll: Path, out: Path, **kw) -> ExtractConfig:
    return ExtractConfig(collection=coll, out=out, **{**TINY, "batch_size": 2, "part_size": 2, **kw})


@pytest.fixture(scope="module")
def good_collection(tmp_path_factory, photo_dir) -> Path:
    root = tmp_path_factory.mktemp("good")
    return make_collection(root / "good.parquet", photo_dir, GOOD)


@pytest.fixture(scope="module")
def reference_store(tmp_path_factory, good_collection, ray_local) -> Path:
    """An uninterrupted run over the good photos (batches of 2, one batch per part)."""
    out = tmp_path_factory.mktemp("ref") / "store"
    summary = run_extract(_cfg(good_collection, out))
    assert summary.processed == len(GOOD) and summary.failed == 0
    return out


def test_bad_files_are_recorded_and_reruns_only_do_new_images(tmp_path, photo_dir, ray_local):
    root = copy_photos(photo_dir, tmp_path / "images", ["astronaut.jpg", "coffee.jpg"])
    expected = write_bad_files(root, photo_dir / "chelsea.jpg")
    files = ["astronaut.jpg"] + sorted(expected) + ["coffee.jpg"]
    coll = make_collection(tmp_path / "c.parquet", root, files)
    out = tmp_path / "store"
    first = run_extract(_cfg(coll, out, batch_size=4, part_size=4))
    assert (first.processed, first.failed, first.already_done) == (2, len(expected), 0)
    lines = [json.loads(l) for l in (out / "failures.jsonl").read_text().splitlines()]
    assert [l["file"] for l in lines] == [f for f in files if f in expected]  # collection order
    for line in lines:
        assert expected[line["file"]] in line["reason"], line
    assert [r[0] for r in store_contents(out)] == ["astronaut", "coffee"]

    # nothing left: Ray is not even needed, failures are not retried (nor duplicated)
    again = run_extract(_cfg(coll, out, batch_size=4, part_size=4))
    assert (again.processed, again.failed, again.already_done) == (0, 0, len(files))
    assert len((out / "failures.jsonl").read_text().splitlines()) == len(expected)

    # two images added to the collection: only they are processed
    copy_photos(photo_dir, root, ["rocket.jpg", "camera.png"])
    coll = make_collection(tmp_path / "c.parquet", root, files + ["rocket.jpg", "camera.png"])
    import io

    from rich.console import Console

    buf = io.StringIO()
    more = run_extract(_cfg(coll, out, batch_size=4, part_size=4),
                       console=Console(file=buf, width=300))
    assert (more.processed, more.failed, more.already_done) == (2, 0, len(files))
    # the resumed run says what it resumes (issue #12 item 5)
    assert (f"resuming: 2 of {len(files) + 2} already in the store, {len(expected)} failed "
            "earlier; --retry-failed to try them again") in buf.getvalue()
    assert [r[0] for r in store_contents(out)] == ["astronaut", "coffee", "rocket", "camera"]


def test_cli_json_summary_and_dry_run_after_it(tmp_path, good_collection, ray_local):
    from typer.testing import CliRunner

    from pipeline.cli import app

    out = tmp_path / "store"
    args = ["extract", str(good_collection), "--out", str(out), *TINY_CLI, "--batch-size", "2"]
    res = CliRunner().invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    doc = json.loads(res.stdout)
    assert doc["processed"] == len(GOOD) and doc["rows_in_store"] == len(GOOD) and doc["failed"] == 0
    res = CliRunner().invoke(app, [*args, "--dry-run", "--json"])
    plan = json.loads(res.stdout)
    assert plan["to_process"] == 0 and plan["committed"] == len(GOOD) == plan["already_done"]


def test_decode_tasks_and_decoding_in_the_actor_give_the_same_store(tmp_path, good_collection,
                                                                     reference_store, ray_local,
                                                                     monkeypatch):
    """2 CPUs, one 2-thread actor: the default decodes inside the actor; the decode-task path
    (GPU actors, CPU actors that leave cores free) must write the same bytes."""
    import dataclasses

    import pipeline.extract.cluster as cluster

    real = cluster.plan_workers
    shapes = []

    def with_decode_tasks(*args, **kwargs):
        shape = real(*args, **kwargs)
        shapes.append(shape.decode_in_actor)
        return dataclasses.replace(shape, decode_in_actor=False)

    monkeypatch.setattr(cluster, "plan_workers", with_decode_tasks)
    out = tmp_path / "store"
    summary = run_extract(_cfg(good_collection, out))
    assert shapes == [True]  # the reference store was written with decoding in the actor
    assert summary.processed == len(GOOD) and summary.failed == 0
    assert store_contents(out) == store_contents(reference_store)


def test_killed_actor_is_restarted_and_the_store_is_complete(tmp_path, good_collection,
                                                            reference_store, ray_local):
    killed: list[int] = []

    def kill_once(event: dict) -> None:
        if not killed:
            killed.append(event["pid"])
            os.kill(event["pid"], signal.SIGKILL)

    out = tmp_path / "store"
    summary = run_extract(_cfg(good_collection, out), on_batch=kill_once)
    assert killed and summary.processed == len(GOOD) and summary.failed == 0
    # the restarted worker computes exactly what the killed one would have
    assert store_contents(out) == store_contents(reference_store)


def _parts(store: Path) -> int:
    try:
        return len(json.loads((store / "manifest.json").read_text())["parts"])
    except (OSError, json.JSONDecodeError, KeyError):
        return 0


def test_sigkilled_run_resumes_to_the_same_store(tmp_path, good_collection, reference_store,
                                                 ray_local):
    out = tmp_path / "store"
    cmd = [sys.executable, "-m", "pipeline", "extract", str(good_collection), "--out", str(out),
           *TINY_CLI, "--batch-size", "2", "--part-size", "2", "--num-cpus", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while _parts(out) < 1:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the first part was never committed"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole session: driver and its embedded Ray
        proc.wait()
    committed = _parts(out)
    assert 1 <= committed < len(GOOD) // 2, "the run finished before it could be killed"

    summary = run_extract(_cfg(good_collection, out))
    assert summary.already_done == 2 * committed and summary.failed == 0
    assert summary.processed == len(GOOD) - 2 * committed
    assert store_contents(out) == store_contents(reference_store)
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == sorted(
        [p["file"] for p in manifest["parts"]] + ["manifest.json"])  # no debris, no duplicates


@pytest.mark.gpu
def test_gpu_actors_when_the_cluster_has_gpus(tmp_path, good_collection, ray_local):
    import torch

    if not torch.cuda.is_available() or not ray_local.cluster_resources().get("GPU"):
        pytest.skip("needs a CUDA GPU visible to Ray")
    summary = run_extract(_cfg(good_collection, tmp_path / "store"))
    assert summary.device == "cuda" and summary.workers >= 1
    assert summary.processed == len(GOOD)
