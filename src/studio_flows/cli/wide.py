"""`studio-flows results --wide`: one line per input row, one answer column per model.

The records come from :func:`studio_flows.evaluation.wide_results` and go through the
long export's streaming writers; this module only picks them by dataset name or source
file, and prints them as a terminal table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import Engine

from studio_flows.datasets import iter_good_rows
from studio_flows.evaluation import wide_results
from studio_flows.rows import BadRow

if TYPE_CHECKING:
    from studio_flows.cli.export import Selection

Record = dict[str, Any]


def wide_export(
    engine: Engine, selection: Selection, on_bad_row: Callable[[BadRow], object]
) -> tuple[list[str], Iterator[Record]]:
    """The wide export's columns and records, streamed.

    Example:
        >>> columns, records = wide_export(engine, Selection(dataset="d", wide=True), print)
        ... # doctest: +SKIP
        >>> columns[:2]  # doctest: +SKIP
        ['row_key', 'prompt']
    """
    if selection.source is None:
        return wide_results(engine, dataset=selection.dataset, model_id=selection.model_id)
    good = iter_good_rows(selection.source, selection.source_options, on_bad_row=on_bad_row)
    return wide_results(engine, rows=good, model_id=selection.model_id)


def print_wide(console: Console, columns: list[str], records: Iterator[Record]) -> int:
    """The wide export as a terminal table (row keys shortened, answers folded)."""
    table = Table(show_lines=False)
    for name in columns:
        table.add_column(name, overflow="fold")
    count = 0
    key = columns.index("row_key")
    for record in records:
        count += 1
        cells = ["" if record.get(name) is None else str(record[name]) for name in columns]
        cells[key] = cells[key][:16]
        table.add_row(*cells)
    console.print(table)
    return count
