"""`studio-flows generate --keep-columns` to `studio-flows results`, as a user types them.

The console script against the emulator, on SQLite and the real PostgreSQL: the kept
columns are stored beside each answer and come back as columns of every export; a name
clashing with a result column comes back as ``input_<name>``; keeping columns does not
change what is paid for; a name the source lacks is exit 2 before any job.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from studio_flows.emulator import EmulatorServer
from tests.fixtures.cli_runs import (
    SECRET_TOKEN,
    STUDIO_FLOWS,
    cli_env,
    generate_args,
    ledger,
    run_cli,
    summary_value,
)

ROWS = [
    {"id": i, "prompt": f"What is {i} + {i}?", "expected": str(2 * i), "status": "draft"}
    for i in range(5)
]


def _dataset(path: Path) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS), encoding="utf-8")
    return path


def _results(env: dict[str, str], cwd: Path, database_url: str, *args: str) -> str:
    assert STUDIO_FLOWS is not None
    done = run_cli([STUDIO_FLOWS, "results", "--database-url", database_url, *args], env, cwd)
    assert done.returncode == 0, done
    return done.stdout


@pytest.mark.slow
def test_kept_columns_are_stored_and_exported_and_change_nothing_paid(
    emulator: EmulatorServer, prefect_server: str, tmp_path: Path, database_url: str
) -> None:
    emulator.configure(tokens=[SECRET_TOKEN])
    dataset = _dataset(tmp_path / "evals.jsonl")
    env = cli_env(emulator, tmp_path / "prefect", api_url=prefect_server)
    plain = run_cli(generate_args(dataset, database_url, "--id-column", "id"), env, tmp_path)
    assert plain.returncode == 0, plain
    jobs = emulator.stats()["jobs_created"]

    # The same rows again, now keeping columns: already done, nothing paid twice.
    kept_args = ("--id-column", "id", "--keep-columns", "id, expected,status")
    again = run_cli(generate_args(dataset, database_url, *kept_args), env, tmp_path)
    assert again.returncode == 0, again
    assert summary_value(again.stdout, "already done") == 5
    assert emulator.stats()["jobs_created"] == jobs

    # A new model runs every row and keeps the columns beside each answer.
    other = [*generate_args(dataset, database_url, *kept_args)]
    other[other.index("--model-id") + 1] = "second-model"
    ran = run_cli(other, env, tmp_path)
    assert ran.returncode == 0, ran

    exported = [
        json.loads(line)
        for line in _results(
            env, tmp_path, database_url, "--model-id", "second-model", "--format", "jsonl"
        ).splitlines()
    ]
    assert sorted((r["row_key"], r["id"], r["expected"], r["input_status"]) for r in exported) == [
        (str(i), i, str(2 * i), "draft") for i in range(5)
    ]
    assert {r["status"] for r in exported} == {"completed"}  # the answer's own status

    out = tmp_path / "answers.csv"
    _results(env, tmp_path, database_url, "--format", "csv", "--output", str(out))
    with out.open(encoding="utf-8", newline="") as handle:
        lines = list(csv.DictReader(handle))
    assert list(lines[0])[-3:] == ["expected", "id", "input_status"]
    kept_cells = {(r["model_id"], r["row_key"], r["expected"], r["id"]) for r in lines}
    assert ("second-model", "3", "6", "3") in kept_cells
    assert ("chaos-model", "3", "", "") in kept_cells  # the first run kept nothing

    parquet = tmp_path / "answers.parquet"
    _results(env, tmp_path, database_url, "--format", "parquet", "--output", str(parquet))
    table = pq.read_table(parquet)
    assert table.schema.field("id").type == pa.int64()
    assert table.schema.field("input_status").type == pa.string()
    assert table.num_rows == 10


def test_a_kept_column_the_csv_lacks_is_exit_2_before_any_job(
    emulator: EmulatorServer, tmp_path: Path, sqlite_url: str
) -> None:
    emulator.configure(tokens=[SECRET_TOKEN])
    dataset = tmp_path / "evals.csv"
    dataset.write_text("id,prompt\n1,Why?\n", encoding="utf-8")
    env = cli_env(emulator, tmp_path / "prefect")
    done = run_cli(
        generate_args(dataset, sqlite_url, "--keep-columns", "id,expected"), env, tmp_path
    )
    assert done.returncode == 2, done
    assert done.stderr.strip() == (
        f"error: {dataset}: no column 'expected' to keep (--keep-columns); its columns are "
        "id, prompt"
    )
    assert emulator.stats()["jobs_created"] == 0
    assert ledger(sqlite_url) == []


def test_a_jsonl_row_without_a_kept_column_is_a_bad_row_under_on_bad_rows(
    emulator: EmulatorServer, tmp_path: Path, sqlite_url: str
) -> None:
    emulator.configure(tokens=[SECRET_TOKEN])
    dataset = tmp_path / "evals.jsonl"
    dataset.write_text('{"prompt": "A?", "expected": "a"}\n{"prompt": "B?"}\n', encoding="utf-8")
    env = cli_env(emulator, tmp_path / "prefect")
    done = run_cli(generate_args(dataset, sqlite_url, "--keep-columns", "expected"), env, tmp_path)
    assert done.returncode == 2, done
    assert f"{dataset}:2: no column 'expected' to keep (--keep-columns)" in done.stderr
    assert "Traceback" not in done.output
    assert emulator.stats()["jobs_created"] == 0


def test_a_kept_column_named_twice_is_exit_2(
    emulator: EmulatorServer, tmp_path: Path, sqlite_url: str
) -> None:
    dataset = _dataset(tmp_path / "evals.jsonl")
    env = cli_env(emulator, tmp_path / "prefect")
    done = run_cli(generate_args(dataset, sqlite_url, "--keep-columns", "id,id"), env, tmp_path)
    assert done.returncode == 2, done
    assert "--keep-columns" in done.stderr and "'id' is named twice" in done.stderr
