"""The production topology, for real: one Prefect server on PostgreSQL with two API workers and
Redis, a ``process`` work pool served by two workers, the deployment of prefect.yaml.

- The server: ``prefect server start --workers 2`` on a fresh database of the test
  PostgreSQL, Redis for messaging, event ordering, docket and lease storage
  (prefect-redis); its loop services (the lease repossessor among them) run in
  ``prefect server services start``, since a multi-worker server runs none itself.
- Two ``prefect worker start --pool studio-flows --limit 2`` processes (one
  ``PREFECT_HOME``, as two workers on one host), polling every second.
- Three runs of ``generate-dataset/adhoc-generation`` started at once over three datasets;
  the emulator would accept 50 active jobs, so its maximum is the shared limit at work.
- Once a run of the first worker has jobs in flight, that worker and its flow runs are
  SIGKILLed; the other runs complete; each killed run's dataset is run again and
  completes, paying again only for POSTs whose outcome the kill left unknown.

Without STUDIO_FLOWS_TEST_REDIS_URL or STUDIO_FLOWS_TEST_POSTGRES_URL the test skips (fails
when STUDIO_FLOWS_REQUIRE_REDIS=1 / STUDIO_FLOWS_REQUIRE_POSTGRES=1, as in CI).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url
from studio_flows.tasks.fair_use import LEASE_S, REPOSSESSOR_LOOP_S

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
from tests.fixtures.prefect_server import PrefectServer, stop_process_group
from tests.fixtures.workers import (
    REPO_ROOT,
    Api,
    Worker,
    adhoc_parameters,
    deploy_adhoc,
    emulator_worker_env,
)

ROWS = 12
SHARD = 2
SHARDS = ROWS // SHARD
JOB_S = 1.0


def redis_server_env(redis_url: str, database_url: str) -> dict[str, str]:
    """What a Prefect server with several API workers needs: PostgreSQL and Redis."""
    return {
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": database_url,
        "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
        "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
        "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
        "PREFECT_REDIS_MESSAGING_URL": redis_url,
        "PREFECT_SERVER_DOCKET_URL": redis_url,
    }


def asyncpg_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


class Dataset:
    """One dataset of its own rows, with its own results database."""

    def __init__(self, folder: Path, name: str) -> None:
        self.name = name
        self.path = write_prompts(folder / f"{name}.jsonl", ROWS, prefix=name)
        self.database_url = f"sqlite:///{folder / f'{name}.db'}"
        DATABASES.append(self.database_url)
        self.row_keys = {f"{name}-{i}" for i in range(ROWS)}

    def parameters(self) -> dict[str, Any]:
        return adhoc_parameters(self.path, self.database_url, SHARD)

    def in_flight(self) -> int:
        return sum(1 for r in ledger(self.database_url) if r["status"] == "submitted")

    def unknown_outcomes(self) -> int:
        """Intents written whose POST's job_id never reached the ledger."""
        return sum(1 for r in ledger(self.database_url) if r["status"] in ("pending", "ambiguous"))


@pytest.mark.slow
@pytest.mark.postgres
def test_three_runs_on_two_workers_of_a_redis_server_share_three_slots_and_survive_a_kill(
    emulator: EmulatorServer,
    redis_url: str,
    postgres_url: str,
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    emulator.configure(job_latency_s=JOB_S, fair_use_limit=50, tokens=[SECRET_TOKEN])
    server = PrefectServer(
        tmp_path / "server",
        server_env=redis_server_env(redis_url, asyncpg_url(postgres_url)),
        workers=2,
    )
    server.prepare()
    server.start()
    services = server.start_services()
    workers: list[Worker] = []
    api = Api(server.api_url)
    try:
        deploy_adhoc(server.env(PWD=str(REPO_ROOT)))
        worker_env = emulator_worker_env(
            server,
            emulator,
            PREFECT_HOME=str(tmp_path / "worker-home"),
            MODEL_STUDIO_SLOT_TURN_S="5",
        )
        workers = [
            Worker(worker_env, tmp_path / f"worker-{n}.log", "--limit", "2", "--name", f"w{n}")
            for n in (1, 2)
        ]
        datasets = [Dataset(tmp_path, name) for name in ("alpha", "beta", "gamma")]
        runs = {api.run_deployment(d.parameters()): d for d in datasets}

        def victim_has_jobs_in_flight() -> bool:
            return any(
                workers[0].runs_here(api.flow_run(run)["infrastructure_pid"])
                and dataset.in_flight() > 0
                for run, dataset in runs.items()
            )

        wait_for(victim_has_jobs_in_flight, 180, "a run of worker 1 with jobs in flight", 0.5)
        killed = [
            run for run in runs if workers[0].runs_here(api.flow_run(run)["infrastructure_pid"])
        ]
        workers[0].kill()
        killed_at = time.monotonic() - started
        unknown = sum(runs[run].unknown_outcomes() for run in killed)
        survivors = [run for run in runs if run not in killed]
        wait_for(lambda: api.ended(*survivors), 240, "the other runs", 1)
        assert all(api.state(run) == "COMPLETED" for run in survivors), workers[1].log()[-4000:]

        reruns = [api.run_deployment(runs[run].parameters()) for run in killed]
        wait_for(lambda: api.ended(*reruns), 240, "the reruns", 1)
        assert all(api.state(run) == "COMPLETED" for run in reruns), workers[1].log()[-4000:]

        stats = emulator.stats()
        for dataset in datasets:
            assert_every_row_completed_once(dataset.database_url, dataset.row_keys)
        assert stats["max_active_jobs"] <= 3, stats
        assert 3 * SHARDS <= stats["jobs_created"] <= 3 * SHARDS + unknown, stats
        # The killed runs' leases, last renewed at the kill, expire LEASE_S later and are
        # reclaimed on the repossessor's next pass; the reruns may end well before that.
        reclaimed_by = killed_at + LEASE_S + REPOSSESSOR_LOOP_S + 15
        wait_for(
            lambda: api.active_slots() == 0,
            max(30.0, reclaimed_by - (time.monotonic() - started)),
            "every slot back on the server",
            0.5,
        )
    finally:
        for worker in workers:
            worker.stop()
        stop_process_group(services)
        server.stop()
        api.close()
    seconds = time.monotonic() - started
    write_chaos_section(
        "Production topology: PostgreSQL, Redis, a 2-worker server, 2 process workers",
        f"- `prefect server start --workers 2` on PostgreSQL with prefect-redis (messaging, "
        "ordering, docket, lease storage), `prefect server services start` beside it; two "
        "`prefect worker start --pool studio-flows --limit 2`\n"
        f"- three runs of adhoc-generation at once, {ROWS} rows each in shards of {SHARD}, "
        f"jobs of {JOB_S:.0f} s; worker 1 and its {len(killed)} flow run(s) SIGKILLed at "
        f"{killed_at:.0f} s with jobs in flight ({unknown} POSTs of unknown outcome)\n"
        f"- the other {len(survivors)} run(s) completed; the rerun of each killed dataset "
        "completed\n"
        f"- emulator: {stats['jobs_created']} jobs for {3 * SHARDS} shards, at most "
        f"{stats['max_active_jobs']} active; every row completed once; 0 active slots at the "
        f"end; {seconds:.0f} s in all",
    )
