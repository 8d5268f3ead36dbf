"""`studio-flows generate --sql ... --template ... --dry-run` as a user types it, on SQLite
and the real PostgreSQL, with the emulator's job counters as the proof of what was paid."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from studio_flows.cli import app
from studio_flows.datasets import sql_dataset_name
from studio_flows.emulator import EmulatorServer
from tests.fixtures.cli_runs import (
    MODEL,
    SECRET_TOKEN,
    cli_env,
    finish_cli,
    generate_args,
    start_cli,
)
from tests.fixtures.prefect_server import free_port

QUERY = "SELECT id, question FROM faq WHERE id > 0"
TEMPLATE = "Answer in one word: {{ question }}"


@pytest.fixture
def cli(flow_env: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> EmulatorServer:
    flow_env.configure(tokens=[SECRET_TOKEN])
    monkeypatch.setenv("MODEL_STUDIO_TOKEN", SECRET_TOKEN)
    return flow_env


def insert_faq(url: str, ids: range) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE IF NOT EXISTS faq (id INTEGER PRIMARY KEY, question TEXT)"
        )
        connection.execute(
            sa.text("INSERT INTO faq (id, question) VALUES (:id, :q)"),
            [{"id": i, "q": f"question {i}?"} for i in ids],
        )
    engine.dispose()


def generate(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["generate", "--model-id", MODEL, "--no-progress", *args])
    return result.exit_code, result.stdout + result.stderr


def test_a_nightly_query_pays_only_for_the_rows_added_since(
    cli: EmulatorServer, database_url: str, tmp_path: Path
) -> None:
    insert_faq(database_url, range(1, 8))
    args = ["--sql", QUERY, "--template", TEMPLATE, "--id-column", "id", "--shard-size", "5"]

    code, output = generate(*args, "--database-url", database_url)
    assert code == 0, output
    assert cli.stats()["jobs_created"] == 2  # 7 rows in shards of 5

    insert_faq(database_url, range(8, 11))
    cli.reset()
    code, output = generate(*args, "--database-url", database_url)
    assert code == 0, output
    stats = cli.stats()
    assert (stats["jobs_created"], stats["conversations"]) == (1, 3)

    export = tmp_path / "answers.jsonl"
    name = sql_dataset_name(QUERY)
    result = CliRunner().invoke(
        app,
        [
            "results",
            "--database-url",
            database_url,
            "--dataset",
            name,
            "--format",
            "jsonl",
            "--output",
            str(export),
        ],
    )
    assert result.exit_code == 0, result.stdout + result.stderr
    lines = export.read_text().splitlines()
    assert len(lines) == 10
    assert f"{MODEL} answers: Answer in one word: question 10?" in export.read_text()


def test_a_query_on_another_database_named_by_dataset_name(
    cli: EmulatorServer, sqlite_url: str, tmp_path: Path
) -> None:
    source = f"sqlite:///{tmp_path / 'warehouse.db'}"
    insert_faq(source, range(1, 4))
    code, output = generate(
        "--sql", "SELECT question AS prompt FROM faq", "--source-url", source,
        "--dataset-name", "faq-nightly", "--database-url", sqlite_url,
    )  # fmt: skip
    assert code == 0, output
    assert "faq-nightly" in output
    result = CliRunner().invoke(
        app, ["results", "--database-url", sqlite_url, "--dataset", "faq-nightly"]
    )
    assert result.exit_code == 0 and "question 3?" in result.stdout, result.stdout


def test_a_changed_template_generates_again_an_unchanged_one_does_not(
    cli: EmulatorServer, sqlite_url: str, tmp_path: Path
) -> None:
    data = tmp_path / "faq.csv"
    data.write_text("id,question\n1,Sky colour?\n2,Grass colour?\n")
    common = [str(data), "--id-column", "id", "--database-url", sqlite_url]

    assert generate(*common, "--template", TEMPLATE)[0] == 0
    assert generate(*common, "--template", TEMPLATE)[0] == 0
    assert cli.stats()["jobs_created"] == 1  # the second run found both rows done
    code, output = generate(*common, "--template", "In one word: {{ question }}")
    assert code == 0, output
    assert cli.stats()["jobs_created"] == 2


def test_a_row_missing_a_template_column_is_a_bad_row_before_any_job(
    cli: EmulatorServer, sqlite_url: str, tmp_path: Path
) -> None:
    data = tmp_path / "faq.jsonl"
    data.write_text('{"id": 1, "question": "Sky?"}\n{"id": 2, "topic": "grass"}\n')
    common = [str(data), "--id-column", "id", "--template", TEMPLATE, "--database-url", sqlite_url]

    code, output = generate(*common)
    assert code == 2, output
    assert f"{data}:2: template: 'question' is undefined" in output
    assert cli.stats()["jobs_created"] == 0

    code, output = generate(*common, "--on-bad-rows", "skip")
    assert code == 0, output
    assert cli.stats()["conversations"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--template", "{{ question"], "error: --template: unexpected end of template"),
        (["--sql", "SELECT nope FROM missing"], "the query failed on sqlite:///"),
    ],
)
def test_a_bad_template_or_query_is_exit_2_with_nothing_submitted(
    cli: EmulatorServer, sqlite_url: str, tmp_path: Path, args: list[str], message: str
) -> None:
    data = tmp_path / "p.jsonl"
    data.write_text('{"question": "Sky?"}\n')
    source = [] if "--sql" in args else [str(data)]
    code, output = generate(*source, *args, "--database-url", sqlite_url)
    assert code == 2, output
    assert message in output and "Traceback" not in output
    assert cli.stats()["jobs_created"] == 0


def test_a_dry_run_prints_what_would_be_paid_and_posts_nothing(
    cli: EmulatorServer, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    insert_faq(database_url, range(1, 8))
    args = ["--sql", QUERY, "--template", TEMPLATE, "--id-column", "id", "--shard-size", "5"]
    assert generate(*args, "--database-url", database_url)[0] == 0
    insert_faq(database_url, range(8, 15))
    cli.reset()
    monkeypatch.delenv("MODEL_STUDIO_TOKEN")  # a dry run pays nothing: no token needed

    code, output = generate(*args, "--database-url", database_url, "--dry-run")

    assert code == 0, output
    assert cli.stats()["requests"] == {}  # not a POST, not even the access check
    for label, value in [
        ("rows in source", 14),
        ("answers already done", 7),
        ("answers that would be submitted", 7),
        ("jobs that would be submitted", 2),
    ]:
        assert any(label in line and line.rstrip(" │").endswith(f" {value}") for line in
                   output.splitlines()), (label, output)  # fmt: skip
    assert "Dry run: nothing was submitted." in output


def test_a_dry_run_needs_no_prefect_server_and_no_token(
    emulator: EmulatorServer, sqlite_url: str, tmp_path: Path
) -> None:
    insert_faq(sqlite_url, range(1, 4))
    # A Prefect API nobody answers: touching Prefect at all would fail the command.
    env = cli_env(emulator, tmp_path / "prefect", api_url=f"http://127.0.0.1:{free_port()}/api")
    env.pop("MODEL_STUDIO_TOKEN")
    args = [*generate_args(Path("unused"), sqlite_url), "--dry-run"]
    args.remove("unused")
    started = time.monotonic()
    process = start_cli([*args, "--sql", QUERY, "--template", TEMPLATE], env, tmp_path)
    result = finish_cli(process, started)
    assert result.returncode == 0, result
    assert "answers that would be submitted" in result.stdout and "Traceback" not in result.output
    assert emulator.stats()["requests"] == {}
