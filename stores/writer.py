"""RegionStoreWriter: append rows to a region store in atomically committed parts, and resume.

Commit protocol (design.md, store contract v1): the pending rows are written to
``.part-NNNNN.<ext>.tmp-<pid>``, fsynced while a second thread hashes it (sha256), renamed to
``part-NNNNN.<ext>``, the directory is fsynced, and only then is ``manifest.json`` rewritten
atomically. A crash at any point leaves either the old manifest (the new part is debris, removed on
resume) or the new one; committed parts are never touched again.

One writer per store: the writer holds ``<store>/writer.lock`` (stores/lock.py) from opening to
:meth:`RegionStoreWriter.close`; a second writer fails at once. A full disk (ENOSPC, EDQUOT, EFBIG)
during a commit raises :class:`DiskFullError` naming the store and the committed count; the failed
part's temp file is removed at once (after a crash: by the next open), and rerunning the same
command resumes.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import threading
from pathlib import Path
from typing import Any, Callable, Mapping

from itmflow.errors import DiskFullError, StoreCorruptError, StoreError
from itmflow.files import disk_full_reason, fsync_dir, sha256_file, temp_path_for
from stores import hdf5_part, parquet_part
from stores.block import Block
from stores.lock import StoreLock
from stores.manifest import load_manifest, manifest_path, new_manifest, save_manifest, settings_mismatch
from stores.schema import (DATA_DIR, FAILURES_NAME, MANIFEST_NAME, SCHEMA_VERSION, RegionPolicy, StoreSettings,
                           is_part_name, is_temp_name, part_file, part_name, parts_dir, validate_row)

DEFAULT_ROWS_PER_PART = 512


def write_part_file(directory: Path, name: str, produce: Callable[[Path], None]) -> tuple[str, int]:
    """Let ``produce(tmp)`` write a complete file, then fsync, hash, rename it to ``directory/name``."""
    return finish_part_file(directory, produce_part_file(directory, name, produce), name)


def produce_part_file(directory: Path, name: str, produce: Callable[[Path], None]) -> Path:
    """Let ``produce(tmp)`` write the part under its temporary name; returns that path.

    This and :func:`finish_part_file` are the two halves of :func:`itmflow.files.atomic_path`
    (same temporary name, same removal on error), kept apart because a commit runs them in two
    threads: the part is written in the caller's thread and finished in the background.
    """
    tmp = temp_path_for(directory / name)
    try:
        produce(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def finish_part_file(directory: Path, tmp: Path, name: str) -> tuple[str, int]:
    """fsync and hash the written ``tmp``, rename it to ``directory/name``, fsync the directory.

    The sha256 is computed (from the page cache) in a second thread while this one waits
    for fsync: both release the GIL, so hashing costs no wall time when the disk is the bottleneck.
    That overlap (and the size read between fsync and rename) is why this does not use
    :func:`itmflow.files.commit_temp`; the durability is the same (file fsynced, renamed,
    directory fsynced). A failed fsync or hash removes the temporary file at once; one left by a
    crash is debris that the next open removes.
    """
    result: dict[str, Any] = {}

    def hash_it() -> None:
        try:
            result["sha"] = sha256_file(tmp)
        except BaseException as exc:  # re-raised in the committing thread
            result["error"] = exc

    try:
        hasher = threading.Thread(target=hash_it, name="part-sha256")
        hasher.start()
        try:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        finally:
            hasher.join()
        if "error" in result:
            raise result["error"]
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    size = tmp.stat().st_size
    os.replace(tmp, directory / name)
    fsync_dir(directory)
    return result["sha"], size


class RegionStoreWriter:
    """Writes rows to ``path``; opening an existing store resumes it.

    Resume removes debris (part files the manifest does not name, temporary files), refuses when
    the settings differ from the manifest (naming each differing field), and skips nothing by
    itself: ask :meth:`committed_ids` and do not add those images again (adding one raises).
    Rows are validated by :func:`stores.schema.validate_row`; a part is committed whenever
    ``rows_per_part`` rows are pending, and on :meth:`commit` / :meth:`close` / leaving a ``with``.
    ``absent_fields`` lists per-region fields the source does not have (imported features).

    A commit writes the part file in the calling thread and leaves the rest (fsync, sha256, rename,
    manifest) to a background thread, so hashing one part overlaps with validating and encoding
    the next (measured: ~100 ms of a 147 MB part's ~200 ms). One part is finished at a time, in
    order; :meth:`close` (and :meth:`wait`) returns once everything is durable, and an error of a
    background commit is raised by the next :meth:`commit`, :meth:`wait` or :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike[str], *, storage: str = "parquet", feature_dim: int = 2048,
                 feature_dtype: str = "float16", region_policy: RegionPolicy | Mapping[str, Any] | None = None,
                 detector: Mapping[str, Any] | None = None, rows_per_part: int = DEFAULT_ROWS_PER_PART,
                 extra: Mapping[str, Any] | None = None, absent_fields: tuple[str, ...] | list[str] = (),
                 row_group_rows: int | None = None, schema_version: int = SCHEMA_VERSION) -> None:
        self.path = Path(path)
        #: Layout of a new store (2; 1 only to make old-layout stores in tests); an existing store
        #: keeps the version of its manifest (a v1 store is resumed as v1: `store convert` upgrades).
        self.version = schema_version
        self.settings = StoreSettings(storage=storage, feature_dim=feature_dim, feature_dtype=feature_dtype,
                                      region_policy=RegionPolicy.from_manifest(region_policy or RegionPolicy()),
                                      detector=_jsonable(dict(detector or {})),
                                      absent_fields=tuple(absent_fields))
        if rows_per_part < 1:
            raise StoreError(f"rows_per_part must be at least 1, got {rows_per_part}")
        self.rows_per_part = rows_per_part
        self.row_group_rows = row_group_rows
        self._pending: list[dict[str, Any]] = []
        self._pending_ids: set[str] = set()
        self._closed = False
        self._finishing: threading.Thread | None = None
        self._finishing_ids: dict[str, str] = {}  # ids of the part being finished -> its file
        self._finish_error: BaseException | None = None
        self._finish_file = ""
        #: Merged into the manifest entry of every part committed from now on (e.g. the worker
        #: shape that computed its rows); readers ignore keys they do not know.
        self.part_extra: dict[str, Any] = {}
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock = StoreLock(self.path).acquire()  # before anything in the directory is read or removed
        try:
            self._open(extra)
        except BaseException as exc:
            self.lock.release()
            full = self._disk_full(exc, MANIFEST_NAME)
            if full is None:
                raise
            raise full from exc

    def _open(self, extra: Mapping[str, Any] | None) -> None:
        self._committed: dict[str, str] = {}
        if manifest_path(self.path).exists():
            self.manifest = load_manifest(self.path)
            self.version = int(self.manifest["schema_version"])
            recorded = StoreSettings.from_manifest(self.manifest)
            diffs = settings_mismatch(recorded, self.settings)
            if diffs:
                raise StoreError(f"{self.path} was written with other settings (store -> this run); refusing "
                                 "to mix them in one store:\n  " + "\n  ".join(diffs) + "\nuse a new store "
                                 "directory or the store's settings")
        else:
            # A writer writes the manifest before its first part, so part files without a manifest
            # are not our crash debris (a deleted manifest?): refuse rather than delete data.
            strays = sorted(e for d in {self.path, parts_dir(self.path, 2)} if d.is_dir()
                            for e in os.listdir(d) if is_part_name(e))
            if strays:
                raise StoreError(f"{self.path} holds part files ({', '.join(strays[:3])}...) but no manifest.json; "
                                 "nothing was deleted. Restore the manifest or write to another directory")
            self.manifest = new_manifest(self.settings, _jsonable(dict(extra or {})), self.version)
        self.parts_dir = parts_dir(self.path, self.version)
        self.parts_dir.mkdir(exist_ok=True)
        self.removed_debris = self._remove_debris()
        self._committed = self._read_committed_ids()
        self._next_index = 1 + max((_part_index(p["file"]) for p in self.manifest["parts"]), default=-1)
        save_manifest(self.path, self.manifest)

    # -- resume -------------------------------------------------------------------------------------
    def _remove_debris(self) -> list[str]:
        """Remove part files the manifest does not name and temporary files (parts, manifest)."""
        named = {p["file"] for p in self.manifest["parts"]}
        removed = []
        for directory in sorted({self.path, self.parts_dir}):
            prefix = "" if directory == self.path else f"{DATA_DIR}/"
            gone = [e for e in sorted(os.listdir(directory))
                    if (is_part_name(e) and prefix + e not in named) or is_temp_name(e)]
            for entry in gone:
                (directory / entry).unlink()
            if gone:
                fsync_dir(directory)
            removed += [prefix + e for e in gone]
        return removed

    def _read_committed_ids(self) -> dict[str, str]:
        ids: dict[str, str] = {}
        for part in self.manifest["parts"]:
            file = self.path / part["file"]
            if not file.is_file():
                raise StoreCorruptError(f"{file} is named in the manifest but missing; restore it or run "
                                        "`itmflow store verify` to see what is damaged")
            if file.stat().st_size != int(part["bytes"]):
                raise StoreCorruptError(f"{file} has {file.stat().st_size} bytes, the manifest says "
                                        f"{part['bytes']} (truncated or edited); run `itmflow store verify`")
            reader = _part_reader(file, self.settings)
            try:
                for image_id in reader.ids():
                    ids[image_id] = part["file"]
            finally:
                reader.close()
        return ids

    def committed_ids(self) -> set[str]:
        """Image ids in durable parts (skip these when resuming); a part still being finished in the
        background is not counted until it is (see :meth:`wait`)."""
        return set(self._committed)

    # -- writing ------------------------------------------------------------------------------------
    def add(self, row: Mapping[str, Any]) -> None:
        """Validate and queue one row; commits a part when ``rows_per_part`` rows are pending."""
        if self._closed:
            raise StoreError(f"{self.path}: the writer is closed")
        clean = validate_row(row, self.settings, where=f"{self.path}: row")
        image_id = clean["image_id"]
        done_in = self._committed.get(image_id) or self._finishing_ids.get(image_id)
        if done_in is not None:
            raise StoreError(f"{self.path}: duplicate image_id {image_id!r}: already committed in "
                             f"{done_in}; skip committed_ids() when resuming")
        if image_id in self._pending_ids:
            raise StoreError(f"{self.path}: duplicate image_id {image_id!r} added twice in this run")
        self._pending.append(clean)
        self._pending_ids.add(image_id)
        if len(self._pending) >= self.rows_per_part:
            self.commit()

    def commit(self) -> str | None:
        """Write the pending rows as one part; return its file name (None when nothing was pending).

        The part is durable once the next commit, :meth:`wait` or :meth:`close` returns.
        """
        if not self._pending:
            return None
        block = Block.from_rows(self._pending, self.settings.feature_dim, self.settings.dtype,
                                self.settings.present_region_fields(), stack_features=False)
        name = part_name(self._next_index, self.settings.storage)
        try:
            if self.settings.storage == "parquet":
                tmp = produce_part_file(self.parts_dir, name, lambda t: parquet_part.write_part(
                    block, self.settings, t, self.row_group_rows, version=self.version))
            else:
                self._check_room(_block_bytes(block), name)
                tmp = produce_part_file(self.parts_dir, name, lambda t: hdf5_part.write_part(
                    block, self.settings, t, version=self.version))
        except BaseException as exc:
            full = self._disk_full(exc, name)
            if full is None:
                raise
            raise full from exc
        try:
            self.wait()  # the previous part first: parts and manifest entries stay in order
        except BaseException:
            tmp.unlink(missing_ok=True)  # this part's rows stay pending
            raise
        self._next_index += 1
        file = part_file(self._next_index - 1, self.settings.storage, self.version)
        entry = {**_jsonable(self.part_extra), "file": file, "rows": len(block),
                 "regions": int(block.offsets[-1])}
        self._finishing_ids = {image_id: file for image_id in block.image_id}
        self._pending.clear()
        self._pending_ids.clear()
        self._finish_file = name
        self._finishing = threading.Thread(target=self._finish, args=(tmp, name, entry, self._finishing_ids),
                                           name="store-commit")
        self._finishing.start()
        return name

    def _finish(self, tmp: Path, name: str, entry: dict[str, Any], ids: dict[str, str]) -> None:
        """Background half of a commit: fsync + sha256, rename, then the manifest rewrite."""
        try:
            sha, size = finish_part_file(self.parts_dir, tmp, name)
            # The in-memory manifest changes only once the file does: a failed rewrite (disk full)
            # leaves the renamed part as debris for the next open, never as a committed entry.
            manifest = {**self.manifest, "parts": [*self.manifest["parts"], {**entry, "sha256": sha,
                                                                             "bytes": size}]}
            save_manifest(self.path, manifest)
            self.manifest = manifest
            self._committed.update(ids)
        except BaseException as exc:  # raised in the writer's thread by wait()
            self._finish_error = exc

    def wait(self) -> None:
        """Block until the part being finished in the background is durable; raise its error, if any."""
        thread = self._finishing
        if thread is not None:
            thread.join()
            self._finishing = None
            self._finishing_ids = {}
        error, self._finish_error = self._finish_error, None
        if error is not None:
            full = self._disk_full(error, self._finish_file)
            if full is None:
                raise error
            raise full from error

    # -- disk full ----------------------------------------------------------------------------------
    def _disk_full(self, exc: BaseException, file: str) -> DiskFullError | None:
        """The :class:`DiskFullError` for ``exc`` when it is ENOSPC / EDQUOT / EFBIG (None otherwise).

        It waits for the part being finished (without taking its error) so the count is right.
        The writer's state is that of any failed commit: its rows stay pending, and a later commit
        (``close()`` too) tries again.
        """
        if isinstance(exc, DiskFullError):
            return exc
        reason = disk_full_reason(exc)
        if reason is None:
            return None
        if self._finishing is not None and self._finishing is not threading.current_thread():
            self._finishing.join()
        return DiskFullError(
            f"{self.path}: the disk is full ({reason}) while writing {file}; {len(self._committed)} "
            "image(s) are committed and kept. Free space (or raise the quota / file-size limit) and rerun "
            "the same command: it resumes after the committed images")

    def _check_room(self, nbytes: int, file: str) -> None:
        """Refuse a part of about ``nbytes`` that cannot fit (free space, RLIMIT_FSIZE) before writing
        it: libhdf5 cannot fail cleanly mid-file (h5py crashes closing a file whose write failed)."""
        need = nbytes + nbytes // 20 + (64 << 10)
        stat = os.statvfs(self.path)
        if stat.f_bavail * stat.f_frsize < need:
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}: {file} needs about {need} bytes, "
                          f"{stat.f_bavail * stat.f_frsize} are free")
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY and limit < need:
            raise OSError(errno.EFBIG, f"{os.strerror(errno.EFBIG)}: {file} needs about {need} bytes, the "
                          f"file-size limit is {limit}")

    def record_failure(self, image_id: str, file: str, reason: str) -> None:
        """Append one failure to ``failures.jsonl`` (flushed and fsynced: it is a record, not a log)."""
        line = json.dumps({"image_id": image_id, "file": file, "reason": reason}, sort_keys=True)
        try:
            with open(self.path / FAILURES_NAME, "ab") as handle:
                start = handle.seek(0, os.SEEK_END)
                try:
                    handle.write((line + "\n").encode("utf-8"))
                    handle.flush()
                    os.fsync(handle.fileno())
                except BaseException:
                    handle.truncate(start)  # no half line for the next run to trip over
                    raise
        except OSError as exc:
            full = self._disk_full(exc, FAILURES_NAME)
            if full is None:
                raise
            raise full from exc

    def close(self) -> None:
        """Commit what is pending and wait until every part is durable; further adds raise; release
        the store's lock (also when committing fails)."""
        if not self._closed:
            try:
                self.commit()
            finally:
                try:
                    self.wait()
                finally:
                    self._closed = True
                    self.lock.release()

    def __enter__(self) -> "RegionStoreWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        # Rows already added were validated one by one, so they are committed even when the block
        # raised: nothing handed to the writer is lost.
        self.close()


def _block_bytes(block: Block) -> int:
    """Bytes of a block's arrays and strings (what a part file of it holds, uncompressed)."""
    rows = block.feature_rows if block.feature_rows is not None else [block.features]
    total = sum(int(r.nbytes) for r in rows if r is not None)
    total += sum(int(a.nbytes) for a in block.regions.values() if a is not None)
    total += sum(len(s) + len(f) for s, f in zip(block.image_id, block.file)) + 64 * len(block)
    return total


def _part_index(name: str) -> int:
    return int(name.split("-", 1)[1].split(".", 1)[0])


def _part_reader(path: Path, settings: StoreSettings) -> Any:
    if settings.storage == "parquet":
        return parquet_part.ParquetPartReader(path, settings)
    return hdf5_part.HDF5PartReader(path, settings)


def _jsonable(obj: Any) -> Any:
    """Round-trip through JSON so the manifest compares equal to what a later run passes."""
    try:
        return json.loads(json.dumps(obj, sort_keys=True))
    except TypeError as exc:
        raise StoreError(f"store settings must be JSON-serialisable: {exc}") from exc
