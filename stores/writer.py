"""RegionStoreWriter: append rows to a region store in atomically committed parts, and resume.

Commit protocol (design.md, store contract v1): the pending rows are written to
``.part-NNNNN.<ext>.tmp-<pid>``, fsynced while a second thread hashes it (sha256), renamed to
``part-NNNNN.<ext>``, the directory is fsynced, and only then is ``manifest.json`` rewritten
atomically. A crash at any point leaves either the old manifest (the new part is debris, removed on
resume) or the new one; committed parts are never touched again.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Callable, Mapping

from itmflow.errors import StoreCorruptError, StoreError
from itmflow.files import fsync_dir, sha256_file
from stores import hdf5_part, parquet_part
from stores.block import Block
from stores.manifest import load_manifest, manifest_path, new_manifest, save_manifest, settings_mismatch
from stores.schema import (FAILURES_NAME, StoreSettings, is_part_name, is_temp_name, part_name,
                           validate_row)

DEFAULT_ROWS_PER_PART = 512


def write_part_file(directory: Path, name: str, produce: Callable[[Path], None]) -> tuple[str, int]:
    """Let ``produce(tmp)`` write a complete file, then fsync, hash, rename it to ``directory/name``."""
    return finish_part_file(directory, produce_part_file(directory, name, produce), name)


def produce_part_file(directory: Path, name: str, produce: Callable[[Path], None]) -> Path:
    """Let ``produce(tmp)`` write the part under its temporary name; returns that path."""
    tmp = directory / f".{name}.tmp-{os.getpid()}"
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
                 feature_dtype: str = "float16", region_policy: Mapping[str, Any] | None = None,
                 detector: Mapping[str, Any] | None = None, rows_per_part: int = DEFAULT_ROWS_PER_PART,
                 extra: Mapping[str, Any] | None = None, absent_fields: tuple[str, ...] | list[str] = (),
                 row_group_rows: int | None = None) -> None:
        self.path = Path(path)
        self.settings = StoreSettings(storage=storage, feature_dim=feature_dim, feature_dtype=feature_dtype,
                                      region_policy=dict(region_policy or {"kind": "fixed", "k": 36}),
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
        #: Merged into the manifest entry of every part committed from now on (e.g. the worker
        #: shape that computed its rows); readers ignore keys they do not know.
        self.part_extra: dict[str, Any] = {}
        self.path.mkdir(parents=True, exist_ok=True)
        if manifest_path(self.path).exists():
            self.manifest = load_manifest(self.path)
            recorded = StoreSettings.from_manifest(self.manifest)
            diffs = settings_mismatch(recorded, self.settings)
            if diffs:
                raise StoreError(f"{self.path} was written with other settings; refusing to mix them in one "
                                 "store:\n  " + "\n  ".join(diffs) + "\nuse a new store directory or the "
                                 "store's settings")
        else:
            # A writer writes the manifest before its first part, so part files without a manifest
            # are not our crash debris (a deleted manifest?): refuse rather than delete data.
            strays = sorted(e for e in os.listdir(self.path) if is_part_name(e))
            if strays:
                raise StoreError(f"{self.path} holds part files ({', '.join(strays[:3])}...) but no manifest.json; "
                                 "nothing was deleted. Restore the manifest or write to another directory")
            self.manifest = new_manifest(self.settings, _jsonable(dict(extra or {})))
        self.removed_debris = self._remove_debris()
        self._committed: dict[str, str] = self._read_committed_ids()
        self._next_index = 1 + max((_part_index(p["file"]) for p in self.manifest["parts"]), default=-1)
        save_manifest(self.path, self.manifest)

    # -- resume -------------------------------------------------------------------------------------
    def _remove_debris(self) -> list[str]:
        named = {p["file"] for p in self.manifest["parts"]}
        removed = []
        for entry in sorted(os.listdir(self.path)):
            if (is_part_name(entry) and entry not in named) or is_temp_name(entry):
                (self.path / entry).unlink()
                removed.append(entry)
        if removed:
            fsync_dir(self.path)
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
        if self.settings.storage == "parquet":
            tmp = produce_part_file(self.path, name, lambda t: parquet_part.write_part(
                block, self.settings, t, self.row_group_rows))
        else:
            tmp = produce_part_file(self.path, name, lambda t: hdf5_part.write_part(block, self.settings, t))
        try:
            self.wait()  # the previous part first: parts and manifest entries stay in order
        except BaseException:
            tmp.unlink(missing_ok=True)  # this part's rows stay pending
            raise
        self._next_index += 1
        entry = {**_jsonable(self.part_extra), "file": name, "rows": len(block),
                 "regions": int(block.offsets[-1])}
        self._finishing_ids = {image_id: name for image_id in block.image_id}
        self._pending.clear()
        self._pending_ids.clear()
        self._finishing = threading.Thread(target=self._finish, args=(tmp, entry, self._finishing_ids),
                                           name="store-commit")
        self._finishing.start()
        return name

    def _finish(self, tmp: Path, entry: dict[str, Any], ids: dict[str, str]) -> None:
        """Background half of a commit: fsync + sha256, rename, then the manifest rewrite."""
        try:
            sha, size = finish_part_file(self.path, tmp, entry["file"])
            self.manifest["parts"].append({**entry, "sha256": sha, "bytes": size})
            save_manifest(self.path, self.manifest)
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
            raise error

    def record_failure(self, image_id: str, file: str, reason: str) -> None:
        """Append one failure to ``failures.jsonl`` (flushed and fsynced: it is a record, not a log)."""
        line = json.dumps({"image_id": image_id, "file": file, "reason": reason}, sort_keys=True)
        with open(self.path / FAILURES_NAME, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def close(self) -> None:
        """Commit what is pending and wait until every part is durable; further adds raise."""
        if not self._closed:
            try:
                self.commit()
            finally:
                try:
                    self.wait()
                finally:
                    self._closed = True

    def __enter__(self) -> "RegionStoreWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        # Rows already added were validated one by one, so they are committed even when the block
        # raised: nothing handed to the writer is lost.
        self.close()


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
