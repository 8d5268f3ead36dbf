"""One shard as one job: the ledger writes that make it exactly-once (core, no Prefect)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy.engine import Engine

from studio_flows.client import ModelStudioClient
from studio_flows.emulator import EmulatorServer
from studio_flows.errors import (
    AmbiguousShardError,
    AmbiguousSubmissionError,
    FairUseError,
    RequestRejectedError,
)
from studio_flows.jobs import (
    WorkItem,
    map_results,
    run_shard,
    submit_shard,
)
from studio_flows.models import GenerateRequest, JobCreated, JobStatus, Message
from studio_flows.rows import GenerationParams, Row, Shard
from studio_flows.storage import completed_identities, get_shard, make_engine


def make_shard(count: int = 3) -> Shard:
    rows = tuple(
        Row.from_messages([Message(role="user", content=f"q{i}")], line=i + 1) for i in range(count)
    )
    return Shard(dataset="d.jsonl", params=GenerationParams("m", 0.5, 32), rows=rows)


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    engine = make_engine(sqlite_url)
    yield engine
    engine.dispose()


def test_a_retried_job_reattaches_to_the_recorded_job_instead_of_paying_again(
    emulator: EmulatorServer, studio_client: ModelStudioClient, sqlite_engine: Engine
) -> None:
    shard = make_shard()
    # The first try of the task: the POST went through and was recorded, then it failed.
    job_id, _ = submit_shard(studio_client, sqlite_engine, shard)

    outcome = run_shard(studio_client, sqlite_engine, WorkItem(shard))

    assert emulator.stats()["jobs_created"] == 1
    assert (outcome.job_id, outcome.reattached, outcome.completed) == (job_id, True, 3)


def test_a_recorded_job_the_service_forgot_is_paid_again_and_reported_so(
    emulator: EmulatorServer,
    studio_client: ModelStudioClient,
    sqlite_engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Re-attach meets a 404, resubmits through one lost POST response: not 're-attached'."""
    shard = make_shard()
    forgotten, _ = submit_shard(studio_client, sqlite_engine, shard)
    emulator.reset()  # the service no longer knows the recorded job
    real_create = studio_client.create_job
    lost = [AmbiguousSubmissionError("POST lost", cause="read timeout")]

    def create_once_lost(request: GenerateRequest) -> JobCreated:
        if lost:
            raise lost.pop()
        return real_create(request)

    monkeypatch.setattr(studio_client, "create_job", create_once_lost)

    outcome = run_shard(studio_client, sqlite_engine, WorkItem(shard, forgotten))

    assert outcome.job_id != forgotten and outcome.completed == 3
    assert (outcome.reattached, outcome.ambiguous_resubmits) == (False, 1)


def test_the_job_id_is_recorded_before_the_job_ends(
    emulator: EmulatorServer, studio_client: ModelStudioClient, sqlite_engine: Engine
) -> None:
    emulator.configure(job_latency_s=5.0)
    shard = make_shard()

    job_id, resubmits = submit_shard(studio_client, sqlite_engine, shard)

    record = get_shard(sqlite_engine, shard.shard_key)
    assert record is not None
    assert (record.status, record.job_id, resubmits) == ("submitted", job_id, 0)


def test_a_lost_post_response_stops_under_the_stop_policy(
    emulator: EmulatorServer, studio_client: ModelStudioClient, sqlite_engine: Engine
) -> None:
    emulator.configure(lost_post_response_rate=1.0)
    shard = make_shard()
    waits: list[float] = []

    with pytest.raises(AmbiguousShardError, match="outcome unknown"):
        submit_shard(studio_client, sqlite_engine, shard, policy="stop", sleep=waits.append)

    record = get_shard(sqlite_engine, shard.shard_key)
    assert record is not None and record.status == "ambiguous"
    assert emulator.stats()["jobs_created"] == 1
    # The orphan may run: the slot stays with the caller until it could have ended.
    assert len(waits) == 1 and waits[0] > 0


def test_ambiguous_resubmits_are_bounded_and_wait_for_the_orphan(
    emulator: EmulatorServer, studio_client: ModelStudioClient, sqlite_engine: Engine
) -> None:
    emulator.configure(lost_post_response_rate=1.0)
    waits: list[float] = []

    with pytest.raises(AmbiguousShardError):
        submit_shard(studio_client, sqlite_engine, make_shard(), sleep=waits.append)

    assert emulator.stats()["jobs_created"] == 4  # the first POST and three resubmits
    # One wait before each resubmit and one before giving up: the last orphan may run too.
    assert len(waits) == 4 and all(w > 0 for w in waits)


class LosableSlot:
    """A fair-use slot the server may forget (as a lease of tasks/fair_use.py)."""

    def __init__(self) -> None:
        self.lease_id = uuid.uuid4()
        self.lost = False

    def check(self) -> None:
        if self.lost:
            raise FairUseError("The fair-use lease was lost")


def test_no_resubmit_is_posted_on_a_slot_lost_while_the_orphan_may_run(
    emulator: EmulatorServer, studio_client: ModelStudioClient, sqlite_engine: Engine
) -> None:
    emulator.configure(lost_post_response_rate=1.0)
    slot = LosableSlot()

    def orphan_wait(seconds: float) -> None:
        slot.lost = True  # the server forgot the lease during the wait before the resubmit

    with pytest.raises(FairUseError, match="lost"):
        submit_shard(studio_client, sqlite_engine, make_shard(), sleep=orphan_wait, slot=slot)

    assert emulator.stats()["jobs_created"] == 1  # the first POST only


def test_a_post_refused_with_404_for_its_model_is_one_rejected_request(
    emulator: EmulatorServer, studio_client: ModelStudioClient, sqlite_engine: Engine
) -> None:
    emulator.configure(known_models=["another-model"])
    shard = make_shard()

    with pytest.raises(RequestRejectedError) as info:
        run_shard(studio_client, sqlite_engine, WorkItem(shard))

    assert info.value.status_code == 404
    assert str(info.value) == (
        "Model Studio refused the generation request for model 'm' "
        "(HTTP 404: Model 'm' not found); no job was created."
    )
    assert emulator.stats()["requests"]["POST /generate"] == {"404": 1}  # not retried
    assert emulator.stats()["jobs_created"] == 0
    # No job exists: the shard is closed, not left an unknown outcome for the next run.
    record = get_shard(sqlite_engine, shard.shard_key)
    assert record is not None and (record.status, record.job_id) == ("failed", None)
    assert record.error == "HTTP 404: Model 'm' not found"


def test_a_404_on_a_get_just_after_create_is_not_a_rejected_request(
    emulator: EmulatorServer, studio_client: ModelStudioClient, sqlite_engine: Engine
) -> None:
    emulator.configure(not_found_window_s=0.2, known_models=["m"])

    outcome = run_shard(studio_client, sqlite_engine, WorkItem(make_shard()))

    assert outcome.completed == 3
    assert emulator.stats()["faults"]["not_found_window"] >= 1


def test_results_map_by_task_index_and_a_missing_one_is_a_failed_row() -> None:
    shard = make_shard(3)
    status = JobStatus.model_validate(
        {
            "job_id": "j",
            "job_status": "FINISHED",
            "total_tasks": 3,
            "completed_tasks": 2,
            "results": [
                {"task_index": 2, "status": "completed", "result": "two"},
                {"task_index": 0, "status": "completed", "result": "zero"},
            ],
        }
    )

    records = map_results(shard, status)

    assert [(r.task_index, r.status, r.result) for r in records] == [
        (0, "completed", "zero"),
        (1, "failed", None),
        (2, "completed", "two"),
    ]
    assert records[1].error == "job j returned no result for task_index 1"
    assert records[2].identity == shard.rows[2].identity(shard.params)


def test_persist_job_results_writes_a_finished_shard_once(
    emulator: EmulatorServer,
    studio_client: ModelStudioClient,
    sqlite_engine: Engine,
    sqlite_url: str,
) -> None:
    from studio_flows.tasks.jobs import persist_job_results

    from studio_flows.blocks import ResultsDatabase

    shard = make_shard(4)
    outcome = run_shard(studio_client, sqlite_engine, WorkItem(shard))

    database = ResultsDatabase(url=sqlite_url)
    assert persist_job_results.fn(outcome, database=database) == 4
    assert persist_job_results.fn(outcome, database=database) == 4  # idempotent

    record = get_shard(sqlite_engine, shard.shard_key)
    assert record is not None and record.status == "finished"
    assert len(completed_identities(sqlite_engine, shard.identities)) == 4
