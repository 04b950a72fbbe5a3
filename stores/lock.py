"""One writer per store: ``<store>/writer.lock``, held with an OS advisory lock while a store is written.

The region store writer (``extract``, ``store import``, ``store convert``) and the caption store
writer (``tokenize``) take it before they touch anything in the directory; readers, ``store
verify`` and exports never do. The lock is ``fcntl.flock`` on the file, so the kernel releases it
when the holder exits in any way (crash, kill -9); the file's content (JSON: host, pid, command,
since) only serves the messages.

Crash semantics:

* A second writer fails at once with :class:`StoreLockedError` naming the holder (host, pid, since
  when, command) and what to do; it never waits and never touches the store.
* A clean release deletes the file (while still holding the lock). A file found with its lock free
  was left by a writer that died; on this host it is taken over with one warning line. One that
  names another host is refused (its process cannot be checked from here, and network filesystems
  may not carry flock between hosts): the message says to delete the file if that writer is gone.
* Where the filesystem refuses flock (ENOLCK / EOPNOTSUPP), the file's content decides: a live pid
  on this host holds the store, a dead one is taken over.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from itmflow.errors import StoreLockedError
from stores.schema import LOCK_NAME


def _warn_stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Holder:
    """Who a lock file says holds (or held) the store."""

    host: str = "?"
    pid: int = 0
    command: str = ""
    since: str = "?"

    @classmethod
    def parse(cls, text: str) -> "Holder | None":
        try:
            doc = json.loads(text)
            return cls(host=str(doc.get("host", "?")), pid=int(doc.get("pid", 0)),
                       command=str(doc.get("command", "")), since=str(doc.get("since", "?")))
        except (ValueError, TypeError, AttributeError):
            return None

    def describe(self) -> str:
        cmd = f" ({self.command})" if self.command else ""
        return f"pid {self.pid} on host {self.host} since {self.since}{cmd}"


def this_host() -> str:
    return socket.gethostname()


def pid_alive(pid: int) -> bool:
    """True when a process ``pid`` exists on this host (a zombie counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StoreLock:
    """The writer lock of the store directory ``directory`` (which must exist).

    ``acquire()`` takes it or raises :class:`StoreLockedError`; ``release()`` deletes the file and
    drops the lock (idempotent). Use as a context manager. ``took_over`` is the :class:`Holder` of a
    stale lock that was taken over (None otherwise); ``warn`` receives that one-line message
    (default: ``warning: ...`` on stderr).
    """

    def __init__(self, directory: str | os.PathLike[str], *,
                 warn: Callable[[str], None] | None = None) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.warn = warn or _warn_stderr
        self.took_over: Holder | None = None
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "StoreLock":
        if self._fd is not None:
            return self
        for _ in range(100):  # retried only while a releasing holder deletes the file under us
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                flocked = self._flock(fd)
                try:
                    same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                except FileNotFoundError:
                    same_file = False
                if not same_file:
                    os.close(fd)
                    continue
                previous = Holder.parse(_read_fd(fd)) if os.fstat(fd).st_size else None
                if previous is not None and (previous.host, previous.pid) != (this_host(), os.getpid()):
                    self._judge_previous(previous, flocked)
                _write_record(fd)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            return self
        raise StoreLockedError(f"{self.path}: the lock file keeps being replaced by another process; "
                               "make sure only one command writes this store and rerun")

    def _flock(self, fd: int) -> bool:
        """True when flock holds; False where the filesystem has no flock; raises when held elsewhere."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                holder = self._read_holder()
                who = holder.describe() if holder else "another process (its lock file names no holder yet)"
                if holder and holder.host == this_host() and not pid_alive(holder.pid):
                    who += ", which has exited, but a process it started still holds the lock: stop that one"
                raise StoreLockedError(
                    f"{self.directory} is being written by {who}; one writer per store: wait for it to "
                    f"finish (or stop it) and rerun, or write to another directory") from None
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return False
            raise

    def _judge_previous(self, previous: Holder, flocked: bool) -> None:
        """A record from another process, found with the flock free (or without flock support)."""
        if previous.host != this_host():
            raise StoreLockedError(
                f"{self.directory} was being written by {previous.describe()}; that writer cannot be "
                f"checked from host {this_host()}: if it is no longer running, delete {self.path} and rerun")
        if not flocked and pid_alive(previous.pid):
            raise StoreLockedError(
                f"{self.directory} is being written by {previous.describe()} (this filesystem has no "
                "flock; the pid is alive): wait for it to finish and rerun, or write to another directory")
        self.took_over = previous
        self.warn(f"{self.path}: taking over the lock left by {previous.describe()}, which is no longer "
                  "running; its unfinished commit is cleaned up, committed parts are kept")

    def _read_holder(self) -> Holder | None:
        for _ in range(5):  # the holder may be between truncating and writing its record
            try:
                holder = Holder.parse(self.path.read_text(encoding="utf-8"))
            except OSError:
                holder = None
            if holder is not None:
                return holder
            time.sleep(0.01)
        return None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            try:
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    os.unlink(self.path)  # still holding the flock: no one can have taken it
            except FileNotFoundError:
                pass
        finally:
            os.close(fd)

    def __enter__(self) -> "StoreLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def read_lock(directory: str | os.PathLike[str]) -> Holder | None:
    """The holder a store's lock file names (None when there is no lock file); takes no lock."""
    path = Path(directory) / LOCK_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        return Holder()
    return Holder.parse(text) or Holder()


def _read_fd(fd: int) -> str:
    return os.pread(fd, 1 << 16, 0).decode("utf-8", errors="replace")


def _write_record(fd: int) -> None:
    record: dict[str, Any] = {
        "host": this_host(), "pid": os.getpid(),
        "command": _command_line(),
        "since": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
    }
    data = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _command_line() -> str:
    argv = list(sys.argv)
    if argv and argv[0]:
        argv[0] = os.path.basename(argv[0])
    text = shlex.join(argv)
    return text if len(text) <= 200 else text[:197] + "..."
