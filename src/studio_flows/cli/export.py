"""Export what runs wrote: a table on the terminal, or JSONL / CSV / Parquet, streamed.

What is exported is a :class:`Selection`: results by dataset name, or the rows of a source
file with whatever results their conversations have. A file export is written beside its
target (same folder, a hidden temporary name) and renamed onto it only once every row is
written: an export that fails leaves no partial file, and an older file of that name stays
as it was. Parquet has one fixed schema (:func:`parquet_schema`) whatever the rows hold, so
any number of batches fit it.

Kept input columns (``--keep-columns``, stored in ``metadata``) follow the result columns
in JSONL, CSV and Parquet, named and typed as :mod:`studio_flows.result_table` says; their
names and kinds come from a first pass over the selection's ``metadata``. The terminal
table shows the answers only.
"""

from __future__ import annotations

import csv
import itertools
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import Engine

from studio_flows.datasets import DatasetOptions, iter_good_rows
from studio_flows.errors import ConfigurationError
from studio_flows.files import check_database_exists as _check_database_exists
from studio_flows.files import replacing as _replacing
from studio_flows.kept_columns import RESULT_COLUMNS, KeptColumns, kept_column_name, parsed_text
from studio_flows.rows import BadRow, Row, messages_payload
from studio_flows.settings import load_settings
from studio_flows.storage import (
    iter_metadata,
    iter_results,
    latest_per_model,
    make_engine,
    results_of_rows,
)

if TYPE_CHECKING:  # pyarrow is imported by the Parquet export only
    import pyarrow as pa

ExportFormat = Literal["table", "jsonl", "csv", "parquet"]
COLUMNS = RESULT_COLUMNS
# An export by source file leads with the row's line there (1-based; a row number in Parquet).
SOURCE_COLUMNS = ("line", *COLUMNS)
PARQUET_BATCH = 10_000
Record = dict[str, Any]
Rows = Iterable[Record]
_TABLE_COLUMNS = ("dataset", "row_key", "status", "prompt", "result")
NOT_RUN = "not run"  # the table's word for a source row with no stored result


@dataclass(frozen=True)
class Selection:
    """Which stored results to export: by dataset name, or by the rows of a source file.

    With ``source``, every good row of that file gives one record or more, in the file's
    order, with its ``line``: one per stored result of its conversation (whichever file
    name or run wrote it), or one with an empty ``status`` if it never ran (left out when
    ``status`` is given). Without it, results are by dataset name, in the order their
    shards were recorded, then by task index.

    Example:
        >>> Selection(source=Path("prompts.parquet"), model_id="m").columns[0]
        'line'
    """

    dataset: str | None = None
    model_id: str | None = None
    status: str | None = None
    source: Path | None = None
    source_options: DatasetOptions = field(default_factory=DatasetOptions)
    wide: bool = False  # one line per row, one answer column per model (cli/wide.py)

    @property
    def columns(self) -> tuple[str, ...]:
        """The export's columns, in order."""
        return COLUMNS if self.source is None else SOURCE_COLUMNS

    def kept_columns(self, engine: Engine) -> KeptColumns:
        """The kept input columns the selected results hold (by source: any row's)."""
        dataset = self.dataset if self.source is None else None
        return KeptColumns.of(
            iter_metadata(engine, dataset=dataset, model_id=self.model_id, status=self.status)
        )

    def records(self, engine: Engine, on_bad_row: Callable[[BadRow], object]) -> Iterator[Record]:
        """The selected records, streamed; ``on_bad_row`` hears of each bad row of the source."""
        if self.source is None:
            return iter_results(
                engine, dataset=self.dataset, model_id=self.model_id, status=self.status,
                order="shard", latest=True,
            )  # fmt: skip
        good = iter_good_rows(self.source, self.source_options, on_bad_row=on_bad_row)
        return self._by_line(results_of_rows(engine, good, model_id=self.model_id))

    def _by_line(self, found: Iterable[tuple[Row, list[Record]]]) -> Iterator[Record]:
        for row, results in found:
            # One result per model: the latest completed (a row sent again with other
            # parameters has another); the status is filtered after, as by dataset name.
            latest = [r for r in latest_per_model(results) if self.status in (None, r["status"])]
            if not latest and self.status is None:
                latest = [self._not_run(row)]
            for result in latest:
                # The source's line now, not the stored one (the row's line when last sent).
                yield {**result, "line": row.line}

    def _not_run(self, row: Row) -> Record:
        # Only what the source says: no dataset name, no job, no status.
        return {
            "row_key": row.row_key,
            "model_id": self.model_id,
            "status": None,
            "messages": messages_payload(row.messages),
        }


def export_results(
    console: Console,
    *,
    database_url: str | None,
    selection: Selection,
    output_format: ExportFormat,
    output: Path | None,
    limit: int | None,
    on_bad_row: Callable[[BadRow], object] = lambda bad: None,
) -> int:
    """Write the selected results; return how many records were written.

    Example:
        >>> export_results(console, database_url="sqlite:///r.db", selection=Selection(),
        ...                output_format="jsonl", output=Path("r.jsonl"), limit=None)
        ... # doctest: +SKIP
        40
    """
    check_destination(output_format, output)
    url = database_url or load_settings().database_url
    if selection.source is None or Path(selection.source).exists():
        _check_database_exists(url)  # a missing source file is the first thing to say
    engine = make_engine(url)
    try:
        if selection.wide:
            return _export_wide(
                console, engine, selection, output_format, output, limit, on_bad_row
            )
        records = selection.records(engine, on_bad_row)
        if limit is not None:
            records = itertools.islice(records, limit)
        if output_format == "table":
            return _table(console, records, with_line=selection.source is not None)
        kept = selection.kept_columns(engine)
        return write_export(records, output_format, output, columns=selection.columns, kept=kept)
    finally:
        engine.dispose()


def _export_wide(
    console: Console,
    engine: Engine,
    selection: Selection,
    output_format: ExportFormat,
    output: Path | None,
    limit: int | None,
    on_bad_row: Callable[[BadRow], object],
) -> int:
    from studio_flows.cli.wide import print_wide, wide_export
    from studio_flows.result_table import wide_schema

    columns, records = wide_export(engine, selection, on_bad_row)
    if limit is not None:
        records = itertools.islice(records, limit)
    if output_format == "table":
        return print_wide(console, columns, records)
    schema = None
    if output_format == "parquet":
        first = list(itertools.islice(records, PARQUET_BATCH))
        schema = wide_schema(columns, first)
        records = itertools.chain(first, records)
    return write_export(records, output_format, output, columns=tuple(columns), schema=schema)


def check_destination(output_format: ExportFormat, output: Path | None) -> None:
    """Refuse a format and destination that do not go together, before reading anything.

    Example:
        >>> check_destination("table", Path("out.txt"))
        Traceback (most recent call last):
        studio_flows.errors.ConfigurationError: --format table prints to the terminal ...
    """
    if output_format == "table" and output is not None:
        raise ConfigurationError(
            "--format table prints to the terminal and writes no file; "
            "use --format jsonl, csv or parquet with --output"
        )
    if output_format == "parquet" and output is None:
        raise ConfigurationError("--format parquet needs --output FILE")


def write_export(
    rows: Rows,
    output_format: ExportFormat,
    output: Path | None,
    *,
    columns: tuple[str, ...] = COLUMNS,
    kept: KeptColumns | None = None,
    schema: pa.Schema | None = None,
) -> int:
    """Write ``rows`` as JSONL, CSV or Parquet to ``output`` (None: stdout); return the count.

    ``columns`` is :data:`COLUMNS`, or :data:`SOURCE_COLUMNS` for an export by source file,
    or a wide export's; ``kept`` the kept input columns written after them (from each row's
    ``metadata``); ``schema`` the Parquet schema when it is not the long one.

    Example:
        >>> write_export([], "jsonl", None)
        0
    """
    kept = kept or KeptColumns()
    if output_format == "parquet":
        assert output is not None  # check_destination refused it
        schema = schema or parquet_schema(by_source=columns == SOURCE_COLUMNS, kept=kept)
        with _replacing(output) as temp:
            return _parquet(rows, temp, schema, kept)
    writer = _jsonl if output_format == "jsonl" else _csv
    if output is None:
        return writer(rows, sys.stdout, columns, kept)
    with _replacing(output) as temp, temp.open("x", encoding="utf-8", newline="") as stream:
        return writer(rows, stream, columns, kept)


def _plain(row: Record, columns: tuple[str, ...]) -> Record:
    out = {name: row.get(name) for name in columns}
    for name in ("completed_at", "created_at"):
        if out.get(name) is not None:
            out[name] = str(out[name])
    return out


def _jsonl(rows: Rows, stream: TextIO, columns: tuple[str, ...], kept: KeptColumns) -> int:
    count = 0
    for row in rows:
        plain = _plain(row, columns)
        # As stored: a kept value is the JSON value the input held.
        plain.update({kept_column_name(k): v for k, v in _kept_of(row, kept).items()})
        stream.write(json.dumps(plain, ensure_ascii=False) + "\n")
        count += 1
    return count


def _kept_of(row: Record, kept: KeptColumns) -> dict[str, Any]:
    metadata = row.get("metadata") or {}
    return {name: metadata.get(name) for name in kept.kinds}


def _csv(rows: Rows, stream: TextIO, columns: tuple[str, ...], kept: KeptColumns) -> int:
    writer = csv.DictWriter(stream, fieldnames=(*columns, *kept.columns))
    writer.writeheader()
    count = 0
    for row in rows:
        count += 1
        plain = _plain(row, columns)
        for name, value in plain.items():
            if isinstance(value, list | dict):  # a conversation, a kept list or object
                plain[name] = json.dumps(value, ensure_ascii=False)
        plain.update(kept.values(row.get("metadata"), text=True))
        writer.writerow(plain)
    return count


def parquet_schema(*, by_source: bool = False, kept: KeptColumns | None = None) -> pa.Schema:
    """The one schema of every Parquet export, whatever the rows hold.

    ``by_source`` leads with ``line`` and lets every column that a row never run lacks be
    null (all but ``line``, ``row_key`` and ``messages``); ``kept`` columns come last.

    Example:
        >>> str(parquet_schema().field("messages").type)
        'list<item: struct<role: string, content: string>>'
        >>> parquet_schema(by_source=True).names[0]
        'line'
    """
    import pyarrow as pa

    from studio_flows.result_table import results_schema

    schema = results_schema(kept)  # the same columns read_results hands a pipeline
    if not by_source:
        return schema
    always = {"row_key", "messages"}  # what a row read from the source always has
    fields = [pa.field("line", pa.int64(), nullable=False)]
    fields += [field.with_nullable(field.name not in always) for field in schema]
    return pa.schema(fields)


def _parquet(rows: Rows, output: Path, schema: pa.Schema, kept: KeptColumns) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    count = 0
    with pq.ParquetWriter(str(output), schema) as writer:
        for batch in _batched(rows, PARQUET_BATCH):
            if kept.kinds:
                batch = [{**row, **kept.values(row.get("metadata"))} for row in batch]
            columns = {name: [row.get(name) for row in batch] for name in schema.names}
            if "parsed" in columns:  # a JSON value: its text in a string column
                columns["parsed"] = [parsed_text(value) for value in columns["parsed"]]
            writer.write_table(pa.Table.from_pydict(columns, schema=schema))
            count += len(batch)
    return count


def _batched(rows: Rows, size: int) -> Iterator[list[Record]]:
    iterator = iter(rows)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def _table(console: Console, rows: Rows, *, with_line: bool = False) -> int:
    table = Table(show_lines=False)
    if with_line:
        table.add_column("line", justify="right")
    for name in _TABLE_COLUMNS:
        table.add_column(name, overflow="fold")
    count = 0
    for row in rows:
        count += 1
        prompt = row["messages"][-1]["content"] if row.get("messages") else ""
        cells = [
            row.get("dataset") or "", str(row["row_key"])[:16], row["status"] or NOT_RUN, prompt,
            # A failed row may keep its raw answer (one the schema refused): show why.
            (row.get("error") if row["status"] == "failed" else None)
            or row.get("result") or row.get("error") or "",
        ]  # fmt: skip
        table.add_row(*([str(row["line"])] if with_line else []), *cells)
    console.print(table)
    return count
