"""Unit tests of the Model Studio clients, driven through ``httpx.MockTransport``.

Time is faked: the clients get a ``sleep`` that only records the delay and advances a fake
``clock``, so the retry and polling plans are asserted exactly and no test waits for real.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import pickle
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from studio_flows.client import (
    AsyncModelStudioClient,
    ModelStudioClient,
    RetryPolicy,
    _Waiter,
    parse_retry_after,
)
from studio_flows.errors import (
    AmbiguousSubmissionError,
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ConflictError,
    JobDeadlineExceededError,
    JobFailedError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    UnexpectedResponseError,
    UnprocessableEntityError,
)
from studio_flows.models import GenerateRequest, JobStatus, Message
from studio_flows.polling import DurationHistory, PollPlan
from studio_flows.settings import Settings
from tests.fixtures.hung_server import HungServer

TOKEN = "tok-Sup3rSecret-do-not-leak"
ORG = "org-42"
BASE = "https://studio.test/api/v1"
JOB = "job-1"
GEN_PATH = f"/api/v1/organizations/{ORG}/generate"
JOB_PATH = f"{GEN_PATH}/{JOB}"
RETRIES = 3

# A step of a scripted server: a reply factory or an httpx exception class to raise.
Reply = Callable[[httpx.Request], httpx.Response]
Step = Reply | type[httpx.HTTPError]


class FakeTime:
    """A clock that only moves when the client sleeps."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0, f"negative sleep {seconds}"
        self.sleeps.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)


class Script:
    """A handler that plays its steps in order (the last one repeats) and keeps the requests."""

    def __init__(self, *steps: Step) -> None:
        assert steps
        self.steps = steps
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.steps[min(len(self.requests), len(self.steps)) - 1]
        if isinstance(step, type):
            raise step(f"simulated {step.__name__}", request=request)
        return step(request)

    async def handle_async(self, request: httpx.Request) -> httpx.Response:
        return self(request)

    def count(self, method: str) -> int:
        return sum(1 for r in self.requests if r.method == method)


def reply(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Reply:
    def build(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body, headers=headers)

    return build


def job(status: str, completed: int = 0, total: int = 2, **extra: Any) -> Reply:
    results = [
        {"task_index": i, "status": "completed", "result": f"answer {i}"} for i in range(completed)
    ]
    body = {
        "job_id": JOB,
        "job_status": status,
        "total_tasks": total,
        "completed_tasks": completed,
        "results": results,
        **extra,
    }
    return reply(200, body)


CREATED = reply(201, {"job_id": JOB, "status": "CREATED", "message": "ok"})


def error_body(status: int) -> Reply:
    return reply(status, {"detail": f"the service says {status}"})


def make_client(script: Script, fake: FakeTime, **kwargs: Any) -> ModelStudioClient:
    kwargs.setdefault("retry", RetryPolicy(max_retries=RETRIES, max_rate_limit_retries=RETRIES))
    return ModelStudioClient(
        token=TOKEN,
        organization_id=ORG,
        base_url=BASE,
        transport=httpx.MockTransport(script),
        sleep=fake.sleep,
        clock=fake.clock,
        **kwargs,
    )


def make_async_client(script: Script, fake: FakeTime, **kwargs: Any) -> AsyncModelStudioClient:
    kwargs.setdefault("retry", RetryPolicy(max_retries=RETRIES, max_rate_limit_retries=RETRIES))
    return AsyncModelStudioClient(
        token=TOKEN,
        organization_id=ORG,
        base_url=BASE,
        transport=httpx.MockTransport(script.handle_async),
        sleep=fake.async_sleep,
        clock=fake.clock,
        **kwargs,
    )


def request() -> GenerateRequest:
    return GenerateRequest(
        model_id="model-a",
        messages=[[Message(role="user", content="Hi")], [Message(role="user", content="Yo")]],
        temperature=0.2,
        max_tokens=16,
    )


def assert_no_token(err: BaseException) -> None:
    """Neither the error nor anything it was raised from shows the token."""
    seen: BaseException | None = err
    while seen is not None:
        assert TOKEN not in str(seen)
        assert TOKEN not in repr(seen)
        seen = seen.__cause__ or seen.__context__


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime()


@pytest.fixture(autouse=True)
def _no_real_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any real sleep in a client test is a bug of the test or of the client.

    Only the test's own thread is watched: servers other tests started in this session
    (the emulator's event loop, Prefect's threads) sleep for real and must keep running.
    """
    test_thread = threading.get_ident()
    real_sleep, real_async_sleep = time.sleep, asyncio.sleep

    def forbidden(seconds: float) -> None:
        if threading.get_ident() == test_thread:
            raise AssertionError(f"real sleep of {seconds} s")
        real_sleep(seconds)

    async def forbidden_async(seconds: float, result: Any = None) -> Any:
        if threading.get_ident() == test_thread:
            raise AssertionError(f"real asyncio.sleep of {seconds} s")
        return await real_async_sleep(seconds, result)

    # The clients' defaults are bound at import; this catches a direct call slipping back in.
    monkeypatch.setattr(time, "sleep", forbidden)
    monkeypatch.setattr(asyncio, "sleep", forbidden_async)


# --- requests as sent ---------------------------------------------------------------------


def test_create_job_posts_the_request_body_with_the_bearer_token(fake: FakeTime) -> None:
    script = Script(CREATED)
    with make_client(script, fake) as client:
        created = client.create_job(request())
    assert created.job_id == JOB
    sent = script.requests[0]
    assert sent.method == "POST"
    assert sent.url.path == GEN_PATH
    assert sent.headers["Authorization"] == f"Bearer {TOKEN}"
    assert json.loads(sent.content) == request().model_dump(mode="json")


def test_get_job_reads_the_job_path(fake: FakeTime) -> None:
    script = Script(job("FINISHED", completed=2))
    with make_client(script, fake) as client:
        status = client.get_job(JOB)
    assert script.requests[0].url.path == JOB_PATH
    assert status.is_finished and len(status.results) == 2


def test_a_success_with_a_body_of_the_wrong_shape_is_unexpected_response(fake: FakeTime) -> None:
    script = Script(reply(200, {"no": "job id"}))
    with make_client(script, fake) as client, pytest.raises(UnexpectedResponseError) as info:
        client.get_job(JOB)
    assert "JobStatus" in str(info.value)
    assert_no_token(info.value)


# --- status codes map to error classes ----------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_class", "retried"),
    [
        (400, BadRequestError, False),
        (401, AuthenticationError, False),
        (403, PermissionDeniedError, False),
        (404, NotFoundError, False),
        (409, ConflictError, True),
        (422, UnprocessableEntityError, False),
        (429, RateLimitError, True),
        (500, ServerError, True),
        (502, ServerError, True),
        (503, ServerError, True),
        (504, ServerError, True),
    ],
)
def test_get_status_maps_to_its_error_class(
    fake: FakeTime, status: int, error_class: type[APIStatusError], retried: bool
) -> None:
    script = Script(error_body(status))
    with make_client(script, fake) as client, pytest.raises(error_class) as info:
        client.get_job(JOB)
    err = info.value
    assert type(err) is error_class
    assert err.status_code == status
    assert isinstance(err.response, httpx.Response) and err.response.status_code == status
    assert f"the service says {status}" in str(err)
    assert f"HTTP {status}" in str(err)
    assert_no_token(err)
    expected_attempts = 1 + RETRIES if retried else 1
    assert script.count("GET") == expected_attempts
    assert len(fake.sleeps) == expected_attempts - 1
    assert client.stats.requests == expected_attempts
    assert sum(client.stats.retries.values()) == expected_attempts - 1


@pytest.mark.parametrize(
    ("status", "error_class"),
    [(400, BadRequestError), (401, AuthenticationError), (422, UnprocessableEntityError)],
)
def test_post_client_errors_are_raised_at_once(
    fake: FakeTime, status: int, error_class: type[APIStatusError]
) -> None:
    script = Script(error_body(status))
    with make_client(script, fake) as client, pytest.raises(error_class) as info:
        client.create_job(request())
    assert info.value.status_code == status
    assert script.count("POST") == 1
    assert_no_token(info.value)


def test_error_message_uses_plain_text_body_when_not_json(fake: FakeTime) -> None:
    script = Script(lambda r: httpx.Response(403, text="organisation locked"))
    with make_client(script, fake) as client, pytest.raises(PermissionDeniedError) as info:
        client.get_job(JOB)
    assert "organisation locked" in str(info.value)


# --- Retry-After and back-off -------------------------------------------------------------


def test_retry_after_in_seconds_is_what_the_client_sleeps(fake: FakeTime) -> None:
    script = Script(reply(503, {"detail": "busy"}, {"Retry-After": "7"}), job("RUNNING"))
    with make_client(script, fake) as client:
        client.get_job(JOB)
    assert fake.sleeps == [7.0]
    assert client.stats.retries == {"HTTP 503": 1}


def test_retry_after_as_http_date_is_honoured(fake: FakeTime) -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)
    header = email.utils.format_datetime(when, usegmt=True)
    script = Script(reply(429, {"detail": "slow down"}, {"Retry-After": header}), job("RUNNING"))
    with make_client(script, fake) as client:
        client.get_job(JOB)
    assert len(fake.sleeps) == 1
    # HTTP dates have whole seconds: the wait is 29..30 s from now.
    assert 28.0 <= fake.sleeps[0] <= 30.0
    assert client.stats.rate_limited == 1


def test_retry_after_above_the_cap_falls_back_to_backoff(fake: FakeTime) -> None:
    policy = RetryPolicy(
        max_retries=2, max_rate_limit_retries=2, backoff_base_s=0.25, max_retry_after_s=60.0
    )
    script = Script(reply(503, {"detail": "x"}, {"Retry-After": "3600"}), job("RUNNING"))
    with make_client(script, fake, retry=policy) as client:
        client.get_job(JOB)
    assert len(fake.sleeps) == 1
    assert 0.125 <= fake.sleeps[0] <= 0.25


def test_retry_after_at_the_cap_is_honoured(fake: FakeTime) -> None:
    policy = RetryPolicy(max_retries=2, max_rate_limit_retries=2, max_retry_after_s=60.0)
    script = Script(reply(503, {"detail": "x"}, {"Retry-After": "60"}), job("RUNNING"))
    with make_client(script, fake, retry=policy) as client:
        client.get_job(JOB)
    assert fake.sleeps == [60.0]


def test_parse_retry_after_reads_seconds_dates_and_rejects_garbage() -> None:
    now = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
    later = email.utils.format_datetime(now + timedelta(seconds=45), usegmt=True)
    earlier = email.utils.format_datetime(now - timedelta(seconds=45), usegmt=True)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after(later, now=now.timestamp()) == 45.0
    assert parse_retry_after(earlier, now=now.timestamp()) == 0.0
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("soon, probably") is None


@pytest.mark.parametrize(("jitter", "half"), [("low", True), ("high", False)])
def test_backoff_doubles_up_to_the_maximum(
    monkeypatch: pytest.MonkeyPatch, jitter: str, half: bool
) -> None:
    # Pin the jitter to either end of its range: delays are then exactly known.
    monkeypatch.setattr(random, "uniform", lambda a, b: a if jitter == "low" else b)
    policy = RetryPolicy(backoff_base_s=0.25, backoff_max_s=8.0)
    ceilings = [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    delays = [policy.delay(attempt, None) for attempt in range(1, len(ceilings) + 1)]
    assert delays == [c / 2 if half else c for c in ceilings]


def test_backoff_jitter_stays_within_half_to_full_ceiling() -> None:
    policy = RetryPolicy(backoff_base_s=0.25, backoff_max_s=8.0)
    for attempt, ceiling in [(1, 0.25), (3, 1.0), (6, 8.0), (12, 8.0)]:
        samples = [policy.delay(attempt, None) for _ in range(200)]
        assert all(ceiling / 2 <= s <= ceiling for s in samples)
        assert len(set(samples)) > 1, "no jitter: clients that failed together retry together"


# --- GET retries ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_get_retries_retryable_statuses_then_succeeds(fake: FakeTime, status: int) -> None:
    script = Script(error_body(status), error_body(status), job("RUNNING"))
    with make_client(script, fake) as client:
        status_read = client.get_job(JOB)
    assert status_read.job_status == "RUNNING"
    assert script.count("GET") == 3
    assert len(fake.sleeps) == 2
    assert client.stats.requests == 3
    assert client.stats.retries == {f"HTTP {status}": 2}


@pytest.mark.parametrize(
    ("exc", "cause"),
    [
        (httpx.ConnectError, "connection refused or unreachable"),
        (httpx.ConnectTimeout, "connect timeout"),
        (httpx.ReadTimeout, "read timeout"),
        (httpx.RemoteProtocolError, "connection closed without a response"),
        (httpx.ReadError, "connection dropped while reading"),
    ],
)
def test_get_retries_transport_errors(
    fake: FakeTime, exc: type[httpx.HTTPError], cause: str
) -> None:
    script = Script(exc, exc, job("RUNNING"))
    with make_client(script, fake) as client:
        client.get_job(JOB)
    assert script.count("GET") == 3
    assert client.stats.retries == {cause: 2}
    assert len(fake.sleeps) == 2


@pytest.mark.parametrize(
    ("exc", "error_class"),
    [
        (httpx.ConnectError, APIConnectionError),
        (httpx.RemoteProtocolError, APIConnectionError),
        (httpx.ReadTimeout, APITimeoutError),
        (httpx.ConnectTimeout, APITimeoutError),
    ],
)
def test_get_gives_up_after_max_retries_with_a_connection_error(
    fake: FakeTime, exc: type[httpx.HTTPError], error_class: type[APIConnectionError]
) -> None:
    script = Script(exc)
    with make_client(script, fake) as client, pytest.raises(APIConnectionError) as info:
        client.get_job(JOB)
    assert type(info.value) is error_class
    assert isinstance(info.value.__cause__, exc)
    assert script.count("GET") == 1 + RETRIES
    assert client.stats.requests == 1 + RETRIES
    assert sum(client.stats.retries.values()) == RETRIES
    assert_no_token(info.value)


def test_zero_max_retries_means_one_attempt(fake: FakeTime) -> None:
    script = Script(error_body(503))
    with (
        make_client(script, fake, retry=RetryPolicy(max_retries=0)) as client,
        pytest.raises(ServerError),
    ):
        client.get_job(JOB)
    assert script.count("GET") == 1
    assert fake.sleeps == []


# --- POST: retried only where no job can exist -----------------------------------------------


def test_post_is_retried_when_the_connection_was_never_made(fake: FakeTime) -> None:
    script = Script(httpx.ConnectError, CREATED)
    with make_client(script, fake) as client:
        created = client.create_job(request())
    assert created.job_id == JOB
    assert script.count("POST") == 2
    assert client.stats.retries == {"connection refused or unreachable": 1}


def test_post_never_connected_gives_up_as_a_connection_error_not_ambiguous(
    fake: FakeTime,
) -> None:
    script = Script(httpx.ConnectError)
    with make_client(script, fake) as client, pytest.raises(APIConnectionError) as info:
        client.create_job(request())
    assert not isinstance(info.value, AmbiguousSubmissionError)
    assert script.count("POST") == 1 + RETRIES
    assert_no_token(info.value)


@pytest.mark.parametrize("status", [429, 503])
def test_post_is_retried_on_refusals(fake: FakeTime, status: int) -> None:
    script = Script(reply(status, {"detail": "not now"}, {"Retry-After": "2"}), CREATED)
    with make_client(script, fake) as client:
        created = client.create_job(request())
    assert created.job_id == JOB
    assert script.count("POST") == 2
    assert fake.sleeps == [2.0]


@pytest.mark.parametrize(("status", "error_class"), [(429, RateLimitError), (503, ServerError)])
def test_post_refused_until_retries_run_out_raises_the_status_error(
    fake: FakeTime, status: int, error_class: type[APIStatusError]
) -> None:
    script = Script(error_body(status))
    with make_client(script, fake) as client, pytest.raises(error_class) as info:
        client.create_job(request())
    assert not isinstance(info.value, AmbiguousSubmissionError)
    assert script.count("POST") == 1 + RETRIES


@pytest.mark.parametrize(
    ("exc", "cause"),
    [
        (httpx.ReadTimeout, "read timeout"),
        (httpx.RemoteProtocolError, "connection closed without a response"),
        (httpx.ReadError, "connection dropped while reading"),
    ],
)
def test_post_failing_after_sending_is_ambiguous_and_not_retried(
    fake: FakeTime, exc: type[httpx.HTTPError], cause: str
) -> None:
    script = Script(exc, CREATED)
    with make_client(script, fake) as client, pytest.raises(AmbiguousSubmissionError) as info:
        client.create_job(request())
    assert info.value.cause == cause
    assert isinstance(info.value.__cause__, exc)
    assert script.count("POST") == 1
    assert fake.sleeps == []
    assert "a job may have been created" in str(info.value)
    assert_no_token(info.value)


@pytest.mark.parametrize("status", [500, 502, 504])
def test_post_server_error_is_ambiguous_and_not_retried(fake: FakeTime, status: int) -> None:
    script = Script(error_body(status), CREATED)
    with make_client(script, fake) as client, pytest.raises(AmbiguousSubmissionError) as info:
        client.create_job(request())
    assert info.value.cause == f"HTTP {status}"
    assert isinstance(info.value.__cause__, ServerError)
    assert info.value.__cause__.status_code == status
    assert f"the service says {status}" in str(info.value)
    assert script.count("POST") == 1
    assert fake.sleeps == []
    assert_no_token(info.value)


# --- wait_for_job ---------------------------------------------------------------------------


def test_wait_for_job_keeps_polling_unknown_statuses(fake: FakeTime) -> None:
    script = Script(
        job("CREATED"), job("RUNNING"), job("QUEUED_SOMEWHERE"), job("FINISHED", completed=2)
    )
    with make_client(script, fake) as client:
        status = client.wait_for_job(JOB)
    assert status.is_finished
    assert script.count("GET") == 4
    assert len(fake.sleeps) == 4  # one wait before each poll


def test_wait_for_job_returns_the_finished_status_with_results(fake: FakeTime) -> None:
    script = Script(job("FINISHED", completed=2, total=2))
    with make_client(script, fake) as client:
        status = client.wait_for_job(JOB)
    assert isinstance(status, JobStatus)
    assert status.job_id == JOB
    assert sorted(r.task_index for r in status.results) == [0, 1]


@pytest.mark.parametrize("terminal", ["FAILED", "Cancelled", "error", "CANCELED"])
def test_wait_for_job_raises_job_failed_for_failed_statuses(fake: FakeTime, terminal: str) -> None:
    script = Script(job("RUNNING"), job(terminal))
    with make_client(script, fake) as client, pytest.raises(JobFailedError) as info:
        client.wait_for_job(JOB)
    assert info.value.job_id == JOB
    assert info.value.job_status == terminal
    assert terminal in str(info.value)
    assert script.count("GET") == 2
    assert_no_token(info.value)


def test_wait_for_job_stops_at_the_deadline(fake: FakeTime) -> None:
    script = Script(job("RUNNING"))
    start = fake.now
    with (
        make_client(script, fake, poll_max_interval_s=10.0) as client,
        pytest.raises(JobDeadlineExceededError) as info,
    ):
        client.wait_for_job(JOB, deadline_s=45.0)
    assert info.value.job_id == JOB
    # It waits until the deadline, not beyond it, and looks one last time at the deadline.
    assert fake.now - start == pytest.approx(45.0)
    assert sum(fake.sleeps) == pytest.approx(45.0)
    assert max(fake.sleeps) <= 10.0
    assert_no_token(info.value)


def test_wait_for_job_accepts_a_job_that_finishes_on_the_last_look(fake: FakeTime) -> None:
    start = fake.now

    def finishes_at_deadline(request: httpx.Request) -> httpx.Response:
        done = fake.now - start >= 20.0
        return job("FINISHED" if done else "RUNNING", completed=2 if done else 0)(request)

    script = Script(finishes_at_deadline)
    with make_client(script, fake) as client:
        status = client.wait_for_job(JOB, deadline_s=20.0)
    assert status.is_finished


def test_wait_for_job_retries_a_404_just_after_creation(fake: FakeTime) -> None:
    script = Script(error_body(404), error_body(404), job("RUNNING"), job("FINISHED", completed=2))
    with make_client(script, fake, not_found_grace_s=10.0) as client:
        status = client.wait_for_job(JOB)
    assert status.is_finished
    assert script.count("GET") == 4


def test_wait_for_job_raises_a_404_after_the_grace(fake: FakeTime) -> None:
    start = fake.now

    def vanishes(request: httpx.Request) -> httpx.Response:
        if fake.now - start < 15.0:
            return job("RUNNING")(request)
        return error_body(404)(request)

    script = Script(vanishes)
    with (
        make_client(script, fake, not_found_grace_s=10.0) as client,
        pytest.raises(NotFoundError) as info,
    ):
        client.wait_for_job(JOB)
    assert fake.now - start >= 15.0
    assert info.value.status_code == 404
    assert_no_token(info.value)


def test_wait_for_job_grace_counts_from_submitted_at(fake: FakeTime) -> None:
    # The POST was 60 s ago: a 404 now is not the "not yet visible" window.
    script = Script(error_body(404))
    with (
        make_client(script, fake, not_found_grace_s=10.0) as client,
        pytest.raises(NotFoundError),
    ):
        client.wait_for_job(JOB, submitted_at=fake.now - 60.0)
    assert script.count("GET") == 1


def test_wait_for_job_logs_only_state_and_progress_changes(
    fake: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    script = Script(*[job("RUNNING", completed=0, total=4)] * 5, job("FINISHED", 4, total=4))
    with (
        caplog.at_level(logging.INFO, logger="studio_flows.client"),
        make_client(script, fake) as client,
    ):
        client.wait_for_job(JOB)
    messages = [r.getMessage() for r in caplog.records if r.name == "studio_flows.client"]
    assert script.count("GET") == 6
    assert messages == [f"job {JOB} RUNNING: 0/4 tasks", f"job {JOB} FINISHED: 4/4 tasks"]


def test_wait_for_job_logs_progress_changes_within_one_state(
    fake: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    script = Script(
        job("RUNNING", 0, total=4),
        job("RUNNING", 2, total=4),
        job("RUNNING", 2, total=4),
        job("FINISHED", 4, total=4),
    )
    with (
        caplog.at_level(logging.INFO, logger="studio_flows.client"),
        make_client(script, fake) as client,
    ):
        client.wait_for_job(JOB)
    messages = [r.getMessage() for r in caplog.records if r.name == "studio_flows.client"]
    assert [m.split(": ")[1] for m in messages] == ["0/4 tasks", "2/4 tasks", "4/4 tasks"]


def test_wait_for_job_plans_the_next_poll_from_the_progress(fake: FakeTime) -> None:
    # After 10 of 50 tasks at t=1 s, were tasks ending evenly, the job would end between
    # 50/11 = 4.55 and 5 s; that is where it looks next, not at the maximum.
    script = Script(job("RUNNING", completed=10, total=50), job("FINISHED", 50, total=50))
    with make_client(script, fake, poll_interval_s=1.0, poll_max_interval_s=30.0) as client:
        client.wait_for_job(JOB)
    assert fake.sleeps[0] == 1.0
    assert 50 / 11 - 1.0 < fake.sleeps[1] <= 5.0 - 1.0 + 0.03


def test_wait_for_job_reads_progress_from_results_listed_while_running(fake: FakeTime) -> None:
    # A service that lists each task's result as it ends but counts only at the end (the
    # emulator's lowercase style): 10 results listed at t=1 s are the same progress as a
    # count of 10, so the next look is planned near the end, not blind after 1 s.
    script = Script(
        job("running", completed=10, total=50, completed_tasks=0),
        job("finished", 50, total=50),
    )
    with make_client(script, fake, poll_interval_s=1.0, poll_max_interval_s=30.0) as client:
        client.wait_for_job(JOB)
    assert 50 / 11 - 1.0 < fake.sleeps[1] <= 5.0 - 1.0 + 0.03


def test_wait_for_job_without_progress_looks_every_start_interval_then_by_its_age(
    fake: FakeTime,
) -> None:
    """Nothing known: each wait is the start interval or 15 % of the time waited so far."""
    script = Script(*[job("RUNNING", completed=0, total=0)] * 12, job("FINISHED"))
    with make_client(script, fake, poll_interval_s=0.5, poll_max_interval_s=4.0) as client:
        client.wait_for_job(JOB)
    waited = [sum(fake.sleeps[:i]) for i in range(len(fake.sleeps))]
    assert fake.sleeps == pytest.approx([max(0.5, 0.15 * age) for age in waited])
    assert fake.sleeps[-1] > 0.5  # a 10th of the doubling's 4 s waits at the end


def test_wait_for_job_learns_when_a_job_ended_not_when_it_was_seen(fake: FakeTime) -> None:
    history = DurationHistory()
    script = Script(job("RUNNING", 5, total=10), job("FINISHED", 10, total=10))
    with make_client(
        script, fake, poll_interval_s=1.0, poll_max_interval_s=30.0, history=history
    ) as client:
        client.wait_for_job(JOB, total_tasks=10)
    looked = sum(fake.sleeps)
    # 5 of 10 at 1 s: it ends after 1.67 s (evenly) and was seen done at ``looked``. The
    # history learnt when it ended, inside that window, not when the poller looked.
    predicted = history.predict(10)
    assert predicted is not None
    assert 1.0 < predicted < looked
    assert history.predict(20) == pytest.approx(2 * predicted)  # twice the tasks


def _new_waiter(history: DurationHistory, *, start: float, tasks: int) -> _Waiter:
    """A waiter for a job POSTed at time 0, learning from and into ``history``."""
    return _Waiter(
        job_id=JOB,
        deadline_s=3600.0,
        started=0.0,
        plan=PollPlan(start=start, maximum=10.0, history=history),
        history=history,
        not_found_grace_s=0.0,
        total_tasks=tasks,
        poll_now=False,
    )


@pytest.mark.parametrize("job_s", [5.0, 7.3, 30.0])
def test_steady_jobs_are_seen_done_soon_after_their_end_in_few_requests(job_s: float) -> None:
    """Three lanes of five jobs like the emulator's: task i of 10 done at job_s * (i + 1) / 10.

    Seen late, a job idles its slot; polled often, it costs requests. The issue asks for
    both at once at L = 5 s and up: the makespan within 5 % of the ideal, at most
    2 + L/2 requests a job.
    """
    tasks, jobs = 10, 15
    history = DurationHistory()
    late, requests = 0.0, 0
    for _ in range(jobs):
        waiter = _new_waiter(history, start=0.5, tasks=tasks)
        now, requests = 0.0, requests + 1  # the POST
        while True:
            now += waiter.next_sleep(now)[0]
            requests += 1
            ended = now >= job_s
            status = JobStatus(
                job_id=JOB,
                job_status="FINISHED" if ended else "RUNNING",
                total_tasks=tasks,
                completed_tasks=tasks if ended else min(tasks - 1, int(now * tasks / job_s)),
            )
            if waiter.seen(status, now, final=False) is not None:
                break
        late += now - job_s
    assert late / jobs <= 0.03 * job_s
    assert requests / jobs <= 2 + job_s / 2


def test_jobs_that_end_at_once_are_soon_polled_at_once() -> None:
    """At latency 0 every job is terminal at its first look, after a GET of ``get_s``.

    The job took at most until the GET was sent; the GET's own time is not the job's. The
    first delay must fall far below one GET (it settled near one GET while the samples
    counted it: a lane slept a GET's time per job, bench/).
    """
    history = DurationHistory()
    history.record(seconds=0.5, tasks=100)
    get_s = 0.005
    delays = []
    for _ in range(300):
        waiter = _new_waiter(history, start=0.001, tasks=100)
        asked = waiter.next_sleep(0.0)[0]
        delays.append(asked)
        done = JobStatus(job_id=JOB, job_status="FINISHED", total_tasks=100, completed_tasks=100)
        assert waiter.seen(done, asked + get_s, final=False, asked=asked) is done
    assert delays[-1] < get_s / 10
    assert delays == sorted(delays, reverse=True)


# --- secrets ------------------------------------------------------------------------------


def test_repr_of_client_hides_token_and_organisation() -> None:
    client = ModelStudioClient(token=TOKEN, organization_id=ORG, base_url=BASE)
    try:
        assert TOKEN not in repr(client)
        assert TOKEN not in str(client)
        assert ORG not in repr(client)
    finally:
        client.close()


def test_token_never_reaches_the_logs(fake: FakeTime, caplog: pytest.LogCaptureFixture) -> None:
    script = Script(
        httpx.ConnectError,
        reply(503, {"detail": "busy"}, {"Retry-After": "1"}),
        CREATED,
        error_body(503),
        job("RUNNING"),
        job("FINISHED", completed=2),
        error_body(502),
    )
    with caplog.at_level(logging.DEBUG), make_client(script, fake) as client:
        client.create_job(request())
        client.wait_for_job(JOB)
        with pytest.raises(AmbiguousSubmissionError) as info:
            client.create_job(request())
    assert client.stats.retries, "the run must have retried, or it proves nothing"
    assert caplog.records, "nothing was logged"
    assert TOKEN not in caplog.text
    for record in caplog.records:
        assert TOKEN not in record.getMessage()
    assert_no_token(info.value)


def test_from_settings_requires_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODEL_STUDIO_TOKEN", raising=False)
    with pytest.raises(ConfigurationError, match="MODEL_STUDIO_TOKEN"):
        ModelStudioClient.from_settings(Settings(organization_id=ORG, _env_file=None))


def test_from_settings_uses_settings(fake: FakeTime) -> None:
    settings = Settings(
        token=TOKEN, organization_id=ORG, base_url=BASE, max_retries=1, _env_file=None
    )
    script = Script(error_body(503))
    client = ModelStudioClient.from_settings(
        settings, transport=httpx.MockTransport(script), sleep=fake.sleep, clock=fake.clock
    )
    with client, pytest.raises(ServerError):
        client.get_job(JOB)
    assert script.count("GET") == 2
    assert script.requests[0].url.path == JOB_PATH
    assert TOKEN not in repr(client)


# --- async twin ------------------------------------------------------------------------------


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.mark.parametrize(
    ("step", "cause"),
    [(httpx.ReadTimeout, "read timeout"), (error_body(502), "HTTP 502")],
)
def test_async_post_ambiguous_is_not_retried(fake: FakeTime, step: Step, cause: str) -> None:
    script = Script(step, CREATED)

    async def scenario() -> AmbiguousSubmissionError:
        async with make_async_client(script, fake) as client:
            with pytest.raises(AmbiguousSubmissionError) as info:
                await client.create_job(request())
        return info.value

    err = run(scenario())
    assert err.cause == cause
    assert script.count("POST") == 1
    assert fake.sleeps == []
    assert_no_token(err)


def test_async_post_retried_when_never_connected_and_on_429(fake: FakeTime) -> None:
    script = Script(httpx.ConnectError, reply(429, {"detail": "x"}, {"Retry-After": "3"}), CREATED)

    async def scenario() -> str:
        async with make_async_client(script, fake) as client:
            return (await client.create_job(request())).job_id

    assert run(scenario()) == JOB
    assert script.count("POST") == 3
    assert fake.sleeps[1] == 3.0


def test_async_get_retries_then_succeeds(fake: FakeTime) -> None:
    script = Script(
        reply(503, {"detail": "busy"}, {"Retry-After": "5"}), httpx.ReadTimeout, job("RUNNING")
    )

    async def scenario() -> tuple[JobStatus, int]:
        async with make_async_client(script, fake) as client:
            status = await client.get_job(JOB)
            return status, client.stats.requests

    status, requests = run(scenario())
    assert status.job_status == "RUNNING"
    assert requests == 3
    assert fake.sleeps[0] == 5.0
    assert len(fake.sleeps) == 2


def test_async_get_gives_up_after_max_retries(fake: FakeTime) -> None:
    script = Script(error_body(504))

    async def scenario() -> None:
        async with make_async_client(script, fake) as client:
            await client.get_job(JOB)

    with pytest.raises(ServerError) as info:
        run(scenario())
    assert info.value.status_code == 504
    assert script.count("GET") == 1 + RETRIES
    assert_no_token(info.value)


def test_async_wait_for_job_happy_path(fake: FakeTime) -> None:
    script = Script(
        error_body(404), job("WHATEVER"), job("RUNNING", 10, total=50), job("FINISHED", 50, 50)
    )

    async def scenario() -> JobStatus:
        async with make_async_client(
            script, fake, poll_interval_s=1.0, poll_max_interval_s=30.0
        ) as client:
            status: JobStatus = await client.wait_for_job(JOB)
            return status

    status = run(scenario())
    assert status.is_finished
    assert script.count("GET") == 4
    assert fake.sleeps[:3] == [1.0, 1.0, 1.0]  # the start interval while nothing is known


def test_async_wait_for_job_failed_and_deadline(fake: FakeTime) -> None:
    failed = Script(job("RUNNING"), job("Cancelled"))
    running = Script(job("RUNNING"))

    async def wait(script: Script, deadline_s: float) -> None:
        async with make_async_client(script, fake) as client:
            await client.wait_for_job(JOB, deadline_s=deadline_s)

    with pytest.raises(JobFailedError):
        run(wait(failed, 3600.0))
    start = fake.now
    with pytest.raises(JobDeadlineExceededError):
        run(wait(running, 30.0))
    assert fake.now - start == pytest.approx(30.0)


def test_async_client_repr_hides_token() -> None:
    async def scenario() -> str:
        async with AsyncModelStudioClient(token=TOKEN, organization_id=ORG) as client:
            return repr(client)

    assert TOKEN not in run(scenario())


def test_429_has_a_longer_retry_budget_than_other_errors(fake: FakeTime) -> None:
    """A fair-use 429 is waited out longer than a 5xx: it is not a failure of the row."""
    script = Script(*[error_body(429)] * 4, job("RUNNING"))
    policy = RetryPolicy(max_retries=1, max_rate_limit_retries=5)
    with make_client(script, fake, retry=policy) as client:
        client.get_job(JOB)
    assert script.count("GET") == 5
    assert client.stats.rate_limited == 4


# ------------------------------------------------------------ a server that never answers


def _hung_client(hung_server: HungServer) -> ModelStudioClient:
    return ModelStudioClient(
        base_url=f"http://{hung_server.address}/api/v1",
        token="t",
        organization_id="org",
        timeout_s=0.2,
        retry=RetryPolicy(max_retries=2, backoff_base_s=0.01, backoff_max_s=0.02),
    )


def test_a_get_to_a_server_that_never_answers_names_the_timeout_and_its_setting(
    hung_server: HungServer,
) -> None:
    with _hung_client(hung_server) as client, pytest.raises(APITimeoutError) as info:
        client.get_job("job-1")
    assert str(info.value) == (
        f"Could not reach http://{hung_server.address}/api/v1: read timeout after 0.2 s, "
        "3 tries (MODEL_STUDIO_REQUEST_TIMEOUT_S)"
    )
    assert client.stats.requests == 3


def test_a_post_to_a_server_that_never_answers_is_ambiguous_and_not_resent(
    hung_server: HungServer,
) -> None:
    with _hung_client(hung_server) as client, pytest.raises(AmbiguousSubmissionError) as info:
        client.create_job(request())
    assert info.value.cause == "read timeout"
    assert client.stats.requests == 1  # the job may exist: sending again could pay twice


def test_a_status_error_is_pickled_without_the_servers_response() -> None:
    # Prefect persists a failed state's exception: the server's raw text (which may quote
    # what the request carried) must not travel with it, even where no repr shows it.
    response = httpx.Response(500, headers={"x-echo": "hidden-text"}, content=b"hidden-text")
    error = ServerError("POST /generate failed with HTTP 500", status_code=500, response=response)

    blob = pickle.dumps(error)

    assert b"hidden-text" not in blob
    assert b"POST /generate failed with HTTP 500" in blob


def _chain(error: BaseException | None) -> list[BaseException]:
    seen: list[BaseException] = []
    while error is not None and error not in seen:
        seen.append(error)
        error = error.__cause__ or error.__context__
    return seen


@pytest.mark.parametrize(
    ("method", "failure", "raised"),
    [
        ("POST", httpx.RemoteProtocolError, AmbiguousSubmissionError),
        ("GET", httpx.ConnectError, APIConnectionError),
    ],
)
def test_a_transport_errors_chain_holds_no_request_header(
    method: str, failure: type[httpx.HTTPError], raised: type[Exception]
) -> None:
    # Pickles carry an error's causes where Dask installs tblib's exception pickling (it
    # does on import): the httpx cause then travelled with the request it failed on,
    # Authorization header and all (CI, test_secrets after the Dask test).
    fake = FakeTime()
    with make_client(Script(failure), fake) as client, pytest.raises(raised) as info:
        if method == "POST":
            client.create_job(request())
        else:
            client.get_job(JOB)

    chain = _chain(info.value)
    assert any(isinstance(e, failure) for e in chain)
    assert TOKEN.encode() not in pickle.dumps([vars(e) for e in chain])
