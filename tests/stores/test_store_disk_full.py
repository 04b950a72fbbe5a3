"""A full disk mid-write, for real: a file-size limit (EFBIG) in a child process, and a small tmpfs
(ENOSPC). The writer raises DiskFullError naming the store and the committed count, keeps every
committed image, leaves no temp files, and the same run resumes."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from itmflow.errors import DiskFullError
from tests._support.store_fixtures import DETECTOR, FIXED, make_rows, write_store
from stores import RegionStoreWriter, open_region_store
from stores.schema import LOCK_NAME
from stores.verify import verify_store

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
N = 30
LIMIT = 100_000  # bytes per file: 2-row parts fit, a 26-row part does not; a padded manifest does not

# Commits 4 rows in 2-row parts, then lowers RLIMIT_FSIZE (SIGXFSZ ignored, so write() fails with
# EFBIG) and goes on: mode "part" puts the other 26 rows in one part that cannot fit; mode "manifest"
# keeps 2-row parts but pads the manifest past the limit, so the manifest rewrite fails.
CHILD = """
import json, resource, signal, sys
from itmflow.errors import DiskFullError
from tests._support.store_fixtures import DETECTOR, FIXED, make_rows
from stores import RegionStoreWriter
store, storage, mode, limit = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
rows = make_rows(%d, dim=64)
extra = {"pad": "x" * (limit + 20000)} if mode == "manifest" else None
try:
    with RegionStoreWriter(store, storage=storage, feature_dim=64, region_policy=FIXED, detector=DETECTOR,
                           rows_per_part=2, extra=extra) as writer:
        for row in rows[:4]:
            writer.add(row)
        writer.wait()
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        if mode == "part":
            writer.rows_per_part = 100
        for row in rows[4:]:
            writer.add(row)
except DiskFullError as exc:
    print(json.dumps({"message": str(exc)}))
    sys.exit(3)
""" % N


@pytest.mark.parametrize("storage", ["parquet", "hdf5"])
@pytest.mark.parametrize("mode", ["part", "manifest"])
def test_file_size_limit_mid_write_is_a_clear_error_and_resumes(tmp_path, storage, mode):
    store = tmp_path / "s"
    res = subprocess.run([sys.executable, "-c", CHILD, str(store), storage, mode, str(LIMIT)],
                         capture_output=True, text=True, env=ENV, timeout=120)
    assert res.returncode == 3, res.stdout + res.stderr
    message = json.loads(res.stdout)["message"]
    assert "\n" not in message
    assert message.startswith(f"{store}: the disk is full (File too large)")
    assert "4 image(s) are committed" in message and "rerun the same command" in message
    # nothing committed is lost, nothing temporary is left, the lock was released
    assert sorted(open_region_store(store).ids()) == [f"img{i:04d}" for i in range(4)]
    leftovers = [n for n in os.listdir(store) + os.listdir(store / "data") if n.startswith(".") or n == LOCK_NAME]
    assert leftovers == []
    # the same run again (no limit) resumes after the committed images
    rows = make_rows(N, dim=64)
    with RegionStoreWriter(store, storage=storage, feature_dim=64, region_policy=FIXED, detector=DETECTOR,
                           rows_per_part=2) as writer:
        done = writer.committed_ids()
        assert done == {f"img{i:04d}" for i in range(4)}
        for row in rows:
            if row["image_id"] not in done:
                writer.add(row)
    report = verify_store(store)
    assert report.ok and report.rows_checked == N and not report.warnings, report.to_dict()


def test_store_left_with_a_temp_manifest_opens_cleanly_and_resumes(tmp_path):
    rows = make_rows(6, dim=64)
    store = write_store(tmp_path / "s", rows[:4], rows_per_part=2)
    # what a crash (or an old writer hitting a full disk) leaves: a half temp manifest and a temp part
    (store / ".manifest.json.tmp-424242").write_text('{"format": "itmflow.regions", "parts": [')
    (store / "data/.part-00002.parquet.tmp-424242").write_bytes(b"PAR1 half")
    assert len(open_region_store(store)) == 4  # readers ignore both
    report = verify_store(store)
    assert report.ok
    assert {f for f, _ in report.warnings} == {".manifest.json.tmp-424242", "data/.part-00002.parquet.tmp-424242"}
    with RegionStoreWriter(store, feature_dim=64, region_policy=FIXED, detector=DETECTOR, rows_per_part=2) as writer:
        assert sorted(writer.removed_debris) == [".manifest.json.tmp-424242", "data/.part-00002.parquet.tmp-424242"]
        for row in rows[4:]:
            writer.add(row)
    assert sorted(os.listdir(store / "data")) == ["part-00000.parquet", "part-00001.parquet",
                                         "part-00002.parquet"]
    report = verify_store(store)
    assert report.ok and report.rows_checked == 6 and not report.warnings


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs (needs root / CAP_SYS_ADMIN to mount)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True,
                         text=True)
    if res.returncode != 0:
        pytest.skip(f"needs permission to mount a small tmpfs (mount said: {res.stderr.strip()})")
    try:
        yield mnt
    finally:
        gc.collect()  # readers a failed assertion left open
        if subprocess.run(["umount", str(mnt)]).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=True)


@pytest.mark.parametrize("storage", ["parquet", "hdf5"])
def test_no_space_left_on_a_full_tmpfs(small_tmpfs, storage):
    store = small_tmpfs / "s"
    rows = make_rows(68, dim=256)  # ~37 KB of features per row: 8 rows fit, 68 do not
    writer = RegionStoreWriter(store, storage=storage, feature_dim=256, region_policy=FIXED, detector=DETECTOR,
                               rows_per_part=4)
    for row in rows[:8]:
        writer.add(row)
    writer.wait()
    writer.rows_per_part = 1000
    for row in rows[8:]:
        writer.add(row)
    with pytest.raises(DiskFullError) as info:
        writer.close()
    message = str(info.value)
    assert message.startswith(f"{store}: the disk is full (No space left on device)")
    assert "8 image(s) are committed" in message
    assert sorted(os.listdir(store / "data")) == ["part-00000" + (".parquet" if storage == "parquet"
                                                                          else ".h5"),
                                         "part-00001" + (".parquet" if storage == "parquet" else ".h5")]
    with open_region_store(store) as reader:
        assert len(reader) == 8
    subprocess.run(["mount", "-o", "remount,size=16m", str(small_tmpfs)], check=True)
    with RegionStoreWriter(store, storage=storage, feature_dim=256, region_policy=FIXED, detector=DETECTOR,
                           rows_per_part=16) as resumed:
        for row in rows:
            if row["image_id"] not in resumed.committed_ids():
                resumed.add(row)
    assert verify_store(store).ok
    with open_region_store(store) as reader:
        assert len(reader) == 68
