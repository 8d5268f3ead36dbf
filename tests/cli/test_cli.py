"""The command line, in-process: `demo`, `results` and its exports."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from studio_flows.cli import app
from studio_flows.models import Message
from studio_flows.rows import GenerationParams, ResultRecord, Row, Shard
from studio_flows.storage import complete_shard, make_engine

runner = CliRunner()


@pytest.fixture
def results_db(sqlite_url: str) -> str:
    """A database holding one shard of three rows: two completed, one failed."""
    rows = tuple(
        Row.from_messages([Message(role="user", content=f"question {i}")], line=i + 1)
        for i in range(3)
    )
    shard = Shard(dataset="q.jsonl", params=GenerationParams("m"), rows=rows)
    records = [
        ResultRecord(
            identity=row.identity(shard.params),
            task_index=i,
            messages=row.messages,
            status="failed" if i == 1 else "completed",
            result=None if i == 1 else f"answer {i}",
            error="task 1 ended failed" if i == 1 else None,
        )
        for i, row in enumerate(rows)
    ]
    engine = make_engine(sqlite_url)
    complete_shard(
        engine, shard, job_id="j", job_status="FINISHED", records=records, flow_run_id=None
    )
    engine.dispose()
    return sqlite_url


def test_results_export_jsonl_keeps_every_row(results_db: str, tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    result = runner.invoke(
        app, ["results", "--database-url", results_db, "--format", "jsonl", "--output", str(out)]
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["result"] or "" for r in rows) == ["", "answer 0", "answer 2"]
    assert {r["status"] for r in rows} == {"completed", "failed"}


def test_results_filter_by_status_to_csv(results_db: str, tmp_path: Path) -> None:
    out = tmp_path / "r.csv"
    args = ["results", "--database-url", results_db, "--status", "failed"]
    result = runner.invoke(app, [*args, "--format", "csv", "--output", str(out)])
    assert result.exit_code == 0, result.output
    with out.open() as stream:
        rows = list(csv.DictReader(stream))
    assert [r["error"] for r in rows] == ["task 1 ended failed"]
    assert json.loads(rows[0]["messages"]) == [{"role": "user", "content": "question 1"}]


def test_results_export_parquet(results_db: str, tmp_path: Path) -> None:
    out = tmp_path / "r.parquet"
    args = ["results", "--database-url", results_db, "--format", "parquet"]
    result = runner.invoke(app, [*args, "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert pq.read_table(out).num_rows == 3


def test_results_with_a_bad_format_is_exit_2_without_traceback(results_db: str) -> None:
    result = runner.invoke(app, ["results", "--database-url", results_db, "--format", "xml"])
    assert result.exit_code == 2
    assert "--format must be" in result.output
    assert "Traceback" not in result.output


def test_demo_answers_every_example_and_a_second_run_pays_nothing(
    prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    # The demo points the settings at its emulator; make sure that does not outlive the test.
    for name in ("TOKEN", "ORGANIZATION_ID", "BASE_URL"):
        monkeypatch.setenv(f"MODEL_STUDIO_{name}", "placeholder")

    # Its own database by default is under PREFECT_HOME (test_first_contact.py); here a
    # file of this test's, so no earlier session's rows are already done.
    demo = ["demo", "--database-url", f"sqlite:///{tmp_path}/demo.db"]
    first = runner.invoke(app, demo)
    second = runner.invoke(app, demo)

    assert first.exit_code == 0, first.output
    assert "Emulator: 4 jobs created" in first.output
    # The value column is as wide as the widest value (the wall time varies): match loosely.
    assert re.search(r"│ answers completed +│ +40 │", first.output)
    assert "40/40 answers done, 0 failed, jobs in flight: 0" in first.output
    assert second.exit_code == 0, second.output
    assert "Emulator: 0 jobs created" in second.output
    assert re.search(r"│ answers already done +│ +40 │", second.output)
    assert (tmp_path / "demo.db").exists() and not (tmp_path / "studio_flows.db").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shard-size", "500"], "--shard-size: Input should be less than or equal to 100"),
        (["--on-bad-rows", "maybe"], "--on-bad-rows: Input should be 'fail' or 'skip'"),
    ],
)
def test_a_bad_option_value_names_its_flag(tmp_path: Path, args: list[str], message: str) -> None:
    dataset = tmp_path / "p.jsonl"
    dataset.write_text('{"prompt": "hi"}\n', encoding="utf-8")
    result = runner.invoke(app, ["generate", str(dataset), "--model-id", "m", *args])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: Invalid options: {message}"


def test_help_lists_every_command_in_order() -> None:
    import typer.main

    from studio_flows.cli.app import COMMAND_ORDER

    registered = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    result = CliRunner().invoke(app, ["--help"])

    assert result.exit_code == 0, result.output
    assert registered == set(COMMAND_ORDER), "a command is missing from COMMAND_ORDER"
    listed = re.findall(r"^│? *([a-z-]+) {2,}", result.output, re.M)
    assert [name for name in listed if name in registered] == list(COMMAND_ORDER)
