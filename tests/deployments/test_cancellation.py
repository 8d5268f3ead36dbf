"""A deployment run cancelled with ``prefect flow-run cancel``, on a real server and worker.

The run holds the three fair-use slots with jobs in flight when it is cancelled. It must
stop promptly, give its slots back at once (the server counts 0 active within seconds,
not after the 60 s lease), keep every job in flight recorded so the next run re-attaches,
and end ``Cancelled`` with the summary so far as its artifact. (The command line's SIGINT
and SIGTERM are covered by tests/cli/test_interrupts.py.)
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from studio_flows.emulator import EmulatorServer
from tests.fixtures.cli_runs import (
    DATABASES,
    SECRET_TOKEN,
    assert_every_row_completed_once,
    ledger,
    wait_for,
    write_chaos_section,
)
from tests.fixtures.harness import write_prompts
from tests.fixtures.prefect_server import PrefectServer
from tests.fixtures.workers import (
    REPO_ROOT,
    Api,
    Worker,
    adhoc_parameters,
    deploy_adhoc,
    emulator_worker_env,
    prefect_cli,
)

# 40 shards of 2 s: the run still has ~20 s of jobs when `prefect flow-run cancel` starts
# (with 20 it ended first on a loaded machine); the rerun's new jobs take RERUN_JOB_S.
ROWS = 80
SHARD = 2
SHARDS = ROWS // SHARD
JOB_S = 2.0
RERUN_JOB_S = 0.2


@pytest.mark.slow
def test_a_cancelled_deployment_run_gives_its_slots_back_and_the_next_run_re_attaches(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    emulator.configure(job_latency_s=JOB_S, fair_use_limit=50, tokens=[SECRET_TOKEN])
    server = PrefectServer(tmp_path / "server").start()
    api = Api(server.api_url)
    worker: Worker | None = None
    dataset = write_prompts(tmp_path / "cancel.jsonl", ROWS)
    database_url = f"sqlite:///{tmp_path / 'results.db'}"
    DATABASES.append(database_url)
    parameters = adhoc_parameters(dataset, database_url, SHARD)
    try:
        cli_env = server.env(PWD=str(REPO_ROOT))
        deploy_adhoc(cli_env)
        worker = Worker(emulator_worker_env(server, emulator), tmp_path / "worker.log")
        run = api.run_deployment(parameters)

        def three_in_flight() -> bool:
            finished = sum(1 for r in ledger(database_url) if r["status"] == "finished")
            flying = sum(1 for r in ledger(database_url) if r["status"] == "submitted")
            return finished >= 3 and flying == 3

        wait_for(three_in_flight, 180, "3 jobs in flight after 3 finished", 0.2)
        cancelled_at = time.monotonic()
        prefect_cli(["flow-run", "cancel", run], cli_env)
        slots_back = wait_for(lambda: api.active_slots() == 0, 20, "the slots back", 0.2)
        stopped = wait_for(lambda: api.ended(run), 60, "the run to end", 0.5)
        stopped_s = time.monotonic() - cancelled_at
        state = api.flow_run(run)["state"]
        in_flight = [r for r in ledger(database_url) if r["status"] == "submitted"]
        jobs_at_cancel = int(emulator.stats()["jobs_created"])
        artifacts = api.client.post(
            "/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run]}}}
        ).json()

        assert state["type"] == "CANCELLED", (state, worker.log()[-4000:])
        assert {a["key"] for a in artifacts} >= {"generation-summary", "generation-report"}
        assert in_flight, "no job was in flight at the cancel: nothing to re-attach"

        slow_emulator_jobs = emulator.stats()["jobs_created"]
        emulator.configure(job_latency_s=RERUN_JOB_S)  # re-attached jobs keep their end
        rerun = api.run_deployment(parameters)
        wait_for(lambda: api.ended(rerun), 180, "the rerun", 1)
        assert api.state(rerun) == "COMPLETED", worker.log()[-4000:]
        stats = emulator.stats()
        assert stats["jobs_created"] == SHARDS, f"a recorded job was paid twice: {stats}"
        assert stats["max_active_jobs"] <= 3
        assert_every_row_completed_once(database_url, {f"question-{i}" for i in range(ROWS)})
        assert api.active_slots() == 0
    finally:
        if worker is not None:
            worker.stop()
        server.stop()
        api.close()
    write_chaos_section(
        "Deployment run cancelled (`prefect flow-run cancel`)",
        f"- {ROWS} rows, {SHARDS} shards of {SHARD}, jobs of {JOB_S:.0f} s, a process worker "
        "on a real server; cancelled with 3 jobs in flight\n"
        f"- 0 active slots on the server {slots_back:.1f} s after the cancel command "
        f"returned; run ended {state['type']} {stopped_s:.1f} s after the command started "
        f"({stopped:.1f} s after the slots); {len(in_flight)} jobs left recorded in flight, "
        f"{jobs_at_cancel} created by then\n"
        f"- rerun (new jobs of {RERUN_JOB_S:g} s; {slow_emulator_jobs} jobs of {JOB_S:.0f} s "
        "before it): completed; emulator {stats['jobs_created']} jobs for {SHARDS} shards "
        f"(nothing paid twice), at most {stats['max_active_jobs']} active; CLI SIGINT/SIGTERM: "
        "see tests/cli/test_interrupts.py",
    )
