"""What a run wrote, as a ``pyarrow.Table``: the next task of a pipeline reads it in memory.

The columns and types are those of the Parquet export (``studio-flows results --format
parquet``), so a table read here and a file exported there agree: the result columns, then
one column per kept input column (``--keep-columns``, stored in ``metadata``), by name.

How kept columns are named and typed: :mod:`studio_flows.kept_columns`.

Example:
    >>> results_table([]).num_rows
    0
    >>> results_table([]).schema.field("messages").type
    ListType(list<item: struct<role: string, content: string>>)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pyarrow as pa

from studio_flows.kept_columns import RESULT_COLUMNS, KeptColumns


def results_schema(kept: KeptColumns | None = None) -> pa.Schema:
    """The schema of a results table (required columns are not nullable), kept columns last."""
    text, timestamp = pa.string(), pa.timestamp("us", tz="UTC")
    turn = pa.struct([pa.field("role", text), pa.field("content", text)])
    nullable = {"result", "error", "job_id", "flow_run_id", "completed_at"}
    types: dict[str, pa.DataType] = {
        "task_index": pa.int64(),
        "messages": pa.list_(turn),
        "temperature": pa.float64(),
        "max_tokens": pa.int64(),
        "completed_at": timestamp,
        "created_at": timestamp,
    }
    fields = [
        pa.field(name, types.get(name, text), nullable=name in nullable) for name in RESULT_COLUMNS
    ]
    return pa.schema(fields + (kept.fields() if kept else []))


def results_table(rows: Iterable[dict[str, Any]]) -> pa.Table:
    """One table of result rows (dicts of ``generation_results`` columns), in their order.

    Each kept input column (the rows' ``metadata``) is a column after the result columns.
    """
    listed = list(rows)
    kept = KeptColumns.of(row.get("metadata") for row in listed)
    schema = results_schema(kept)
    columns = {name: [row.get(name) for row in listed] for name in RESULT_COLUMNS}
    values = [kept.values(row.get("metadata")) for row in listed]
    columns.update({name: [row[name] for row in values] for name in kept.columns})
    return pa.Table.from_pydict(columns, schema=schema)


__all__ = ["RESULT_COLUMNS", "results_schema", "results_table"]
