"""Kept columns read from each format into Row.metadata, outside the row's identity."""

from __future__ import annotations

import csv
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from studio_flows.datasets import DatasetOptions, read_rows
from studio_flows.errors import DatasetError
from studio_flows.rows import BadRow, GenerationParams, Row

KEEP = DatasetOptions(id_column="id", keep_columns=("expected", "score"))
PARAMS = GenerationParams("m")


def _rows(path: Path, options: DatasetOptions) -> list[Row | BadRow]:
    return list(read_rows(path, options))


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _write_csv(path: Path, records: list[dict[str, Any]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    return path


RECORDS = [
    {"id": "a", "prompt": "2+2?", "expected": "4", "score": 1},
    {"id": "b", "prompt": "Capital of France?", "expected": "Paris", "score": 0.5},
]


def test_jsonl_keeps_the_json_values_and_a_row_without_one_is_a_bad_row(tmp_path: Path) -> None:
    records = [*RECORDS, {"id": "c", "prompt": "Why?", "expected": None}]
    path = _write_jsonl(tmp_path / "q.jsonl", records)
    found = _rows(path, KEEP)
    assert [r.metadata for r in found[:2] if isinstance(r, Row)] == [
        {"expected": "4", "score": 1},
        {"expected": "Paris", "score": 0.5},
    ]
    assert str(found[2]) == f"{path}:3: no column 'score' to keep (--keep-columns)"


def test_csv_keeps_text_and_an_empty_cell_is_null(tmp_path: Path) -> None:
    records = [*RECORDS, {"id": "c", "prompt": "Why?", "expected": "", "score": "3"}]
    path = _write_csv(tmp_path / "q.csv", records)
    assert [r.metadata for r in _rows(path, KEEP) if isinstance(r, Row)] == [
        {"expected": "4", "score": "1"},
        {"expected": "Paris", "score": "0.5"},
        {"expected": None, "score": "3"},
    ]


def test_parquet_keeps_json_values_of_its_types(tmp_path: Path) -> None:
    table = pa.table(
        {
            "id": ["a", "b"],
            "prompt": ["2+2?", "Why?"],
            "expected": ["4", None],
            "score": [1.5, math.nan],
            "asked": [datetime(2026, 1, 2, 3, 4, tzinfo=UTC), None],
            "tags": [["x", "y"], []],
        }
    )
    pq.write_table(table, tmp_path / "q.parquet")
    options = DatasetOptions(id_column="id", keep_columns=("expected", "score", "asked", "tags"))
    assert [r.metadata for r in _rows(tmp_path / "q.parquet", options)] == [
        {"expected": "4", "score": 1.5, "asked": "2026-01-02T03:04:00+00:00", "tags": ["x", "y"]},
        {"expected": None, "score": None, "asked": None, "tags": []},
    ]


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_a_kept_column_the_file_lacks_is_one_sentence_naming_it_and_the_file(
    tmp_path: Path, suffix: str
) -> None:
    path = tmp_path / f"q.{suffix}"
    if suffix == "csv":
        _write_csv(path, RECORDS)
    else:
        pq.write_table(pa.Table.from_pylist(RECORDS), path)
    options = DatasetOptions(keep_columns=("expected", "answer"))
    with pytest.raises(DatasetError) as caught:
        _rows(path, options)
    assert str(caught.value) == (
        f"{path}: no column 'answer' to keep (--keep-columns); "
        "its columns are id, prompt, expected, score"
    )


@pytest.mark.parametrize("suffix", ["jsonl", "csv", "parquet"])
def test_keeping_columns_does_not_change_a_rows_identity(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"q.{suffix}"
    if suffix == "jsonl":
        _write_jsonl(path, RECORDS)
    elif suffix == "csv":
        _write_csv(path, RECORDS)
    else:
        pq.write_table(pa.Table.from_pylist(RECORDS), path)
    for id_column in (None, "id"):
        plain = _rows(path, DatasetOptions(id_column=id_column))
        kept = _rows(path, DatasetOptions(id_column=id_column, keep_columns=("expected",)))
        assert all(isinstance(r, Row) for r in plain + kept)
        assert [r.identity(PARAMS) for r in kept] == [r.identity(PARAMS) for r in plain]  # type: ignore[union-attr]
        assert [r.metadata for r in plain] == [None, None]  # type: ignore[union-attr]
