"""The emulator's styles: readings of what the API reference leaves open.

Each style is watched through one job on a fake clock (no sleeps): the statuses it shows
between CREATED and FINISHED, whether results and ``completed_tasks`` show while it runs,
and the order of its results. Every style ends with the same answers by task index.
"""

from __future__ import annotations

import json

import pytest

from studio_flows.client import ModelStudioClient
from studio_flows.emulator import STYLES, EmulatorConfig, EmulatorServer, EmulatorState
from studio_flows.models import GenerateRequest, JobStatus, Message

AUTH = "Bearer studio-flows-emulator-token"
TASKS = 8


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def watch(style: str, **dimensions: object) -> list[JobStatus]:
    """A job of TASKS prompts lasting 8 s, read every half second from creation to end."""
    clock = FakeClock()
    config = EmulatorConfig.model_validate(
        {"job_latency_s": 8.0, "style": style, "seed": 5, **dimensions}
    )
    state = EmulatorState(config, clock=clock)
    body = {
        "model_id": "m",
        "messages": [[{"role": "user", "content": f"p{i}"}] for i in range(TASKS)],
    }
    created = state.create_job("org", AUTH, json.dumps(body).encode())
    job_id = json.loads(bytes(created.body))["job_id"]
    seen = []
    for _ in range(17):
        seen.append(JobStatus.model_validate_json(bytes(state.read_job("org", job_id, AUTH).body)))
        clock.now += 0.5
    return seen


def test_the_reference_style_is_todays_default() -> None:
    assert EmulatorConfig().style == "reference"
    statuses = [s.job_status for s in watch("reference")]
    assert statuses[0] == "CREATED" and statuses[-1] == "FINISHED"
    assert set(statuses[1:-1]) == {"RUNNING"}


@pytest.mark.parametrize(
    ("style", "between"),
    [("quiet", {"CREATED"}), ("queued", {"QUEUED", "IN_PROGRESS"}), ("lowercase", {"running"})],
)
def test_each_style_shows_its_own_statuses_between_created_and_the_end(
    style: str, between: set[str]
) -> None:
    seen = watch(style)
    running = [s for s in seen if not s.is_terminal]
    assert {s.job_status for s in running[1:]} == between
    assert seen[-1].is_finished and seen[-1].job_status.upper() == "FINISHED"


@pytest.mark.parametrize("style", list(STYLES))
def test_progress_and_partial_results_show_only_where_the_style_says(style: str) -> None:
    running = [s for s in watch(style) if not s.is_terminal]
    shows_results = any(s.results for s in running)
    shows_count = any(s.completed_tasks for s in running)
    assert shows_results == STYLES[style].partial_results
    assert shows_count == STYLES[style].progress


@pytest.mark.parametrize("style", list(STYLES))
def test_every_style_ends_with_every_answer_by_task_index(style: str) -> None:
    final = watch(style)[-1]
    assert final.completed_tasks == TASKS
    assert [a.text for a in final.answers(TASKS)] == [f"m answers: p{i}" for i in range(TASKS)]
    listed = [r.task_index for r in final.results]
    assert (listed != sorted(listed)) == STYLES[style].shuffled


@pytest.mark.parametrize("style", list(STYLES))
def test_the_client_waits_any_style_out_over_a_socket(
    emulator: EmulatorServer, studio_client: ModelStudioClient, style: str
) -> None:
    emulator.configure(style=style, job_latency_s=0.3)
    prompts = [f"q{i}" for i in range(5)]
    request = GenerateRequest(
        model_id="m", messages=[[Message(role="user", content=p)] for p in prompts]
    )
    job = studio_client.create_job(request)

    status = studio_client.wait_for_job(job.job_id, total_tasks=len(prompts))

    assert status.is_finished
    assert [a.text for a in status.answers(5)] == [f"m answers: {p}" for p in prompts]


def test_each_dimension_is_a_knob_of_its_own_over_the_named_style() -> None:
    """A reading no style names: quiet statuses and results, but a count while running."""
    seen = watch("quiet", progress_count=True, running_statuses=["working"])
    running = [s for s in seen if not s.is_terminal]
    assert any(s.completed_tasks for s in running)
    assert not any(s.results for s in running)
    assert {s.job_status for s in running[1:]} == {"working"}
    lowered = watch("reference", lowercase_statuses=True, partial_results=False)
    assert {s.job_status for s in lowered} == {"created", "running", "finished"}
    assert not any(s.results for s in lowered if not s.is_terminal)
