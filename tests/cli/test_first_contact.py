"""What a new user meets in the first minutes (issue 27's papercuts), run as typed through
the installed CLI: a mistaken id column or file suffix, an upgrade hint run as printed,
--help, the demo's own database, the own-flow example offline, long model names at 80
columns, and counts that say whether they count rows or answers."""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from studio_flows.emulator import EmulatorServer
from studio_flows.storage import SCHEMA_VERSION
from tests.fixtures.cli_runs import (
    REPO_ROOT,
    SECRET_TOKEN,
    STUDIO_FLOWS,
    cli_env,
    generate_args,
    run_cli,
)
from tests.fixtures.old_schemas import create_old_database, old_result_row


def _rows(path: Path, count: int) -> Path:
    lines = (json.dumps({"id": f"q{i}", "prompt": f"question {i}?"}) for i in range(count))
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _one_error_line(result_stderr: str) -> str:
    [line] = result_stderr.strip().splitlines()
    assert line.startswith("error: ")
    return line.removeprefix("error: ")


@pytest.mark.parametrize("source", ["file", "query"])
def test_an_id_column_the_source_lacks_is_one_sentence_naming_it_before_anything_runs(
    emulator: EmulatorServer, tmp_path: Path, source: str
) -> None:
    emulator.configure(tokens=[SECRET_TOKEN])
    dataset = _rows(tmp_path / "prompts.jsonl", 4)
    args = generate_args(dataset, f"sqlite:///{tmp_path}/r.db", "--id-column", "ID")
    label = str(dataset)
    if source == "query":
        query = "SELECT 'q1' AS id, 'hi' AS prompt UNION ALL SELECT 'q2', 'ho'"
        args[2:3] = ["--sql", query, "--dataset-name", "faq"]
        label = "faq"
    home = tmp_path / "prefect-home"

    result = run_cli(args, cli_env(emulator, home), tmp_path)

    assert result.returncode == 2, result
    assert _one_error_line(result.stderr) == (
        f"{label}: no id column 'ID' in any row (columns: id, prompt)"
    )
    assert list(home.iterdir()) == []  # answered before any Prefect server
    assert emulator.stats()["jobs_created"] == 0


@pytest.mark.parametrize("mistake", ["missing file", "unknown suffix"])
def test_a_file_mistake_is_named_offline_before_model_studio_is_asked(
    emulator: EmulatorServer, tmp_path: Path, mistake: str
) -> None:
    # Offline (nothing listens at the base URL): the file is what is wrong, not the network.
    dataset = tmp_path / ("nope.jsonl" if mistake == "missing file" else "prompts.txt")
    if mistake == "unknown suffix":
        _rows(tmp_path / "prompts.jsonl", 2).rename(dataset)
    env = cli_env(emulator, tmp_path / "h", MODEL_STUDIO_BASE_URL="http://127.0.0.1:9/api/v1")

    result = run_cli(generate_args(dataset, f"sqlite:///{tmp_path}/r.db"), env, tmp_path)

    assert result.returncode == 2, result
    assert _one_error_line(result.stderr).startswith(f"{dataset}: "), result.stderr


def test_an_unknown_suffix_names_the_suffixes_to_use_and_no_option_that_does_not_exist(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    emulator.configure(tokens=[SECRET_TOKEN])
    dataset = tmp_path / "prompts.txt"
    _rows(tmp_path / "prompts.jsonl", 2).rename(dataset)

    result = run_cli(
        generate_args(dataset, f"sqlite:///{tmp_path}/r.db"),
        cli_env(emulator, tmp_path / "h"),
        tmp_path,
    )

    assert result.returncode == 2, result
    assert _one_error_line(result.stderr) == (
        f"{dataset}: cannot tell the dataset format from the suffix '.txt'; give the file one "
        "of the suffixes .jsonl or .ndjson (JSON lines), .csv (CSV), .parquet or .pq (Parquet)"
    )


def test_the_upgrade_hint_run_as_printed_upgrades_the_database_the_user_named(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    """With the automatic upgrade off; the hint is run from the same folder, as printed."""
    assert STUDIO_FLOWS is not None
    emulator.configure(tokens=[SECRET_TOKEN])
    mine = tmp_path / "data" / "mine.db"
    mine.parent.mkdir()
    create_old_database(f"sqlite:///{mine}", 2, [old_result_row(0)])
    work = tmp_path / "work"
    work.mkdir()
    env = cli_env(emulator, tmp_path / "h", MODEL_STUDIO_DATABASE_AUTO_UPGRADE="false")
    dataset = _rows(tmp_path / "prompts.jsonl", 2)

    refused = run_cli(generate_args(dataset, f"sqlite:///{mine}"), env, work)

    assert refused.returncode == 2, refused
    hint = re.search(r"run `(studio-flows db upgrade[^`]*)`", refused.stderr)
    assert hint, refused.stderr
    argv = shlex.split(hint.group(1))
    upgraded = run_cli([STUDIO_FLOWS, *argv[1:]], env, work)
    assert upgraded.returncode == 0, upgraded
    assert upgraded.stdout.strip() == f"upgraded sqlite:///{mine} from schema 2 to {SCHEMA_VERSION}"
    assert not (work / "studio_flows.db").exists()  # the default database was not touched
    engine = sa.create_engine(f"sqlite:///{mine}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM studio_flows_alembic_version").all()
    engine.dispose()


COMMANDS = [
    ["generate"],
    ["demo"],
    ["results"],
    ["export-training"],
    ["emulator"],
    ["serve"],
    ["db", "upgrade"],
]
# How typer names a value by its Python type: what a user should never have to decode.
PYTHON_TYPES = re.compile(r"<(?:str|int|float|bool|list\[[^>]*\]|\w+ range)>")


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_names_every_value_readably_and_shows_defaults(
    emulator: EmulatorServer, tmp_path: Path, command: list[str]
) -> None:
    assert STUDIO_FLOWS is not None
    env = cli_env(emulator, tmp_path / "h")

    shown = run_cli([STUDIO_FLOWS, *command, "--help"], env, tmp_path)

    assert shown.returncode == 0, shown
    assert not PYTHON_TYPES.findall(shown.stdout), shown.stdout
    flat = " ".join(shown.stdout.split())  # help lines wrapped at 100 columns, joined
    if "--database-url" in flat:
        assert re.search(r"--database-url URL [^\[]*\[default: \S", flat), shown.stdout


def test_generate_help_says_what_each_value_is_and_its_default(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    assert STUDIO_FLOWS is not None
    env = cli_env(emulator, tmp_path / "h")

    shown = " ".join(run_cli([STUDIO_FLOWS, "generate", "--help"], env, tmp_path).stdout.split())

    for expected in (
        r"--model-id ID ",
        r"--temperature NUMBER [^\[]*\[default: 0\.7; 0\.0<=x<=2\.0\]",
        r"--shard-size N [^\[]*\[default: \(MODEL_STUDIO_SHARD_SIZE, else 50\)\]",
        r"--database-url URL [^\[]*\[default: \(MODEL_STUDIO_DATABASE_URL, else "
        r"sqlite:///studio_flows\.db\)\]",
        r"--on-bad-rows fail\|skip [^\[]*\[default: fail\]",
    ):
        assert re.search(expected, shown), (expected, shown)


@pytest.mark.slow
def test_the_demo_writes_to_a_database_of_its_own_and_says_where(
    emulator: EmulatorServer, prefect_server: str, tmp_path: Path
) -> None:
    """Not the user's ./studio_flows.db: their first real export holds no demo rows."""
    assert STUDIO_FLOWS is not None
    home = tmp_path / "prefect-home"
    env = cli_env(emulator, home, api_url=prefect_server)
    env.pop("MODEL_STUDIO_DATABASE_URL", None)  # the default: ./studio_flows.db

    result = run_cli([STUDIO_FLOWS, "demo"], env, tmp_path)

    assert result.returncode == 0, result
    assert not (tmp_path / "studio_flows.db").exists()
    demo_db = home / "studio-flows" / "demo.db"
    assert f"results in sqlite:///{demo_db}" in result.stdout, result
    engine = sa.create_engine(f"sqlite:///{demo_db}")
    with engine.connect() as conn:
        models = conn.exec_driver_sql(
            "SELECT model_id, COUNT(*) FROM generation_results GROUP BY 1"
        )
        assert models.all() == [("demo-model", 40)]
    engine.dispose()


@pytest.mark.slow
def test_the_own_flow_example_runs_on_the_shared_local_server_not_a_temporary_one(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    """As docs/own-flow.md runs it: no PREFECT_API_URL. Prefect's temporary in-process server
    (its telemetry, its own SQLite under a busy machine) is what printed errors before."""
    emulator.configure(tokens=[SECRET_TOKEN])
    home = tmp_path / "prefect-home"
    env = cli_env(emulator, home)  # a bare run
    argv = [sys.executable, str(REPO_ROOT / "examples" / "own_flow.py"), "--model-id", "m"]

    done = run_cli(argv, env, tmp_path)

    assert done.returncode == 0, done
    assert "  -> m answers: What is 12 times 12?" in done.stdout, done
    assert "Traceback" not in done.output and "Starting temporary server" not in done.output
    assert (home / "studio-flows" / "local-server.json").exists()  # the one `server stop` stops


LONG_MODELS = ["meta-llama/Llama-3.3-70B-Instruct", "meta-llama/Meta-Llama-3.1-8B-Instruct"]


def _model_cells(stdout: str) -> list[str]:
    """The model column of the "by model" table, each row's wrapped lines joined."""
    table = stdout[stdout.index("by model") :].splitlines()
    body = table[next(i for i, line in enumerate(table) if line.startswith("┡")) + 1 :]
    cells: list[str] = []
    for line in body:
        if not line.startswith("│"):
            break
        model, completed = (cell.strip() for cell in line.split("│")[1:3])
        if completed:  # a row's first line holds its numbers
            cells.append(model)
        else:
            cells[-1] += model
    return cells


@pytest.mark.slow
def test_the_by_model_table_keeps_long_model_names_whole_at_80_columns(
    emulator: EmulatorServer, prefect_server: str, tmp_path: Path
) -> None:
    emulator.configure(tokens=[SECRET_TOKEN])
    dataset = _rows(tmp_path / "prompts.jsonl", 3)
    args = generate_args(dataset, f"sqlite:///{tmp_path}/r.db", "--model-id", LONG_MODELS[0])
    args[args.index("--model-id") + 1] = LONG_MODELS[1]
    env = cli_env(emulator, tmp_path / "h", api_url=prefect_server, COLUMNS="80")

    result = run_cli(args, env, tmp_path)

    assert result.returncode == 0, result
    assert sorted(_model_cells(result.stdout)) == sorted(LONG_MODELS), result.stdout


def _four_rows_one_bad(path: Path) -> Path:
    _rows(path, 3)
    with path.open("a", encoding="utf-8") as out:
        out.write('{"id": "bad", "prompt": 42}\n')
    return path


def _count(stdout: str, label: str) -> int:
    """The value of the table row labelled exactly ``label``."""
    match = re.search(rf"│ {re.escape(label)} +│ +(\d+) │", stdout)
    assert match, (label, stdout)
    return int(match.group(1))


def test_a_dry_run_counts_every_row_read_and_labels_answers_as_answers(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    """Four rows, one bad, two models: 4 rows in source (1 bad), 6 answers to submit."""
    dataset = _four_rows_one_bad(tmp_path / "prompts.jsonl")
    args = generate_args(dataset, f"sqlite:///{tmp_path}/r.db", "--model-id", "second-model")
    args += ["--id-column", "id", "--on-bad-rows", "skip", "--dry-run"]

    result = run_cli(args, cli_env(emulator, tmp_path / "h"), tmp_path)

    assert result.returncode == 0, result
    assert _count(result.stdout, "rows in source") == 4
    assert _count(result.stdout, "bad rows") == 1
    assert _count(result.stdout, "models (an answer is a row and a model)") == 2
    assert _count(result.stdout, "answers already done") == 0
    assert _count(result.stdout, "answers that would be submitted") == 6


@pytest.mark.slow
def test_a_run_summary_counts_rows_read_and_answers_each_under_its_unit(
    emulator: EmulatorServer, prefect_server: str, tmp_path: Path
) -> None:
    emulator.configure(tokens=[SECRET_TOKEN])
    dataset = _four_rows_one_bad(tmp_path / "prompts.jsonl")
    args = generate_args(dataset, f"sqlite:///{tmp_path}/r.db", "--model-id", "second-model")
    args += ["--id-column", "id", "--on-bad-rows", "skip"]
    env = cli_env(emulator, tmp_path / "h", api_url=prefect_server, COLUMNS="120")

    first = run_cli(args, env, tmp_path)
    again = run_cli(args, env, tmp_path)

    assert first.returncode == 0, first
    assert _count(first.stdout, "rows in source") == 4
    assert _count(first.stdout, "bad rows skipped") == 1
    assert _count(first.stdout, "answers submitted") == 6
    assert _count(first.stdout, "answers completed") == 6
    assert _count(again.stdout, "rows in source") == 4
    assert _count(again.stdout, "answers already done") == 6
