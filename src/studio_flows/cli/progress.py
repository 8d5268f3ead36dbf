"""Progress of `studio-flows generate`: a rich bar on a terminal, plain lines otherwise."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from studio_flows.flows.generate import reporting_progress
from studio_flows.summary import RunTally


@contextmanager
def progress_display(console: Console, *, enabled: bool = True) -> Iterator[None]:
    """Show answers done / total (one per row and model), jobs in flight and failures."""
    if not enabled:
        yield
        return
    if console.is_terminal:
        with _rich_bar(console):
            yield
    else:
        with _plain_lines(console):
            yield


@contextmanager
def _rich_bar(console: Console) -> Iterator[None]:
    progress = Progress(
        TextColumn("[bold]answers"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    bar = progress.add_task("rows", total=None, detail="")

    def update(done: int, total: int, tally: RunTally, in_flight: int) -> None:
        detail = f"jobs in flight: {in_flight}, failed: {tally.failed + tally.unfinished}"
        progress.update(bar, completed=done, total=total or None, detail=detail)

    with reporting_progress(update), progress:
        yield


@contextmanager
def _plain_lines(console: Console) -> Iterator[None]:
    last_tenth = -1

    def update(done: int, total: int, tally: RunTally, in_flight: int) -> None:
        nonlocal last_tenth
        tenth = 10 * done // total if total else 0
        if tenth > last_tenth:
            last_tenth = tenth
            failed = tally.failed + tally.unfinished
            console.print(
                f"{done}/{total} answers done, {failed} failed, jobs in flight: {in_flight}"
            )

    with reporting_progress(update):
        yield
