"""HTTP clients for Model Studio: :class:`ModelStudioClient` and :class:`AsyncModelStudioClient`.

Both share :class:`_BaseClient` for building requests, parsing responses and deciding on
retries; they differ only where they do I/O (send, sleep). Every ``import httpx`` of the
project is in this module.

Retry policy, in this one place:

* GET retries 408/409/429/5xx, connection errors and timeouts, with exponential back-off
  and jitter, honouring ``Retry-After`` (seconds or HTTP date) up to a cap.
* POST /generate retries only when no job can have been created: a connection that was
  never made, 429 and 503. A read timeout, a connection dropped after sending, 500, 502 or
  504 raise :class:`AmbiguousSubmissionError`: the job may exist, and paying twice is worse
  than asking the caller to decide.

Example:
    >>> with ModelStudioClient(token="t", organization_id="org") as client:  # doctest: +SKIP
    ...     job = client.create_job(request)
    ...     status = client.wait_for_job(job.job_id)
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, SecretStr, ValidationError

from studio_flows import interrupts
from studio_flows.errors import (
    AmbiguousSubmissionError,
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    JobDeadlineExceededError,
    JobFailedError,
    NotFoundError,
    UnexpectedResponseError,
    error_for_status,
)
from studio_flows.models import GenerateRequest, JobCreated, JobStatus
from studio_flows.polling import DurationHistory, PollPlan
from studio_flows.redaction import scrub, scrub_bytes
from studio_flows.settings import Settings

logger = logging.getLogger("studio_flows.client")

ModelT = TypeVar("ModelT", bound=BaseModel)

RETRYABLE_GET_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
RETRYABLE_POST_STATUSES = frozenset({429, 503})  # the service refused: no job was made
AMBIGUOUS_POST_STATUSES = frozenset({500, 502, 504})  # the job may have been made
MAX_RETRY_AFTER_S = 60.0


@dataclass
class RetryPolicy:
    """How often and how long to back off between attempts of one request."""

    max_retries: int = 5
    # A 429 is the account's fair-use limit (the web UI shares it), not a failure: wait longer.
    max_rate_limit_retries: int = 30
    backoff_base_s: float = 0.25
    backoff_max_s: float = 8.0
    max_retry_after_s: float = MAX_RETRY_AFTER_S

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        if retry_after is not None and 0 <= retry_after <= self.max_retry_after_s:
            return retry_after
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2.0 ** (attempt - 1))
        jitter: float = random.uniform(0, ceiling / 2)  # spreads clients that failed together
        return ceiling / 2 + jitter


@dataclass
class ClientStats:
    """What a client saw: requests sent, jobs created, retries by cause (thread-safe).

    Example:
        >>> stats = ClientStats()
        >>> for _ in range(4):
        ...     stats.count_request()
        >>> stats.count_job()
        >>> stats.requests_per_job
        4.0
    """

    requests: int = 0
    jobs_created: int = 0
    retries: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count_request(self) -> None:
        with self._lock:
            self.requests += 1

    def count_job(self) -> None:
        with self._lock:
            self.jobs_created += 1

    @property
    def requests_per_job(self) -> float:
        """Every request sent (POSTs, GETs, retries) per job created; 0 before a job."""
        return self.requests / self.jobs_created if self.jobs_created else 0.0

    def count_retry(self, cause: str) -> None:
        with self._lock:
            self.retries[cause] += 1

    @property
    def rate_limited(self) -> int:
        """429 answers absorbed by waiting."""
        return self.retries["HTTP 429"]


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` in seconds, from a number of seconds or an HTTP date; None if absent.

    Example:
        >>> parse_retry_after("3")
        3.0
    """
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    current = time.time() if now is None else now
    return max(when.timestamp() - current, 0.0)


class _Retry(Exception):
    """Internal signal: wait ``delay`` seconds and send the request again."""

    def __init__(self, delay: float, cause: str) -> None:
        self.delay = delay
        self.cause = cause


class _BaseClient:
    """Request building, response parsing and retry decisions shared by both clients."""

    _clock: Callable[[], float]  # set by each client: time.monotonic unless a test injects one

    def __init__(
        self,
        *,
        token: SecretStr | str,
        organization_id: str,
        base_url: str = "https://studio.ionos.de/api/v1",
        timeout_s: float = 30.0,
        retry: RetryPolicy | None = None,
        poll_interval_s: float = 0.5,
        poll_max_interval_s: float = 10.0,
        poll_budget: float | None = None,
        not_found_grace_s: float = 10.0,
        history: DurationHistory | None = None,
    ) -> None:
        self._token = token if isinstance(token, SecretStr) else SecretStr(token)
        self.organization_id = organization_id
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self.poll_interval_s = poll_interval_s
        self.poll_max_interval_s = poll_max_interval_s
        self.poll_budget = poll_budget
        self.not_found_grace_s = not_found_grace_s
        self.history = history or DurationHistory()
        self.stats = ClientStats()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, organization_id=***)"

    @classmethod
    def _settings_kwargs(cls, settings: Settings) -> dict[str, Any]:
        token, organization_id = settings.require_credentials()
        return {
            "token": token,
            "organization_id": organization_id,
            "base_url": settings.base_url,
            "timeout_s": settings.request_timeout_s,
            "retry": RetryPolicy(max_retries=settings.max_retries),
            "poll_interval_s": settings.poll_interval_s,
            "poll_max_interval_s": settings.poll_max_interval_s,
            "poll_budget": settings.poll_budget,
        }

    def _headers(self, body: bytes | None = None) -> dict[str, str]:
        headers = {
            "Authorization": f"Bearer {self._token.get_secret_value()}",
            "Accept": "application/json",
            "User-Agent": "studio-flows",
        }
        if body is not None:
            headers["Content-Type"] = "application/json"
        return headers

    def _generate_path(self, job_id: str | None = None) -> str:
        path = f"/organizations/{self.organization_id}/generate"
        return path if job_id is None else f"{path}/{job_id}"

    @staticmethod
    def _parse(response: httpx.Response, model: type[ModelT]) -> ModelT:
        try:
            # Parsed and validated in one pass by pydantic's JSON parser: a 100-task job's
            # answer cost several times more through json.loads and model_validate.
            return model.model_validate_json(response.content)
        except (ValueError, ValidationError) as err:
            raise UnexpectedResponseError(
                f"{response.request.method} {response.request.url.path} returned "
                f"HTTP {response.status_code} with a body that is not a valid {model.__name__}"
            ) from err

    @staticmethod
    def _status_error(response: httpx.Response) -> APIStatusError:
        detail = _error_detail(response)
        request = response.request
        message = f"{request.method} {request.url.path} failed with HTTP {response.status_code}"
        if detail:
            message += f": {detail}"
        return error_for_status(response.status_code)(
            message, status_code=response.status_code, response=_detached(response), detail=detail
        )

    def _scrubbed(self, response: httpx.Response) -> httpx.Response:
        """``response`` as the rest of the client reads it: the token taken out of its body
        and headers (a server may echo the request's ``Authorization`` header in an error
        detail), tied to a copy of its request without that header.

        The one place server text enters: every detail, error, log line and stored result
        is made from what this returns, so none of them can quote the token.
        """
        secrets = [self._token.get_secret_value()]
        headers = [
            (name, scrub(value, secrets))
            for name, value in response.headers.items()
            # The content below is already decoded: these would describe the wire form.
            if name.lower() not in _WIRE_HEADERS
        ]
        return httpx.Response(
            response.status_code,
            headers=headers,
            content=scrub_bytes(response.content, secrets),
            request=httpx.Request(response.request.method, response.request.url),
        )

    def _received(self, response: httpx.Response, *, is_post: bool, attempt: int) -> httpx.Response:
        """``response`` scrubbed if it is a success; else raise :class:`_Retry` or the
        typed error (made from the scrubbed response)."""
        response = self._scrubbed(response)
        if response.is_success:
            return response
        code = response.status_code
        error = self._status_error(response)
        retryable = RETRYABLE_POST_STATUSES if is_post else RETRYABLE_GET_STATUSES
        budget = self.retry.max_rate_limit_retries if code == 429 else self.retry.max_retries
        if code in retryable and attempt <= budget:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise _Retry(self.retry.delay(attempt, retry_after), f"HTTP {code}")
        if is_post and code in AMBIGUOUS_POST_STATUSES:
            raise AmbiguousSubmissionError(str(error), cause=f"HTTP {code}") from error
        raise error

    def _decide_exception(self, exc: httpx.HTTPError, *, is_post: bool, attempt: int) -> None:
        """Raise :class:`_Retry` or the library error for a transport failure."""
        _forget_headers(exc)
        never_sent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
        cause = _describe_transport_error(exc)
        if (never_sent or not is_post) and attempt <= self.retry.max_retries:
            raise _Retry(self.retry.delay(attempt, None), cause)
        if is_post and not never_sent:
            raise AmbiguousSubmissionError(
                f"POST {self._generate_path()} sent but no answer came back ({cause}); "
                "a job may have been created",
                cause=cause,
            ) from exc
        if isinstance(exc, httpx.TimeoutException):
            # Names the setting: a slow network may need more than the default per request.
            raise APITimeoutError(
                f"Could not reach {self.base_url}: {cause} after {self.timeout_s:g} s, "
                f"{attempt} {'try' if attempt == 1 else 'tries'} (MODEL_STUDIO_REQUEST_TIMEOUT_S)"
            ) from exc
        raise APIConnectionError(f"Could not reach {self.base_url}: {cause}") from exc

    def _waiter(
        self,
        job_id: str,
        deadline_s: float,
        total_tasks: int,
        submitted_at: float | None,
        poll_now: bool,
    ) -> _Waiter:
        started = self._clock() if submitted_at is None else submitted_at
        return _Waiter(
            job_id=job_id,
            deadline_s=deadline_s,
            started=started,
            plan=PollPlan(
                start=self.poll_interval_s,
                maximum=self.poll_max_interval_s,
                history=self.history,
                budget=self.poll_budget,
            ),
            history=self.history,
            not_found_grace_s=self.not_found_grace_s,
            total_tasks=total_tasks,
            poll_now=poll_now,
        )


def _body(request: GenerateRequest) -> bytes:
    """The JSON body of a POST, written by pydantic (not json.dumps over a dict of it)."""
    return request.model_dump_json().encode()


@dataclass
class _Waiter:
    """The decisions of ``wait_for_job``, without I/O: both clients drive one of these.

    Each round: :meth:`next_sleep`, then a GET, then :meth:`seen` (or
    :meth:`keep_polling_after_404`). Logs only when the status or the progress changed.
    """

    job_id: str
    deadline_s: float
    started: float
    plan: PollPlan
    history: DurationHistory
    not_found_grace_s: float
    total_tasks: int
    poll_now: bool
    last: tuple[str, int] | None = None
    # When the next GET is due on this client's clock: planning a look takes CPU time of its
    # own (milliseconds, more under a busy GIL), which must not make every look later.
    look_at: float = field(init=False)
    last_running_s: float = field(default=0.0, init=False)  # last poll that saw it running

    def __post_init__(self) -> None:
        first = 0.0 if self.poll_now else self.plan.first_delay(tasks=self.total_tasks)
        self.look_at = self.started + first

    def next_sleep(self, now: float) -> tuple[float, bool]:
        """Seconds to sleep before the next GET, and whether that GET is the last one."""
        elapsed = now - self.started
        delay = max(self.look_at - now, 0.0)
        if elapsed + delay > self.deadline_s:
            return max(self.deadline_s - elapsed, 0.0), True
        return delay, False

    def keep_polling_after_404(self, now: float, final: bool) -> bool:
        """A 404 just after creation is the service catching up; later it is an error."""
        if now - self.started >= self.not_found_grace_s:
            return False
        if final:
            raise self._deadline_error()
        self.look_at = now + self.plan.next_delay(elapsed=now - self.started, completed=0, total=0)
        return True

    def seen(
        self, status: JobStatus, now: float, final: bool, asked: float | None = None
    ) -> JobStatus | None:
        """The finished job, or None to poll again; raise if it failed or time is up.

        ``asked``: when the GET that returned ``status`` was sent (default: ``now``).
        """
        seen_running = self.last is not None
        self._log_progress(status)
        if status.is_terminal:
            if not self.poll_now:  # a re-attached job's age is unknown: learn nothing
                # Terminal at the first look: the job took at most until the GET was sent.
                # Counting the GET's own time in, jobs that end at once taught the next
                # first polls to wait a GET's time (bench/: ~4 ms a job at latency 0).
                done = now if seen_running or asked is None else asked
                self._learn(done - self.started, status.total_tasks, seen_running)
            if status.is_failed:
                raise JobFailedError(
                    f"Job {status.job_id} ended {status.job_status}",
                    job_id=status.job_id,
                    job_status=status.job_status,
                )
            return status
        if final:
            raise self._deadline_error()
        self.last_running_s = now - self.started
        self.look_at = now + self.plan.next_delay(
            elapsed=now - self.started,
            completed=status.tasks_done,
            total=status.total_tasks,
        )
        return None

    def _learn(self, seen_done_s: float, tasks: int, seen_running: bool) -> None:
        """Teach the history how long this job took.

        It ended between the last poll that saw it running and this one; the plan knows
        where in between it most likely ended. Terminal at the first look, it took at most
        ``seen_done_s`` (see polling's upper-bound samples).
        """
        self.plan.learn(
            running_until=self.last_running_s if seen_running else 0.0,
            done_by=seen_done_s,
            tasks=tasks,
            seen_running=seen_running,
        )

    def _log_progress(self, status: JobStatus) -> None:
        current = (status.job_status, status.tasks_done)
        if current != self.last:
            logger.info(
                "job %s %s: %d/%d tasks",
                status.job_id,
                status.job_status,
                status.tasks_done,
                status.total_tasks,
            )
        self.last = current

    def _deadline_error(self) -> JobDeadlineExceededError:
        return JobDeadlineExceededError(
            f"Job {self.job_id} still running after {self.deadline_s:.0f} s", job_id=self.job_id
        )


_WIRE_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})


def _detached(response: httpx.Response) -> httpx.Response:
    """A copy of ``response`` without its request, whose headers carry the bearer token.

    Errors may be pickled and stored (Prefect persists failed states); the token must not be.
    """
    return httpx.Response(response.status_code, headers=response.headers, content=response.content)


def _error_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200].strip()
    if isinstance(body, dict):
        for key in ("detail", "message", "error"):
            if key in body:
                return str(body[key])[:300]
    return str(body)[:200]


def _forget_headers(exc: httpx.HTTPError) -> None:
    """Keep only the method and URL of the request ``exc`` failed on.

    ``exc`` becomes the ``__cause__`` of the error we raise, and causes are pickled where
    Dask is imported (it installs tblib's exception pickling): the request's own headers
    would carry the token with them.
    """
    try:
        sent = exc.request
    except RuntimeError:  # raised without a request: nothing to forget
        return
    exc.request = httpx.Request(sent.method, sent.url)


def _describe_transport_error(exc: httpx.HTTPError) -> str:
    kind: dict[type[httpx.HTTPError], str] = {
        httpx.ConnectError: "connection refused or unreachable",
        httpx.ConnectTimeout: "connect timeout",
        httpx.ReadTimeout: "read timeout",
        httpx.WriteTimeout: "write timeout",
        httpx.PoolTimeout: "connection pool timeout",
        httpx.RemoteProtocolError: "connection closed without a response",
        httpx.ReadError: "connection dropped while reading",
        httpx.WriteError: "connection dropped while sending",
    }
    return kind.get(type(exc), type(exc).__name__)


@functools.cache
def shared_http_pool(base_url: str, timeout_s: float) -> httpx.Client:
    """One connection pool per API and process, for clients made per task run.

    Building an ``httpx.Client`` loads the CA bundle into a new SSL context (~40 ms, the
    largest single cost per job in the P3 profile, bench/RESULTS.md); a pool is thread-safe
    and also keeps connections alive between jobs. Lives as long as the process.
    """
    return httpx.Client(base_url=base_url, timeout=timeout_s)


class ModelStudioClient(_BaseClient):
    """Synchronous client. Use as a context manager so the connection pool is closed.

    Example:
        >>> client = ModelStudioClient.from_settings(settings)  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        transport: httpx.BaseTransport | None = None,
        shared_pool: bool = False,
        sleep: Callable[[float], None] = interrupts.sleep,
        clock: Callable[[], float] = time.monotonic,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._sleep = sleep
        self._clock = clock
        # A shared pool outlives this client (see shared_http_pool); close() leaves it open.
        self._owns_http = not shared_pool
        self._http = (
            shared_http_pool(self.base_url, self.timeout_s)
            if shared_pool
            else httpx.Client(base_url=self.base_url, timeout=self.timeout_s, transport=transport)
        )

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> ModelStudioClient:
        """Build a client from :class:`Settings` (raises ConfigurationError without credentials)."""
        return cls(**{**cls._settings_kwargs(settings), **kwargs})

    def __enter__(self) -> ModelStudioClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool (a shared pool stays open for the next client)."""
        if self._owns_http:
            self._http.close()

    def _send(self, method: str, path: str, body: bytes | None = None) -> httpx.Response:
        is_post = method == "POST"
        attempt = 0
        while True:
            attempt += 1
            self.stats.count_request()
            try:
                response = self._http.request(
                    method, path, content=body, headers=self._headers(body)
                )
                return self._received(response, is_post=is_post, attempt=attempt)
            except httpx.HTTPError as exc:
                try:
                    self._decide_exception(exc, is_post=is_post, attempt=attempt)
                except _Retry as retry:
                    self._wait_retry(method, path, retry)
            except _Retry as retry:
                self._wait_retry(method, path, retry)

    def _wait_retry(self, method: str, path: str, retry: _Retry) -> None:
        self.stats.count_retry(retry.cause)
        logger.debug("%s %s: %s, retrying in %.2f s", method, path, retry.cause, retry.delay)
        self._sleep(retry.delay)

    def create_job(self, request: GenerateRequest) -> JobCreated:
        """Submit one generation job (one shard of conversations).

        Example:
            >>> job = client.create_job(shard.request())  # doctest: +SKIP
            >>> job.job_id  # doctest: +SKIP
            'a1b2...'
        """
        response = self._send("POST", self._generate_path(), _body(request))
        created = self._parse(response, JobCreated)
        self.stats.count_job()
        return created

    def get_job(self, job_id: str) -> JobStatus:
        """Read a job's status and the results it has so far.

        Example:
            >>> client.get_job("a1b2").job_status  # doctest: +SKIP
            'FINISHED'
        """
        return self._parse(self._send("GET", self._generate_path(job_id)), JobStatus)

    def wait_for_job(
        self,
        job_id: str,
        *,
        deadline_s: float = 3600.0,
        total_tasks: int = 0,
        submitted_at: float | None = None,
        poll_now: bool = False,
    ) -> JobStatus:
        """Poll until the job is terminal; return it if FINISHED.

        Raises :class:`JobFailedError` for FAILED/ERROR/CANCELLED and
        :class:`JobDeadlineExceededError` at the deadline. A 404 shortly after creation is
        retried. ``submitted_at`` (this client's clock) dates the POST when known;
        ``poll_now`` looks at once (a re-attached job may have ended long ago).

        Example:
            >>> client.wait_for_job(job.job_id, deadline_s=600).results  # doctest: +SKIP
        """
        waiter = self._waiter(job_id, deadline_s, total_tasks, submitted_at, poll_now)
        while True:
            delay, final = waiter.next_sleep(self._clock())
            self._sleep(delay)
            asked = self._clock()
            try:
                status = self.get_job(job_id)
            except NotFoundError:
                if waiter.keep_polling_after_404(self._clock(), final):
                    continue
                raise
            finished = waiter.seen(status, self._clock(), final, asked)
            if finished is not None:
                return finished


class AsyncModelStudioClient(_BaseClient):
    """Asynchronous twin of :class:`ModelStudioClient`.

    Example:
        >>> async with AsyncModelStudioClient.from_settings(settings) as client:  # doctest: +SKIP
        ...     status = await client.wait_for_job((await client.create_job(req)).job_id)
    """

    def __init__(
        self,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._sleep = sleep
        self._clock = clock
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=self.timeout_s, transport=transport
        )

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> AsyncModelStudioClient:
        """Build a client from :class:`Settings` (raises ConfigurationError without credentials)."""
        return cls(**{**cls._settings_kwargs(settings), **kwargs})

    async def __aenter__(self) -> AsyncModelStudioClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def _send(self, method: str, path: str, body: bytes | None = None) -> httpx.Response:
        is_post = method == "POST"
        attempt = 0
        while True:
            attempt += 1
            self.stats.count_request()
            try:
                response = await self._http.request(
                    method, path, content=body, headers=self._headers(body)
                )
                return self._received(response, is_post=is_post, attempt=attempt)
            except httpx.HTTPError as exc:
                try:
                    self._decide_exception(exc, is_post=is_post, attempt=attempt)
                except _Retry as retry:
                    await self._wait_retry(method, path, retry)
            except _Retry as retry:
                await self._wait_retry(method, path, retry)

    async def _wait_retry(self, method: str, path: str, retry: _Retry) -> None:
        self.stats.count_retry(retry.cause)
        logger.debug("%s %s: %s, retrying in %.2f s", method, path, retry.cause, retry.delay)
        await self._sleep(retry.delay)

    async def create_job(self, request: GenerateRequest) -> JobCreated:
        """Submit one generation job; see :meth:`ModelStudioClient.create_job`."""
        response = await self._send("POST", self._generate_path(), _body(request))
        created = self._parse(response, JobCreated)
        self.stats.count_job()
        return created

    async def get_job(self, job_id: str) -> JobStatus:
        """Read a job's status; see :meth:`ModelStudioClient.get_job`."""
        return self._parse(await self._send("GET", self._generate_path(job_id)), JobStatus)

    async def wait_for_job(
        self,
        job_id: str,
        *,
        deadline_s: float = 3600.0,
        total_tasks: int = 0,
        submitted_at: float | None = None,
        poll_now: bool = False,
    ) -> JobStatus:
        """Poll until the job is terminal; see :meth:`ModelStudioClient.wait_for_job`."""
        waiter = self._waiter(job_id, deadline_s, total_tasks, submitted_at, poll_now)
        while True:
            delay, final = waiter.next_sleep(self._clock())
            await self._sleep(delay)
            asked = self._clock()
            try:
                status = await self.get_job(job_id)
            except NotFoundError:
                if waiter.keep_polling_after_404(self._clock(), final):
                    continue
                raise
            finished = waiter.seen(status, self._clock(), final, asked)
            if finished is not None:
                return finished
