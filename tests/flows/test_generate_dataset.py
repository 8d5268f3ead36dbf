"""The generation flow against the emulator on loopback and a real database."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from studio_flows.flows.generate import (
    LANE_START_WAIT_S,
    _LaneStart,
    generate_dataset,
    jobs_of_one_task_run,
)
from studio_flows.tasks.jobs import history_of

from studio_flows.emulator import EmulatorServer
from studio_flows.errors import DatasetError
from studio_flows.interrupts import RunControl
from studio_flows.jobs import WorkItem
from studio_flows.models import Message
from studio_flows.options import GenerateOptions
from studio_flows.rows import GenerationParams, Row, Shard
from studio_flows.settings import load_settings
from studio_flows.storage import iter_results, make_engine
from tests.fixtures.harness import write_prompts


def options(dataset: Path, database_url: str, **extra: object) -> GenerateOptions:
    fields: dict[str, object] = {"model_id": "test-model", "shard_size": 5, **extra}
    return GenerateOptions(
        dataset_path=str(dataset),
        database_url=database_url,
        **fields,  # type: ignore[arg-type]
    )


def stored(database_url: str) -> list[dict[str, object]]:
    engine = make_engine(database_url)
    try:
        return list(iter_results(engine))
    finally:
        engine.dispose()


def test_every_row_is_answered_by_its_own_task_index(
    flow_env: EmulatorServer, tmp_path: Path, database_url: str
) -> None:
    flow_env.configure(shuffle_results=True, job_latency_s=0.2)
    dataset = write_prompts(tmp_path / "q.jsonl", 23)

    summary = generate_dataset(options(dataset, database_url))

    assert (summary.completed, summary.failed, summary.jobs) == (23, 0, 5)
    rows = stored(database_url)
    assert len(rows) == 23
    for row in rows:
        question = row["messages"][-1]["content"]  # type: ignore[index]
        assert row["result"] == f"test-model answers: {question}"
        assert row["status"] == "completed"


def test_the_summary_counts_the_clients_own_requests_a_job(
    flow_env: EmulatorServer, tmp_path: Path, sqlite_url: str
) -> None:
    flow_env.configure(job_latency_s=0.3)
    dataset = write_prompts(tmp_path / "q.jsonl", 20)

    summary = generate_dataset(options(dataset, sqlite_url))

    # The emulator saw the jobs' POSTs and polls, and the run's one access check before.
    seen = sum(sum(codes.values()) for codes in flow_env.stats()["requests"].values()) - 1
    assert summary.jobs == 4
    assert summary.requests == seen
    assert summary.requests_per_job == round(seen / 4, 2)
    assert {"metric": "requests a job", "value": summary.requests_per_job} in summary.table()


def test_the_window_of_three_is_used_and_never_exceeded(
    flow_env: EmulatorServer, tmp_path: Path, sqlite_url: str
) -> None:
    # The emulator would accept more: what it sees is the flow's own discipline. Jobs last
    # long enough (1 s) that lanes starting a little apart on a loaded machine still overlap.
    flow_env.configure(job_latency_s=1.0, fair_use_limit=50)
    dataset = write_prompts(tmp_path / "q.jsonl", 40)

    generate_dataset(options(dataset, sqlite_url))

    stats = flow_env.stats()
    assert stats["jobs_created"] == 8
    assert stats["max_active_jobs"] == 3


def test_a_shard_given_up_after_lost_posts_keeps_its_slot_while_its_orphan_may_run(
    flow_env: EmulatorServer, tmp_path: Path, sqlite_url: str
) -> None:
    # Every POST's response is lost, yet each makes a job the service runs (0.3 s). A lane
    # gives a shard up after its resubmits and takes the next shard: never while the last
    # orphan may still run, or the account runs a 4th job (CI saw 4 in the chaos test).
    flow_env.configure(job_latency_s=0.3, lost_post_response_rate=1.0, fair_use_limit=50)
    dataset = write_prompts(tmp_path / "q.jsonl", 30)

    summary = generate_dataset(options(dataset, sqlite_url))

    stats = flow_env.stats()
    assert (summary.completed, summary.unfinished) == (0, 30)
    assert stats["jobs_created"] == 6 * 4  # each shard's POST and its three resubmits
    assert summary.ambiguous_resubmitted == 6 * 3  # paid for, so counted though given up
    assert all("after 3 resubmits" in error for error in summary.errors), summary.errors
    assert stats["max_active_jobs"] <= 3, stats


def test_each_model_is_timed_on_its_own_jobs_across_runs_of_one_process(
    flow_env: EmulatorServer, tmp_path: Path, sqlite_url: str
) -> None:
    # A notebook: a slow model's run, then a fast one's. The fast model's polls (and the
    # wait for a lost POST's orphan) must not be planned from the slow model's 2-s jobs.
    dataset = write_prompts(tmp_path / "q.jsonl", 5)  # one job of 5 per run
    flow_env.configure(job_latency_s=2.0)
    generate_dataset(options(dataset, sqlite_url, model_id="slow-model"))
    flow_env.configure(job_latency_s=0.1)
    generate_dataset(options(dataset, sqlite_url, model_id="fast-model"))

    settings = load_settings()
    slow, fast = history_of(settings, "slow-model"), history_of(settings, "fast-model")
    assert (slow.predict(5) or 0.0) > 1.5
    assert (fast.predict(5) or 9.9) < 0.5, fast.predict(5)
    assert fast.longest(5) < 1.0


def test_a_rerun_submits_no_job(
    flow_env: EmulatorServer, tmp_path: Path, database_url: str
) -> None:
    dataset = write_prompts(tmp_path / "q.jsonl", 12)
    generate_dataset(options(dataset, database_url))
    created = flow_env.stats()["jobs_created"]

    again = generate_dataset(options(dataset, database_url))

    assert flow_env.stats()["jobs_created"] == created
    assert (again.already_done, again.jobs, again.rows_submitted) == (12, 0, 0)
    assert len(stored(database_url)) == 12


def test_task_failures_are_recorded_and_a_rerun_retries_only_them(
    flow_env: EmulatorServer, tmp_path: Path, sqlite_url: str
) -> None:
    flow_env.configure(task_failure_rate=0.2, seed=7)
    dataset = write_prompts(tmp_path / "q.jsonl", 30)

    first = generate_dataset(options(dataset, sqlite_url))

    failed_rows = [r for r in stored(sqlite_url) if r["status"] == "failed"]
    assert first.failed == len(failed_rows) > 0
    assert all(r["error"] for r in failed_rows)
    failed_shards = {r["shard_key"] for r in failed_rows}

    flow_env.configure(task_failure_rate=0.0)
    flow_env.reset()
    second = generate_dataset(options(dataset, sqlite_url))

    assert flow_env.stats()["jobs_created"] == len(failed_shards)
    assert flow_env.stats()["conversations"] == len(failed_rows)
    assert (second.completed, second.failed) == (len(failed_rows), 0)
    rows = stored(sqlite_url)
    assert len(rows) == 30 and all(r["status"] == "completed" for r in rows)


def test_a_failed_job_marks_its_rows_failed(
    flow_env: EmulatorServer, tmp_path: Path, sqlite_url: str
) -> None:
    flow_env.configure(failed_job_rate=1.0)
    dataset = write_prompts(tmp_path / "q.jsonl", 5)

    summary = generate_dataset(options(dataset, sqlite_url))

    assert (summary.completed, summary.failed) == (0, 5)
    rows = stored(sqlite_url)
    assert {r["status"] for r in rows} == {"failed"}
    assert all("FAILED" in str(r["error"]) for r in rows)
    engine = make_engine(sqlite_url)
    with engine.connect() as conn:
        statuses = conn.execute(sa.text("SELECT status FROM generation_jobs")).scalars().all()
    engine.dispose()
    assert statuses == ["failed"]


def test_a_malformed_dataset_submits_nothing(
    flow_env: EmulatorServer, tmp_path: Path, sqlite_url: str
) -> None:
    dataset = write_prompts(tmp_path / "q.jsonl", 4)
    with dataset.open("a") as out:
        out.write('{"prompt": "fine"}\n{"prompt": \n')

    with pytest.raises(DatasetError, match=r"q\.jsonl:6"):
        generate_dataset(options(dataset, sqlite_url))

    assert flow_env.stats()["jobs_created"] == 0


def test_the_run_reports_a_summary_table_markdown_and_full_progress(
    flow_env: EmulatorServer, tmp_path: Path, sqlite_url: str
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    dataset = write_prompts(tmp_path / "q.jsonl", 7)
    summary = generate_dataset(options(dataset, sqlite_url))

    def latest(key: str) -> object:
        with get_client(sync_client=True) as client:
            found = client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                sort="CREATED_DESC",
                limit=1,
            )
        assert found, f"no artifact {key}"
        return found[0].data

    table = latest("generation-summary")
    assert {"metric": "answers completed", "value": 7} in (
        table if isinstance(table, list) else json.loads(str(table))
    )
    report = str(latest("generation-report"))
    assert "7 completed, 0 failed, 0 unfinished in " in report
    assert "No bad rows and no errors." in report
    assert "| completed |" not in report  # the table artifact has the counts; no second copy
    assert float(str(latest("generation-progress"))) == 100.0
    assert summary.completed == 7


def test_a_shard_left_pending_by_a_crash_is_resubmitted_and_counted(
    flow_env: EmulatorServer, tmp_path: Path, sqlite_url: str
) -> None:
    from studio_flows.datasets import DatasetOptions, iter_good_rows, iter_shards
    from studio_flows.rows import GenerationParams
    from studio_flows.storage import record_shard_intent

    dataset = write_prompts(tmp_path / "q.jsonl", 5)
    run = options(dataset, sqlite_url)
    params = GenerationParams(run.model_id, run.temperature, run.max_tokens)
    rows = iter_good_rows(dataset, DatasetOptions())
    (shard,) = iter_shards(rows, dataset="q.jsonl", params=params, shard_size=5)
    engine = make_engine(sqlite_url)
    record_shard_intent(engine, shard)  # a crash between the intent and the POST's answer
    engine.dispose()

    summary = generate_dataset(run)

    assert (summary.completed, summary.ambiguous_resubmitted) == (5, 1)
    assert flow_env.stats()["jobs_created"] == 1


# --------------------------------------------------------------------------- task runs


def _work(count: int) -> list[WorkItem]:
    params = GenerationParams(model_id="test-model")
    asks = [Message(role="user", content=f"q{i}") for i in range(count)]
    return [WorkItem(Shard("d", params, (Row.from_messages([ask], line=1),))) for ask in asks]


@pytest.mark.parametrize(("job_s", "jobs_per_task_run"), [(0.25, 4), (1 / 64, 64), (2.0, 1)])
def test_a_task_run_takes_the_lanes_next_jobs_until_it_has_lasted_its_target(
    job_s: float, jobs_per_task_run: int
) -> None:
    """Short jobs share a task run (about 1 s of them); a long job has one of its own.

    Jobs are pulled one at a time as the previous one ends, never ahead: what a task run
    does not take stays in the shared work for the other lanes.
    """
    now = [0.0]
    work = iter(_work(200))
    first = next(work)
    taken = []
    for item in jobs_of_one_task_run(
        first, work, threading.Event(), target_s=1.0, clock=lambda: now[0]
    ):
        taken.append(item)
        now[0] += job_s  # the job runs
    assert len(taken) == jobs_per_task_run
    assert len(list(work)) == 200 - jobs_per_task_run


def test_a_stopped_run_hands_a_task_run_no_further_job() -> None:
    work = iter(_work(5))
    stop = threading.Event()
    taken = []
    for item in jobs_of_one_task_run(next(work), work, stop, clock=lambda: 0.0):
        taken.append(item)
        stop.set()  # another lane hit a fatal error
    assert len(taken) == 1
    assert len(list(work)) == 4


def test_a_reruns_progress_counts_the_rows_past_runs_answered_and_never_goes_back(
    flow_env: EmulatorServer, tmp_path: Path, sqlite_url: str
) -> None:
    from studio_flows.flows.generate import reporting_progress

    first = write_prompts(tmp_path / "first.jsonl", 12)
    generate_dataset(options(first, sqlite_url))
    more = tmp_path / "more.jsonl"
    more.write_text(first.read_text() + write_prompts(tmp_path / "x.jsonl", 8, "extra").read_text())
    seen: list[tuple[int, int]] = []

    with reporting_progress(lambda done, total, tally, flying: seen.append((done, total))):
        summary = generate_dataset(options(more, sqlite_url))

    assert summary.already_done == 12 and summary.completed == 8
    assert seen[-1] == (20, 20)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_lanes_wait_for_each_other_only_until_the_limit_refuses() -> None:
    class Pool:
        refusals = 0

    pool, stop = Pool(), threading.Event()
    start = _LaneStart(lanes=3, refusals_before=0)
    done = threading.Event()

    def wait_then_start() -> None:
        start.wait_for_others(pool, stop, RunControl())  # type: ignore[arg-type]
        done.set()

    lane = threading.Thread(target=wait_then_start)
    lane.start()
    assert not done.wait(timeout=0.3), "a lane started while the server still grants slots"

    pool.refusals = 1  # the next slot is held by another run
    lane.join(timeout=LANE_START_WAIT_S / 2)

    assert done.is_set(), "the lane kept its slot idle waiting for a slot another run holds"
