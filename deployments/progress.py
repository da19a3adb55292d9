"""A terminal progress bar fed by the execute step's cell events."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class CellProgressBar:
    """Shows ``cell N (k/total)`` on stderr while a notebook runs; silent when disabled."""

    def __init__(self, *, enabled: bool) -> None:
        self._progress: Progress | None = None
        self._task: Any = None
        if enabled:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._progress.start()

    def update(self, event: Any) -> None:
        """Advance on a ``CellEvent``."""
        if event.phase == "output":
            return
        self.advance(
            event.index, event.done, event.total, "running" if event.phase == "start" else "done"
        )

    def advance(self, index: int, done: int, total: int, status: str) -> None:
        """Show cell ``index`` as ``status`` (``running``, ``ok``...), ``done`` of ``total``."""
        if self._progress is None:
            return
        if self._task is None:
            self._task = self._progress.add_task("starting", total=total)
        self._progress.update(self._task, completed=done, description=f"cell {index} {status}")

    def close(self) -> None:
        """Remove the bar from the terminal."""
        if self._progress is not None:
            self._progress.stop()
