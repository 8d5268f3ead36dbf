"""Two stored answers to one row (its template or schema changed, or its parameters): every
way of reading results back gives one per (row, model), the latest completed one.

Results are written by the runs' own writer (``complete_shard``) on SQLite and PostgreSQL;
``studio-flows results`` runs in-process in each format, by dataset name and by source file,
long and ``--wide``; ``read_results`` and ``export_training`` read the same database.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from studio_flows.cli import app
from studio_flows.datasets import DatasetOptions, iter_good_rows, iter_shards
from studio_flows.rows import GenerationParams, ResultRecord, Row
from studio_flows.statuses import RowStatus
from studio_flows.storage import complete_shard, make_engine
from studio_flows.training import export_training
from tasks.generation import read_results

runner = CliRunner()
DATASET = "questions.jsonl"
OLD, NEW = GenerationParams("m", temperature=0.7), GenerationParams("m", temperature=0.2)
# row -> (answer with OLD, answer with NEW); None: the row failed; absent: not sent again.
ANSWERS: dict[str, tuple[str | None, str | None]] = {
    "q0": ("old q0", "new q0"),
    "q1": ("old q1", None),
    "q2": (None, "new q2"),
    "q3": ("old q3", None),
}
RESENT = ("q0", "q1", "q2")
LATEST = {"q0": "new q0", "q1": "old q1", "q2": "new q2", "q3": "old q3"}


def _rows(path: Path, system: str | None) -> list[Row]:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (json.dumps({"id": key, "prompt": f"question {key}"}) for key in ANSWERS)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return list(iter_good_rows(path, DatasetOptions(id_column="id", system_prompt=system)))


def _write(database_url: str, rows: list[Row], params: GenerationParams, which: int) -> None:
    engine = make_engine(database_url)
    for shard in iter_shards(rows, dataset=DATASET, params=params, shard_size=2):
        records = []
        for index, row in enumerate(shard.rows):
            answer = ANSWERS[row.row_key][which]
            status = RowStatus.COMPLETED if answer else RowStatus.FAILED
            error = None if answer else f"failed {row.row_key}"
            records.append(
                ResultRecord(row.identity(params), index, row.messages, status, answer, error)
            )
        complete_shard(
            engine, shard, job_id=shard.shard_key, job_status="FINISHED", records=records,
            flow_run_id=None,
        )  # fmt: skip
    engine.dispose()


def _results(*args: str) -> str:
    done = runner.invoke(app, ["results", *args])
    assert done.exit_code == 0, done.output
    return done.stdout


def _read(path: Path, fmt: str) -> list[dict[str, Any]]:
    if fmt == "jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    if fmt == "csv":
        with path.open(encoding="utf-8", newline="") as stream:
            return list(csv.DictReader(stream))
    return pq.read_table(path).to_pylist()


@pytest.fixture
def two_answers(database_url: str, tmp_path: Path) -> str:
    """A template change: every row with OLD, then the first three sent again with NEW."""
    _write(database_url, _rows(tmp_path / DATASET, None), OLD, 0)
    changed = _rows(tmp_path / "changed" / DATASET, "Answer briefly.")
    _write(database_url, [row for row in changed if row.row_key in RESENT], NEW, 1)
    return database_url


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_results_by_dataset_give_the_latest_completed_answer(
    two_answers: str, tmp_path: Path, fmt: str
) -> None:
    selected = ["--dataset", DATASET, "--database-url", two_answers, "--format", fmt]
    long, wide = tmp_path / f"long.{fmt}", tmp_path / f"wide.{fmt}"
    _results(*selected, "--output", str(long))
    _results(*selected, "--output", str(wide), "--wide")
    failed = tmp_path / f"failed.{fmt}"
    _results(*selected, "--output", str(failed), "--status", "failed")

    assert {r["row_key"]: r["result"] for r in _read(long, fmt)} == LATEST
    assert [r["row_key"] for r in _read(wide, fmt)] == list(ANSWERS)
    assert {r["row_key"]: r["answer:m"] for r in _read(wide, fmt)} == LATEST
    assert _read(failed, fmt) == []  # every row's latest answer completed


def test_read_results_and_the_training_export_give_the_latest_completed_answer(
    two_answers: str, tmp_path: Path
) -> None:
    table = read_results.fn(database_url=two_answers, dataset=DATASET)
    wide = read_results.fn(database_url=two_answers, dataset=DATASET, wide=True)
    failed = read_results.fn(database_url=two_answers, dataset=DATASET, status="failed")
    engine = make_engine(two_answers)
    export_training(engine, DATASET, "m", tmp_path / "train.jsonl")
    engine.dispose()

    keys, answers = table.column("row_key").to_pylist(), table.column("result").to_pylist()
    assert dict(zip(keys, answers, strict=True)) == LATEST
    assert wide.column("row_key").to_pylist() == list(ANSWERS)
    assert wide.column("answer:m").to_pylist() == list(LATEST.values())
    assert failed.num_rows == 0
    lines = (tmp_path / "train.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["messages"][-1]["content"] for line in lines] == list(LATEST.values())


def test_results_by_source_give_the_latest_completed_answer_of_its_conversation(
    database_url: str, tmp_path: Path
) -> None:
    """New parameters, the same conversation: the source's rows find both answers."""
    rows = _rows(tmp_path / DATASET, None)
    _write(database_url, rows, OLD, 0)
    _write(database_url, [row for row in rows if row.row_key in RESENT], NEW, 1)
    source = [str(tmp_path / DATASET), "--id-column", "id", "--database-url", database_url]

    long = [json.loads(line) for line in _results(*source, "--format", "jsonl").splitlines()]
    wide = _results(*source, "--format", "jsonl", "--wide").splitlines()
    failed = _results(*source, "--format", "jsonl", "--status", "failed")

    assert [(r["line"], r["row_key"], r["result"]) for r in long] == [
        (line, key, LATEST[key]) for line, key in enumerate(ANSWERS, start=1)
    ]
    assert [json.loads(line)["answer:m"] for line in wide] == list(LATEST.values())
    assert failed == ""


def test_latest_per_model_prefers_a_completed_answer_then_the_newest() -> None:
    from datetime import UTC, datetime

    from studio_flows.storage import latest_per_model

    at = datetime(2026, 1, 1, tzinfo=UTC)
    later = datetime(2026, 1, 2, tzinfo=UTC)
    results = [
        {"id": 1, "model_id": "b", "status": "completed", "completed_at": at},
        {"id": 2, "model_id": "b", "status": "completed", "completed_at": later},
        {"id": 3, "model_id": "b", "status": "failed", "completed_at": None},
        {"id": 4, "model_id": "a", "status": "failed", "completed_at": None},
        {"id": 5, "model_id": "a", "status": "failed", "completed_at": None},
    ]
    assert [r["id"] for r in latest_per_model(results)] == [5, 2]
