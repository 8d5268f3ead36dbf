"""A job's results are stored against a row only when they say so unambiguously.

Through the installed CLI against the emulator's hostile answers (a task completed without a
result, one task_index listed twice with different answers, indexes counted from 1): those
rows end failed with a reason naming what the service sent, are never exported as answers,
and the next run pays again for them alone.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from studio_flows.emulator import EmulatorServer
from tests.fixtures.cli_runs import (
    MODEL,
    SECRET_TOKEN,
    cli_env,
    generate_args,
    results_table,
    run_cli,
    summary_value,
    write_id_prompts,
)

ROWS = 6
SHARD = 3


def _answer(prompt_number: int) -> str:
    return f"{MODEL} answers: question {prompt_number}?"


@pytest.mark.parametrize(
    ("knob", "failed_rows", "reason"),
    [
        ("empty_result_rate", {0, 1, 2, 3, 4, 5}, "completed without a result"),
        ("duplicate_index_rate", {0, 3}, "listed task_index 0 2 times with different answers"),
        ("shifted_index_rate", {0, 1, 2, 3, 4, 5}, "listed task_index 3 for a job of 3"),
    ],
)
def test_an_ambiguous_answer_fails_its_row_and_the_rerun_pays_for_it_alone(
    emulator: EmulatorServer,
    prefect_server: str,
    tmp_path: Path,
    knob: str,
    failed_rows: set[int],
    reason: str,
) -> None:
    dataset = write_id_prompts(tmp_path / "questions.jsonl", ROWS)
    database_url = f"sqlite:///{tmp_path / 'results.db'}"
    env = cli_env(emulator, tmp_path / "prefect", api_url=prefect_server)
    args = generate_args(dataset, database_url, "--shard-size", str(SHARD), "--id-column", "id")
    emulator.configure(tokens=[SECRET_TOKEN], **{knob: 1.0})

    hostile = run_cli(args, env, tmp_path)

    assert hostile.returncode == 1, hostile
    assert summary_value(hostile.stdout, "failed") == len(failed_rows), hostile
    rows = {int(str(r["row_key"])[1:]): r for r in results_table(database_url)}
    for number, row in rows.items():
        if number in failed_rows:
            assert (row["status"], row["result"]) == ("failed", None), row
            assert reason in str(row["error"]), row
        else:
            assert (row["status"], row["result"]) == ("completed", _answer(number)), row

    emulator.configure(**{knob: 0.0})
    jobs_before = emulator.stats()["jobs_created"]
    rerun = run_cli(args, env, tmp_path)

    assert rerun.returncode == 0, rerun
    assert summary_value(rerun.stdout, "answers submitted") == len(failed_rows), rerun
    assert emulator.stats()["jobs_created"] - jobs_before == len({n // SHARD for n in failed_rows})
    stored = {int(str(r["row_key"])[1:]): r["result"] for r in results_table(database_url)}
    assert stored == {number: _answer(number) for number in range(ROWS)}
