"""Crash: the `studio-flows generate` process is SIGKILLed, then run again to completion.

The CLI runs as a real subprocess in its own process group; the emulator serves from a
thread of the test process, so it outlives the killed flow process. The runs use the
session's shared local Prefect server (no signal to a run stops it); a killed run's leases
stay counted there until they expire, so each next run waits for them before its POSTs.

Kill points, without any hook in the product code:

(a) after a submit: the ledger (``generation_jobs``) shows every shard the lanes took as
    ``submitted`` with its job_id;
(b) between job end and persist: the test holds SQLite's write lock (``BEGIN IMMEDIATE``)
    once the jobs are recorded; the jobs end, the child reads FINISHED (the emulator counts
    that GET) and blocks in the persist transaction; then it is killed.
"""

from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path

import pytest

from studio_flows.emulator import EmulatorServer
from tests.fixtures.cli_runs import (
    DATABASES,
    MODEL,
    SECRET_TOKEN,
    assert_every_row_completed_once,
    cli_env,
    generate_args,
    kill_group,
    ledger,
    polls_stopped,
    results_table,
    run_cli,
    sqlite_write_lock,
    start_cli,
    summary_value,
    wait_for,
    write_chaos_section,
)
from tests.fixtures.harness import write_prompts

# --------------------------------------------------------------------------- the test


@pytest.mark.slow
def test_sigkill_after_submit_and_before_persist_loses_nothing_and_pays_nothing_twice(
    emulator: EmulatorServer, shared_prefect_home: Path, tmp_path: Path
) -> None:
    """10 rows, 5 shards of 2, jobs of 3 s; the emulator would accept 50 jobs at once.

    Run 1 is killed once its three lanes have each recorded a job (3 created). Run 2
    re-attaches those three, persists them, submits shard 4 or 5 (or both), and is killed
    while blocked persisting them (their jobs FINISHED, results not written). Run 3
    re-attaches them and submits what is left. The emulator created exactly 5 jobs:
    nothing was paid twice.
    """
    emulator.configure(job_latency_s=3.0, fair_use_limit=50, tokens=[SECRET_TOKEN])
    dataset = write_prompts(tmp_path / "crash.jsonl", 10)
    db_file = tmp_path / "crash.db"
    database_url = f"sqlite:///{db_file}"
    DATABASES.append(database_url)
    args = generate_args(dataset, database_url, "--shard-size", "2", "--id-column", "id")

    # (a) killed right after its submits
    started = time.monotonic()
    run1 = start_cli(args, cli_env(emulator, shared_prefect_home), tmp_path)

    def three_submitted() -> bool:
        rows = ledger(database_url)
        return len(rows) == 3 and all(r["status"] == "submitted" and r["job_id"] for r in rows)

    wait_for(lambda: three_submitted() or run1.poll() is not None, 120, "3 submitted shards")
    kill_group(run1)
    assert run1.returncode == -signal.SIGKILL, f"run 1 ended by itself: {run1.returncode}"
    first_jobs = {str(r["job_id"]) for r in ledger(database_url)}
    assert len(first_jobs) == 3
    assert emulator.stats()["jobs_created"] == 3
    kill_a_at = time.monotonic() - started

    # (b) killed between job end and persist
    run2 = start_cli(args, cli_env(emulator, shared_prefect_home), tmp_path)

    def lock_once_a_new_job_runs() -> contextlib.ExitStack:
        """SQLite's write lock, taken once shard 4 or 5 has a recorded job and no POST is
        in flight (a ``pending`` intent is written before its POST, so under the lock no
        POST can start)."""
        deadline = time.monotonic() + 120
        while run2.poll() is None and time.monotonic() < deadline:
            held = contextlib.ExitStack()
            held.enter_context(sqlite_write_lock(db_file))
            rows = ledger(database_url)
            new = [r for r in rows if r["status"] == "submitted" and r["job_id"] not in first_jobs]
            if new and not any(r["status"] == "pending" for r in rows):
                return held
            held.close()
            time.sleep(0.05)
        raise AssertionError(f"run 2 ended early or stalled:\n{run2.communicate()}")

    # Not "both new jobs at once": run 2's lanes get the killed run's slots as their leases
    # expire, maybe seconds apart, so one lane may run shards 4 and 5 in turn (CI).
    with lock_once_a_new_job_runs():
        wait_for(lambda: emulator.stats()["active_jobs"] == 0, 30, "the new jobs to end")
        # Every lane read FINISHED and now blocks in its persist transaction: the polls stop.
        wait_for(polls_stopped(emulator, quiet_s=1.5), 30, "the lanes to stop polling")
        kill_group(run2)
    new_jobs = {str(r["job_id"]) for r in ledger(database_url) if r["job_id"]} - first_jobs
    assert run2.returncode == -signal.SIGKILL
    assert 1 <= len(new_jobs) <= 2
    assert emulator.stats()["jobs_created"] == 3 + len(new_jobs)  # nothing recorded resubmitted
    rows = ledger(database_url)
    open_jobs = {str(r["job_id"]) for r in rows if r["status"] == "submitted"}
    # A new job (and maybe a re-attached one not persisted yet): ended, never closed.
    assert open_jobs & new_jobs, rows
    assert all(r["job_id"] is None or str(r["job_id"]) in new_jobs | first_jobs for r in rows)
    persisted = results_table(database_url)
    assert not {str(r["job_id"]) for r in persisted} & open_jobs  # killed persists wrote nothing

    # run to completion
    run3 = run_cli(args, cli_env(emulator, shared_prefect_home), tmp_path)
    assert run3.returncode == 0, run3
    assert summary_value(run3.stdout, "jobs re-attached") == len(open_jobs)
    assert summary_value(run3.stdout, "already done") == len(persisted)
    stats = emulator.stats()
    assert stats["jobs_created"] == 5, "a recorded job was paid for twice"
    assert stats["max_active_jobs"] <= 3
    assert_every_row_completed_once(database_url, {f"question-{i}" for i in range(10)})
    final = ledger(database_url)
    assert {r["status"] for r in final} == {"finished"}
    assert len({str(r["job_id"]) for r in results_table(database_url)} - first_jobs) == 2
    write_chaos_section(
        "Crash (SIGKILL of `studio-flows generate`)",
        f"- 10 rows, 5 shards of 2, jobs of 3 s; each process group SIGKILLed\n"
        f"- kill (a) {kill_a_at:.1f} s after start, right after 3 submits (3 job_ids "
        "recorded as `submitted`)\n"
        f"- kill (b) with {len(open_jobs)} jobs FINISHED at the emulator, their persist "
        "blocked: ledger still `submitted`, no result rows\n"
        f"- completion run: re-attached {len(open_jobs)} jobs (the run before re-attached "
        f"3), exit 0 in {run3.seconds:.1f} s\n"
        f"- emulator: {stats['jobs_created']} jobs created for 5 shards (nothing paid twice), "
        f"at most {stats['max_active_jobs']} active; 10 rows, each completed exactly once",
    )


@pytest.mark.slow
def test_a_retried_job_task_re_attaches_instead_of_paying_again(
    flow_env: EmulatorServer, tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job task's Prefect retry after its POST succeeded must poll the recorded job_id.

    A 1 s job deadline against 3 s jobs makes the first attempt give up after the POST; the
    task's retry (5 s later) must find the job_id in the ledger, not submit the shard again.
    """
    from studio_flows.flows.generate import generate_dataset

    from studio_flows.options import GenerateOptions

    monkeypatch.setenv("MODEL_STUDIO_JOB_DEADLINE_S", "1")
    flow_env.configure(job_latency_s=3.0, fair_use_limit=50)
    dataset = write_prompts(tmp_path / "retry.jsonl", 2)

    summary = generate_dataset(
        GenerateOptions(
            dataset_path=str(dataset), model_id=MODEL, database_url=sqlite_url, id_column="id"
        )
    )

    assert flow_env.stats()["jobs_created"] == 1, "the retry paid for the shard again"
    assert summary.completed == 2
    assert_every_row_completed_once(sqlite_url, {"question-0", "question-1"})
