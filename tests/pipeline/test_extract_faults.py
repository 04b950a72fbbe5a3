"""Faults end in one line that says how to continue (issue #11): Ctrl-C / SIGTERM, a full disk,
`--out` that is a file, a wrong `--images` root, an unreachable `--address`, bad weights, and a
refused row counted once. Plus the worker shape recorded per store part."""

from __future__ import annotations

import io
import json
import os
import resource
import signal
import socket
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests._support.extract_support import GOOD, TINY, TINY_CLI, copy_photos, make_collection, store_contents
from pipeline.extract import ExtractConfig, run_extract

SIX = GOOD + ["coffee.jpg", "rocket.jpg"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _cfg(coll: Path, out: Path, **kw) -> ExtractConfig:
    return ExtractConfig(collection=coll, out=out, **{**TINY, "batch_size": 2, "part_size": 2, **kw})


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", "extract", *args], env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text, text[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


# ----------------------------------------------------------------------------- no Ray needed

def test_out_that_is_an_existing_file_is_one_line(tmp_path, photo_dir):
    coll = make_collection(tmp_path / "c.parquet", photo_dir, GOOD[:1])
    target = tmp_path / "store"
    target.write_text("not a store\n")
    proc = _cli(str(coll), "--out", str(target), *TINY_CLI)
    assert proc.returncode == 1
    line = _one_error_line(proc)
    assert str(target) in line and "existing file" in line
    assert target.read_text() == "not a store\n"


def test_device_cuda_without_a_gpu_is_refused_before_ray_starts(tmp_path, photo_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: the refusal it checks cannot happen here")
    coll = make_collection(tmp_path / "c.parquet", photo_dir, GOOD[:1])
    start = time.perf_counter()
    proc = _cli(str(coll), "--out", str(tmp_path / "store"), *TINY_CLI, "--device", "cuda")
    took = time.perf_counter() - start
    assert proc.returncode == 1
    line = _one_error_line(proc)
    assert "--device cuda" in line and "--device cpu" in line
    assert "Ray" not in proc.stderr.replace(line, "")  # no Ray start-up output: refused before it
    assert took < 10, took  # the refusal itself is ~2 s (torch import); Ray's start was 10+ s


@pytest.mark.slow  # two CLI processes, each importing torch, then ~3 s of connection tries
def test_unreachable_address_fails_within_the_timeout_naming_it(tmp_path, photo_dir):
    coll = make_collection(tmp_path / "c.parquet", photo_dir, GOOD[:1])
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        refused = f"127.0.0.1:{closed.getsockname()[1]}"
    silent = socket.socket()  # accepts TCP, never speaks Ray (a wrong service, a proxy)
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        for address in (refused, f"127.0.0.1:{silent.getsockname()[1]}"):
            start = time.monotonic()
            proc = _cli(str(coll), "--out", str(tmp_path / "store"), *TINY_CLI, "--address", address,
                        "--connect-timeout", "3")
            took = time.monotonic() - start
            assert proc.returncode == 1
            line = _one_error_line(proc)
            assert address in line and "--connect-timeout" in line
            assert "gcs_client" not in proc.stderr  # Ray's retry warnings are not shown
            assert took < 60, took  # Python + torch import, then ~3 s of tries
    finally:
        silent.close()


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['ITMFLOW_TEST_PWNED']}",))


@pytest.mark.slow  # four CLI processes, each importing torch: 70 s on the busy 2-core box
def test_bad_weights_are_refused_before_ray_starts_naming_the_file(tmp_path, photo_dir, monkeypatch):
    import pickle

    import torch

    pwned = tmp_path / "PWNED"
    monkeypatch.setenv("ITMFLOW_TEST_PWNED", str(pwned))
    hostile_pkl = tmp_path / "hostile.pkl"
    hostile_pkl.write_bytes(pickle.dumps({"model": _Evil()}))
    hostile_pth = tmp_path / "hostile.pth"
    hostile_pth.write_bytes(pickle.dumps({"model": _Evil()}))
    foreign = tmp_path / "resnet.pth"
    torch.save({"backbone.conv1.weight": torch.zeros(2, 2)}, foreign)
    missing = tmp_path / "missing.pth"
    coll = make_collection(tmp_path / "c.parquet", photo_dir, GOOD[:1])
    cases = {hostile_pkl: "not allowed", hostile_pth: "weights_only", foreign: "unknown checkpoint layout",
             missing: "not found"}
    for path, words in cases.items():
        proc = _cli(str(coll), "--out", str(tmp_path / "store"), "--weights", str(path),
                    "--regions", "10-100", "--proposals", "4")
        assert proc.returncode == 1, proc.stderr[-2000:]
        line = _one_error_line(proc)
        assert str(path) in line and words in line, line
        assert "Ray logs" not in proc.stderr  # refused before Ray started
    assert not pwned.exists()


# ----------------------------------------------------------------------------- on Ray

@pytest.fixture(scope="module")
def six_collection(tmp_path_factory, photo_dir) -> Path:
    root = tmp_path_factory.mktemp("six")
    return make_collection(root / "six.parquet", photo_dir, SIX)


def _parts(store: Path) -> int:
    try:
        return len(json.loads((store / "manifest.json").read_text())["parts"])
    except (OSError, json.JSONDecodeError, KeyError):
        return 0


def _start(coll: Path, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pipeline", "extract", str(coll), "--out", str(out), *TINY_CLI,
           "--batch-size", "2", "--part-size", "2", "--num-cpus", "2"]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait_first_part(proc: subprocess.Popen, out: Path) -> None:
    deadline = time.monotonic() + 240
    while _parts(out) < 1:
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read()[-3000:])
        assert time.monotonic() < deadline, "the first part was never committed"
        time.sleep(0.05)


def _resume_and_check(coll: Path, out: Path) -> None:
    """A rerun completes the store: every image once, in collection order, no debris."""
    before = _parts(out)
    summary = run_extract(_cfg(coll, out))
    assert summary.failed == 0 and summary.already_done >= 2 * before
    assert summary.processed + summary.already_done == len(SIX)
    assert [r[0] for r in store_contents(out)] == [Path(f).stem for f in SIX]
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == sorted(
        [p["file"] for p in manifest["parts"]] + ["manifest.json"])


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_run_says_what_is_committed_and_resumes(tmp_path, six_collection, ray_local,
                                                           sig, code):
    out = tmp_path / "store"
    proc = _start(six_collection, out)
    try:
        _wait_first_part(proc, out)
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)  # Ctrl-C in a terminal signals the whole process group
        else:
            os.kill(proc.pid, sig)  # `kill PID`, a scheduler stopping the job
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == code, stderr[-3000:]
    text = stdout + stderr
    assert "Traceback" not in text and "SIGTERM received" not in text and "***" not in text, text[-3000:]
    committed = json.loads((out / "manifest.json").read_text())["num_rows"]
    assert 2 <= committed < len(SIX), "the run finished before it could be interrupted"
    assert stderr.strip().splitlines()[-1] == (
        f"interrupted: {committed} images committed; rerun the same command to resume")
    _resume_and_check(six_collection, out)


@pytest.mark.ray
@pytest.mark.slow
def test_full_disk_mid_run_is_one_line_and_the_rerun_resumes(tmp_path, six_collection, ray_local):
    """RLIMIT_FSIZE on the running driver (Python ignores SIGXFSZ): its next part write fails with
    EFBIG, as a full disk fails with ENOSPC. Ray's own processes are not limited."""
    out = tmp_path / "store"
    proc = _start(six_collection, out)
    try:
        _wait_first_part(proc, out)
        limit = 4096  # the manifest still fits; a part (tens of KB) does not
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (limit, limit))
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 1, stderr[-3000:]
    line = _one_error_line(subprocess.CompletedProcess([], 1, stdout, stderr))
    assert str(out) in line and "rerun the same command" in line, line
    assert "File too large" in line or "No space" in line or "EFBIG" in line, line
    _resume_and_check(six_collection, out)


@pytest.mark.ray
@pytest.mark.slow
def test_wrong_images_root_then_the_right_one(tmp_path, photo_dir, ray_local):
    """All images missing under a wrong root; a later run with the right root retries them by
    itself (the file exists now), while other failures are skipped with a note naming
    --retry-failed."""
    root = copy_photos(photo_dir, tmp_path / "images", GOOD[:3])
    (root / "notes.jpg").write_text("a text file, not a JPEG\n")
    files = GOOD[:3] + ["notes.jpg"]
    coll = make_collection(tmp_path / "c.parquet", root, files)
    out = tmp_path / "store"
    wrong = run_extract(_cfg(coll, out, images_root=tmp_path / "elsewhere", batch_size=4, part_size=4))
    assert (wrong.processed, wrong.failed) == (0, 4)

    log = io.StringIO()
    from rich.console import Console

    right = run_extract(_cfg(coll, out, images_root=root, batch_size=4, part_size=4),
                        console=Console(file=log, width=300))
    # three files exist now and are retried; notes.jpg was missing too, so it is retried and
    # fails for its own reason
    assert (right.processed, right.failed, right.retried_missing) == (3, 1, 4)
    assert "4 image(s) whose file was missing in an earlier run exist now" in log.getvalue()
    assert [r[0] for r in store_contents(out)] == [Path(f).stem for f in GOOD[:3]]

    log = io.StringIO()
    again = run_extract(_cfg(coll, out, images_root=root, batch_size=4, part_size=4),
                        console=Console(file=log, width=300))
    assert (again.processed, again.failed, again.skipped_failed) == (0, 0, 1)
    assert "1 image(s) that failed in earlier runs are skipped" in log.getvalue()
    assert "--retry-failed" in log.getvalue()


def _overflowing_weights(path: Path) -> Path:
    """A random detector whose region features overflow float16 (res5's last norm scaled up)."""
    import torch

    from detectors.butd.model import BUTDModel, random_init_
    from tests._support.butd_layouts import write_milvlg

    sd = random_init_(BUTDModel(), 0).state_dict()
    for key in ("roi_heads.res5.2.conv3.norm.weight", "roi_heads.res5.2.conv3.norm.bias"):
        sd[key] = sd[key] * 1e7
    return write_milvlg({k: v.detach().clone() for k, v in sd.items()}, path)


@pytest.mark.ray
@pytest.mark.slow
def test_a_row_the_store_refuses_counts_as_failed_only(tmp_path, photo_dir, ray_local):
    weights = _overflowing_weights(tmp_path / "overflow.pth")
    coll = make_collection(tmp_path / "c.parquet", photo_dir, GOOD[:2])
    cfg = _cfg(coll, tmp_path / "store", random_init=False, weights=str(weights))
    summary = run_extract(cfg)
    assert (summary.processed, summary.failed) == (0, 2)  # was (2, 2): "4 of 2"
    assert all("store:" in f["reason"] and "not finite" in f["reason"] for f in summary.failures)


@pytest.mark.ray
@pytest.mark.slow
def test_each_part_records_the_worker_shape_and_inspect_shows_it(tmp_path, six_collection, ray_local):
    from typer.testing import CliRunner

    from pipeline.cli import app

    out = tmp_path / "store"
    run_extract(_cfg(six_collection, out, part_size=4))
    parts = json.loads((out / "manifest.json").read_text())["parts"]
    assert len(parts) == 2
    for part in parts:
        assert part["workers"] == [{"device": "cpu", "threads": 2, "host": socket.gethostname()}]
    result = CliRunner().invoke(app, ["store", "inspect", str(out), "--out", str(tmp_path / "i.json")])
    assert result.exit_code == 0, result.output
    assert f"cpu × 2 threads @ {socket.gethostname()}" in result.output
    doc = json.loads((tmp_path / "i.json").read_text())
    assert doc["worker_shapes"] == [{"device": "cpu", "threads": 2, "host": socket.gethostname(),
                                      "parts": 2}]

    # a manifest from before the field still opens and inspects
    manifest = json.loads((out / "manifest.json").read_text())
    for part in manifest["parts"]:
        del part["workers"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert len(store_contents(out)) == len(SIX)
    result = CliRunner().invoke(app, ["store", "inspect", str(out)])
    assert result.exit_code == 0, result.output
    assert "not recorded" in result.output


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_while_ray_starts_is_one_line_too(tmp_path, six_collection, sig, code):
    """A stop signal while ``ray.init`` is starting the embedded Ray: for SIGTERM that is Ray's own
    handler (``sys.exit(15)``), which used to end the run with exit 15 and no word. The signal is
    sent as soon as Ray's session directory appears (RAY_TMPDIR points it into a short fresh directory), before
    the driver has finished starting Ray (it prints "Ray logs:" after)."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths < 108 bytes
    out = tmp_path / "store"
    cmd = [sys.executable, "-m", "pipeline", "extract", str(six_collection), "--out", str(out), *TINY_CLI,
           "--batch-size", "2", "--part-size", "2", "--num-cpus", "2"]
    env = {k: v for k, v in ENV.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": str(ray_tmp)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list(ray_tmp.glob("ray/session_2*")):
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "Ray never started"
            time.sleep(0.02)
        os.killpg(proc.pid, sig) if sig == signal.SIGINT else os.kill(proc.pid, sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    text = stdout + stderr
    assert "Ray logs" not in text, "the signal came after Ray had started: the test did not hit its window"
    assert proc.returncode == code, text[-3000:]
    assert "Traceback" not in text and "***" not in text, text[-3000:]
    assert stderr.strip().splitlines()[-1] == "interrupted: 0 images committed; rerun the same command to resume"


@pytest.mark.ray
@pytest.mark.slow
def test_a_local_ray_that_cannot_start_is_one_line(tmp_path, six_collection):
    """ray.init failing (here: RAY_TMPDIR so deep that Ray's Unix socket paths exceed 107 bytes)
    ends with one line naming the cause and what to do, exit 1, not Ray's traceback."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    cmd = [sys.executable, "-m", "pipeline", "extract", str(six_collection), "--out", str(tmp_path / "store"),
           *TINY_CLI, "--batch-size", "2", "--num-cpus", "2"]
    env = {k: v for k, v in ENV.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": str(deep)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: could not start a local Ray (") and "108 bytes" in line and "--address" in line, line
