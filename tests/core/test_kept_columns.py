"""How kept input columns become export columns: names (clashes), kinds and values."""

from __future__ import annotations

import pyarrow as pa

from studio_flows.kept_columns import RESERVED_NAMES, KeptColumns, kept_column_name
from studio_flows.result_table import RESULT_COLUMNS, results_table


def test_a_name_of_a_result_column_is_exported_with_the_input_prefix() -> None:
    assert {kept_column_name(name) for name in RESULT_COLUMNS} == {
        f"input_{name}" for name in RESULT_COLUMNS
    }
    assert kept_column_name("line") == "input_line"  # the by-source export's first column
    assert kept_column_name("metadata") == "input_metadata"
    assert kept_column_name("expected") == "expected"
    assert "prompt" not in RESERVED_NAMES


def test_kinds_follow_every_value_of_a_column() -> None:
    kept = KeptColumns.of(
        [
            {"n": 1, "x": 1, "flag": True, "mixed": "a", "nested": {"k": [1]}},
            {"n": 2, "x": 2.5, "flag": None, "mixed": 3, "nested": None},
            None,
            {"only_null": None},
        ]
    )
    assert kept.kinds == {
        "flag": "boolean",
        "mixed": "string",
        "n": "integer",
        "nested": "string",
        "only_null": None,
        "x": "number",
    }
    types = {f.name: f.type for f in kept.fields()}
    assert types == {
        "flag": pa.bool_(), "mixed": pa.string(), "n": pa.int64(), "nested": pa.string(),
        "only_null": pa.string(), "x": pa.float64(),
    }  # fmt: skip
    assert kept.values({"n": 1, "x": 1, "mixed": 3, "nested": {"k": [1]}}) == {
        "flag": None, "mixed": "3", "n": 1, "nested": '{"k": [1]}', "only_null": None, "x": 1.0,
    }  # fmt: skip


def test_a_results_table_of_rows_keeping_different_columns_has_each_column_once() -> None:
    rows = [
        {"row_key": "a", "metadata": {"status": "gold", "id": 1}},
        {"row_key": "b", "metadata": {"id": 2, "note": "n"}},
        {"row_key": "c", "metadata": None},
    ]
    table = results_table([{**_required(), **row} for row in rows])
    # Ordered by the input names: id, note, status.
    assert table.column_names == [*RESULT_COLUMNS, "id", "note", "input_status"]
    assert table.column("id").to_pylist() == [1, 2, None]
    assert table.column("input_status").to_pylist() == ["gold", None, None]
    assert table.column("status").to_pylist() == ["completed"] * 3


def _required() -> dict[str, object]:
    return {
        "dataset": "d", "model_id": "m", "status": "completed", "task_index": 0,
        "messages": [{"role": "user", "content": "q"}], "shard_key": "s", "temperature": 0.7,
        "max_tokens": 8, "created_at": None,
    }  # fmt: skip
