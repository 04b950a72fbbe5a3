"""File helpers shared by every package: hashing, atomic writes and root-confined paths."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from itmflow.errors import UnsafePathError

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of a byte string."""
    return hashlib.sha256(data).hexdigest()


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a directory entry so a rename inside it survives a power cut (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_path_for(target: str | os.PathLike[str]) -> Path:
    """The temporary name :func:`atomic_path` writes ``target`` under: ``.<name>.tmp-<pid>`` in the
    same directory (hidden, on the same file system, recognisable as debris after a crash)."""
    path = Path(target)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def commit_temp(tmp: str | os.PathLike[str], target: str | os.PathLike[str], *, durable: bool = True) -> None:
    """Rename the complete file ``tmp`` over ``target``.

    ``durable``: fsync the file before the rename and the directory after it, so the new file
    survives a power cut. Without it the rename is still atomic for readers and against a crash
    of the process, but the operating system may lose it (or write it empty) on a power cut.
    For writers whose file is created in one place and finished in another (a memmap filled by
    its caller); everything else uses :func:`atomic_path`.
    """
    if durable:
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
    os.replace(tmp, target)
    if durable:
        fsync_dir(Path(target).parent)


@contextmanager
def atomic_path(target: str | os.PathLike[str], *, durable: bool = True) -> Iterator[Path]:
    """Write ``target`` atomically: readers see the old file or the new one, never a half file.

    ``with atomic_path(target) as tmp:`` yields a temporary path in the same directory
    (:func:`temp_path_for`); the body writes the complete file there. On a clean exit the file is
    fsynced, renamed over ``target`` and the directory fsynced (:func:`commit_temp`); on an
    exception (also KeyboardInterrupt, and a failure of the fsync or rename) the temporary file
    is removed — a full disk must not leave a half file behind — ``target`` is left as it was and
    the exception propagates.

    ``durable=False`` skips both fsyncs: for exports of many small files (one per image), where
    an fsync each would dominate the time and a rerun rewrites what a power cut lost.
    """
    tmp = temp_path_for(target)
    try:
        yield tmp
        commit_temp(tmp, target, durable=durable)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomically write ``obj`` as indented, key-sorted JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


#: errno values that mean "no room to write": disk full, quota exceeded, file-size limit reached.
DISK_FULL_ERRNOS: frozenset[int] = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_DISK_FULL_TEXTS = tuple(os.strerror(e) for e in sorted(DISK_FULL_ERRNOS))


def disk_full_reason(exc: BaseException) -> str | None:
    """The strerror text (``"No space left on device"``) when ``exc`` or an exception it was raised
    from failed for lack of room (ENOSPC, EDQUOT, EFBIG); None otherwise.

    Libraries do not always set ``errno`` (libhdf5 errors reach Python as text), so the message is
    searched for the system's wording too.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return os.strerror(exc.errno)
        text = str(exc)
        for phrase in _DISK_FULL_TEXTS:
            if phrase in text:
                return phrase
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return None


def check_relative(rel: str, *, what: str = "path") -> str:
    """Return ``rel`` normalised to POSIX form, refusing absolute paths and ``..`` components.

    ``what`` names the field for the error message (e.g. ``"file in captions.jsonl line 3"``).
    """
    text = str(rel).replace("\\", "/")
    pure = PurePosixPath(text)
    if not text or pure.is_absolute() or (len(text) > 1 and text[1] == ":"):
        raise UnsafePathError(
            f"{what} {rel!r} is absolute or empty; paths must be relative to the collection root"
        )
    if any(part == ".." for part in pure.parts):
        raise UnsafePathError(
            f"{what} {rel!r} escapes the collection root with '..'; move the file under the root"
        )
    return str(pure)


def safe_join(root: str | os.PathLike[str], rel: str, *, what: str = "path") -> Path:
    """Join ``rel`` under ``root`` and make sure the result (symlinks resolved) stays inside it."""
    clean = check_relative(rel, what=what)
    root_path = Path(root).resolve()
    joined = (root_path / clean).resolve()
    if joined != root_path and root_path not in joined.parents:
        raise UnsafePathError(f"{what} {rel!r} resolves outside the collection root {root_path}")
    return joined
