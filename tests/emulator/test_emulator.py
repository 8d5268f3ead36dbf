"""The emulator over a real socket, driven by the project's own client.

Raw ``httpx`` is used only where the client cannot go: bodies its models refuse, a
missing token, and proving that a dropped connection is a transport error.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from studio_flows.client import AsyncModelStudioClient, ModelStudioClient, RetryPolicy
from studio_flows.emulator import EmulatorConfig, EmulatorServer
from studio_flows.errors import (
    AmbiguousSubmissionError,
    AuthenticationError,
    JobFailedError,
    NotFoundError,
    RateLimitError,
    UnprocessableEntityError,
)
from studio_flows.models import GenerateRequest, JobStatus, Message
from tests.fixtures.emulator import FAST_RETRY, TEST_ORGANIZATION

CREATE = "POST /generate"
READ = "GET /generate/{job_id}"
DROP_ERRORS = (httpx.RemoteProtocolError, httpx.ReadError)
SAMPLES = 400
RATE = 0.25
# 400 draws at 0.25: mean 100, sd 8.7; 60..140 is a ±4.6 sd band, and the seed is fixed.
LOW, HIGH = 0.15 * SAMPLES, 0.35 * SAMPLES


def generate_request(*prompts: str, model_id: str = "m") -> GenerateRequest:
    """One single-turn conversation per prompt."""
    return GenerateRequest(
        model_id=model_id, messages=[[Message(role="user", content=p)] for p in prompts]
    )


def body(*prompts: str) -> dict[str, Any]:
    return generate_request(*prompts).model_dump(mode="json")


def make_client(
    emulator: EmulatorServer,
    *,
    token: str | None = None,
    organization_id: str = TEST_ORGANIZATION,
    retry: RetryPolicy = FAST_RETRY,
) -> ModelStudioClient:
    return ModelStudioClient(
        base_url=emulator.base_url,
        token=emulator.token if token is None else token,
        organization_id=organization_id,
        retry=retry,
        poll_interval_s=0.02,
        poll_max_interval_s=0.2,
    )


@pytest.fixture
def raw(emulator: EmulatorServer) -> Iterator[httpx.Client]:
    """Plain httpx, no retries, authenticated, rooted at the organisation's jobs."""
    with httpx.Client(
        base_url=f"{emulator.base_url}/organizations/{TEST_ORGANIZATION}",
        headers={"Authorization": f"Bearer {emulator.token}"},
        timeout=10.0,
    ) as client:
        yield client


def poll_until_terminal(client: ModelStudioClient, job_id: str) -> list[JobStatus]:
    """Every status seen while polling quickly, until the job is terminal (5 s at most)."""
    seen = [client.get_job(job_id)]
    deadline = time.monotonic() + 5.0
    while not seen[-1].is_terminal:
        assert time.monotonic() < deadline, f"job still {seen[-1].job_status}"
        time.sleep(0.02)  # the emulator's job runs on its clock; look every 20 ms
        seen.append(client.get_job(job_id))
    return seen


# --- known models ------------------------------------------------------------------------


def test_an_unknown_model_is_404_naming_it_and_creates_no_job(
    emulator: EmulatorServer, raw: httpx.Client
) -> None:
    # Set through the control endpoint, as a script driving `studio-flows emulator` would.
    knobs = {"known_models": ["model-a", "model-b"]}
    httpx.post(f"{emulator.root_url}/_emulator/config", json=knobs).raise_for_status()

    unknown = raw.post("/generate", json=generate_request("hi", model_id="model-z").model_dump())
    known = raw.post("/generate", json=generate_request("hi", model_id="model-b").model_dump())

    assert unknown.status_code == 404
    assert unknown.json() == {"detail": "Model 'model-z' not found"}
    assert known.status_code == 200
    assert emulator.stats()["jobs_created"] == 1


def test_any_model_is_served_by_default(emulator: EmulatorServer, raw: httpx.Client) -> None:
    assert emulator.state.config.known_models is None
    created = raw.post("/generate", json=generate_request("hi", model_id="anything").model_dump())
    assert created.status_code == 200


# --- authentication and scoping --------------------------------------------------------


def test_wrong_token_is_401(emulator: EmulatorServer) -> None:
    with make_client(emulator, token="not-the-token") as client:
        with pytest.raises(AuthenticationError, match="401: Missing or invalid bearer token"):
            client.create_job(generate_request("hi"))
        with pytest.raises(AuthenticationError):
            client.get_job("any-job")
    assert emulator.stats()["rejections"] == {CREATE: {"401": 1}, READ: {"401": 1}}


def test_missing_token_is_401(emulator: EmulatorServer) -> None:
    jobs = f"{emulator.base_url}/organizations/{TEST_ORGANIZATION}/generate"
    created = httpx.post(jobs, json=body("hi"))
    read = httpx.get(f"{jobs}/any-job")
    assert (created.status_code, read.status_code) == (401, 401)
    assert created.headers["WWW-Authenticate"] == "Bearer"
    assert emulator.stats()["jobs_created"] == 0


def test_another_organisations_or_tokens_job_is_404(
    emulator: EmulatorServer, studio_client: ModelStudioClient
) -> None:
    emulator.configure(tokens=[emulator.token, "second-token"])
    job = studio_client.create_job(generate_request("hi"))
    assert studio_client.wait_for_job(job.job_id).is_finished
    with (
        make_client(emulator, organization_id="org-other") as other_org,
        pytest.raises(NotFoundError, match=job.job_id),
    ):
        other_org.get_job(job.job_id)
    with make_client(emulator, token="second-token") as other_token:
        with pytest.raises(NotFoundError):
            other_token.get_job(job.job_id)
        # The second token is accepted, it just does not see the first token's jobs.
        assert other_token.create_job(generate_request("hi")).job_id != job.job_id


# --- validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"model_id": "m", "messages": []}, "messages: List should have at least 1 item"),
        ({"model_id": "m", "messages": [[]]}, "messages[0]: List should have at least 1 item"),
        (
            {"model_id": "m", "messages": [[{"role": "user", "content": ""}]]},
            "messages[0][0].content: String should have at least 1 character",
        ),
        (
            {"model_id": "m", "messages": [[{"role": "robot", "content": "hi"}]]},
            "messages[0][0].role: Input should be 'system', 'user' or 'assistant'",
        ),
        ({**body("hi"), "max_tokens": 0}, "max_tokens: Input should be greater than 0"),
        ({**body("hi"), "temperature": 2.5}, "temperature: Input should be less than or equal"),
        ({"messages": body("hi")["messages"]}, "model_id: Field required"),
        ("{not json", "body: Invalid JSON"),
    ],
    ids=[
        "no-conversations",
        "empty-conversation",
        "empty-content",
        "unknown-role",
        "max-tokens-0",
        "temperature-2.5",
        "no-model-id",
        "not-json",
    ],
)
def test_malformed_body_is_422_with_a_reason(
    emulator: EmulatorServer, raw: httpx.Client, payload: dict[str, Any] | str, reason: str
) -> None:
    content = payload if isinstance(payload, str) else json.dumps(payload)
    response = raw.post("/generate", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert reason in response.json()["detail"]
    assert emulator.stats()["jobs_created"] == 0


def test_client_sees_the_422_reason(studio_client: ModelStudioClient) -> None:
    # The client's model refuses an empty conversation; build one anyway, as a buggy or
    # foreign client could, to see the service's reason come back through the client.
    request = GenerateRequest.model_construct(
        model_id="m", messages=[[]], temperature=0.7, max_tokens=16
    )
    with pytest.raises(UnprocessableEntityError, match=r"messages\[0\]: List should have"):
        studio_client.create_job(request)


# --- life cycle and results ------------------------------------------------------------


def test_job_life_cycle_and_rising_completed_tasks(
    emulator: EmulatorServer, studio_client: ModelStudioClient
) -> None:
    # 4 tasks over 1.6 s: CREATED for 0.2 s, then one task every 0.4 s.
    emulator.configure(job_latency_s=1.2, task_latency_s=0.1)
    prompts = [f"question {i}" for i in range(4)]
    job = studio_client.create_job(generate_request(*prompts))
    assert job.status == "CREATED"

    seen = poll_until_terminal(studio_client, job.job_id)

    statuses = [status.job_status for status in seen]
    assert list(dict.fromkeys(statuses)) == ["CREATED", "RUNNING", "FINISHED"]
    completed = [status.completed_tasks for status in seen]
    assert completed == sorted(completed)
    assert {0, 1, 2, 3, 4} <= set(completed)  # every step seen at a 20 ms poll
    assert all(len(status.results) == status.completed_tasks for status in seen)
    assert all(status.total_tasks == 4 for status in seen)
    final = seen[-1]
    assert [r.result for r in final.results] == [f"m answers: {p}" for p in prompts]
    assert emulator.stats()["conversations"] == 4


def test_result_answers_the_last_user_message(studio_client: ModelStudioClient) -> None:
    conversation = [
        Message(role="system", content="Be brief."),
        Message(role="user", content="first question"),
        Message(role="assistant", content="first answer"),
        Message(role="user", content="second question"),
    ]
    request = GenerateRequest(model_id="llama", messages=[conversation])
    status = studio_client.wait_for_job(studio_client.create_job(request).job_id)
    assert status.results[0].result == "llama answers: second question"


def test_shuffled_results_map_by_task_index(
    emulator: EmulatorServer, studio_client: ModelStudioClient
) -> None:
    emulator.configure(shuffle_results=True)
    prompts = [f"prompt {i}" for i in range(12)]
    job = studio_client.create_job(generate_request(*prompts))
    status = studio_client.wait_for_job(job.job_id, total_tasks=len(prompts))

    positions = [result.task_index for result in status.results]
    assert positions != sorted(positions), "the knob should have shuffled the list"
    answers = status.answers(len(prompts))
    assert [a.text for a in answers] == [f"m answers: prompt {i}" for i in range(12)]


def test_async_client_runs_a_job(emulator: EmulatorServer) -> None:
    async def run() -> JobStatus:
        async with AsyncModelStudioClient(
            base_url=emulator.base_url,
            token=emulator.token,
            organization_id=TEST_ORGANIZATION,
            retry=FAST_RETRY,
            poll_interval_s=0.02,
        ) as client:
            job = await client.create_job(generate_request("a", "b"))
            return await client.wait_for_job(job.job_id)

    status = asyncio.run(run())
    assert [r.result for r in status.results] == ["m answers: a", "m answers: b"]


# --- fair use --------------------------------------------------------------------------


def test_fourth_concurrent_job_gets_429_and_the_client_waits_for_a_slot(
    emulator: EmulatorServer, studio_client: ModelStudioClient
) -> None:
    emulator.configure(job_latency_s=0.4, retry_after_s=0.1)
    for i in range(3):
        studio_client.create_job(generate_request(f"job {i}"))

    no_retries = RetryPolicy(max_retries=0, max_rate_limit_retries=0)
    with (
        make_client(emulator, retry=no_retries) as impatient,
        pytest.raises(RateLimitError, match="Fair use: at most 3") as refused,
    ):
        impatient.create_job(generate_request("job 3"))
    assert refused.value.response.headers["Retry-After"] == "0.1"

    patient_policy = RetryPolicy(max_retries=20, backoff_base_s=0.01, backoff_max_s=0.05)
    with make_client(emulator, retry=patient_policy) as patient:
        started = time.monotonic()
        job = patient.create_job(generate_request("job 3"))
        waited = time.monotonic() - started
        assert patient.stats.rate_limited >= 1
        assert patient.wait_for_job(job.job_id).is_finished
    assert waited >= 0.1  # honoured Retry-After at least once

    stats = emulator.stats()
    assert stats["jobs_created"] == 4
    assert stats["max_active_jobs"] == 3
    assert stats["faults"]["fair_use_429"] == 1 + patient.stats.rate_limited


@pytest.mark.parametrize(("seconds", "header"), [(2.0, "2"), (0.25, "0.25")])
def test_retry_after_is_whole_seconds_or_a_decimal(
    emulator: EmulatorServer, raw: httpx.Client, seconds: float, header: str
) -> None:
    emulator.configure(fair_use_limit=1, job_latency_s=5.0, retry_after_s=seconds)
    assert raw.post("/generate", json=body("first")).status_code == 200
    refused = raw.post("/generate", json=body("second"))
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == header
    assert "Fair use" in refused.json()["detail"]


def test_max_active_jobs_counts_overlapping_jobs_exactly(
    emulator: EmulatorServer, studio_client: ModelStudioClient
) -> None:
    emulator.configure(job_latency_s=0.5)
    for i in range(3):
        studio_client.create_job(generate_request(f"job {i}"))
    stats = emulator.stats()
    assert (stats["jobs_created"], stats["active_jobs"], stats["max_active_jobs"]) == (3, 3, 3)
    key = hashlib.sha256(emulator.token.encode()).hexdigest()[:12]
    assert stats["per_token"] == {key: {"jobs_created": 3, "active_jobs": 3, "max_active_jobs": 3}}
    assert emulator.token not in json.dumps(stats)


def test_max_active_jobs_of_sequential_jobs_is_one(
    emulator: EmulatorServer, studio_client: ModelStudioClient
) -> None:
    for i in range(3):
        job = studio_client.create_job(generate_request(f"job {i}"))
        studio_client.wait_for_job(job.job_id)
    stats = emulator.stats()
    assert (stats["jobs_created"], stats["active_jobs"], stats["max_active_jobs"]) == (3, 0, 1)


# --- lost responses and dropped connections --------------------------------------------


def test_lost_post_response_is_ambiguous_and_the_job_exists(
    emulator: EmulatorServer, studio_client: ModelStudioClient
) -> None:
    emulator.configure(lost_post_response_rate=1.0)
    with pytest.raises(AmbiguousSubmissionError, match="a job may have been created") as lost:
        studio_client.create_job(generate_request("hi"))
    assert lost.value.cause == "connection closed without a response"
    assert studio_client.stats.requests == 1  # never resent: that could pay twice
    stats = emulator.stats()
    assert stats["jobs_created"] == 1
    assert stats["requests"][CREATE] == {"dropped": 1}
    assert stats["faults"]["lost_post_response"] == 1


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_dropped_connection_is_a_transport_error_not_a_status(
    emulator: EmulatorServer, raw: httpx.Client, method: str
) -> None:
    emulator.configure(drop_connection_rate=1.0)
    path = "/generate" if method == "POST" else "/generate/some-job"
    with pytest.raises(DROP_ERRORS):
        raw.request(method, path, json=body("hi") if method == "POST" else None)
    stats = emulator.stats()
    assert stats["jobs_created"] == 0
    assert stats["faults"]["drop"] == 1


def test_dropped_connections_on_get_are_absorbed_by_retries(
    emulator: EmulatorServer, studio_client: ModelStudioClient
) -> None:
    job = studio_client.create_job(generate_request("hi"))
    emulator.configure(drop_connection_rate=0.5)
    status = studio_client.wait_for_job(job.job_id)
    assert status.results[0].result == "m answers: hi"
    assert studio_client.stats.retries["connection closed without a response"] >= 1
    assert emulator.stats()["faults"]["drop"] >= 1


# --- fault rates -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("knob", "fault"),
    [("error_5xx_rate", "5xx"), ("rate_429", "429"), ("drop_connection_rate", "drop")],
)
def test_get_faults_fire_at_their_rate_and_the_client_absorbs_them(
    emulator: EmulatorServer,
    studio_client: ModelStudioClient,
    raw: httpx.Client,
    knob: str,
    fault: str,
) -> None:
    emulator.configure(job_latency_s=0.0)
    job_id = studio_client.create_job(generate_request("hi")).job_id
    emulator.configure(**{knob: RATE}, retry_after_s=0.005)

    outcomes: Counter[str] = Counter()
    for _ in range(SAMPLES):
        try:
            outcomes[str(raw.get(f"/generate/{job_id}").status_code)] += 1
        except DROP_ERRORS:
            outcomes["dropped"] += 1
    stats = emulator.stats()
    assert LOW <= stats["faults"][fault] <= HIGH
    assert stats["requests"][READ] == outcomes
    assert outcomes["200"] == SAMPLES - stats["faults"][fault]

    for _ in range(40):
        assert studio_client.get_job(job_id).is_finished
    assert sum(studio_client.stats.retries.values()) >= 1


@pytest.mark.parametrize(
    ("knob", "fault"),
    [("error_5xx_rate", "5xx"), ("rate_429", "429"), ("drop_connection_rate", "drop")],
)
def test_post_faults_fire_at_their_rate_and_only_safe_ones_are_retried(
    emulator: EmulatorServer, studio_client: ModelStudioClient, knob: str, fault: str
) -> None:
    # Jobs that end at once never hold a fair-use slot, so 400 POSTs need no waiting.
    emulator.configure(job_latency_s=0.0, retry_after_s=0.005, **{knob: RATE})
    created, ambiguous = 0, Counter[str]()
    for _ in range(SAMPLES // 2):
        try:
            studio_client.create_job(generate_request("hi"))
            created += 1
        except AmbiguousSubmissionError as err:
            ambiguous[err.cause] += 1

    stats = emulator.stats()
    sent = sum(stats["requests"][CREATE].values())
    assert sent == studio_client.stats.requests
    assert 0.15 <= stats["faults"][fault] / sent <= 0.35
    assert stats["jobs_created"] == created  # a refused or dropped POST made no job
    retried = studio_client.stats.retries
    if fault == "429":
        assert created == SAMPLES // 2 and not ambiguous
        assert retried["HTTP 429"] == stats["faults"]["429"]
    elif fault == "5xx":
        # 503 says the request was refused: retried. 500/502/504 may hide a job: raised.
        assert retried["HTTP 503"] >= 1
        assert set(ambiguous) == {"HTTP 500", "HTTP 502", "HTTP 504"}
        assert set(retried) == {"HTTP 503"}
    else:
        assert set(ambiguous) == {"connection closed without a response"}
        assert not retried


def test_lost_post_responses_fire_at_their_rate(
    emulator: EmulatorServer, raw: httpx.Client
) -> None:
    emulator.configure(job_latency_s=0.0, lost_post_response_rate=RATE)
    lost = 0
    for _ in range(SAMPLES):
        try:
            raw.post("/generate", json=body("hi")).raise_for_status()
        except DROP_ERRORS:
            lost += 1
    stats = emulator.stats()
    assert LOW <= lost <= HIGH
    assert stats["faults"]["lost_post_response"] == lost
    assert stats["jobs_created"] == SAMPLES  # the job exists whether or not the answer arrived


def test_failed_jobs_fire_at_their_rate_and_the_client_raises(
    emulator: EmulatorServer, studio_client: ModelStudioClient, raw: httpx.Client
) -> None:
    emulator.configure(job_latency_s=0.0, failed_job_rate=RATE)
    job_ids = [raw.post("/generate", json=body("a", "b")).json()["job_id"] for _ in range(SAMPLES)]
    statuses = Counter(raw.get(f"/generate/{job_id}").json()["job_status"] for job_id in job_ids)
    assert set(statuses) == {"FINISHED", "FAILED"}
    assert LOW <= statuses["FAILED"] <= HIGH
    assert emulator.stats()["faults"]["failed_job"] == statuses["FAILED"]

    failed = next(j for j in job_ids if raw.get(f"/generate/{j}").json()["job_status"] == "FAILED")
    with pytest.raises(JobFailedError, match="ended FAILED"):
        studio_client.wait_for_job(failed)


def test_failed_tasks_fire_at_their_rate_as_per_row_failures(
    emulator: EmulatorServer, studio_client: ModelStudioClient
) -> None:
    emulator.configure(task_failure_rate=RATE)
    prompts = [f"row {i}" for i in range(SAMPLES)]
    job = studio_client.create_job(generate_request(*prompts))
    status = studio_client.wait_for_job(job.job_id)  # a failed task does not fail the job

    failed = [r for r in status.results if not r.is_completed]
    assert LOW <= len(failed) <= HIGH
    assert status.completed_tasks == SAMPLES
    assert all(r.status == "failed" and r.result is None for r in failed)
    assert all((r.model_extra or {}).get("error") for r in failed)
    ok = [r for r in status.results if r.is_completed]
    assert all(r.result == f"m answers: row {r.task_index}" for r in ok)
    assert emulator.stats()["faults"]["failed_task"] == len(failed)


def test_not_found_window_is_absorbed_by_wait_for_job(
    emulator: EmulatorServer, studio_client: ModelStudioClient
) -> None:
    emulator.configure(not_found_window_s=0.2)
    job = studio_client.create_job(generate_request("hi"))
    with pytest.raises(NotFoundError):
        studio_client.get_job(job.job_id)
    assert studio_client.wait_for_job(job.job_id).is_finished
    assert emulator.stats()["faults"]["not_found_window"] >= 2


# --- control endpoints -----------------------------------------------------------------


def test_config_endpoint_changes_knobs_at_run_time(
    emulator: EmulatorServer, studio_client: ModelStudioClient
) -> None:
    answer = httpx.post(f"{emulator.root_url}/_emulator/config", json={"job_latency_s": 0})
    assert answer.status_code == 200
    config = answer.json()
    assert config["job_latency_s"] == 0 and config["seed"] == 1234  # the rest is kept
    assert emulator.token not in answer.text  # tokens are shown only as hashes

    job = studio_client.create_job(generate_request("hi"))
    assert studio_client.get_job(job.job_id).is_finished  # no latency any more


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"job_latncy_s": 1}, "job_latncy_s: Extra inputs are not permitted"),
        ({"rate_429": 2}, "rate_429: Input should be less than or equal to 1"),
        ({"rate_429": 0.6, "error_5xx_rate": 0.6}, "must not exceed 1"),
        ({"prefix": "/other"}, "prefix: cannot change at run time"),
        ([1, 2], "expected a JSON object"),
    ],
    ids=["unknown-knob", "rate-above-1", "rates-sum-above-1", "prefix", "not-an-object"],
)
def test_config_endpoint_rejects_bad_knobs(
    emulator: EmulatorServer, changes: Any, reason: str
) -> None:
    answer = httpx.post(f"{emulator.root_url}/_emulator/config", json=changes)
    assert answer.status_code == 422
    assert reason in answer.json()["detail"]
    assert emulator.state.config.rate_429 == 0  # nothing applied


def test_configure_rejects_an_unknown_knob(emulator: EmulatorServer) -> None:
    with pytest.raises(ValidationError, match="job_latncy_s"):
        emulator.configure(job_latncy_s=1)
    with pytest.raises(ValidationError, match="job_latncy_s"):
        EmulatorConfig(job_latncy_s=1)  # type: ignore[call-arg]


def test_reset_clears_jobs_and_counts_and_reseeds(
    emulator: EmulatorServer, studio_client: ModelStudioClient
) -> None:
    first = studio_client.create_job(generate_request("hi")).job_id
    answer = httpx.post(f"{emulator.root_url}/_emulator/reset")
    assert answer.status_code == 200

    stats = httpx.get(f"{emulator.root_url}/_emulator/stats").json()
    assert (stats["jobs_created"], stats["conversations"], stats["requests"]) == (0, 0, {})
    with pytest.raises(NotFoundError):
        studio_client.get_job(first)
    # Same seed, same draws: the first request after a reset makes the same job id again.
    # (Reset once more: the GET above took a draw.)
    emulator.reset()
    assert studio_client.create_job(generate_request("hi")).job_id == first


def test_server_picks_a_free_port_and_stops(emulator_server: EmulatorServer) -> None:
    with EmulatorServer(EmulatorConfig(prefix="custom/")) as server:
        assert server.port not in (0, emulator_server.port)
        assert server.base_url == f"http://127.0.0.1:{server.port}/custom"
        assert httpx.get(f"{server.root_url}/_emulator/stats").status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.root_url}/_emulator/stats")
