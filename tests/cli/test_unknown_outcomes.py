"""Shards an earlier run left ``pending`` or ``ambiguous`` (a POST whose outcome is unknown).

Every run is the installed ``studio-flows generate`` against the emulator over a socket,
on the session's real Prefect server (a rerun starts in seconds, while the killed run's
jobs still run). The emulator's POST answers ``POST_DELAY_S`` late, so a run killed while
its POSTs wait for their answers leaves each shard ``pending`` with a job running for it:

1. under ``--ambiguous-policy stop`` the next run POSTs nothing for such shards (pending or
   ambiguous), exits 1 and names each shard and its rows;
2. under ``resubmit`` the next run, started right after a SIGKILL, holds a slot for each
   possible orphan while it may run: the emulator (three jobs at once per token) refuses
   nothing and never sees a 4th job.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from studio_flows.emulator import EmulatorServer
from tests.fixtures.cli_runs import (
    DATABASES,
    SECRET_TOKEN,
    assert_every_row_completed_once,
    cli_env,
    generate_args,
    kill_group,
    ledger,
    run_cli,
    start_cli,
    wait_for,
)
from tests.fixtures.harness import write_prompts
from tests.fixtures.prefect_server import PrefectServer

SHARD = 2
JOB_S = 10.0
POST_DELAY_S = 1.0

pytestmark = pytest.mark.slow


def post_429s(emulator: EmulatorServer) -> int:
    return int(emulator.stats()["requests"].get("POST /generate", {}).get("429", 0))


def kill_while_posting(
    process: subprocess.Popen[str],
    emulator: EmulatorServer,
    database_url: str,
    *,
    finished: int,
    awaiting: int,
) -> list[str]:
    """SIGKILL the run once ``finished`` shards are done and ``awaiting`` POSTs created jobs
    whose answers have not come yet; return the keys of the shards left ``pending``."""

    def posting() -> bool:
        rows = ledger(database_url)
        done = sum(1 for r in rows if r["status"] == "finished")
        recorded = sum(1 for r in rows if r["job_id"])
        created = int(emulator.stats()["jobs_created"])
        return (done >= finished and created - recorded >= awaiting) or (process.poll() is not None)

    wait_for(posting, 120, f"{finished} finished shards and {awaiting} POSTs awaiting answers")
    kill_group(process)
    assert process.returncode == -signal.SIGKILL, "the run ended before it was killed"
    return [str(r["shard_key"]) for r in ledger(database_url) if r["status"] == "pending"]


@pytest.mark.parametrize("left", ["pending", "ambiguous"])
def test_under_stop_a_shard_an_earlier_run_left_unknown_is_not_posted_again(
    emulator: EmulatorServer,
    prefect_server_process: PrefectServer,
    tmp_path: Path,
    left: str,
) -> None:
    emulator.configure(job_latency_s=1.0, tokens=[SECRET_TOKEN])
    dataset = write_prompts(tmp_path / "unknown.jsonl", 4)
    database_url = f"sqlite:///{tmp_path / 'results.db'}"
    DATABASES.append(database_url)
    args = generate_args(dataset, database_url, "--shard-size", str(SHARD), "--id-column", "id")
    env = cli_env(emulator, tmp_path / "home", api_url=prefect_server_process.api_url)
    if left == "pending":  # killed while its POSTs waited for their answers
        emulator.configure(post_response_delay_s=30.0)
        first = start_cli(args, env, tmp_path)
        unknown = kill_while_posting(first, emulator, database_url, finished=0, awaiting=2)
        emulator.configure(post_response_delay_s=0.0)
    else:  # every POST's answer lost; that run stops as its policy says
        emulator.configure(lost_post_response_rate=1.0)
        run = run_cli([*args, "--ambiguous-policy", "stop"], env, tmp_path)
        assert run.returncode == 1, str(run)
        unknown = [str(r["shard_key"]) for r in ledger(database_url)]
        emulator.configure(lost_post_response_rate=0.0)
    assert len(unknown) == 2 and all(r["status"] == left for r in ledger(database_url)), ledger(
        database_url
    )
    jobs_before = int(emulator.stats()["jobs_created"])

    rerun = run_cli([*args, "--ambiguous-policy", "stop"], env, tmp_path)

    assert int(emulator.stats()["jobs_created"]) == jobs_before, "a shard was POSTed again"
    assert rerun.returncode == 1, str(rerun)
    assert "Traceback" not in rerun.output
    errors = rerun.stdout.split("errors:\n", 1)[-1]
    for key in unknown:
        assert f"shard {key}: an earlier run's POST of its 2 rows has an unknown outcome" in (
            errors
        ), str(rerun)
    assert "not resubmitted under the ambiguous policy 'stop'" in errors
    assert {r["status"] for r in ledger(database_url)} == {left}


def test_a_rerun_right_after_a_sigkill_holds_a_slot_for_each_possible_orphan(
    emulator: EmulatorServer, prefect_server_process: PrefectServer, tmp_path: Path
) -> None:
    """12 rows, 6 shards of 2, jobs of 10 s; the emulator runs 3 jobs at once per token.

    Jobs of 10 s because a rerun takes several seconds to its first POST here (Python and
    Prefect start): shorter orphans end before it, and nothing would be tested.

    Run 1 is killed once its first three jobs are persisted and the next three POSTs have
    created jobs still waiting for their answers (3 shards ``pending``, 3 orphans running).
    Run 2 starts at once: it must wait for the orphans before it POSTs those shards again.
    """
    emulator.configure(
        job_latency_s=JOB_S,
        fair_use_limit=3,
        post_response_delay_s=POST_DELAY_S,
        tokens=[SECRET_TOKEN],
    )
    dataset = write_prompts(tmp_path / "orphans.jsonl", 12)
    database_url = f"sqlite:///{tmp_path / 'results.db'}"
    DATABASES.append(database_url)
    args = generate_args(dataset, database_url, "--shard-size", str(SHARD), "--id-column", "id")
    env = cli_env(emulator, tmp_path / "home", api_url=prefect_server_process.api_url)

    first = start_cli(args, env, tmp_path)
    pending = kill_while_posting(first, emulator, database_url, finished=3, awaiting=1)
    jobs_of_run_1 = {job["job_id"] for job in emulator.jobs()}
    killed_s = max(job["created_s"] for job in emulator.jobs())  # about: a POST ago
    assert pending, "no shard was left pending"
    rejected_before = post_429s(emulator)

    rerun = run_cli(args, env, tmp_path)

    stats = emulator.stats()
    first_rerun_post = min(
        job["created_s"] for job in emulator.jobs() if job["job_id"] not in jobs_of_run_1
    )
    assert rerun.returncode == 0, str(rerun)
    assert post_429s(emulator) - rejected_before == 0, f"POSTs refused (fair use): {stats}"
    assert stats["max_active_jobs"] <= 3, stats
    assert_every_row_completed_once(database_url, {f"question-{i}" for i in range(12)})
    # The pending shards were paid again (their answers were lost with run 1), nothing else.
    assert stats["jobs_created"] <= 6 + len(pending), stats
    print(f"the rerun's first POST came {first_rerun_post - killed_s:.1f} s after the kill")
