"""`studio-flows db upgrade` and the automatic upgrade, as a user meets them, on both backends.

Each database starts as today's main left it before Alembic (tests/fixtures/old_schemas.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from studio_flows.emulator import EmulatorServer
from tests.fixtures.cli_runs import (
    SECRET_TOKEN,
    STUDIO_FLOWS,
    cli_env,
    generate_args,
    ledger,
    results_table,
    run_cli,
    write_id_prompts,
)
from tests.fixtures.old_schemas import create_old_database, old_result_row


def _shown(url: str) -> str:
    return (
        sa.make_url(url)
        .render_as_string(hide_password=True)
        .replace("postgresql://", "postgresql+psycopg://", 1)
    )


def test_db_upgrade_upgrades_a_database_of_the_release_before_and_says_so(
    emulator: EmulatorServer, tmp_path: Path, database_url: str
) -> None:
    create_old_database(database_url, 2, [old_result_row(i) for i in range(5)])
    env = cli_env(emulator, tmp_path / "prefect", MODEL_STUDIO_DATABASE_AUTO_UPGRADE="false")
    assert STUDIO_FLOWS is not None
    command = [STUDIO_FLOWS, "db", "upgrade", "--database-url", database_url]

    first = run_cli(command, env, tmp_path)
    assert first.returncode == 0, first
    assert first.stdout.strip() == f"upgraded {_shown(database_url)} from schema 2 to 5"
    second = run_cli(command, env, tmp_path)
    assert second.returncode == 0, second
    assert second.stdout.strip() == f"{_shown(database_url)} is already at schema 5"
    password = sa.make_url(database_url).password
    assert password is None or password not in first.output + second.output
    assert len(results_table(database_url)) == 5


def test_db_upgrade_of_a_newer_database_is_one_sentence_and_exit_2(
    emulator: EmulatorServer, tmp_path: Path, sqlite_url: str
) -> None:
    create_old_database(sqlite_url, 2, [])
    engine = sa.create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO studio_flows_schema VALUES (9, '2030-01-01')")
    engine.dispose()
    assert STUDIO_FLOWS is not None
    result = run_cli(
        [STUDIO_FLOWS, "db", "upgrade", "--database-url", sqlite_url],
        cli_env(emulator, tmp_path / "prefect"),
        tmp_path,
    )
    assert result.returncode == 2, result
    assert result.stderr.strip() == (
        "error: The database schema is version 9, newer than this studio-flows understands "
        "(5); upgrade studio-flows."
    )


@pytest.mark.slow
def test_generate_with_auto_upgrade_off_names_db_upgrade_then_runs_after_it(
    emulator: EmulatorServer, prefect_server: str, tmp_path: Path, database_url: str
) -> None:
    emulator.configure(tokens=[SECRET_TOKEN])
    create_old_database(database_url, 2, [old_result_row(i) for i in range(5)])
    dataset = write_id_prompts(tmp_path / "q.jsonl", 4)
    env = cli_env(
        emulator, tmp_path / "prefect", api_url=prefect_server,
        MODEL_STUDIO_DATABASE_AUTO_UPGRADE="false",
    )  # fmt: skip
    args = generate_args(dataset, database_url, "--id-column", "id")

    refused = run_cli(args, env, tmp_path)
    assert refused.returncode == 2, refused
    message = refused.stderr.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in refused.output
    assert "is at schema 2" in message and "run `studio-flows db upgrade`" in message
    assert emulator.stats()["jobs_created"] == 0
    assert len(ledger(database_url)) == 1  # the old shard alone: nothing was written

    assert STUDIO_FLOWS is not None
    upgrade = [STUDIO_FLOWS, "db", "upgrade", "--database-url", database_url]
    assert run_cli(upgrade, env, tmp_path).returncode == 0
    ran = run_cli(args, env, tmp_path)
    assert ran.returncode == 0, ran
    keys = {row["row_key"] for row in results_table(database_url)}
    assert keys == {f"row-{i}" for i in range(5)} | {f"q{i}" for i in range(4)}


@pytest.mark.slow
def test_generate_upgrades_a_database_of_the_release_before_on_first_use(
    emulator: EmulatorServer, prefect_server: str, tmp_path: Path, database_url: str
) -> None:
    emulator.configure(tokens=[SECRET_TOKEN])
    create_old_database(database_url, 1, [old_result_row(i) for i in range(5)])
    dataset = write_id_prompts(tmp_path / "q.jsonl", 4)
    env = cli_env(emulator, tmp_path / "prefect", api_url=prefect_server)
    ran = run_cli(generate_args(dataset, database_url, "--id-column", "id"), env, tmp_path)
    assert ran.returncode == 0, ran
    rows = {row["row_key"]: row for row in results_table(database_url)}
    assert set(rows) == {f"row-{i}" for i in range(5)} | {f"q{i}" for i in range(4)}
    assert all(rows[f"row-{i}"]["result"] == f"answer {i}" for i in range(5))
