"""Export what runs wrote: a table on the terminal, or JSONL / CSV / Parquet, streamed.

A file export is written beside its target (same folder, a hidden temporary name) and
renamed onto it only once every row is written: an export that fails leaves no partial
file, and an older file of that name stays as it was. Parquet has one fixed schema
(:func:`parquet_schema`) whatever the rows hold, so any number of batches fit it.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import secrets
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

from rich.console import Console
from rich.table import Table

from studio_flows.errors import ConfigurationError
from studio_flows.settings import load_settings
from studio_flows.storage import iter_results, make_engine

if TYPE_CHECKING:  # pyarrow is imported by the Parquet export only
    import pyarrow as pa

ExportFormat = Literal["table", "jsonl", "csv", "parquet"]
COLUMNS = (
    "dataset", "row_key", "model_id", "status", "task_index", "messages", "result", "error",
    "job_id", "shard_key", "temperature", "max_tokens", "flow_run_id", "completed_at",
    "created_at",
)  # fmt: skip
PARQUET_BATCH = 10_000
Rows = Iterable[dict[str, Any]]


def export_results(
    console: Console,
    *,
    database_url: str | None,
    filters: dict[str, str | None],
    output_format: ExportFormat,
    output: Path | None,
    limit: int | None,
) -> int:
    """Write the selected results; return how many rows were written.

    Example:
        >>> export_results(console, database_url="sqlite:///r.db", filters={},
        ...                output_format="jsonl", output=Path("r.jsonl"), limit=None)
        ... # doctest: +SKIP
        40
    """
    check_destination(output_format, output)
    engine = make_engine(database_url or load_settings().database_url)
    try:
        rows: Iterator[dict[str, Any]] = iter_results(engine, **filters)  # type: ignore[arg-type]
        if limit is not None:
            rows = itertools.islice(rows, limit)
        if output_format == "table":
            return _table(console, rows)
        return write_export(rows, output_format, output)
    finally:
        engine.dispose()


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


def write_export(rows: Rows, output_format: ExportFormat, output: Path | None) -> int:
    """Write ``rows`` as JSONL, CSV or Parquet to ``output`` (None: stdout); return the count.

    Example:
        >>> write_export([], "jsonl", None)
        0
    """
    if output_format == "parquet":
        assert output is not None  # check_destination refused it
        with _replacing(output) as temp:
            return _parquet(rows, temp)
    writer = _jsonl if output_format == "jsonl" else _csv
    if output is None:
        return writer(rows, sys.stdout)
    with _replacing(output) as temp, temp.open("x", encoding="utf-8", newline="") as stream:
        return writer(rows, stream)


@contextmanager
def _replacing(target: Path) -> Iterator[Path]:
    """A fresh path beside ``target``, renamed onto it if the block succeeds, else removed."""
    if not target.parent.is_dir():
        raise ConfigurationError(f"cannot write {target}: no such directory {target.parent}")
    temp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
    try:
        yield temp
        os.replace(temp, target)
    except OSError as err:
        temp.unlink(missing_ok=True)
        raise ConfigurationError(f"cannot write {target}: {err.strerror or err}") from None
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    out = {name: row.get(name) for name in COLUMNS}
    for name in ("completed_at", "created_at"):
        if out[name] is not None:
            out[name] = str(out[name])
    return out


def _jsonl(rows: Rows, stream: TextIO) -> int:
    count = 0
    for row in rows:
        stream.write(json.dumps(_plain(row), ensure_ascii=False) + "\n")
        count += 1
    return count


def _csv(rows: Rows, stream: TextIO) -> int:
    writer = csv.DictWriter(stream, fieldnames=COLUMNS)
    writer.writeheader()
    count = 0
    for row in rows:
        count += 1
        plain = _plain(row)
        plain["messages"] = json.dumps(plain["messages"], ensure_ascii=False)
        writer.writerow(plain)
    return count


def parquet_schema() -> pa.Schema:
    """The one schema of every Parquet export, whatever the rows hold.

    Example:
        >>> str(parquet_schema().field("messages").type)
        'list<item: struct<role: string, content: string>>'
    """
    import pyarrow as pa

    def required(name: str, kind: pa.DataType) -> pa.Field:
        return pa.field(name, kind, nullable=False)

    text, timestamp = pa.string(), pa.timestamp("us", tz="UTC")
    turn = pa.struct([pa.field("role", text), pa.field("content", text)])
    return pa.schema(
        [
            required("dataset", text),
            required("row_key", text),
            required("model_id", text),
            required("status", text),
            required("task_index", pa.int64()),
            required("messages", pa.list_(turn)),
            pa.field("result", text),
            pa.field("error", text),
            pa.field("job_id", text),
            required("shard_key", text),
            required("temperature", pa.float64()),
            required("max_tokens", pa.int64()),
            pa.field("flow_run_id", text),
            pa.field("completed_at", timestamp),
            required("created_at", timestamp),
        ]
    )


def _parquet(rows: Rows, output: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = parquet_schema()
    count = 0
    with pq.ParquetWriter(str(output), schema) as writer:
        for batch in _batched(rows, PARQUET_BATCH):
            columns = {name: [row.get(name) for row in batch] for name in schema.names}
            writer.write_table(pa.Table.from_pydict(columns, schema=schema))
            count += len(batch)
    return count


def _batched(rows: Rows, size: int) -> Iterator[list[dict[str, Any]]]:
    iterator = iter(rows)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def _table(console: Console, rows: Rows) -> int:
    table = Table(show_lines=False)
    for name in ("dataset", "row_key", "status", "prompt", "result"):
        table.add_column(name, overflow="fold")
    count = 0
    for row in rows:
        count += 1
        prompt = row["messages"][-1]["content"] if row.get("messages") else ""
        table.add_row(
            row["dataset"], str(row["row_key"])[:16], row["status"], prompt,
            row.get("result") or row.get("error") or "",
        )  # fmt: skip
    console.print(table)
    return count
