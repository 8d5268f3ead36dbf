"""generate_rows: rows held in memory through the same engine as a file, answers in order."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from studio_flows import generate_rows, read_results
from studio_flows.emulator import EmulatorServer
from studio_flows.errors import DatasetError

PROMPTS = [f"question {i}?" for i in range(7)]


def answer(prompt: str) -> str:
    return f"rows-model answers: {prompt}"


def test_a_list_of_dicts_is_answered_row_by_row_in_order(flow_env: EmulatorServer) -> None:
    flow_env.configure(shuffle_results=True)
    rows = [{"prompt": p} for p in PROMPTS] + [{"prompt": PROMPTS[0]}]  # a duplicate too

    answers = generate_rows(rows, "rows-model", shard_size=3)

    assert [a.task_index for a in answers] == list(range(len(rows)))
    assert [a.text for a in answers] == [answer(r["prompt"]) for r in rows]
    assert flow_env.stats()["jobs_created"] == 3  # 7 distinct rows in shards of 3


def test_a_pyarrow_table_with_ids_and_a_named_database_is_paid_once(
    flow_env: EmulatorServer, tmp_path: Path
) -> None:
    table = pa.table({"id": [f"r{i}" for i in range(len(PROMPTS))], "prompt": PROMPTS})
    database_url = f"sqlite:///{tmp_path / 'rows.db'}"

    first = generate_rows(table, "rows-model", id_column="id", database_url=database_url)
    again = generate_rows(table, "rows-model", id_column="id", database_url=database_url)

    assert [a.text for a in first] == [answer(p) for p in PROMPTS]
    assert again == first
    assert flow_env.stats()["jobs_created"] == 1  # the rerun found every row answered


def test_rows_that_are_not_dicts_are_refused_before_any_job(flow_env: EmulatorServer) -> None:
    with pytest.raises(DatasetError, match="row 2: a dict is needed, not str"):
        generate_rows([{"prompt": "fine"}, "not a row"], "rows-model")
    assert flow_env.stats()["jobs_created"] == 0


def test_kept_columns_come_back_as_columns_of_read_results(
    flow_env: EmulatorServer, tmp_path: Path
) -> None:
    database_url = f"sqlite:///{tmp_path / 'rows.db'}"
    rows = [
        {"prompt": p, "expected": str(i), "status": "gold", "weight": i / 2}
        for i, p in enumerate(PROMPTS[:3])
    ]

    answers = generate_rows(
        rows, "rows-model", keep_columns=["expected", "status", "weight"], database_url=database_url
    )
    table = read_results.fn(database_url=database_url)

    assert [a.status for a in answers] == ["completed"] * 3
    assert table.column_names[-3:] == ["expected", "input_status", "weight"]
    by_prompt = {
        r["messages"][-1]["content"]: (r["expected"], r["input_status"], r["weight"], r["status"])
        for r in table.to_pylist()
    }
    assert by_prompt == {p: (str(i), "gold", i / 2, "completed") for i, p in enumerate(PROMPTS[:3])}
    assert table.schema.field("weight").type == pa.float64()
