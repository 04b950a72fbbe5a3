"""One writer per store (``writer.lock``), in real processes: a second writer fails at once naming
the holder, a dead writer's lock is taken over, the CLI prints one line."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from itmflow.errors import StoreLockedError
from tests._support.store_fixtures import DETECTOR, FIXED, make_rows, write_store
from stores import RegionStoreWriter, open_region_store
from stores.captions import read_caption_store, write_caption_store
from stores.lock import StoreLock, read_lock
from stores.schema import LOCK_NAME
from stores.verify import verify_store

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

# A writer in its own process: commits ids 0..4 (two parts), says "ready" and holds the store until
# its stdin closes (or it is killed), then writes ids 5..6 and closes.
HOLDER = """
import sys
from tests._support.store_fixtures import DETECTOR, FIXED, make_rows
from stores import RegionStoreWriter
rows = make_rows(7, dim=64, prefix="a")
w = RegionStoreWriter(sys.argv[1], feature_dim=64, region_policy=FIXED, detector=DETECTOR, rows_per_part=3)
for r in rows[:5]:
    w.add(r)
w.commit(); w.wait()
print("ready", flush=True)
sys.stdin.read()
for r in rows[5:]:
    w.add(r)
w.close()
print("closed", flush=True)
"""


def start_holder(store: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(store)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    line = proc.stdout.readline()
    assert line.strip() == "ready", proc.stderr.read()
    return proc


def test_second_writer_fails_at_once_naming_the_holder(tmp_path):
    store = tmp_path / "s"
    holder = start_holder(store)
    try:
        assert (store / LOCK_NAME).is_file()
        rows = make_rows(3, dim=64, prefix="b")
        start = time.perf_counter()
        with pytest.raises(StoreLockedError) as info:
            RegionStoreWriter(store, feature_dim=64, region_policy=FIXED, detector=DETECTOR)
        assert time.perf_counter() - start < 2.0  # at once, no waiting
        message = str(info.value)
        assert "\n" not in message
        assert str(store) in message and f"pid {holder.pid}" in message
        assert socket.gethostname() in message and "since" in message and "wait for it" in message
        # the caption store writer honours the same lock
        with pytest.raises(StoreLockedError, match=f"pid {holder.pid}"):
            write_caption_store(store, [{"caption_id": "c", "image_id": "a", "split": "val", "raw": "x"}], {})
        # readers and verify never take the lock; verify says a writer is at work
        assert len(open_region_store(store)) == 5
        report = verify_store(store)
        assert report.ok and report.rows_checked == 5
        assert any(f == LOCK_NAME and f"pid {holder.pid}" in m for f, m in report.warnings)
        # the refused writer touched nothing: the holder finishes its run
        holder.stdin.close()
        assert holder.wait(timeout=60) == 0, holder.stderr.read()
    finally:
        holder.kill()
        holder.wait()
    assert not (store / LOCK_NAME).exists()  # a clean close removes the lock file
    assert sorted(open_region_store(store).ids()) == [f"a{i:04d}" for i in range(7)]
    with RegionStoreWriter(store, feature_dim=64, region_policy=FIXED, detector=DETECTOR) as writer:
        for row in rows:
            writer.add(row)
    assert len(open_region_store(store)) == 10
    assert verify_store(store).ok and not verify_store(store).warnings


def test_lock_of_a_killed_writer_is_taken_over(tmp_path, capsys):
    store = tmp_path / "s"
    holder = start_holder(store)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    stale = read_lock(store)
    assert stale is not None and stale.pid == holder.pid  # the file outlives the process
    report = verify_store(store)
    assert report.ok and any(f == LOCK_NAME and "no longer running" in m for f, m in report.warnings)

    writer = RegionStoreWriter(store, feature_dim=64, region_policy=FIXED, detector=DETECTOR)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: ")
    assert f"pid {holder.pid}" in err and "no longer running" in err
    assert writer.lock.took_over is not None and writer.lock.took_over.pid == holder.pid
    assert read_lock(store).pid == os.getpid()
    assert writer.committed_ids() == {f"a{i:04d}" for i in range(5)}  # committed parts kept
    with writer:
        for row in make_rows(7, dim=64, prefix="a")[5:]:
            writer.add(row)
    assert len(open_region_store(store)) == 7 and not (store / LOCK_NAME).exists()


def test_lock_naming_another_host_is_refused_with_what_to_do(tmp_path):
    store = write_store(tmp_path / "s", make_rows(2, dim=64), rows_per_part=2)
    (store / LOCK_NAME).write_text(json.dumps({"host": "elsewhere-42", "pid": 1234, "since": "2024-01-01T00:00"}))
    with pytest.raises(StoreLockedError, match=r"pid 1234 on host elsewhere-42.*delete .*writer\.lock"):
        RegionStoreWriter(store, feature_dim=64, region_policy=FIXED, detector=DETECTOR)
    assert (store / LOCK_NAME).exists()  # not ours to remove
    (store / LOCK_NAME).unlink()
    RegionStoreWriter(store, feature_dim=64, region_policy=FIXED, detector=DETECTOR).close()


def test_lock_is_released_when_opening_fails(tmp_path):
    store = write_store(tmp_path / "s", make_rows(2, dim=64), rows_per_part=2)
    with pytest.raises(Exception, match="other settings"):
        RegionStoreWriter(store, feature_dim=64, feature_dtype="float32", region_policy=FIXED, detector=DETECTOR)
    assert not (store / LOCK_NAME).exists()
    with StoreLock(store) as lock:
        assert lock.held and read_lock(store).pid == os.getpid()
    assert not (store / LOCK_NAME).exists()


def test_caption_store_writer_takes_the_lock(tmp_path):
    out = tmp_path / "c"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from stores.lock import StoreLock; l = StoreLock(sys.argv[1]).acquire(); "
         "print('ready', flush=True); sys.stdin.read()", str(out)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "ready"
        rows = [{"caption_id": "c1", "image_id": "i1", "split": "train", "raw": "a dog"}]
        with pytest.raises(StoreLockedError, match=f"pid {holder.pid}"):
            write_caption_store(out, rows, {})
        assert not (out / "captions.parquet").exists()
        holder.stdin.close()
        holder.wait(timeout=30)
    finally:
        holder.kill()
        holder.wait()
    (out / ".captions.parquet.tmp-99999").write_bytes(b"half a file")  # a crashed writer's temp file
    write_caption_store(out, rows, {})
    assert read_caption_store(out)[0].num_rows == 1
    assert sorted(os.listdir(out)) == ["captions.parquet", "manifest.json"]


def test_cli_second_writer_prints_one_line_and_exits_1(tmp_path):
    src = write_store(tmp_path / "src", make_rows(3, dim=64), rows_per_part=2)
    dst = tmp_path / "dst"
    holder = start_holder(dst)
    try:
        res = subprocess.run([sys.executable, "-m", "pipeline.cli", "store", "convert", str(src), str(dst),
                              "--to", "hdf5"], capture_output=True, text=True, env=ENV, timeout=120)
    finally:
        holder.kill()
        holder.wait()
    assert res.returncode == 1, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert lines[0].startswith("error: ") and str(dst) in lines[0] and f"pid {holder.pid}" in lines[0]
