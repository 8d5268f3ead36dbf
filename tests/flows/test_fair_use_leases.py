"""Fair-use leases on Prefect's server: who holds them, and a lease the server lost.

In one process, against the emulator on loopback and the session's Prefect API.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from studio_flows.tasks.fair_use import PrefectSlotApi, SlotPool
from studio_flows.tasks.generation import submit_generation_job, wait_for_generation_job

from studio_flows import generate_rows
from studio_flows.client import ModelStudioClient
from studio_flows.emulator import EmulatorServer
from studio_flows.errors import FairUseError
from studio_flows.models import GenerateRequest, Message
from studio_flows.settings import load_settings
from tests.fixtures.cli_runs import wait_for
from tests.fixtures.harness import running_limit_name, running_pool

MODEL = "lease-model"


@pytest.fixture
def pool(flow_env: EmulatorServer) -> Iterator[SlotPool]:
    """This process's pool, renewing its leases every 0.2 s; every slot back afterwards."""
    pool = running_pool()
    renew_every_s, pool.renew_every_s = pool.renew_every_s, 0.2
    yield pool
    pool.renew_every_s = renew_every_s
    pool.release_all()


@flow
def submit_one(batch: list[str]) -> Any:
    return submit_generation_job(batch, MODEL, return_state=True)


def test_a_slot_names_the_task_run_holding_it_as_prefect_concurrency_limit_inspect_shows(
    flow_env: EmulatorServer, pool: SlotPool
) -> None:
    flow_env.configure(fair_use_limit=50, job_latency_s=5.0)  # held while it runs
    state = submit_one(["who holds me?"])
    job = state.result()
    task_run_id = state.state_details.task_run_id

    # What `prefect concurrency-limit inspect model-studio` prints as its active slots.
    tag = running_limit_name().removeprefix("tag:")
    with get_client(sync_client=True) as client:
        holders = client.read_concurrency_limit_by_tag(tag).active_slots
    assert task_run_id in holders

    wait_for_generation_job(job)
    with get_client(sync_client=True) as client:
        assert task_run_id not in client.read_concurrency_limit_by_tag(tag).active_slots


def test_a_lease_revoked_on_the_server_mid_job_starts_no_new_job_on_it(
    flow_env: EmulatorServer, pool: SlotPool
) -> None:
    """The server forgets one of a run's three leases while its job runs, and another
    holder takes that slot at once and POSTs: the run must not POST on the lost lease."""
    # The account's own limit: 3 active jobs. The other process's POST is refused (429)
    # until the revoked lease's job ends: its retries (Retry-After 0.5 s) outlast that job.
    flow_env.configure(job_latency_s=3.0, retry_after_s=0.5)
    rows = [{"prompt": f"revoked {i}"} for i in range(12)]
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            generate_rows(rows, MODEL, shard_size=1)
        except BaseException as err:  # handed to the test
            outcome["error"] = err

    runner = threading.Thread(target=run, name="leased-run", daemon=True)
    runner.start()
    wait_for(lambda: flow_env.stats()["active_jobs"] == 3, 60, "three jobs in flight")
    revoked = next(iter(pool.lease_ids()))
    other = SlotPool(running_limit_name(), api=PrefectSlotApi())
    other.api.release(revoked)  # the server forgets it (as a repossessor would)
    other_lease = other.acquire()  # another process takes the freed slot ...
    try:
        with ModelStudioClient.from_settings(load_settings()) as client:
            other_request = GenerateRequest(
                model_id=MODEL, messages=[[Message(role="user", content="another process")]]
            )
            other_job = client.create_job(other_request)  # ... and runs a job on it
            other_429 = client.stats.rate_limited  # the run's in-flight job still counts
            runner.join(timeout=120)
            client.wait_for_job(other_job.job_id, deadline_s=60)
    finally:
        other.release(other_lease)
        runner.join(timeout=120)  # a failed test leaves no run posting into the next one

    assert not runner.is_alive()
    assert isinstance(outcome.get("error"), FairUseError), outcome
    assert "was lost" in str(outcome["error"])
    stats = flow_env.stats()
    assert stats["faults"].get("fair_use_429", 0) == other_429, stats  # none of the run's
    assert stats["max_active_jobs"] <= 3, stats
