"""A local, fault-injecting stand-in for the Model Studio generation API.

Same paths and bodies as the API reference, under a configurable prefix::

    POST {prefix}/organizations/{org}/generate            create a job
    GET  {prefix}/organizations/{org}/generate/{job_id}   read a job and its results

plus control endpoints outside the prefix, which need no token::

    GET  /_emulator/stats    what the emulator saw (never a token, only its hash)
    POST /_emulator/config   change knobs at run time (a JSON object of the fields); answers
                             the new knobs, with tokens shown only as ``token_keys``
    POST /_emulator/reset    forget every job and count, re-seed the fault generator

Behaviour worth knowing when you read a test:

* Timing is computed from a monotonic clock when a job is read, no background work. A
  job of ``n`` conversations lasts ``D = job_latency_s + task_latency_s * n``; task ``i``
  is done ``D * (i + 1) / n`` after creation. The job is ``CREATED`` for its first
  ``D / (2n)``, then ``RUNNING``, then ``FINISHED`` (or ``FAILED``) at ``D``.
* ``results`` lists the tasks done so far (partial while ``RUNNING``), in ``task_index``
  order or, with ``shuffle_results``, in a seeded order fixed when the job is created.
  A failed task still counts in ``completed_tasks`` (it is done) but has status
  ``failed``, result ``null`` and an ``error``.
* Answers are ``"<model_id> answers: <last user message>"``, so a test can prove which
  conversation a result belongs to. With ``known_models`` set, a POST naming another
  model gets 404 ``Model '<id>' not found`` and creates nothing.
* Fair use: a POST that would make a ``fair_use_limit + 1``-th active job (created, end
  not reached) for its token gets 429 with ``Retry-After: retry_after_s``.
* Request faults come from one draw per API request of a seeded ``random.Random``: the
  unit interval is cut into slices ``drop_connection_rate``, ``error_5xx_rate`` and
  ``rate_429`` (their sum may not exceed 1), so each fires at its own rate. They act
  before the token check and before anything is created. ``lost_post_response_rate``,
  ``failed_job_rate`` and ``task_failure_rate`` are drawn when a job is created.
* A dropped connection is closed with no response at all, so a client sees a transport
  error, not a status code. This needs the uvicorn protocol installed by
  :class:`EmulatorServer` and :func:`serve`; another ASGI server gets an exception.

Example:
    >>> with EmulatorServer(EmulatorConfig(job_latency_s=0.1)) as server:  # doctest: +SKIP
    ...     client = ModelStudioClient(base_url=server.base_url, token=server.token,
    ...                                organization_id="org")
    ...     job = client.create_job(request)
    ...     client.wait_for_job(job.job_id).results[0].result
    'my-model answers: The capital of France is'
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import socket
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.config import LOGGING_CONFIG
from uvicorn.protocols.http.h11_impl import H11Protocol

from studio_flows.errors import ConfigurationError

DEFAULT_TOKEN = "studio-flows-emulator-token"
CONTROL_PREFIX = "/_emulator"
# The ASGI scope extension through which a request can close its own connection unanswered.
DROP_CONNECTION_EXTENSION = "studio_flows.drop_connection"

CREATE_ROUTE = "POST /generate"
READ_ROUTE = "GET /generate/{job_id}"
DROPPED = "dropped"
FAULT_KINDS = (
    "5xx",
    "429",
    "fair_use_429",
    "drop",
    "lost_post_response",
    "failed_job",
    "failed_task",
    "not_found_window",
)
SERVER_ERROR_STATUSES = (500, 502, 503, 504)

Rate = Annotated[float, Field(ge=0.0, le=1.0)]
Clock = Callable[[], float]


class EmulatorConfig(BaseModel):
    """The emulator's knobs; every field can also be changed at run time.

    Example:
        >>> config = EmulatorConfig(job_latency_s=0.05, rate_429=0.1, seed=7)
        >>> config.fair_use_limit
        3
        >>> EmulatorConfig(job_latncy_s=1)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        pydantic_core._pydantic_core.ValidationError: ...
    """

    model_config = ConfigDict(extra="forbid")

    job_latency_s: float = Field(0.2, ge=0.0, description="Seconds every job takes.")
    task_latency_s: float = Field(0.0, ge=0.0, description="Extra seconds per conversation.")
    error_5xx_rate: Rate = Field(0.0, description="Share of API requests answered 500/502/503/504.")
    rate_429: Rate = Field(0.0, description="Share of API requests answered 429 at random.")
    drop_connection_rate: Rate = Field(
        0.0, description="Share of API requests whose connection is closed without a response."
    )
    lost_post_response_rate: Rate = Field(
        0.0, description="Share of created jobs whose POST response is dropped."
    )
    failed_job_rate: Rate = Field(0.0, description="Share of jobs that end FAILED.")
    task_failure_rate: Rate = Field(0.0, description="Share of tasks that end failed.")
    not_found_window_s: float = Field(
        0.0, ge=0.0, description="Seconds after creation during which a GET of the job is 404."
    )
    shuffle_results: bool = Field(False, description="List results in a seeded random order.")
    fair_use_limit: int = Field(3, ge=1, description="Active jobs allowed per token.")
    seed: int | None = Field(None, description="Seed of the fault generator (None: random).")
    retry_after_s: float = Field(1.0, ge=0.0, description="Retry-After sent with every 429.")
    known_models: list[str] | None = Field(
        None, description="Model ids a POST may name (None: any); another id is a 404."
    )
    prefix: str = Field("/api/v1", description="Path prefix of the API routes.")
    tokens: list[str] = Field(
        default_factory=lambda: [DEFAULT_TOKEN],
        min_length=1,
        description="Bearer tokens accepted; jobs are scoped to (organisation, token).",
    )

    @field_validator("prefix")
    @classmethod
    def _normalise_prefix(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and not value.startswith("/"):
            value = "/" + value
        if value.startswith(CONTROL_PREFIX):
            raise ValueError(f"prefix may not start with {CONTROL_PREFIX}")
        return value

    @field_validator("tokens")
    @classmethod
    def _tokens_not_blank(cls, value: list[str]) -> list[str]:
        if any(not token.strip() for token in value):
            raise ValueError("tokens may not be blank")
        return value

    @model_validator(mode="after")
    def _request_faults_fit_one_draw(self) -> EmulatorConfig:
        total = self.drop_connection_rate + self.error_5xx_rate + self.rate_429
        if total > 1.0 + 1e-9:
            raise ValueError(
                "drop_connection_rate + error_5xx_rate + rate_429 must not exceed 1 "
                f"(got {total:g}): they are slices of one draw per request"
            )
        return self


# --- the request body, validated as the service needs it ------------------------------


class _Turn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1)


class _GenerateBody(BaseModel):
    # Strict on unknown fields: the emulator exists to catch a client that sends a typo.
    model_config = ConfigDict(extra="forbid")

    model_id: str = Field(min_length=1)
    messages: list[Annotated[list[_Turn], Field(min_length=1)]] = Field(min_length=1)
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(512, gt=0)


def _answer(model_id: str, conversation: list[_Turn]) -> str:
    """The deterministic result of one conversation: it names what it answers."""
    user_turns = [turn for turn in conversation if turn.role == "user"]
    last = user_turns[-1] if user_turns else conversation[-1]
    return f"{model_id} answers: {last.content}"


def readable_errors(error: ValidationError) -> str:
    """One line per problem, ``messages[0][1].content: reason``, joined by ``; ``.

    Example:
        >>> try:
        ...     EmulatorConfig(rate_429=2)
        ... except ValidationError as err:
        ...     print(readable_errors(err))
        rate_429: Input should be less than or equal to 1
    """
    parts = []
    for item in error.errors(include_url=False):
        where = ""
        for loc in item["loc"]:
            where += f"[{loc}]" if isinstance(loc, int) else f".{loc}"
        parts.append(f"{where.lstrip('.') or 'body'}: {item['msg']}")
    return "; ".join(parts)


# --- jobs and the state they live in -------------------------------------------------


def token_key(token: str) -> str:
    """How stats name a token: the first 12 hex digits of its sha256, never the token.

    Example:
        >>> token_key("studio-flows-emulator-token") == token_key("studio-flows-emulator-token")
        True
    """
    return hashlib.sha256(token.encode("utf-8")).hexdigest()[:12]


@dataclass
class _Job:
    job_id: str
    organization_id: str
    token_key: str
    answers: list[str]
    task_failed: list[bool]
    created: float
    duration: float
    # None: the job finishes; k: it completes k tasks, then ends FAILED at its end time.
    fails_after: int | None
    order: list[int]

    @property
    def end(self) -> float:
        return self.created + self.duration

    def is_active(self, now: float) -> bool:
        return now < self.end

    def view(self, now: float) -> dict[str, Any]:
        n = len(self.answers)
        elapsed = now - self.created
        if elapsed >= self.duration:
            done = n
            status = "FINISHED" if self.fails_after is None else "FAILED"
        else:
            # Task i is done at duration * (i + 1) / n; the last one only at the end.
            done = min(n - 1, int(elapsed * n / self.duration))
            status = "CREATED" if elapsed < self.duration / (2 * n) else "RUNNING"
        if self.fails_after is not None:
            done = min(done, self.fails_after)
        return {
            "job_id": self.job_id,
            "job_status": status,
            "total_tasks": n,
            "completed_tasks": done,
            "results": [self._task(i) for i in self.order if i < done],
        }

    def _task(self, index: int) -> dict[str, Any]:
        if self.task_failed[index]:
            return {
                "task_index": index,
                "status": "failed",
                "result": None,
                "error": "emulated task failure",
            }
        return {"task_index": index, "status": "completed", "result": self.answers[index]}


@dataclass
class _TokenCounts:
    jobs_created: int = 0
    max_active_jobs: int = 0
    active: list[_Job] = field(default_factory=list)

    def prune(self, now: float) -> list[_Job]:
        """Forget jobs that ended; return the ones still active."""
        self.active = [job for job in self.active if job.is_active(now)]
        return self.active


class _Drop(Response):
    """A 'response' that closes the connection without sending a byte.

    Starlette calls a response as an ASGI app; this one asks the server, through the scope
    extension installed by :class:`_DroppingH11Protocol`, to abort the transport, then
    waits until the server has noticed the disconnect. Returning earlier would make
    uvicorn log "returned without starting response" and try to send a 500.
    """

    def __init__(self) -> None:
        super().__init__(status_code=500)  # never sent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        drop = scope.get("extensions", {}).get(DROP_CONNECTION_EXTENSION)
        if drop is None:
            raise RuntimeError(
                "dropping a connection needs the emulator's uvicorn protocol: "
                "run the app with EmulatorServer or serve()"
            )
        drop()
        while (await receive())["type"] != "http.disconnect":
            pass


class _DroppingH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus a way for the app to close a connection unanswered.

    ASGI has no message for "close without a response": an app that returns without
    answering gets a 500 from uvicorn. So each request's scope gets the extension
    :data:`DROP_CONNECTION_EXTENSION`, a callable that aborts this connection's transport.
    The client then sees the socket close (``httpx.RemoteProtocolError``) or reset
    (``httpx.ReadError``), never a status code.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        app: ASGIApp = self.app

        async def app_with_drop(scope: Scope, receive: Receive, send: Send) -> None:
            scope.setdefault("extensions", {})[DROP_CONNECTION_EXTENSION] = transport.abort
            await app(scope, receive, send)

        self.app = app_with_drop


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(body, status_code=status, headers=headers)


def _seconds_header(seconds: float) -> str:
    """``Retry-After`` text: ``2`` for whole seconds, else a decimal such as ``0.25``."""
    if float(seconds).is_integer():
        return str(int(seconds))
    return format(seconds, "f").rstrip("0").rstrip(".")  # never "1e-05": clients parse floats


class EmulatorState:
    """Jobs, counters and knobs of one emulator app, guarded by one lock.

    The app runs on one event loop, but tests read :meth:`stats` from their own thread,
    so every read and write holds ``lock``; no method awaits while holding it.

    Example:
        >>> state = EmulatorState(EmulatorConfig(seed=1))
        >>> state.stats()["jobs_created"]
        0
    """

    def __init__(self, config: EmulatorConfig, clock: Clock = time.monotonic) -> None:
        self.lock = threading.Lock()
        self.config = config
        self._clock = clock
        self._clear()

    def _clear(self) -> None:
        self._rng = random.Random(self.config.seed)
        self._jobs: dict[str, _Job] = {}
        self._tokens: dict[str, _TokenCounts] = {}
        self._requests: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._conversations = 0
        self._faults: Counter[str] = Counter(dict.fromkeys(FAULT_KINDS, 0))

    # -- control ------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every job and count; re-seed the fault generator."""
        with self.lock:
            self._clear()

    def configure(self, changes: dict[str, Any]) -> EmulatorConfig:
        """Apply ``changes`` to the knobs (validated as a whole) and return the new config.

        Raises :class:`pydantic.ValidationError` for an unknown or invalid knob, and
        :class:`ValueError` for a new ``prefix`` (routes are fixed when the app is built).
        """
        with self.lock:
            new = EmulatorConfig.model_validate({**self.config.model_dump(), **changes})
            if new.prefix != self.config.prefix:
                raise ValueError("prefix: cannot change at run time; build a new app")
            self.config = new
            if "seed" in changes:
                self._rng = random.Random(new.seed)
            return new

    def stats(self) -> dict[str, Any]:
        """What the emulator saw, as served at ``GET /_emulator/stats``."""
        with self.lock:
            now = self._clock()
            per_token = {
                key: {
                    "jobs_created": counts.jobs_created,
                    "active_jobs": len(counts.prune(now)),
                    "max_active_jobs": counts.max_active_jobs,
                }
                for key, counts in self._tokens.items()
            }
            rejections = {
                route: {
                    status: n
                    for status, n in codes.items()
                    if status == DROPPED or int(status) >= 400
                }
                for route, codes in self._requests.items()
            }
            return {
                "jobs_created": sum(c["jobs_created"] for c in per_token.values()),
                "active_jobs": sum(c["active_jobs"] for c in per_token.values()),
                "max_active_jobs": max(
                    (c["max_active_jobs"] for c in per_token.values()), default=0
                ),
                "per_token": per_token,
                "requests": {route: dict(codes) for route, codes in self._requests.items()},
                "rejections": {route: codes for route, codes in rejections.items() if codes},
                "conversations": self._conversations,
                "faults": dict(self._faults),
            }

    # -- the API --------------------------------------------------------------------------

    def create_job(self, organization_id: str, authorization: str | None, body: bytes) -> Response:
        """Handle ``POST .../generate``; returns the response to send (or to drop)."""
        with self.lock:
            rejected = self._reject_request(CREATE_ROUTE, authorization)
            if rejected is not None:
                return rejected
            try:
                request = _GenerateBody.model_validate_json(body)
            except ValidationError as err:
                return self._respond(CREATE_ROUTE, 422, {"detail": readable_errors(err)})
            known = self.config.known_models
            if known is not None and request.model_id not in known:
                detail = f"Model {request.model_id!r} not found"
                return self._respond(CREATE_ROUTE, 404, {"detail": detail})
            token = self._token(authorization)
            assert token is not None  # _reject_request checked it
            counts = self._tokens.setdefault(token_key(token), _TokenCounts())
            now = self._clock()
            active = counts.prune(now)
            if len(active) >= self.config.fair_use_limit:
                self._faults["fair_use_429"] += 1
                return self._respond(
                    CREATE_ROUTE,
                    429,
                    {
                        "detail": f"Fair use: at most {self.config.fair_use_limit} generation "
                        "jobs may be active at once for this token"
                    },
                    {"Retry-After": _seconds_header(self.config.retry_after_s)},
                )
            job = self._new_job(organization_id, token_key(token), request, now)
            self._jobs[job.job_id] = job
            counts.jobs_created += 1
            active.append(job)
            # Active jobs only grow at creation, so the maximum taken here is exact.
            counts.max_active_jobs = max(counts.max_active_jobs, len(active))
            self._conversations += len(request.messages)
            if self._rng.random() < self.config.lost_post_response_rate:
                self._faults["lost_post_response"] += 1
                return self._drop(CREATE_ROUTE)
            return self._respond(
                CREATE_ROUTE,
                200,
                {
                    "job_id": job.job_id,
                    "status": "CREATED",
                    "message": "Generation job created successfully",
                },
            )

    def read_job(self, organization_id: str, job_id: str, authorization: str | None) -> Response:
        """Handle ``GET .../generate/{job_id}``."""
        with self.lock:
            rejected = self._reject_request(READ_ROUTE, authorization)
            if rejected is not None:
                return rejected
            token = self._token(authorization)
            assert token is not None
            job = self._jobs.get(job_id)
            now = self._clock()
            if (
                job is None
                or job.organization_id != organization_id
                or job.token_key != token_key(token)
            ):
                return self._respond(READ_ROUTE, 404, {"detail": f"Job {job_id} not found"})
            if now - job.created < self.config.not_found_window_s:
                self._faults["not_found_window"] += 1
                return self._respond(READ_ROUTE, 404, {"detail": f"Job {job_id} not found"})
            return self._respond(READ_ROUTE, 200, job.view(now))

    # -- helpers (called with the lock held) ------------------------------------------------

    def _reject_request(self, route: str, authorization: str | None) -> Response | None:
        """Request faults, then the token check; None lets the request through."""
        config = self.config
        draw = self._rng.random()
        if draw < config.drop_connection_rate:
            self._faults["drop"] += 1
            return self._drop(route)
        draw -= config.drop_connection_rate
        if draw < config.error_5xx_rate:
            self._faults["5xx"] += 1
            status = self._rng.choice(SERVER_ERROR_STATUSES)
            return self._respond(route, status, {"detail": "Emulated server error"})
        draw -= config.error_5xx_rate
        if draw < config.rate_429:
            self._faults["429"] += 1
            return self._respond(
                route,
                429,
                {"detail": "Emulated rate limit"},
                {"Retry-After": _seconds_header(config.retry_after_s)},
            )
        if self._token(authorization) is None:
            return self._respond(
                route,
                401,
                {"detail": "Missing or invalid bearer token"},
                {"WWW-Authenticate": "Bearer"},
            )
        return None

    def _token(self, authorization: str | None) -> str | None:
        """The accepted token named by an ``Authorization: Bearer`` header, else None."""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        for accepted in self.config.tokens:
            if hmac.compare_digest(token.encode(), accepted.encode()):
                return accepted
        return None

    def _new_job(self, organization_id: str, key: str, request: _GenerateBody, now: float) -> _Job:
        config = self.config
        n = len(request.messages)
        order = list(range(n))
        if config.shuffle_results:
            self._rng.shuffle(order)
        fails_after: int | None = None
        if self._rng.random() < config.failed_job_rate:
            self._faults["failed_job"] += 1
            fails_after = self._rng.randrange(n)
        task_failed = [self._rng.random() < config.task_failure_rate for _ in range(n)]
        self._faults["failed_task"] += sum(task_failed)
        return _Job(
            job_id=str(uuid.UUID(int=self._rng.getrandbits(128), version=4)),
            organization_id=organization_id,
            token_key=key,
            answers=[_answer(request.model_id, conversation) for conversation in request.messages],
            task_failed=task_failed,
            created=now,
            duration=config.job_latency_s + config.task_latency_s * n,
            fails_after=fails_after,
            order=order,
        )

    def _respond(
        self, route: str, status: int, body: Any, headers: dict[str, str] | None = None
    ) -> Response:
        self._requests[route][str(status)] += 1
        return _json(status, body, headers)

    def _drop(self, route: str) -> Response:
        self._requests[route][DROPPED] += 1
        return _Drop()


# --- the app and how to run it ---------------------------------------------------------


def create_app(config: EmulatorConfig, *, clock: Clock = time.monotonic) -> FastAPI:
    """Build the emulator's ASGI app; its :class:`EmulatorState` is ``app.state.emulator``.

    Serve it with :class:`EmulatorServer` or :func:`serve`: dropped connections need
    their uvicorn protocol.

    Example:
        >>> app = create_app(EmulatorConfig(job_latency_s=0.1))
        >>> isinstance(app.state.emulator, EmulatorState)
        True
    """
    state = EmulatorState(config, clock)
    app = FastAPI(title="Model Studio emulator", docs_url=None, redoc_url=None)
    app.state.emulator = state
    jobs = f"{config.prefix}/organizations/{{organization_id}}/generate"

    @app.post(jobs)
    async def create_generation_job(organization_id: str, request: Request) -> Response:
        body = await request.body()
        return state.create_job(organization_id, request.headers.get("authorization"), body)

    @app.get(jobs + "/{job_id}")
    async def read_generation_job(organization_id: str, job_id: str, request: Request) -> Response:
        return state.read_job(organization_id, job_id, request.headers.get("authorization"))

    @app.get(f"{CONTROL_PREFIX}/stats")
    async def emulator_stats() -> Response:
        return _json(200, state.stats())

    @app.post(f"{CONTROL_PREFIX}/config")
    async def emulator_config(request: Request) -> Response:
        try:
            changes = json.loads(await request.body() or b"{}")
        except ValueError:
            return _json(422, {"detail": "body: not valid JSON"})
        if not isinstance(changes, dict):
            return _json(422, {"detail": "body: expected a JSON object of knobs to change"})
        try:
            new = state.configure(changes)
        except ValidationError as err:
            return _json(422, {"detail": readable_errors(err)})
        except ValueError as err:
            return _json(422, {"detail": str(err)})
        return _json(200, public_config(new))

    @app.post(f"{CONTROL_PREFIX}/reset")
    async def emulator_reset() -> Response:
        state.reset()
        return _json(200, {"reset": True})

    return app


def public_config(config: EmulatorConfig) -> dict[str, Any]:
    """The knobs as ``POST /_emulator/config`` answers them: tokens only as ``token_keys``.

    Example:
        >>> public_config(EmulatorConfig())["token_keys"] == [token_key(DEFAULT_TOKEN)]
        True
    """
    knobs = config.model_dump(exclude={"tokens"})
    knobs["token_keys"] = [token_key(token) for token in config.tokens]
    return knobs


def _uvicorn_config(app: FastAPI, host: str, port: int, *, quiet: bool) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=_DroppingH11Protocol,
        ws="none",
        lifespan="off",
        access_log=False,
        log_level="warning",
        # Quiet (tests, demo): leave logging alone so uvicorn adds no handler of its own.
        log_config=None if quiet else LOGGING_CONFIG,
        timeout_graceful_shutdown=2,
    )


def serve(
    config: EmulatorConfig, host: str, port: int, *, on_listening: Callable[[], None] | None = None
) -> None:
    """Run the emulator in the foreground until Ctrl-C or SIGTERM (``studio-flows emulator``).

    ``on_listening`` is called once the port is bound, before requests are served.

    Example:
        >>> serve(EmulatorConfig(), "127.0.0.1", 8000)  # doctest: +SKIP
    """
    sock = _listening_socket(host, port)
    if on_listening is not None:
        on_listening()
    server = uvicorn.Server(_uvicorn_config(create_app(config), host, port, quiet=False))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        # uvicorn shuts down on Ctrl-C, then re-raises the signal: stopping is the normal end.
        pass
    finally:
        sock.close()


def _listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``(host, port)``; a port in use is a :class:`ConfigurationError`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted sockets only when
    # the listener says TCP, and without it Nagle's algorithm adds ~40 ms per response.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ConfigurationError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    # Listening at once queues early connections until uvicorn serves, instead of refusing them.
    sock.listen(2048)
    return sock


class EmulatorServer:
    """The emulator on a loopback port, served by uvicorn in a background daemon thread.

    Example:
        >>> with EmulatorServer(EmulatorConfig(job_latency_s=0.05)) as server:  # doctest: +SKIP
        ...     client = ModelStudioClient(base_url=server.base_url, token=server.token,
        ...                                organization_id="org")
        ...     server.configure(rate_429=0.1)
        ...     server.stats()["jobs_created"]
        0
    """

    def __init__(
        self, config: EmulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.app = create_app(config or EmulatorConfig())
        self.state: EmulatorState = self.app.state.emulator
        self.host = host
        self.port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def root_url(self) -> str:
        """``http://host:port``, where the control endpoints live."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The API base URL, prefix included: pass it as the client's ``base_url``."""
        return self.root_url + self.state.config.prefix

    @property
    def token(self) -> str:
        """The first accepted token."""
        return self.state.config.tokens[0]

    def stats(self) -> dict[str, Any]:
        """See :meth:`EmulatorState.stats`."""
        return self.state.stats()

    def configure(self, **knobs: Any) -> EmulatorConfig:
        """Change knobs at run time; raises ``pydantic.ValidationError`` for a bad one."""
        return self.state.configure(knobs)

    def reset(self) -> None:
        """Forget every job and count; re-seed."""
        self.state.reset()

    def start(self, timeout_s: float = 10.0) -> EmulatorServer:
        """Start serving; return once the port accepts connections."""
        if self._thread is not None:
            raise RuntimeError("the emulator is already running")
        # Binding here, not in uvicorn, tells us the free port the OS chose for port 0.
        sock = self._socket = _listening_socket(self.host, self.port)
        self.port = sock.getsockname()[1]
        server = uvicorn.Server(_uvicorn_config(self.app, self.host, self.port, quiet=True))
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="model-studio-emulator", daemon=True
        )
        self._server, self._thread = server, thread
        thread.start()
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the emulator did not start on {self.root_url}")
            time.sleep(0.01)  # uvicorn offers no event to wait on, only this flag
        return self

    def stop(self) -> None:
        """Stop serving and wait for the thread to end."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._socket is not None:
            self._socket.close()  # uvicorn closes it too, unless it never started
        self._server, self._thread, self._socket = None, None, None

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
