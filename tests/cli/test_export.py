"""`studio-flows results` exports: a fixed, typed Parquet schema at any size; no partial files.

The CLI runs as the installed console script (a subprocess); the failure paths of the
writer are driven directly with rows that stop halfway.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from studio_flows.cli import app
from studio_flows.cli.export import ExportFormat, write_export
from studio_flows.errors import ConfigurationError
from studio_flows.models import Message
from studio_flows.rows import GenerationParams, ResultRecord, Row, Shard
from studio_flows.storage import complete_shard, iter_results, make_engine
from tests.fixtures.cli_runs import STUDIO_FLOWS

COMPLETED, FAILED, SHARD = 10_050, 5, 100  # more completed rows than one Parquet batch
FORMATS: list[ExportFormat] = ["jsonl", "csv", "parquet"]


def _write_shard(engine: Any, first: int, count: int, *, failed: bool) -> None:
    rows = tuple(
        Row.from_messages([Message(role="user", content=f"question {i}")], line=i + 1)
        for i in range(first, first + count)
    )
    shard = Shard(dataset="big.jsonl", params=GenerationParams("m"), rows=rows)
    records = [
        ResultRecord(
            identity=row.identity(shard.params),
            task_index=index,
            messages=row.messages,
            status="failed" if failed else "completed",
            result=None if failed else f"answer {first + index}",
            error=f"task {index} ended failed" if failed else None,
        )
        for index, row in enumerate(rows)
    ]
    complete_shard(
        engine, shard, job_id=f"job-{first}", job_status="FINISHED", records=records,
        flow_run_id=None,
    )  # fmt: skip


@pytest.fixture(scope="module")
def big_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """10,050 completed rows written first, then 5 failed ones (the order exports read)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('export')}/big.db"
    engine = make_engine(url)
    for first in range(0, COMPLETED, SHARD):
        _write_shard(engine, first, min(SHARD, COMPLETED - first), failed=False)
    _write_shard(engine, COMPLETED, FAILED, failed=True)
    engine.dispose()
    return url


def _results(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert STUDIO_FLOWS is not None, "the studio-flows console script is not installed"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_STUDIO_")}
    return subprocess.run(
        [STUDIO_FLOWS, "results", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_parquet_export_past_one_batch_has_the_typed_schema_and_every_row(
    big_db: str, tmp_path: Path
) -> None:
    out = tmp_path / "all.parquet"
    done = _results("--database-url", big_db, "--format", "parquet", "--output", str(out),
                    cwd=tmp_path)  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == f"wrote {COMPLETED + FAILED} rows to {out}"
    schema = pq.read_schema(out)
    turn = pa.struct([("role", pa.string()), ("content", pa.string())])
    expected = {
        "dataset": pa.string(),
        "status": pa.string(),
        "result": pa.string(),
        "error": pa.string(),
        "messages": pa.list_(turn),
        "completed_at": pa.timestamp("us", tz="UTC"),
        "created_at": pa.timestamp("us", tz="UTC"),
        "task_index": pa.int64(),
    }
    assert {name: schema.field(name).type for name in expected} == expected
    assert schema.field("error").nullable
    table = pq.read_table(out)
    assert table.num_rows == COMPLETED + FAILED
    errors = table.column("error").to_pylist()
    assert errors[:COMPLETED] == [None] * COMPLETED  # the failed rows come last
    assert sorted(errors[COMPLETED:]) == [f"task {i} ended failed" for i in range(FAILED)]
    first = table.filter(pc.equal(table.column("result"), "answer 0")).to_pylist()
    assert [row["messages"] for row in first] == [[{"role": "user", "content": "question 0"}]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.parquet"]  # no temp file left


def test_table_format_with_an_output_file_is_refused_in_one_line(
    big_db: str, tmp_path: Path
) -> None:
    out = tmp_path / "table.txt"
    done = _results("--database-url", big_db, "--format", "table", "--output", str(out),
                    cwd=tmp_path)  # fmt: skip

    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip() == (
        "error: --format table prints to the terminal and writes no file; "
        "use --format jsonl, csv or parquet with --output"
    )
    assert not out.exists()


def test_an_output_in_a_missing_folder_is_one_line_exit_2_and_no_file(
    big_db: str, tmp_path: Path
) -> None:
    out = tmp_path / "no-such-folder" / "all.parquet"
    done = _results("--database-url", big_db, "--format", "parquet", "--output", str(out),
                    cwd=tmp_path)  # fmt: skip

    assert done.returncode == 2
    assert "Traceback" not in done.stdout + done.stderr
    assert done.stderr.strip() == (f"error: cannot write {out}: no such directory {out.parent}")
    assert list(tmp_path.iterdir()) == []


class _StreamBroke(Exception):
    pass


def _rows_then_failure(database_url: str, count: int) -> Iterator[dict[str, Any]]:
    """The first ``count`` rows of the table, then an error, as a lost database would give."""
    engine = make_engine(database_url)
    try:
        for index, row in enumerate(iter_results(engine)):
            if index == count:
                raise _StreamBroke("the database went away")
            yield row
    finally:
        engine.dispose()


@pytest.mark.parametrize("output_format", FORMATS)
def test_an_export_that_fails_midway_leaves_the_old_file_and_no_partial_one(
    big_db: str, tmp_path: Path, output_format: ExportFormat
) -> None:
    out = tmp_path / f"answers.{output_format}"
    out.write_text("an earlier export\n", encoding="utf-8")

    with pytest.raises(_StreamBroke):
        # Past one Parquet batch, so a row group was already written when it broke.
        write_export(_rows_then_failure(big_db, 10_001), output_format, out)

    assert out.read_text(encoding="utf-8") == "an earlier export\n"
    assert list(tmp_path.iterdir()) == [out]


@pytest.mark.parametrize("output_format", FORMATS)
def test_every_format_refuses_a_missing_folder_before_writing(
    tmp_path: Path, output_format: ExportFormat
) -> None:
    out = tmp_path / "missing" / f"answers.{output_format}"
    with pytest.raises(ConfigurationError, match="no such directory"):
        write_export([], output_format, out)
    assert list(tmp_path.iterdir()) == []


def test_jsonl_export_is_complete_and_replaces_the_target(big_db: str, tmp_path: Path) -> None:
    out = tmp_path / "answers.jsonl"
    engine = make_engine(big_db)
    try:
        count = write_export(iter_results(engine), "jsonl", out)
    finally:
        engine.dispose()
    lines = out.read_text(encoding="utf-8").splitlines()
    assert count == len(lines) == COMPLETED + FAILED
    assert json.loads(lines[-1])["status"] == "failed"
    assert list(tmp_path.iterdir()) == [out]


def test_reading_a_database_that_does_not_exist_is_refused_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"

    result = CliRunner().invoke(app, ["results", "--database-url", f"sqlite:///{missing}"])

    assert result.exit_code == 2, result.output
    assert f"no results database at {missing}" in result.output
    assert not missing.exists()
