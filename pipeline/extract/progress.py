"""Progress (images/s and ETA) and the final summary, for people, with rich."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task,
                           TextColumn, TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Table
from rich.text import Text


class RateColumn(ProgressColumn):
    """Images per second, from rich's speed estimate."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- img/s" if speed is None else f"{speed:.2f} img/s", style="progress.data.speed")


def make_progress(console: Console) -> Progress:
    """The extraction progress bar: done/total, images/s, elapsed, ETA."""
    return Progress(TextColumn("[bold]extract[/]"), BarColumn(), MofNCompleteColumn(), RateColumn(),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    TextColumn("{task.fields[failed]} failed"), console=console,
                    speed_estimate_period=60.0)


#: Seconds between plain progress lines when the console is not a terminal.
LOG_EVERY_S = 30.0


def progress_line(task: Task) -> str:
    """One line for logs: done/total, rate, ETA."""
    elapsed = task.elapsed or 0.0
    speed = task.speed or (task.completed / elapsed if elapsed > 0 else 0.0)
    total = task.total or 0
    eta = (total - task.completed) / speed if speed > 0 else float("nan")
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
