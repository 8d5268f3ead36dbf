"""Faults of the platform under a run: the Prefect server restarts, the results database restarts.

Every run is the installed ``studio-flows generate`` as a subprocess against the emulator
(whose fair-use limit is raised to 50, so the maximum active jobs it reports is the run's
own discipline). The figures go to bench/CHAOS.md (with STUDIO_FLOWS_WRITE_CHAOS=1).

1. A real ``prefect server start`` (filesystem lease storage) is stopped and started again
   on the same port and ``PREFECT_HOME`` while three jobs are in flight: the run completes,
   or ends with its unfinished rows left and one sentence; a rerun completes; nothing is
   paid twice beyond the POSTs in flight at the restart; at most 3 jobs were active; the
   restarted server holds no active slot once both runs ended.
2. A private PostgreSQL cluster (never the shared one) holding the results is restarted
   while jobs are in flight: see :func:`test_a_results_database_restart_loses_nothing`.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from studio_flows.emulator import EmulatorServer
from tests.fixtures.cli_runs import (
    DATABASES,
    SECRET_TOKEN,
    CliResult,
    assert_every_row_completed_once,
    cli_env,
    finish_cli,
    generate_args,
    ledger,
    run_cli,
    start_cli,
    summary_value,
    wait_for,
    write_chaos_section,
)
from tests.fixtures.harness import write_prompts
from tests.fixtures.prefect_server import PrefectServer, active_slots
from tests.fixtures.private_postgres import PrivateCluster

ROWS = 16
SHARD = 2
SHARDS = ROWS // SHARD
JOB_S = 2.0

pytestmark = pytest.mark.slow


def submitted(database_url: str) -> int:
    return sum(1 for r in ledger(database_url) if r["status"] == "submitted")


def assert_one_sentence_or_success(result: CliResult) -> None:
    """Exit 0, or exit 1 with rows left unfinished and one line per shard error."""
    assert "Traceback" not in result.output, str(result)
    if result.returncode != 0:
        assert result.returncode == 1, str(result)
        assert "unfinished" in result.stdout, str(result)
        errors = result.stdout.split("errors:\n", 1)[-1].rstrip().splitlines()
        assert all(line.startswith("  shard ") for line in errors), str(result)
        assert all("stay for the next run" in line for line in errors), str(result)


def test_a_prefect_server_restart_mid_run_loses_nothing_and_leaks_no_slot(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    emulator.configure(job_latency_s=JOB_S, fair_use_limit=50, tokens=[SECRET_TOKEN])
    server = PrefectServer(tmp_path / "prefect-server").start()
    try:
        dataset = write_prompts(tmp_path / "restart.jsonl", ROWS)
        database_url = f"sqlite:///{tmp_path / 'results.db'}"
        DATABASES.append(database_url)
        args = generate_args(dataset, database_url, "--shard-size", str(SHARD), "--id-column", "id")
        env = cli_env(emulator, tmp_path / "client", api_url=server.api_url)

        started = time.monotonic()
        first = start_cli(args, env, tmp_path)
        wait_for(lambda: submitted(database_url) >= 3 or first.poll() is not None, 120, "3 jobs")
        assert first.poll() is None, "the run ended before the restart"
        in_flight_at_restart = submitted(database_url)
        restart_began = time.monotonic()
        server.restart()
        downtime = time.monotonic() - restart_began
        run1 = finish_cli(first, started, timeout_s=300)
        assert_one_sentence_or_success(run1)
        jobs_after_run1 = int(emulator.stats()["jobs_created"])

        run2 = run_cli(args, env, tmp_path, timeout_s=240)
        assert run2.returncode == 0, str(run2)

        stats = emulator.stats()
        assert_every_row_completed_once(database_url, {f"question-{i}" for i in range(ROWS)})
        assert SHARDS <= stats["jobs_created"] <= SHARDS + in_flight_at_restart, stats
        assert stats["max_active_jobs"] <= 3, stats
        assert active_slots(server.api_url) == 0, "the restarted server kept active slots"
    finally:
        server.stop()
    outcome = "completed" if run1.returncode == 0 else f"exit {run1.returncode}, rows left"
    write_chaos_section(
        "Prefect server restarted mid-run (filesystem leases)",
        f"- {ROWS} rows, {SHARDS} shards of {SHARD}, jobs of {JOB_S:.0f} s; a real `prefect "
        f"server start` stopped and started on the same port and PREFECT_HOME with "
        f"{in_flight_at_restart} jobs in flight ({downtime:.1f} s down)\n"
        f"- run 1: {outcome} in {run1.seconds:.1f} s, {jobs_after_run1} jobs created; "
        f"rerun: exit 0 in {run2.seconds:.1f} s\n"
        f"- emulator: {stats['jobs_created']} jobs for {SHARDS} shards (bound "
        f"{SHARDS} + {in_flight_at_restart} in flight), at most {stats['max_active_jobs']} "
        "active; every row completed once; 0 active slots on the restarted server",
    )


PERSIST_BOUND_S = 3.0
DB_DOWN_S = 17.0  # longer than a job's persist bound and its 2 retries 5 s apart


def test_a_results_database_restart_loses_nothing_and_pays_nothing_twice(
    emulator: EmulatorServer,
    prefect_server_process: PrefectServer,
    private_postgres: PrivateCluster,
    tmp_path: Path,
) -> None:
    emulator.configure(job_latency_s=JOB_S, fair_use_limit=50, tokens=[SECRET_TOKEN])
    database_url = private_postgres.create_database("results")
    DATABASES.append(database_url)
    dataset = write_prompts(tmp_path / "db-restart.jsonl", ROWS)
    args = generate_args(dataset, database_url, "--shard-size", str(SHARD), "--id-column", "id")
    # Persists give up before the database is back: their jobs are left for the rerun.
    env = cli_env(
        emulator,
        tmp_path / "client",
        api_url=prefect_server_process.api_url,
        MODEL_STUDIO_DATABASE_RETRY_S=str(PERSIST_BOUND_S),
    )

    started = time.monotonic()
    first = start_cli(args, env, tmp_path)
    wait_for(lambda: submitted(database_url) >= 3 or first.poll() is not None, 120, "3 jobs")
    assert first.poll() is None, "the run ended before the database stopped"
    recorded = {str(r["job_id"]) for r in ledger(database_url)}
    private_postgres.stop()
    time.sleep(DB_DOWN_S)  # the fault itself: the database stays down this long
    private_postgres.start()
    run1 = finish_cli(first, started, timeout_s=300)
    assert_one_sentence_or_success(run1)
    after_run1 = ledger(database_url)
    left_open = [r for r in after_run1 if r["status"] == "submitted"]

    run2 = run_cli(args, env, tmp_path, timeout_s=240)
    assert run2.returncode == 0, str(run2)
    assert summary_value(run2.stdout, "jobs re-attached") == len(left_open), str(run2)

    stats = emulator.stats()
    assert left_open, "no persist failed: the fault missed the jobs in flight"
    assert_every_row_completed_once(database_url, {f"question-{i}" for i in range(ROWS)})
    assert stats["jobs_created"] == SHARDS, f"a recorded job was paid twice: {stats}"
    assert recorded <= {str(r["job_id"]) for r in ledger(database_url)}
    assert stats["max_active_jobs"] <= 3, stats
    outcome = "completed" if run1.returncode == 0 else f"exit {run1.returncode}, rows left"
    write_chaos_section(
        "Results database restarted mid-run (PostgreSQL)",
        f"- {ROWS} rows, {SHARDS} shards of {SHARD}, jobs of {JOB_S:.0f} s; a private "
        f"PostgreSQL cluster holding the results stopped (fast shutdown) with 3 jobs in "
        f"flight and started again {DB_DOWN_S:.0f} s later\n"
        f"- run 1: {outcome} in {run1.seconds:.1f} s; {len(left_open)} jobs left recorded "
        f"but not persisted; rerun: exit 0 in {run2.seconds:.1f} s\n"
        f"- emulator: {stats['jobs_created']} jobs for {SHARDS} shards (nothing paid twice), "
        f"at most {stats['max_active_jobs']} active; every row completed once",
    )


RECORD_BOUND_S = 2.0  # MODEL_STUDIO_DATABASE_RETRY_S: recording a job_id gives up after this
POST_DELAY_S = 2.0  # the emulator answers each POST this late (its job runs meanwhile)
# Down from just after the POST until after recording its job_id gave up (about
# POST_DELAY_S + 1.5 s), back before the job task's retry 5 s later.
RECORD_DOWN_S = 5.0


def start_one_shard_run(
    emulator: EmulatorServer, server: PrefectServer, cluster: PrivateCluster, tmp_path: Path
) -> tuple[str, object, float]:
    """A run of one shard of 2 rows on a private PostgreSQL, stopped once its POST created
    the job (before its answer, so before the job_id can be recorded)."""
    emulator.configure(job_latency_s=1.0, post_response_delay_s=POST_DELAY_S, tokens=[SECRET_TOKEN])
    database_url = cluster.create_database("results")
    DATABASES.append(database_url)
    dataset = write_prompts(tmp_path / "one-shard.jsonl", 2)
    args = generate_args(dataset, database_url, "--shard-size", "2", "--id-column", "id")
    env = cli_env(
        emulator,
        tmp_path / "client",
        api_url=server.api_url,
        MODEL_STUDIO_DATABASE_RETRY_S=str(RECORD_BOUND_S),
    )
    started = time.monotonic()
    process = start_cli(args, env, tmp_path)
    wait_for(
        lambda: emulator.stats()["jobs_created"] >= 1 or process.poll() is not None, 120, "a POST"
    )
    cluster.stop()
    return database_url, process, started


def test_a_job_id_the_database_did_not_take_is_re_attached_not_paid_again(
    emulator: EmulatorServer,
    prefect_server_process: PrefectServer,
    private_postgres: PrivateCluster,
    tmp_path: Path,
) -> None:
    database_url, process, started = start_one_shard_run(
        emulator, prefect_server_process, private_postgres, tmp_path
    )
    time.sleep(RECORD_DOWN_S)  # the fault itself: the database stays down this long
    private_postgres.start()

    run = finish_cli(process, started, timeout_s=240)  # type: ignore[arg-type]

    assert run.returncode == 0, str(run)
    assert emulator.stats()["jobs_created"] == 1, "the shard was paid for twice"
    assert_every_row_completed_once(database_url, {"question-0", "question-1"})
    (shard,) = ledger(database_url)
    assert shard["status"] == "finished"
    assert shard["job_id"] == emulator.jobs()[0]["job_id"]


def test_a_run_ending_with_a_job_id_it_could_not_record_says_so_in_one_sentence(
    emulator: EmulatorServer,
    prefect_server_process: PrefectServer,
    private_postgres: PrivateCluster,
    tmp_path: Path,
) -> None:
    database_url, process, started = start_one_shard_run(
        emulator, prefect_server_process, private_postgres, tmp_path
    )

    run = finish_cli(process, started, timeout_s=240)  # type: ignore[arg-type]

    private_postgres.start()
    (job,) = emulator.jobs()
    (shard,) = ledger(database_url)
    assert emulator.stats()["jobs_created"] == 1, "a retry POSTed the shard again"
    assert run.returncode == 1, str(run)
    assert "Traceback" not in run.output
    assert (shard["status"], shard["job_id"]) == ("pending", None)
    sentence = (
        f"shard {shard['shard_key']}: job {job['job_id']} runs for its 2 rows but its job_id "
        "is not recorded ("
    )
    assert sentence in " ".join(run.stdout.split()), str(run)
    assert f"the next run may pay again for those rows unless job {job['job_id']} is" in (
        " ".join(run.stdout.split())
    )
