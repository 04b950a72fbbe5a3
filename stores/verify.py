"""Check a region store against its manifest: every part's size and sha256, its schema, row and
region counts, duplicate image ids, the region policy and non-finite features."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from itmflow.errors import ItmflowError
from itmflow.files import sha256_file
from stores import hdf5_part, parquet_part
from stores.lock import pid_alive, read_lock, this_host
from stores.manifest import load_manifest
from stores.schema import (DATA_DIR, FAILURES_NAME, LOCK_NAME, MANIFEST_NAME, StoreSettings, is_part_name, parts_dir,
                           is_temp_name)


@dataclass
class VerifyReport:
    """The outcome: ``problems`` (file, message) make the store unsound; ``warnings`` do not."""

    path: Path
    parts_checked: int = 0
    rows_checked: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)
    failures_recorded: int = 0

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (for ``--out``)."""
        return {"store": str(self.path), "ok": self.ok, "parts_checked": self.parts_checked,
                "rows_checked": self.rows_checked, "failures_recorded": self.failures_recorded,
                "problems": [{"file": f, "message": m} for f, m in self.problems],
                "warnings": [{"file": f, "message": m} for f, m in self.warnings]}


def verify_store(path: str | os.PathLike[str], *, check_hashes: bool = True,
                 progress: Callable[[int], None] | None = None) -> VerifyReport:
    """Verify the store at ``path``; never raises for a damaged store (problems are reported).

    ``progress`` is called with the number of rows checked after each block.
    """
    root = Path(path)
    report = VerifyReport(path=root)
    try:
        manifest = load_manifest(root)
        settings = StoreSettings.from_manifest(manifest)
    except ItmflowError as exc:
        report.problems.append((MANIFEST_NAME, str(exc)))
        return report
    holder = read_lock(root)  # read only: verify never takes the lock
    if holder is not None:
        if holder.host == this_host() and not pid_alive(holder.pid):
            report.warnings.append((LOCK_NAME, f"left by {holder.describe()}, which is no longer running; the "
                                               "next writer takes it over"))
        else:
            report.warnings.append((LOCK_NAME, f"a writer holds the store ({holder.describe()}): this report "
                                               "covers what was committed when it was read"))
    named = {p["file"] for p in manifest["parts"]}
    version = int(manifest["schema_version"])
    listed = [e for e in sorted(os.listdir(root))]
    if parts_dir(root, version) != root and parts_dir(root, version).is_dir():
        listed += [f"{DATA_DIR}/{e}" for e in sorted(os.listdir(parts_dir(root, version)))]
    for entry in listed:
        base = entry.rsplit("/", 1)[-1]
        if (is_part_name(base) and entry not in named) or is_temp_name(base):
            report.warnings.append((entry, "debris from an interrupted commit (not in the manifest); the "
                                           "next writer removes it"))
    failures = root / FAILURES_NAME
    if failures.is_file():
        with open(failures, encoding="utf-8", errors="replace") as handle:
            report.failures_recorded = sum(1 for line in handle if line.strip())
    seen: dict[str, str] = {}
    k = settings.fixed_k
    for part in manifest["parts"]:
        name = part["file"]
        file = root / name
        report.parts_checked += 1
        if not file.is_file():
            report.problems.append((name, "missing (named in the manifest); restore it or re-extract its images"))
            continue
        size = file.stat().st_size
        if size != int(part["bytes"]):
            report.problems.append((name, f"has {size} bytes, the manifest says {part['bytes']} (truncated or "
                                          "edited)"))
        if check_hashes:
            digest = sha256_file(file)
            if digest != part["sha256"]:
                report.problems.append((name, f"sha256 {digest[:16]}... differs from the manifest's "
                                              f"{part['sha256'][:16]}... (the file was changed after commit)"))
        try:
            _check_part(file, name, part, settings, k, seen, report, progress)
        except ItmflowError as exc:
            report.problems.append((name, str(exc)))
        except Exception as exc:  # a damaged file can make the Parquet / HDF5 libraries fail in any way
            report.problems.append((name, f"cannot be decoded: {type(exc).__name__}: {exc}"))
    return report


def _check_part(file: Path, name: str, part: dict, settings: StoreSettings, k: int | None,
                seen: dict[str, str], report: VerifyReport, progress: Callable[[int], None] | None) -> None:
    reader = (parquet_part.ParquetPartReader(file, settings) if settings.storage == "parquet"
              else hdf5_part.HDF5PartReader(file, settings))
    try:
        rows = regions = 0
        for block in reader.blocks():
            for i, image_id in enumerate(block.image_id):
                row_no = rows + i
                if image_id in seen:
                    report.problems.append((name, f"row {row_no}: duplicate image_id {image_id!r} (also in "
                                                  f"{seen[image_id]})"))
                else:
                    seen[image_id] = name
                n = int(block.num_regions[i])
                if k is not None and not 0 < n <= k:  # fewer than K: a padded row
                    report.problems.append((name, f"row {row_no} (image_id {image_id!r}): {n} regions, the "
                                                  f"region policy is fixed K={k}"))
            finite = np.isfinite(block.flat_features()).all(axis=1)
            if not finite.all():
                region = int(np.argmin(finite))
                i = int(np.searchsorted(block.offsets, region, side="right")) - 1
                report.problems.append((name, f"row {rows + i} (image_id {block.image_id[i]!r}): non-finite "
                                              "features (NaN or inf)"))
            rows += len(block)
            regions += int(block.offsets[-1])
            report.rows_checked += len(block)
            if progress is not None:
                progress(len(block))
        if rows != int(part["rows"]):
            report.problems.append((name, f"holds {rows} rows, the manifest says {part['rows']}"))
        if "regions" in part and regions != int(part["regions"]):
            report.problems.append((name, f"holds {regions} regions, the manifest says {part['regions']}"))
    finally:
        reader.close()
