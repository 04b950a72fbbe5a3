"""The extraction progress tells the truth (issue #12 item 5): it never counts past its total,
its rate counts processed images only, and a resumed run says what it resumes."""

from __future__ import annotations

import io
import time
from types import SimpleNamespace

from rich.console import Console

from pipeline.extract.plan import make_plan
from pipeline.extract.progress import (advance, make_progress, processed_rate, progress_line,
                                       resume_line)


def _progress():
    return make_progress(Console(file=io.StringIO(), width=200, force_terminal=False))


def test_progress_never_counts_past_its_total() -> None:
    progress = _progress()
    task = progress.add_task("extract", total=4, failed=0, processed=0)
    advance(progress, task, processed=3, failed=0, total_processed=3, total_failed=0)
    advance(progress, task, processed=2, failed=1, total_processed=5, total_failed=1)
    assert progress.tasks[0].completed == 4
    assert progress_line(progress.tasks[0]).startswith("extract: 4/4 images")


def test_rate_counts_processed_images_only() -> None:
    progress = _progress()
    task = progress.add_task("extract", total=10, failed=0, processed=0)
    time.sleep(0.05)
    # eight images failed fast (missing files): no detector work was done, no rate yet
    advance(progress, task, processed=0, failed=8, total_processed=0, total_failed=8)
    t = progress.tasks[0]
    assert processed_rate(t) is None
    assert "0.00 img/s" in progress_line(t)
    advance(progress, task, processed=2, failed=0, total_processed=2, total_failed=8)
    t = progress.tasks[0]
    rate = processed_rate(t)
    # 2 processed images over >= 0.05 s: at most 40 img/s (the 8 failures would make it 200)
    assert rate is not None and 0 < rate <= 2 / 0.05


def _images(n: int):
    return [SimpleNamespace(image_id=f"i{k}", file=f"i{k}.jpg", split="train") for k in range(n)]


def test_resumed_run_says_what_it_resumes() -> None:
    images = _images(16)
    fresh = make_plan(images, committed=set(), failed=set(), batch_size=2)
    assert resume_line(fresh, retry_failed=False) is None
    plan = make_plan(images, committed={"i0", "i1", "i2", "i3"}, failed={"i5", "i9"}, batch_size=2)
    assert resume_line(plan, retry_failed=False) == (
        "resuming: 4 of 16 already in the store, 2 failed earlier; --retry-failed to try them again")
    plan = make_plan(images, committed={"i0"}, failed={"i5"}, batch_size=2, retry_failed=True)
    assert "tried again" in resume_line(plan, retry_failed=True)
