"""`studio-flows generate --sql` only reads: DDL, DML, `... RETURNING` and two statements in
one string are refused before they run (exit 2, one line), on SQLite and the real
PostgreSQL, on a source database (`--source-url`) and on the default source (the results
database); both databases are unchanged afterwards and the emulator saw no job."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from studio_flows.emulator import EmulatorServer
from studio_flows.storage import make_engine, upsert_results
from tests.cli.test_sql_templates import insert_faq
from tests.fixtures.cli_runs import (
    MODEL,
    SECRET_TOKEN,
    STUDIO_FLOWS,
    cli_env,
    finish_cli,
    results_table,
    start_cli,
)

HOSTILE = {
    "DROP TABLE": "DROP TABLE faq",
    "DELETE": "DELETE FROM faq",
    "UPDATE": "UPDATE faq SET question = 'overwritten'",
    "INSERT": "INSERT INTO faq (id, question) VALUES (99, 'injected')",
    "DELETE RETURNING": "DELETE FROM faq RETURNING question AS prompt",
    "two statements": "SELECT question AS prompt FROM faq; DROP TABLE faq",
}
STORED_ANSWER = "an answer a run paid for"


def store_an_answer(results_url: str) -> None:
    """The results database as a run leaves it: the schema and one stored answer."""
    engine = make_engine(results_url)
    row = dict(
        row_key="r1", prompt_hash="p", model_id=MODEL, params_hash="h", dataset="d",
        shard_key="s", job_id="j", task_index=0, messages=[{"role": "user", "content": "Hi"}],
        result=STORED_ANSWER, status="completed", error=None, temperature=0.7, max_tokens=64,
        flow_run_id=None, completed_at=None,
    )  # fmt: skip
    with engine.begin() as conn:
        upsert_results(conn, [row])
    engine.dispose()


def snapshot(url: str) -> object:
    """What must not change: a SQLite file's bytes, or every PostgreSQL table's rows."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return Path(str(parsed.database)).read_bytes()
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            tables = sorted(sa.inspect(conn).get_table_names())
            return {
                name: sorted(map(repr, conn.execute(sa.text(f'SELECT * FROM "{name}"'))))
                for name in tables
            }
    finally:
        engine.dispose()


def sql_args(query: str, results_url: str, *extra: str) -> list[str]:
    assert STUDIO_FLOWS is not None, "the studio-flows console script is not installed"
    return [
        STUDIO_FLOWS, "generate", "--sql", query, "--model-id", MODEL,
        "--database-url", results_url, "--no-progress", *extra,
    ]  # fmt: skip


@pytest.fixture
def databases(database_url: str, tmp_path: Path) -> tuple[str, str]:
    """(source URL, results URL), each with a `faq` table; the results hold an answer too.

    SQLite: two files. PostgreSQL: one fresh database serves as both (the fixture gives one).
    """
    store_an_answer(database_url)
    insert_faq(database_url, range(1, 4))
    source_url = database_url
    if database_url.startswith("sqlite"):
        source_url = f"sqlite:///{tmp_path / 'warehouse.db'}"
        insert_faq(source_url, range(1, 4))
    return source_url, database_url


@pytest.mark.slow
def test_sql_that_is_not_one_query_is_refused_and_changes_nothing(
    emulator: EmulatorServer, databases: tuple[str, str], tmp_path: Path
) -> None:
    """Each hostile text on the source (--source-url) and on the default source (the
    results database), and DROP TABLE generation_results: 13 processes at once."""
    emulator.configure(tokens=[SECRET_TOKEN])
    source_url, results_url = databases
    before = {url: snapshot(url) for url in {source_url, results_url}}
    runs: dict[str, list[str]] = {}
    for name, query in HOSTILE.items():
        runs[name] = sql_args(query, results_url, "--source-url", source_url)
        runs[f"{name} (default source)"] = sql_args(query, results_url)
    drop_results = "DROP TABLE generation_results"
    runs[drop_results] = sql_args(drop_results, results_url)
    started = time.monotonic()
    processes = {
        name: start_cli(args, cli_env(emulator, tmp_path / f"prefect-{index}"), tmp_path)
        for index, (name, args) in enumerate(runs.items())
    }
    results = {name: finish_cli(process, started) for name, process in processes.items()}

    assert emulator.stats()["jobs_created"] == 0
    assert {url: snapshot(url) for url in before} == before
    assert [row["result"] for row in results_table(results_url)] == [STORED_ANSWER]
    problems = [
        f"{name}: {result}"
        for name, result in results.items()
        if not (
            result.returncode == 2
            and "Traceback" not in result.output
            and len(result.stderr.strip().splitlines()) == 1
            and result.stderr.startswith("error: --sql: ")
        )
    ]
    assert not problems, "\n\n".join(problems)
    assert "a DROP statement is not a query" in results["DROP TABLE"].stderr
    assert "a DELETE statement is not a query" in results["DELETE RETURNING"].stderr
    assert "holds 2 statements and none is run" in results["two statements"].stderr


@pytest.mark.slow
def test_a_with_query_still_runs_read_only_and_pays_once(
    emulator: EmulatorServer, prefect_server: str, databases: tuple[str, str], tmp_path: Path
) -> None:
    """A WITH ... SELECT streams through the read-only transaction: its rows are answered
    and the source is unchanged (the PostgreSQL source is also the results database)."""
    emulator.configure(tokens=[SECRET_TOKEN])
    source_url, results_url = databases
    separate = source_url != results_url
    before = snapshot(source_url)
    query = (
        "-- the open questions\n"
        "WITH open AS (SELECT id, question FROM faq WHERE id > 1) "
        "SELECT id, question AS prompt FROM open ORDER BY id;"
    )
    args = sql_args(query, results_url, "--source-url", source_url, "--id-column", "id")

    env = cli_env(emulator, tmp_path / "prefect", api_url=prefect_server)
    result = finish_cli(start_cli(args, env, tmp_path), time.monotonic())

    assert result.returncode == 0, result
    assert emulator.stats()["conversations"] == 2
    answers = {row["result"] for row in results_table(results_url)} - {STORED_ANSWER}
    assert answers == {f"{MODEL} answers: question {i}?" for i in (2, 3)}
    if separate:  # else the run's own answers changed the database, as they should
        assert snapshot(source_url) == before


@pytest.mark.slow
@pytest.mark.postgres
def test_a_select_that_writes_through_a_function_fails_in_the_read_only_transaction(
    emulator: EmulatorServer, prefect_server: str, postgres_url: str, tmp_path: Path
) -> None:
    """The text check passes a SELECT; the read-only transaction stops what it calls."""
    emulator.configure(tokens=[SECRET_TOKEN])
    store_an_answer(postgres_url)  # also the results database, its schema in place
    insert_faq(postgres_url, range(1, 4))
    engine = sa.create_engine(postgres_url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE FUNCTION wipe() RETURNS text LANGUAGE sql "
            "AS 'DELETE FROM faq; SELECT ''wiped''::text'"
        )
    engine.dispose()
    before = snapshot(postgres_url)
    args = sql_args("SELECT wipe() AS prompt", postgres_url)
    env = cli_env(emulator, tmp_path / "prefect", api_url=prefect_server)

    result = finish_cli(start_cli(args, env, tmp_path), time.monotonic())

    assert emulator.stats()["jobs_created"] == 0, result
    assert snapshot(postgres_url) == before
    assert result.returncode == 2, result
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "cannot execute DELETE in a read-only transaction" in result.stderr
