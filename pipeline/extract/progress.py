"""Progress (images/s and ETA) and the final summary, for people, with rich."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task,
                           TextColumn, TimeElapsedColumn)
from rich.table import Table
from rich.text import Text


def processed_rate(task: Task) -> float | None:
    """Images per second that produced store rows in this run (``processed`` field / elapsed):
    images already in the store, and failures (a missing file fails in microseconds), do not
    count, so the rate and the ETA are those of real detector work."""
    elapsed = task.elapsed or 0.0
    processed = task.fields.get("processed", 0)
    if elapsed <= 0 or not processed:
        return None
    return processed / elapsed


class RateColumn(ProgressColumn):
    """Processed images per second (:func:`processed_rate`)."""

    def render(self, task: Task) -> Text:
        speed = processed_rate(task)
        return Text("-- img/s" if speed is None else f"{speed:.2f} img/s", style="progress.data.speed")


class EtaColumn(ProgressColumn):
    """Time left for the images not yet attempted, at the processed rate."""

    def render(self, task: Task) -> Text:
        speed = processed_rate(task)
        left = max(0.0, (task.total or 0) - task.completed)
        if speed is None:
            return Text("-:--:--", style="progress.remaining")
        secs = int(left / speed)
        return Text(f"{secs // 3600}:{secs % 3600 // 60:02d}:{secs % 60:02d}", style="progress.remaining")


def make_progress(console: Console) -> Progress:
    """The extraction progress bar: done/total, processed images/s, elapsed, ETA."""
    return Progress(TextColumn("[bold]extract[/]"), BarColumn(), MofNCompleteColumn(), RateColumn(),
                    TimeElapsedColumn(), TextColumn("ETA"), EtaColumn(),
                    TextColumn("{task.fields[failed]} failed"), console=console)


def advance(progress: Progress, task_id: Any, *, processed: int, failed: int,
            total_processed: int, total_failed: int) -> None:
    """Count ``processed + failed`` more images, never past the task's total (a count the plan did
    not foresee — a batch answered twice, a refused row — must not show 9/8)."""
    task = progress.tasks[[t.id for t in progress.tasks].index(task_id)]
    room = max(0.0, (task.total or 0) - task.completed)
    progress.update(task_id, advance=min(processed + failed, room), failed=total_failed,
                    processed=total_processed)


def resume_line(plan: Any, *, retry_failed: bool) -> str | None:
    """What a resumed run resumes, in one line (None for a fresh store): how many selected images
    are in the store already, and how many failed earlier (skipped unless ``--retry-failed``)."""
    if not plan.committed and not plan.failed_before:
        return None
    line = f"resuming: {plan.committed} of {plan.selected} already in the store"
    if plan.failed_before:
        if retry_failed:
            line += f", {plan.failed_before} failed earlier and are tried again (--retry-failed)"
        else:
            line += f", {plan.failed_before} failed earlier; --retry-failed to try them again"
    return line


#: Seconds between plain progress lines when the console is not a terminal.
LOG_EVERY_S = 30.0


def progress_line(task: Task) -> str:
    """One line for logs: done/total, rate, ETA."""
    speed = processed_rate(task) or 0.0
    total = task.total or 0
    eta = max(0.0, total - task.completed) / speed if speed > 0 else float("nan")
    return (f"extract: {int(task.completed)}/{int(total)} images, {speed:.2f} img/s, "
            f"ETA {eta / 60:.1f} min, {task.fields.get('failed', 0)} failed")


def summary_table(summary: Any) -> Table:
    """A rich table of an :class:`~pipeline.extract.job.ExtractSummary`."""
    table = Table(title="itmflow extract", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("store", str(summary.store))
    table.add_row("selected images", str(summary.selected))
    table.add_row("processed now", str(summary.processed))
    table.add_row("already done", str(summary.already_done))
    table.add_row("failed now", str(summary.failed))
    if getattr(summary, "padded", 0):
        table.add_row(f"fewer regions than K={summary.fixed_k}", f"{summary.padded} images, padded")
    if getattr(summary, "skipped_failed", 0):
        table.add_row("failed before, skipped", f"{summary.skipped_failed} (--retry-failed retries them)")
    table.add_row("rows in store", str(summary.rows_in_store))
    table.add_row("wall time", f"{summary.seconds:.1f} s")
    table.add_row("throughput", f"{summary.images_per_second:.2f} img/s")
    table.add_row("workers", f"{summary.workers} × {summary.device}" if summary.workers
                  else "none started (nothing to do)")
    if summary.failed:
        table.add_row("failures listed in", str(summary.store / "failures.jsonl"))
    return table
