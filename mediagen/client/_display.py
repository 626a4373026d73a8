"""The progress a wait shows: a rich bar on a terminal, plain status lines elsewhere."""

from __future__ import annotations

import sys
import threading
from typing import Any

from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from mediagen.client import Job
from mediagen.client._states import TERMINAL

# The colour of each finished state (the others: bold). An expired job completed, but its
# outputs are gone: nothing to download, as with a canceled one.
COLOURS = {"completed": "green", "failed": "red", "canceled": "yellow", "expired": "yellow"}


class MarkColumn(SpinnerColumn):
    """A spinner while the job runs, then ✓ or ✗ (the task's ``mark`` field)."""

    def render(self, task: Task) -> RenderableType:
        mark = task.fields.get("mark")
        return Text.from_markup(mark) if mark else super().render(task)


class Display:
    """What a wait shows on stderr: a rich progress bar on a terminal, plain status lines
    elsewhere, nothing with --json; the model's log lines when asked for. Fed by the client's
    progress and log callbacks (its own thread)."""

    def __init__(self, job: Job, quiet: bool) -> None:
        self.job_id = job.id
        self.status = job.status
        self.queue_position = job.queue_position if job.status == "pending" else None
        self.paused = bool(job.paused) and job.status == "pending"
        self.percent: int | None = job.progress.percent if job.progress else None
        if job.status == "completed":  # already, when first read: no event will say so
            self.percent = 100
        self.console = Console(stderr=True)
        self.quiet = quiet
        self.fancy = not quiet and self.console.is_terminal
        self._lock = threading.Lock()
        self._printed: tuple[str, int | None, int | None, bool] | None = None
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def _where(self) -> str:
        """The queue position (jobs created before this one still pending), while pending."""
        if self.status == "pending" and self.queue_position is not None:
            paused = ", its model is paused" if self.paused else ""
            return f" ({self.queue_position} ahead in the queue{paused})"
        return ""

    def _description(self) -> str:
        style = COLOURS.get(self.status, "bold")
        return f"job {self.job_id[:8]} [{style}]{self.status}[/{style}]{self._where()}"

    def __enter__(self) -> Display:
        if self.fancy:
            self._progress = Progress(
                MarkColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TimeElapsedColumn(),
                console=self.console,
            )
            self._progress.start()
            self._task = self._progress.add_task(
                self._description(), total=None if self.percent is None else 100
            )
            if self.percent is not None:
                self._progress.update(self._task, completed=self.percent)
        self._show()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def event(self, event: str, data: dict[str, Any]) -> None:
        with self._lock:
            if event == "status":
                status = str(data.get("status") or self.status)
                if status != "pending":
                    self.queue_position = None
                self.status = status
                if status == "completed":
                    self.percent = 100
            elif event == "queue":  # while pending, when its place in the queue changed
                if self.status != "pending" or not isinstance(data.get("queue_position"), int):
                    return
                self.queue_position = data["queue_position"]
                self.paused = data.get("paused") is True
            elif event == "progress":
                try:
                    self.percent = max(0, min(100, int(data["percent"])))
                except (KeyError, TypeError, ValueError):
                    return
            else:
                return
            self._show()

    def log(self, line: str) -> None:
        """One line of the model's log (`--logs`): above the bar on a terminal, else a line."""
        with self._lock:
            if self._progress is not None:
                self._progress.console.print(Text(line))
            else:
                print(line, file=sys.stderr, flush=True)

    def _show(self) -> None:
        if self.quiet:
            return
        if self._progress is not None and self._task is not None:
            finished = self.status in TERMINAL
            self._progress.update(
                self._task,
                description=self._description(),
                total=None if self.percent is None and not finished else 100,
                completed=self.percent or 0,
            )
            if finished:
                mark = "[green]✓[/green]" if self.status == "completed" else "[red]✗[/red]"
                self._progress.update(self._task, mark=mark)
                self._progress.stop_task(self._task)
            return
        # Plain lines: each status and queue position once, progress in steps of 10%.
        step = None if self.percent is None else self.percent // 10 * 10
        shown = (self.status, step, self.queue_position, self.paused)
        if shown == self._printed:
            return
        self._printed = shown
        line = f"job {self.job_id}: {self.status}{self._where()}"
        if step is not None and self.status not in ("pending", "completed"):
            line += f" {self.percent}%"
        print(line, file=sys.stderr, flush=True)
