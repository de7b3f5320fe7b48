"""Progress bars for long work (rich), silent when disabled or not on a terminal."""
from __future__ import annotations

import contextlib
import sys

from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)


class _Bar:
    def __init__(self, progress: Progress | None, task):
        self.progress, self.task = progress, task

    def advance(self, n: float = 1, **fields) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=n, **fields)

    def update(self, **fields) -> None:
        if self.progress is not None:
            self.progress.update(self.task, **fields)


@contextlib.contextmanager
def progress_bar(label: str, total: float | None, enabled: bool = True, extra: str = "",
                 **fields):
    """``with progress_bar("pruning", total=30) as bar: bar.advance()``.

    ``extra`` is a rich format string over task fields, e.g. ``"loss {task.fields[loss]:.3f}"``
    (give their first values as keyword arguments here, later ones to ``advance``).
    """
    if not enabled:
        yield _Bar(None, None)
        return
    cols = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    if extra:
        cols.append(TextColumn(extra))
    with Progress(*cols, transient=not sys.stderr.isatty(), console=None) as progress:
        task = progress.add_task(label, total=total, **fields)
        yield _Bar(progress, task)
