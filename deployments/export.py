"""Export what runs wrote: a table on the terminal, or JSONL / CSV / Parquet, streamed."""

from __future__ import annotations

import csv
import itertools
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, TextIO

from rich.console import Console
from rich.table import Table

from model_studio.errors import ConfigurationError
from model_studio.settings import load_settings
from model_studio.storage import iter_results, make_engine

ExportFormat = Literal["table", "jsonl", "csv", "parquet"]
COLUMNS = (
    "dataset", "row_key", "model_id", "status", "task_index", "messages", "result", "error",
    "job_id", "shard_key", "temperature", "max_tokens", "flow_run_id", "completed_at",
)  # fmt: skip
PARQUET_BATCH = 10_000


def export_results(
    console: Console,
    *,
    database_url: str | None,
    filters: dict[str, str | None],
    output_format: ExportFormat,
    output: Path | None,
    limit: int | None,
) -> int:
    """Write the selected results; return how many rows were written."""
    engine = make_engine(database_url or load_settings().database_url)
    try:
        rows: Iterator[dict[str, Any]] = iter_results(engine, **filters)  # type: ignore[arg-type]
        if limit is not None:
            rows = itertools.islice(rows, limit)
        if output_format == "table":
            return _table(console, rows)
        if output_format == "parquet":
            if output is None:
                raise ConfigurationError("--format parquet needs --output FILE")
            return _parquet(rows, output)
        with _open_text(output) as stream:
            writer = _jsonl if output_format == "jsonl" else _csv
            return writer(rows, stream)
    finally:
        engine.dispose()


class _open_text:
    def __init__(self, output: Path | None) -> None:
        self.output = output
        self.stream: TextIO = sys.stdout

    def __enter__(self) -> TextIO:
        if self.output is not None:
            self.stream = self.output.open("w", encoding="utf-8", newline="")
        return self.stream

    def __exit__(self, *exc: object) -> None:
        if self.output is not None:
            self.stream.close()


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    out = {name: row.get(name) for name in COLUMNS}
    if out["completed_at"] is not None:
        out["completed_at"] = str(out["completed_at"])
    return out


def _jsonl(rows: Iterable[dict[str, Any]], stream: TextIO) -> int:
    count = 0
    for row in rows:
        stream.write(json.dumps(_plain(row), ensure_ascii=False) + "\n")
        count += 1
    return count


def _csv(rows: Iterable[dict[str, Any]], stream: TextIO) -> int:
    writer = csv.DictWriter(stream, fieldnames=COLUMNS)
    writer.writeheader()
    count = 0
    for row in rows:
        count += 1
        plain = _plain(row)
        plain["messages"] = json.dumps(plain["messages"], ensure_ascii=False)
        writer.writerow(plain)
    return count


def _parquet(rows: Iterable[dict[str, Any]], output: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    count = 0
    writer: Any = None
    try:
        for batch in _batched(rows, PARQUET_BATCH):
            plain = [_plain(row) for row in batch]
            for row in plain:
                row["messages"] = json.dumps(row["messages"], ensure_ascii=False)
            table = pa.Table.from_pylist(plain)
            if writer is None:
                writer = pq.ParquetWriter(str(output), table.schema)
            writer.write_table(table.cast(writer.schema))
            count += len(plain)
    finally:
        if writer is not None:
            writer.close()
    return count


def _batched(rows: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    iterator = iter(rows)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def _table(console: Console, rows: Iterable[dict[str, Any]]) -> int:
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
