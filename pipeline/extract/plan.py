"""Which images a run still has to process, cut into batches the same way on every run.

No Ray and no torch here: the plan is computed before anything heavy starts, so a run with
nothing left to do returns in well under a second.

Batches are consecutive slices of the selected collection order (``index // batch_size``), and
parts are committed on batch boundaries only. After a crash the uncommitted batches are therefore
cut exactly as they were in the interrupted run, the detector sees the same images together, and
the resumed store holds the same bytes as an uninterrupted one (batched inference is only
*numerically close* to unbatched inference, so batch composition must not change).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from itmflow.errors import ConfigError

FAILURES_FILE = "failures.jsonl"


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One image to process: its position in the selected collection order, id and file."""

    index: int
    image_id: str
    file: str


@dataclass(slots=True)
class Batch:
    """Images sent to one detector call; ``number`` is the slice index in collection order."""

    number: int
    items: list[WorkItem]


@dataclass(slots=True)
class Plan:
    """The work of one run: what is selected, what is already done, and the batches left."""

    selected: int
    committed: int
    failed_before: int
    batches: list[Batch] = field(default_factory=list)

    @property
    def todo(self) -> int:
        """Images this run will attempt."""
        return sum(len(b.items) for b in self.batches)

    @property
    def already_done(self) -> int:
        """Images skipped because they are committed (or recorded as failed and not retried)."""
        return self.selected - self.todo


def select_images(images: Iterable, splits: list[str] | None) -> list:
    """The image records of the requested splits, in collection order ("" selects unassigned)."""
    records = list(images)
    if not splits:
        return records
    known = {im.split for im in records}
    unknown = [s for s in splits if s not in known]
    if unknown:
        raise ConfigError(
            f"--split {unknown}: the collection has no images in these splits; it has "
            f"{sorted(known)}")
    wanted = set(splits)
    return [im for im in records if im.split in wanted]


def read_failures(store: str | Path) -> dict[str, dict]:
    """The last entry of each image id in ``<store>/failures.jsonl`` (a torn last line from a crash
    is ignored)."""
    path = Path(store) / FAILURES_FILE
    failures: dict[str, dict] = {}
    if not path.is_file():
        return failures
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by SIGKILL: the image is simply tried again
        if isinstance(entry, dict) and isinstance(entry.get("image_id"), str):
            failures[entry["image_id"]] = entry
    return failures


def read_failed_ids(store: str | Path) -> set[str]:
    """Image ids listed in ``<store>/failures.jsonl``."""
    return set(read_failures(store))


#: The reason decode gives a file that does not exist (see decode.py).
MISSING_PREFIX = "missing file:"


def missing_now_present(failures: dict[str, dict], images: Iterable, root: str | Path) -> set[str]:
    """Ids whose last failure was "missing file" and whose file exists under ``root`` now (a wrong
    ``--images`` root, files copied in later): retried without ``--retry-failed``, since trying
    them again cannot repeat the old failure."""
    out = set()
    for im in images:
        entry = failures.get(im.image_id)
        if entry and str(entry.get("reason", "")).startswith(MISSING_PREFIX) \
                and (Path(root) / im.file).is_file():
            out.add(im.image_id)
    return out


def make_plan(images: list, *, committed: set[str], failed: set[str], batch_size: int,
              retry_failed: bool = False) -> Plan:
    """Cut ``images`` (already selected, in order) into batches of the images still to do."""
    skip = set(committed) if retry_failed else set(committed) | set(failed)
    plan = Plan(selected=len(images), committed=sum(1 for im in images if im.image_id in committed),
                failed_before=sum(1 for im in images
                                  if im.image_id in failed and im.image_id not in committed))
    current: Batch | None = None
    for index, im in enumerate(images):
        if im.image_id in skip:
            continue
        number = index // batch_size
        if current is None or current.number != number:
            current = Batch(number, [])
            plan.batches.append(current)
        current.items.append(WorkItem(index, im.image_id, im.file))
    return plan
