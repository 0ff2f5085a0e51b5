"""A progress bar for long loops (training, maps): step, rate, elapsed, ETA and the latest losses."""

from __future__ import annotations

import time


class StepProgress:
    """A rich progress bar, or nothing when disabled (other ranks, --quiet)."""

    def __init__(self, name: str, enabled: bool, total: int, completed: int = 0):
        self.enabled = enabled
        if enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            self.bar = Progress(TextColumn(f"[bold]{name}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
            self.task = self.bar.add_task(name, total=total, completed=completed, rate="", info="")
            self.started, self.start_step = time.time(), completed

    def __enter__(self):
        if self.enabled:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.__exit__(*exc)

    def advance(self):
        if self.enabled:
            self.bar.advance(self.task)

    def describe(self, info: str):
        if self.enabled:
            done = self.bar.tasks[0].completed - self.start_step
            rate = done / max(1e-9, time.time() - self.started)
            self.bar.update(self.task, rate=f"{rate:.2f} it/s", info=info)
