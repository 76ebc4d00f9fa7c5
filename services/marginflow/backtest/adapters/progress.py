"""Progress of a run on the terminal (rich), as the application's ``progress(label, total)`` port."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


@contextlib.contextmanager
def rich_progress(enabled: bool = True) -> Iterator[Callable[[str, int], Callable[[int], None]]]:
    if not enabled:
        yield lambda _label, _total: (lambda _n: None)
        return
    with Progress(TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=False) as bar:
        def task(label: str, total: int) -> Callable[[int], None]:
            tid = bar.add_task(label, total=max(total, 1))
            return lambda n: bar.advance(tid, n)
        yield task
