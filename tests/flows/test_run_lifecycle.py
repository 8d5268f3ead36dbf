"""A run owns its lifecycle: one flow run's timeout stops that run, not the process.

Users call our flows and tasks from notebooks, long-lived services and task workers: a
timeout of one flow run must leave the next flow of the process, and a flow run beside
it, as if nothing happened. In one process, against the emulator on loopback.

The timed-out flow runs in the main thread with pytest-timeout's thread method, so that
Prefect enforces its timeout with an alarm signal, as in a notebook or a script.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from prefect import flow, unmapped
from prefect.states import State
from studio_flows.tasks.generation import generate

from studio_flows import generate_rows
from studio_flows.emulator import EmulatorServer
from studio_flows.generation import Generation
from tests.fixtures.cli_runs import wait_for
from tests.fixtures.harness import running_pool

MODEL = "lifecycle-model"
TIMEOUT_S = 10  # the flow's set-up takes seconds on a loaded machine


def answer(prompt: str) -> str:
    return f"{MODEL} answers: {prompt}"


@flow(timeout_seconds=TIMEOUT_S)
def rows_with_a_timeout(rows: list[dict[str, Any]]) -> list[Generation]:
    return generate_rows(rows, MODEL, shard_size=1)  # type: ignore[no-any-return]


@flow
def mapped_generate(batches: list[list[str]]) -> list[list[Generation]]:
    return generate.map(batches, model_id=unmapped(MODEL)).result()  # type: ignore[no-any-return]


@flow
def generate_one(batch: list[str]) -> list[Generation]:
    return generate(batch, MODEL)  # type: ignore[no-any-return]


@pytest.fixture
def slots_back() -> Iterator[None]:
    yield
    running_pool().release_all()  # whatever a failed test left, for the next test


def timed_out(rows: list[dict[str, Any]]) -> State[Any]:
    """Run ``rows`` in a flow run that times out; its (failed) final state."""
    state = rows_with_a_timeout(rows, return_state=True)
    assert state.is_failed(), state
    return state


@pytest.mark.timeout(180, method="thread")
def test_after_a_flow_run_timed_out_the_next_flows_of_the_process_still_run(
    flow_env: EmulatorServer, slots_back: None
) -> None:
    flow_env.configure(fair_use_limit=50, job_latency_s=30.0)
    assert timed_out([{"prompt": f"slow {i}"} for i in range(3)]).name == "TimedOut"
    assert flow_env.stats()["jobs_created"] >= 1, "the run timed out before its first job"

    flow_env.configure(job_latency_s=0.1)
    batches = [["first a", "first b"], ["second a"]]
    answered = mapped_generate(batches)
    assert [[g.text for g in batch] for batch in answered] == [
        [answer(p) for p in batch] for batch in batches
    ]
    assert [g.text for g in generate_one(["third"])] == [answer("third")]


@pytest.mark.timeout(180, method="thread")
def test_a_flow_run_timing_out_beside_another_leaves_it_its_slots_and_every_row(
    flow_env: EmulatorServer, slots_back: None
) -> None:
    # The emulator's own limit (3): a slot given back under a running job shows as a 429.
    flow_env.configure(job_latency_s=1.0)
    rows = [{"prompt": f"beside {i}"} for i in range(60)]
    outcome: dict[str, Any] = {}

    def other_run() -> None:
        try:
            outcome["answers"] = generate_rows(rows, MODEL, shard_size=1)
        except BaseException as err:  # handed to the test
            outcome["error"] = err

    other = threading.Thread(target=other_run, name="other-run", daemon=True)
    other.start()
    pool = running_pool()
    wait_for(lambda: pool.held == 3, 60, "the other run to hold every slot")
    # Its jobs from now on outlast this flow run's start and timeout, however slow the
    # machine (with 1-s jobs it once finished first, and this run got a slot).
    flow_env.configure(job_latency_s=30.0)

    timed_out([{"prompt": "never answered"}])  # it waits for a slot the whole time
    assert "error" not in outcome, outcome["error"]  # the timeout stopped the other run
    assert other.is_alive(), "the other run ended before this one timed out"
    assert pool.held == 3, "the other run's slots were given back under its running jobs"

    flow_env.configure(job_latency_s=0.1)  # the rest quickly, once its 30-s jobs end
    other.join(timeout=120)
    assert "error" not in outcome, outcome.get("error")
    assert [a.text for a in outcome["answers"]] == [answer(r["prompt"]) for r in rows]
    stats = flow_env.stats()
    assert stats["jobs_created"] == len(rows)  # none for the run that timed out
    refused = [codes.get("429", 0) for codes in stats["rejections"].values()]
    assert stats["max_active_jobs"] <= 3 and sum(refused) == 0, stats  # (404s: preflights)
    assert pool.held == 0
