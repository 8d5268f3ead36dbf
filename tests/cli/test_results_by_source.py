"""`studio-flows results SOURCE`: the results of a file's rows, in its order, with line numbers.

Results belong to the first file name that produced them (the ``dataset`` column), so a
name cannot find the rows of another file with the same content, and two files with one
name share it. A source file finds its rows by identity instead. The scenario runs the
installed console script against the emulator; the rest writes results directly and
exports in-process.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from studio_flows.cli import app
from studio_flows.datasets import DatasetOptions, iter_good_rows, iter_shards
from studio_flows.emulator import EmulatorServer
from studio_flows.models import Message
from studio_flows.resources import examples_dir
from studio_flows.rows import GenerationParams, ResultRecord, Row
from studio_flows.storage import (
    LOOKUP_CHUNK,
    complete_shard,
    make_engine,
    results_of_rows,
)
from tests.fixtures.cli_runs import (
    SECRET_TOKEN,
    STUDIO_FLOWS,
    cli_env,
    generate_args,
    run_cli,
    summary_value,
)

runner = CliRunner()
PARAMS = GenerationParams("m")


def _write_results(database_url: str, rows: list[Row], dataset: str, shard_size: int) -> None:
    """Store a completed result for each of ``rows``, the shards written last one first."""
    engine = make_engine(database_url)
    shards = list(iter_shards(rows, dataset=dataset, params=PARAMS, shard_size=shard_size))
    for shard in reversed(shards):  # so that write order is not the file's order
        records = [
            ResultRecord(
                row.identity(PARAMS), index, row.messages, "completed", f"a{row.line}", None
            )
            for index, row in enumerate(shard.rows)
        ]
        complete_shard(
            engine, shard, job_id=shard.shard_key, job_status="FINISHED", records=records,
            flow_run_id=None,
        )  # fmt: skip
    engine.dispose()


def _prompts(path: Path, prompts: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts), encoding="utf-8")
    return path


def _export(*args: str) -> list[dict[str, object]]:
    """``results ARGS --format jsonl`` in-process, as parsed records."""
    done = runner.invoke(app, ["results", *args, "--format", "jsonl"])
    assert done.exit_code == 0, done.output
    return [json.loads(line) for line in done.stdout.splitlines()]


# --------------------------------------------------------------------------- the scenario


@pytest.mark.slow
def test_parquet_after_jsonl_finds_the_jsonl_results_in_order_with_line_numbers(
    emulator: EmulatorServer, prefect_server: str, tmp_path: Path
) -> None:
    emulator.configure(tokens=[SECRET_TOKEN])
    for name in ("prompts.jsonl", "prompts.parquet"):
        shutil.copy(examples_dir() / name, tmp_path / name)
    database_url = f"sqlite:///{tmp_path}/results.db"
    env = cli_env(emulator, tmp_path / "prefect", api_url=prefect_server)

    first = run_cli(generate_args(tmp_path / "prompts.jsonl", database_url), env, tmp_path)
    again = run_cli(generate_args(tmp_path / "prompts.parquet", database_url), env, tmp_path)
    assert first.returncode == 0, first
    assert again.returncode == 0, again
    assert summary_value(again.stdout, "already done") == 40
    assert summary_value(again.stdout, "answers submitted") == 0

    assert STUDIO_FLOWS is not None
    by_name = run_cli(
        [STUDIO_FLOWS, "results", "--dataset", "prompts.parquet", "--database-url", database_url,
         "--format", "jsonl"], env, tmp_path,
    )  # fmt: skip
    assert by_name.returncode == 0, by_name
    assert by_name.stdout == ""
    assert "no results stored under the dataset name 'prompts.parquet'" in by_name.stderr

    out = tmp_path / "answers.jsonl"
    by_source = run_cli(
        [STUDIO_FLOWS, "results", "prompts.parquet", "--database-url", database_url,
         "--format", "jsonl", "--output", str(out)], env, tmp_path,
    )  # fmt: skip
    assert by_source.returncode == 0, by_source
    assert by_source.stderr.strip() == f"wrote 40 rows to {out}"
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    source_rows = list(iter_good_rows(tmp_path / "prompts.parquet"))
    assert [r["line"] for r in records] == list(range(1, 41))
    assert [r["row_key"] for r in records] == [row.row_key for row in source_rows]
    assert {r["dataset"] for r in records} == {"prompts.jsonl"}  # the file that paid for them
    assert {r["status"] for r in records} == {"completed"}
    last_turns = [str(r["messages"][-1]["content"]) for r in records]  # type: ignore[index]
    assert all(str(r["result"]).endswith(turn) for r, turn in zip(records, last_turns, strict=True))


# --------------------------------------------------------------------------- by source


def test_rows_come_in_the_source_order_with_their_lines_whatever_the_write_order(
    tmp_path: Path, sqlite_url: str
) -> None:
    source = _prompts(tmp_path / "p.jsonl", [f"question {i}" for i in range(7)])
    _write_results(sqlite_url, list(iter_good_rows(source)), "p.jsonl", shard_size=3)

    records = _export(str(source), "--database-url", sqlite_url)

    assert [r["line"] for r in records] == [1, 2, 3, 4, 5, 6, 7]
    assert [r["result"] for r in records] == [f"a{line}" for line in range(1, 8)]


def test_a_row_never_run_is_exported_with_an_empty_status(tmp_path: Path, sqlite_url: str) -> None:
    source = _prompts(tmp_path / "p.jsonl", ["run", "never run", "run too"])
    rows = list(iter_good_rows(source))
    _write_results(sqlite_url, [rows[0], rows[2]], "p.jsonl", shard_size=2)

    records = _export(str(source), "--database-url", sqlite_url, "--model-id", "m")
    table = runner.invoke(app, ["results", str(source), "--database-url", sqlite_url])
    completed = _export(str(source), "--database-url", sqlite_url, "--status", "completed")

    assert [(r["line"], r["status"]) for r in records] == [
        (1, "completed"), (2, None), (3, "completed"),
    ]  # fmt: skip
    assert records[1]["messages"] == [{"role": "user", "content": "never run"}]
    assert records[1]["model_id"] == "m"
    assert records[1]["result"] is None and records[1]["dataset"] is None
    assert "not run" in table.stdout
    assert [r["line"] for r in completed] == [1, 3]


def test_a_parquet_export_by_source_is_typed_and_holds_rows_never_run(
    tmp_path: Path, sqlite_url: str
) -> None:
    source = _prompts(tmp_path / "p.jsonl", ["run", "never run"])
    _write_results(sqlite_url, list(iter_good_rows(source))[:1], "p.jsonl", shard_size=1)
    out = tmp_path / "answers.parquet"

    args = [str(source), "--database-url", sqlite_url, "--format", "parquet", "--output", str(out)]
    done = runner.invoke(app, ["results", *args])

    assert done.exit_code == 0, done.output
    table = pq.read_table(out)
    assert table.schema.names[0] == "line"
    assert table.schema.field("line").type == pa.int64()
    assert not table.schema.field("line").nullable
    assert table.column("line").to_pylist() == [1, 2]
    assert table.column("status").to_pylist() == ["completed", None]


def test_two_files_of_one_name_each_get_only_their_own_rows(
    tmp_path: Path, sqlite_url: str
) -> None:
    one = _prompts(tmp_path / "a" / "prompts.jsonl", ["first file, row 1", "first file, row 2"])
    two = _prompts(tmp_path / "b" / "prompts.jsonl", ["second file"])
    for source in (one, two):
        _write_results(sqlite_url, list(iter_good_rows(source)), "prompts.jsonl", shard_size=5)

    assert len(_export("--dataset", "prompts.jsonl", "--database-url", sqlite_url)) == 3
    assert [r["result"] for r in _export(str(one), "--database-url", sqlite_url)] == ["a1", "a2"]
    assert [r["result"] for r in _export(str(two), "--database-url", sqlite_url)] == ["a1"]


def test_the_source_is_read_with_the_generate_options(tmp_path: Path, sqlite_url: str) -> None:
    source = tmp_path / "q.jsonl"
    source.write_text('{"key": "k1", "question": "Hi"}\n', encoding="utf-8")
    options = DatasetOptions(prompt_column="question", id_column="key", system_prompt="Be brief.")
    _write_results(sqlite_url, list(iter_good_rows(source, options)), "q.jsonl", shard_size=1)

    plain_options = ["--prompt-column", "question", "--id-column", "key"]
    records = _export(str(source), "--database-url", sqlite_url, *plain_options,
                      "--system-prompt", "Be brief.")  # fmt: skip
    other_prompt = _export(str(source), "--database-url", sqlite_url, *plain_options)

    assert [(r["row_key"], r["status"]) for r in records] == [("k1", "completed")]
    # Another system prompt is another conversation, never sent: no result of the first.
    assert [(r["row_key"], r["status"]) for r in other_prompt] == [("k1", None)]


def test_results_of_rows_matches_across_lookup_chunks(sqlite_url: str) -> None:
    count = LOOKUP_CHUNK * 2 + 7
    rows = [
        Row.from_messages([Message(role="user", content=f"q{i}")], line=i + 1) for i in range(count)
    ]
    _write_results(sqlite_url, rows[::2], "d.jsonl", shard_size=100)
    engine = make_engine(sqlite_url)
    try:
        found = list(results_of_rows(engine, rows))
    finally:
        engine.dispose()
    assert [row.line for row, _ in found] == list(range(1, count + 1))
    assert [len(results) for _, results in found] == [1 - i % 2 for i in range(count)]
    assert all(results[0]["row_key"] == row.row_key for row, results in found if results)


# --------------------------------------------------------------------------- by name


def test_a_dataset_export_is_in_shard_order_then_task_index(
    tmp_path: Path, sqlite_url: str
) -> None:
    source = _prompts(tmp_path / "p.jsonl", [f"question {i}" for i in range(7)])
    _write_results(sqlite_url, list(iter_good_rows(source)), "p.jsonl", shard_size=3)

    records = _export("--dataset", "p.jsonl", "--database-url", sqlite_url)

    # Shards in the order they were recorded (last one first here), each by task index.
    assert [r["result"] for r in records] == ["a7", "a4", "a5", "a6", "a1", "a2", "a3"]
    assert [r["task_index"] for r in records] == [0, 0, 1, 2, 0, 1, 2]
    assert "line" not in records[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["x.jsonl", "--dataset", "x.jsonl"], "error: give SOURCE or --dataset, not both"),
        (["--id-column", "id"], "error: --id-column reads a SOURCE file; name one"),
        (["--status", "done"], "error: --status must be completed or failed, not 'done'"),
        (["missing.jsonl"], "error: missing.jsonl: no such dataset file"),
    ],
)
def test_contradicting_or_bad_results_options_are_one_line_exit_2(
    sqlite_url: str, args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    done = runner.invoke(app, ["results", *args, "--database-url", sqlite_url])
    assert done.exit_code == 2
    assert done.stderr.startswith(message)
    assert len(done.stderr.strip().splitlines()) == 1
