"""`ray job submit … -- itmflow extract …` against a local `ray start --head` cluster."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests._support.extract_support import GOOD, TINY_CLI, make_collection, store_contents

pytestmark = [pytest.mark.ray, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_dashboard(port: int, head: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert head.poll() is None, "ray start --head exited early"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise AssertionError("the Ray dashboard (jobs API) never came up")


def test_ray_job_submit_runs_extract_on_a_cluster(tmp_path, photo_dir):
    bindir = Path(sys.executable).parent
    coll = make_collection(tmp_path / "c.parquet", photo_dir, GOOD[:2])
    out = tmp_path / "store"
    # a short private temp dir: Ray's sockets must fit in 107 bytes, and the head must not become
    # "the latest cluster on this machine" that a plain ray.init() elsewhere would attach to
    temp = tempfile.mkdtemp(prefix="rayh", dir="/tmp")
    gcs, dash = _free_port(), _free_port()
    # every fixed-port agent gets a free port: the session's embedded Ray (or anyone else's) may
    # hold Ray's defaults, and a job agent that cannot bind never accepts the job (measured)
    agents = [f"--dashboard-agent-listen-port={_free_port()}",
              f"--dashboard-agent-grpc-port={_free_port()}",
              f"--runtime-env-agent-port={_free_port()}", f"--metrics-export-port={_free_port()}",
              f"--ray-client-server-port={_free_port()}"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "OMP_NUM_THREADS": "1"}
    head = subprocess.Popen(
        [str(bindir / "ray"), "start", "--head", "--block", f"--port={gcs}", "--num-cpus=2",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         f"--temp-dir={temp}", "--disable-usage-stats", *agents],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        _wait_for_dashboard(dash, head)
        # the entrypoint runs under the cluster's PATH: name our interpreter's itmflow explicitly
        submit = [str(bindir / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dash}",
                  "--", str(bindir / "itmflow"), "extract", str(coll), "--out", str(out),
                  *TINY_CLI, "--batch-size", "2"]
        # The dashboard's port accepts connections before its HTTP server answers (seen: the
        # submission dropped with "Remote end closed connection"), and the job agent registers a
        # little after the dashboard: both are start-up races, retried; a real failure is not.
        not_ready = ("No available agent", "ConnectionError", "Connection aborted", "Connection refused")
        for _ in range(20):
            job = subprocess.run(submit, env=env, cwd=tmp_path, capture_output=True, text=True,
                                 timeout=400)
            if not any(sign in job.stdout + job.stderr for sign in not_ready):
                break
            time.sleep(2)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "succeeded" in job.stdout + job.stderr
        assert [r[0] for r in store_contents(out)] == [Path(f).stem for f in GOOD[:2]]
    finally:
        _stop_cluster(head)
        shutil.rmtree(temp, ignore_errors=True)


def _descendants(pid: int) -> list[int]:
    """Process ids started (directly or not) by ``pid``, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _stop_cluster(head: subprocess.Popen) -> None:
    """Stop the head we started and every process it started (the job supervisor and the job's
    driver live in process groups of their own), by process id only."""
    started = _descendants(head.pid)
    os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` stops its cluster on SIGTERM
    try:
        head.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
    for pid in started:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
