"""What a run wrote, as a ``pyarrow.Table``: the next task of a pipeline reads it in memory.

The columns and types are those of the Parquet export (``studio-flows results --format
parquet``), so a table read here and a file exported there agree: the result columns, then
one column per kept input column (``--keep-columns``, stored in ``metadata``), by name.
``parsed`` (an answer's JSON value checked against a response schema) is its JSON text.

How kept columns are named and typed: :mod:`studio_flows.kept_columns`.

Example:
    >>> results_table([]).num_rows
    0
    >>> results_table([]).schema.field("messages").type
    ListType(list<item: struct<role: string, content: string>>)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa

from studio_flows.kept_columns import RESULT_COLUMNS, KeptColumns, parsed_text


def results_schema(kept: KeptColumns | None = None) -> pa.Schema:
    """The schema of a results table (required columns are not nullable), kept columns last."""
    text, timestamp = pa.string(), pa.timestamp("us", tz="UTC")
    turn = pa.struct([pa.field("role", text), pa.field("content", text)])
    nullable = {"result", "parsed", "error", "job_id", "flow_run_id", "completed_at"}
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
    columns["parsed"] = [parsed_text(value) for value in columns["parsed"]]
    values = [kept.values(row.get("metadata")) for row in listed]
    columns.update({name: [row[name] for row in values] for name in kept.columns})
    return pa.Table.from_pydict(columns, schema=schema)


def wide_schema(columns: Sequence[str], first: Sequence[dict[str, Any]]) -> pa.Schema:
    """The schema of a wide view: ``line`` an integer, a kept column the type its first
    values have, the rest strings.

    Example:
        >>> wide_schema(["row_key", "n"], [{"row_key": "a", "n": 3}]).field("n").type
        DataType(int64)
    """
    fields = []
    for name in columns:
        if name == "line":
            fields.append(pa.field(name, pa.int64()))
            continue
        values = [row.get(name) for row in first]
        inferred = pa.array(values).type if any(v is not None for v in values) else pa.string()
        fields.append(pa.field(name, pa.string() if pa.types.is_null(inferred) else inferred))
    return pa.schema(fields)


def wide_table(columns: Sequence[str], records: Iterable[dict[str, Any]]) -> pa.Table:
    """One table of wide records (:func:`studio_flows.evaluation.wide_results`).

    Example:
        >>> wide_table(["row_key", "answer:a"], [{"row_key": "r", "answer:a": "x"}]).num_rows
        1
    """
    listed = list(records)
    schema = wide_schema(columns, listed[:1000])
    data = {name: [row.get(name) for row in listed] for name in columns}
    return pa.Table.from_pydict(data, schema=schema)


__all__ = ["RESULT_COLUMNS", "results_schema", "results_table", "wide_schema", "wide_table"]
