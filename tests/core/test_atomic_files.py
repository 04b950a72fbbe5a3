"""itmflow.files.atomic_path: the one way every package writes a file atomically."""

from __future__ import annotations

import errno
import os

import pytest

import itmflow.files as files_mod
from itmflow.files import atomic_path, atomic_write_bytes, atomic_write_json, commit_temp, temp_path_for


def _listing(directory) -> list[str]:
    return sorted(os.listdir(directory))


def test_target_replaced_only_on_success(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name == f".out.bin.tmp-{os.getpid()}"
        tmp.write_bytes(b"new")
        assert target.read_bytes() == b"old"  # nothing visible until the block ends
    assert target.read_bytes() == b"new"
    assert _listing(tmp_path) == ["out.bin"]


def test_new_file_created(tmp_path):
    target = tmp_path / "fresh.txt"
    with atomic_path(target) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write("hello\n")
    assert target.read_text("utf-8") == "hello\n"
    assert _listing(tmp_path) == ["fresh.txt"]


@pytest.mark.parametrize("durable", [True, False])
def test_error_removes_temp_and_keeps_old_file(tmp_path, durable):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(ValueError, match="half way"):
        with atomic_path(target, durable=durable) as tmp:
            tmp.write_bytes(b"half a fi")
            raise ValueError("half way")
    assert target.read_bytes() == b"old"
    assert _listing(tmp_path) == ["out.bin"]


def test_interrupt_removes_temp_and_no_target_appears(tmp_path):
    target = tmp_path / "never.bin"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise KeyboardInterrupt
    assert _listing(tmp_path) == []


def test_disk_full_during_commit_removes_temp(tmp_path, monkeypatch):
    """A full disk surfacing at fsync (delayed allocation) still leaves no temp file and the old
    file intact; the error keeps its errno for disk_full_reason."""
    target = tmp_path / "manifest.json"
    target.write_bytes(b"{}")

    def no_room(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files_mod.os, "fsync", no_room)
    with pytest.raises(OSError) as info:
        atomic_write_json(target, {"a": 1})
    assert files_mod.disk_full_reason(info.value) == os.strerror(errno.ENOSPC)
    assert target.read_bytes() == b"{}"
    assert _listing(tmp_path) == ["manifest.json"]


def test_body_that_writes_nothing_fails_and_keeps_old_file(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(FileNotFoundError):
        with atomic_path(target):
            pass
    assert target.read_bytes() == b"old"
    assert _listing(tmp_path) == ["out.bin"]


@pytest.mark.parametrize("durable", [True, False])
def test_durable_fsyncs_file_and_directory(tmp_path, monkeypatch, durable):
    calls: list[str] = []
    real_fsync = files_mod.os.fsync

    def spy(fd):
        calls.append("dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "file")
        return real_fsync(fd)

    monkeypatch.setattr(files_mod.os, "fsync", spy)
    with atomic_path(tmp_path / "x", durable=durable) as tmp:
        tmp.write_bytes(b"x")
    assert calls == (["file", "dir"] if durable else [])
    assert (tmp_path / "x").read_bytes() == b"x"


def test_write_helpers_and_split_commit(tmp_path):
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    atomic_write_json(tmp_path / "b.json", {"z": 1, "a": [1, 2]})
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.json").read_text("utf-8") == '{\n  "a": [\n    1,\n    2\n  ],\n  "z": 1\n}\n'
    # The split form (a file created in one place, finished in another) commits the same way.
    tmp = temp_path_for(tmp_path / "c.bin")
    tmp.write_bytes(b"c")
    commit_temp(tmp, tmp_path / "c.bin")
    assert (tmp_path / "c.bin").read_bytes() == b"c"
    assert _listing(tmp_path) == ["a.bin", "b.json", "c.bin"]
