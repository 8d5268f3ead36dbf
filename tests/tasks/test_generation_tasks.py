"""The task library a user's own flow composes, against the emulator on loopback.

The emulator accepts 50 active jobs in these tests (its default is the account's 3): the
maximum it sees is then the tasks' own fair-use discipline, not its 429s.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect import flow, unmapped
from prefect.task_runners import ThreadPoolTaskRunner
from studio_flows.tasks.generation import (
    await_generation,
    generate,
    read_results,
    submit_generation_job,
    wait_for_generation_job,
)

from studio_flows.client import ModelStudioClient
from studio_flows.emulator import EmulatorServer
from studio_flows.errors import (
    DatasetError,
    GenerationJobCancelled,
    GenerationJobFailed,
    GenerationJobTimedOut,
)
from studio_flows.generation import Generation, GenerationJob, GenerationResult
from studio_flows.options import GenerateOptions
from tests.fixtures.cli_runs import wait_for
from tests.fixtures.harness import running_pool, write_prompts

MODEL = "lib-model"


@pytest.fixture
def env(flow_env: EmulatorServer) -> Iterator[EmulatorServer]:
    """The emulator, allowing 50 active jobs; every slot of this process back afterwards."""
    flow_env.configure(fair_use_limit=50)
    yield flow_env
    running_pool().release_all()


def batches_of(count: int, size: int, prefix: str = "q") -> list[list[str]]:
    return [[f"{prefix} {b}.{i}" for i in range(size)] for b in range(count)]


def held_slots() -> int:
    return running_pool().held


def assert_answers(batches: list[list[str]], answered: list[list[Generation]]) -> None:
    assert len(answered) == len(batches)
    for prompts, generations in zip(batches, answered, strict=True):
        assert [g.task_index for g in generations] == list(range(len(prompts)))
        assert [g.text for g in generations] == [f"{MODEL} answers: {p}" for p in prompts]
        assert all(g.ok and g.error is None for g in generations)


@flow
def mapped_generate(batches: list[list[str]]) -> list[list[Generation]]:
    return generate.map(batches, model_id=unmapped(MODEL)).result()  # type: ignore[no-any-return]


@flow
def mapped_submit_then_wait(batches: list[list[str]]) -> list[GenerationResult]:
    jobs = submit_generation_job.map(batches, model_id=unmapped(MODEL))
    return wait_for_generation_job.map(jobs).result()  # type: ignore[no-any-return]


@flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
def mapped_submit_then_wait_on_two_threads(batches: list[list[str]]) -> list[GenerationResult]:
    jobs = submit_generation_job.map(batches, model_id=unmapped(MODEL))
    return wait_for_generation_job.map(jobs).result()  # type: ignore[no-any-return]


@flow
def mapped_generate_errors(batches: list[list[str]]) -> list[str]:
    futures = generate.map(batches, model_id=unmapped(MODEL))
    futures.wait()
    return [type(f.state.result(raise_on_failure=False)).__name__ for f in futures]


@flow
def submit_all_then_wait(batches: list[list[str]]) -> list[GenerationResult]:
    jobs = [submit_generation_job(batch, MODEL) for batch in batches]
    return [wait_for_generation_job(job) for job in jobs]


@flow
def submit_and_wait(batch: list[str], deadline_s: float | None = None) -> GenerationResult:
    job = submit_generation_job(batch, MODEL)
    return wait_for_generation_job(job, deadline_s=deadline_s)


@flow
def generate_one(batch: list[Any]) -> list[Generation]:
    return generate(batch, MODEL)


def test_mapping_generate_over_20_batches_keeps_three_jobs_active_and_answers_in_order(
    env: EmulatorServer,
) -> None:
    # Jobs of 1 s: twenty task runs on a loaded machine still keep three jobs overlapping.
    env.configure(job_latency_s=1.0, shuffle_results=True)
    batches = batches_of(20, 5)

    started = time.monotonic()
    answered = mapped_generate(batches)
    makespan = time.monotonic() - started

    stats = env.stats()
    assert stats["jobs_created"] == 20
    assert stats["max_active_jobs"] == 3, stats
    assert stats["rejections"] == {}, stats  # no 429: nothing leaned on the service's limit
    assert_answers(batches, answered)
    wait_for(lambda: held_slots() == 0, 10, "every slot back (an ask in flight lands late)")
    print(f"20 jobs of 1 s mapped: makespan {makespan:.2f} s (ideal 7 s)")


def test_mapped_submit_then_wait_is_never_refused_and_keeps_three_active(
    env: EmulatorServer,
) -> None:
    # Jobs of 2 s: twelve task runs starting at once on a loaded machine still overlap
    # (with 1 s jobs the first ended before the third slot was granted in one suite run).
    env.configure(job_latency_s=2.0)
    batches = batches_of(12, 3, prefix="s")

    results = mapped_submit_then_wait(batches)

    assert env.stats()["max_active_jobs"] == 3
    assert [r.job_status for r in results] == ["FINISHED"] * 12
    assert_answers(batches, [r.generations for r in results])
    assert held_slots() == 0


def test_mapped_submit_then_wait_completes_with_fewer_runner_threads_than_batches(
    env: EmulatorServer,
) -> None:
    # Two threads, eight batches: every thread may sit in a submit waiting for a slot
    # while no wait has run; the submitted jobs' watchers free the slots as they end.
    env.configure(job_latency_s=0.3)
    batches = batches_of(8, 2, prefix="t")

    results = mapped_submit_then_wait_on_two_threads(batches)

    assert_answers(batches, [r.generations for r in results])
    assert env.stats()["max_active_jobs"] <= 3
    wait_for(lambda: held_slots() == 0, 10, "the watchers to give every slot back")


def test_a_loop_that_submits_more_than_the_limit_before_waiting_completes(
    env: EmulatorServer,
) -> None:
    # Nothing waits on the first three jobs while the fourth submit waits for a slot:
    # the watchers of the submitting process give their slots back as the jobs end.
    env.configure(job_latency_s=3.0)  # three submits of a loop overlap on a loaded machine
    batches = batches_of(5, 1)

    results = submit_all_then_wait(batches)

    assert_answers(batches, [r.generations for r in results])
    assert env.stats()["max_active_jobs"] == 3
    assert env.stats()["jobs_created"] == 5
    wait_for(lambda: held_slots() == 0, 10, "the watchers to give every slot back")


def test_a_failed_job_is_a_typed_error_and_its_slot_comes_back(env: EmulatorServer) -> None:
    env.configure(failed_job_rate=1.0)

    with pytest.raises(GenerationJobFailed, match="ended FAILED"):
        submit_and_wait(["doomed"])
    assert held_slots() == 0

    with pytest.raises(GenerationJobFailed):
        generate_one(["doomed too"])
    assert held_slots() == 0


def test_a_lost_post_response_keeps_its_slot_while_the_job_it_made_may_run(
    env: EmulatorServer,
) -> None:
    # Each POST makes a 0.3 s job whose response is lost: a slot given back at once would
    # let a fourth task's POST run beside three orphans.
    env.configure(job_latency_s=0.3, lost_post_response_rate=1.0)

    errors = mapped_generate_errors(batches_of(6, 2))

    assert errors == ["AmbiguousSubmissionError"] * 6
    assert env.stats()["jobs_created"] == 6
    assert env.stats()["max_active_jobs"] <= 3, env.stats()
    assert held_slots() == 0


def test_a_job_past_its_deadline_is_a_typed_error_and_keeps_its_slot_until_it_ends(
    env: EmulatorServer,
) -> None:
    env.configure(job_latency_s=4.0)

    with pytest.raises(GenerationJobTimedOut, match="deadline_s"):
        submit_and_wait(["slow"], deadline_s=0.5)

    # Given up by its caller, the job still runs at the service: its slot stays taken.
    assert env.stats()["active_jobs"] == 1
    assert held_slots() == 1
    wait_for(lambda: held_slots() == 0, 30, "the watcher to give the slot back")
    assert env.stats()["active_jobs"] == 0


def test_conversations_may_be_strings_or_turns(env: EmulatorServer) -> None:
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a colour"},
    ]

    answered = generate_one(["plain prompt", conversation])

    assert [g.text for g in answered] == [
        f"{MODEL} answers: plain prompt",
        f"{MODEL} answers: Name a colour",
    ]


def test_an_answer_the_job_does_not_give_unambiguously_is_a_failed_generation(
    env: EmulatorServer,
) -> None:
    env.configure(duplicate_index_rate=1.0, empty_result_rate=0.5, seed=3)

    answered = generate_one(["first", "second", "third"])

    assert answered[0].status == "failed"
    assert "listed task_index 0 2 times with different answers" in str(answered[0].error)
    for generation, prompt in zip(answered[1:], ["second", "third"], strict=True):
        if generation.status == "completed":
            assert generation.text == f"{MODEL} answers: {prompt}"
        else:
            assert "completed without a result" in str(generation.error)
    assert env.stats()["faults"]["empty_result"] >= 1


def test_a_bad_conversation_is_refused_before_a_slot_is_taken(env: EmulatorServer) -> None:
    with pytest.raises(DatasetError, match="conversation 1"):
        generate_one(["fine", [{"role": "robot", "content": "x"}]])

    assert env.stats()["jobs_created"] == 0 and held_slots() == 0


def test_read_results_returns_the_rows_a_run_wrote(
    env: EmulatorServer, tmp_path: Path, sqlite_url: str
) -> None:
    from studio_flows.flows.generate import generate_dataset

    dataset = write_prompts(tmp_path / "q.jsonl", 7)
    generate_dataset(
        GenerateOptions(
            dataset_path=str(dataset),
            model_id=MODEL,
            database_url=sqlite_url,
            shard_size=3,
            id_column="id",
        )
    )

    @flow
    def read_back() -> object:
        return read_results(database_url=sqlite_url, model_id=MODEL)

    table = read_back()

    rows = table.to_pylist()  # type: ignore[attr-defined]
    assert sorted(r["row_key"] for r in rows) == sorted(f"question-{i}" for i in range(7))
    for row in rows:
        assert row["result"] == f"{MODEL} answers: {row['messages'][-1]['content']}"
        assert row["status"] == "completed" and row["dataset"] == "q.jsonl"
    assert read_results.fn(database_url=sqlite_url, model_id="other-model").num_rows == 0


def test_the_results_table_has_the_parquet_exports_schema() -> None:
    from studio_flows.cli.export import parquet_schema
    from studio_flows.result_table import results_schema

    assert results_schema().equals(parquet_schema())


def test_a_cancelled_job_is_its_own_typed_error() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"job_id": "j1", "job_status": "CANCELLED"})

    job = GenerationJob(job_id="j1", size=2, model_id=MODEL)
    with (
        ModelStudioClient(
            token="t",
            organization_id="org",
            transport=httpx.MockTransport(answer),
            poll_interval_s=0.01,
        ) as client,
        pytest.raises(GenerationJobCancelled, match="ended CANCELLED") as caught,
    ):
        await_generation(client, job, deadline_s=5)

    assert caught.value.job_id == "j1" and caught.value.job_status == "CANCELLED"
    assert not isinstance(caught.value, GenerationJobFailed)


def test_the_own_flow_example_answers_every_prompt_and_hands_them_on(
    env: EmulatorServer,
) -> None:
    from studio_flows.examples.own_flow import PROMPTS, answer_prompts

    env.configure(job_latency_s=0.3)

    answers = answer_prompts(PROMPTS, model_id=MODEL)

    assert answers == {prompt: f"{MODEL} answers: {prompt}" for prompt in PROMPTS}
    assert env.stats()["jobs_created"] == 4 and env.stats()["max_active_jobs"] <= 3
