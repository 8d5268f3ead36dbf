"""Jobs, counters and knobs of one emulator: fair use, auth, faults and stats."""

from __future__ import annotations

import bisect
import hmac
import json
import math
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from fastapi import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from studio_flows.emulator.config import (
    CREATE_ROUTE,
    DROPPED,
    FAULT_KINDS,
    READ_ROUTE,
    SERVER_ERROR_STATUSES,
    Clock,
    EmulatorConfig,
    EmulatorStyle,
    token_key,
)
from studio_flows.emulator.responses import _Drop, _json, _seconds_header

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


def _timing_rng(seed: int | None) -> random.Random:
    """The generator of job times, seeded apart from the fault generator."""
    return random.Random(None if seed is None else f"timing-{seed}")


def _answer(model_id: str, conversation: list[_Turn], json_answers: bool = False) -> str:
    """The deterministic result of one conversation: it names what it answers."""
    user_turns = [turn for turn in conversation if turn.role == "user"]
    last = user_turns[-1] if user_turns else conversation[-1]
    text = f"{model_id} answers: {last.content}"
    return _json_answer(text, last.content) if json_answers else text


def _json_answer(text: str, prompt: str) -> str:
    """``{"answer": text, "score": n}`` in the shape the prompt's words ask for (``json_answers``);
    a prompt that asks for a ``"reason"`` (a judge's rubric) gets ``{"score": 1-5, "reason"}``.

    Example:
        >>> _json_answer("m answers: q bare", "q bare")
        'Sure. {"answer": "m answers: q bare", "score": 6} Hope that helps.'
    """
    if "no json" in prompt:
        return text
    score: int | str = "high" if "invalid" in prompt else len(prompt) % 10
    value = json.dumps({"answer": text, "score": score})
    if '"reason"' in prompt:  # a judge's rubric: a 1-5 verdict with a reason
        verdict = "high" if "invalid" in prompt else 1 + len(prompt) % 5
        value = json.dumps({"score": verdict, "reason": f"{len(prompt)} characters"})
    if "fenced" in prompt:
        return f"Here it is:\n```json\n{value}\n```\nAnything else?"
    if "bare" in prompt:
        return f"Sure. {value} Hope that helps."
    return value


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
    # Seconds after creation at which each task ends (ascending, the last at ``duration``);
    # None: task i ends at duration * (i + 1) / n.
    task_ends: list[float] | None = None
    # Hostile answers (see EmulatorConfig): tasks listed completed without a result, the
    # first listed index repeated with another answer, indexes counted from ``index_base``.
    empty_results: list[bool] = field(default_factory=list)
    duplicate_first: bool = False
    index_base: int = 0
    style: EmulatorStyle = field(default_factory=EmulatorStyle)

    @property
    def end(self) -> float:
        return self.created + self.duration

    def is_active(self, now: float) -> bool:
        return now < self.end

    def view(self, now: float) -> dict[str, Any]:
        n = len(self.answers)
        elapsed = now - self.created
        style = self.style
        if elapsed >= self.duration:
            done = n
            status = "FINISHED" if self.fails_after is None else "FAILED"
        else:
            # The last task is done only at the end.
            done = min(n - 1, self._tasks_done(elapsed))
            status = self._running_status(elapsed)
        if self.fails_after is not None:
            done = min(done, self.fails_after)
        ended = elapsed >= self.duration
        return {
            "job_id": self.job_id,
            "job_status": status.lower() if style.lowercase else status,
            "total_tasks": n,
            "completed_tasks": done if ended or style.progress else 0,
            "results": self._listed(
                [i for i in self.order if i < done] if ended or style.partial_results else []
            ),
        }

    def _running_status(self, elapsed: float) -> str:
        # CREATED for the first half task, then the style's names share the rest evenly.
        names = self.style.running_statuses
        start = self.duration / (2 * len(self.answers))
        if not names or elapsed < start:
            return "CREATED"
        share = (self.duration - start) / len(names)
        return names[min(int((elapsed - start) / share), len(names) - 1)]

    def _listed(self, indexes: list[int]) -> list[dict[str, Any]]:
        listed = [self._task(i) for i in indexes]
        if self.duplicate_first and listed:
            other = self.answers[(indexes[0] + 1) % len(self.answers)]
            listed.append({**listed[0], "status": "completed", "result": f"{other} (again)"})
        for task in listed:
            task["task_index"] += self.index_base
        return listed

    def _tasks_done(self, elapsed: float) -> int:
        if self.task_ends is None:
            # Task i is done at duration * (i + 1) / n.
            return int(elapsed * len(self.answers) / self.duration)
        return bisect.bisect_right(self.task_ends, elapsed)

    def timeline(self, origin: float) -> dict[str, Any]:
        """When this job truly started and ended, in seconds after ``origin``."""
        return {
            "job_id": self.job_id,
            "tasks": len(self.answers),
            "created_s": round(self.created - origin, 6),
            "end_s": round(self.end - origin, 6),
            "duration_s": round(self.duration, 6),
        }

    def _task(self, index: int) -> dict[str, Any]:
        if self.task_failed[index]:
            return {
                "task_index": index,
                "status": "failed",
                "result": None,
                "error": "emulated task failure",
            }
        if self.empty_results and self.empty_results[index]:
            empty: dict[str, Any] = {"task_index": index, "status": "completed"}
            return empty if index % 2 else {**empty, "result": None}
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
        self._timing_rng = _timing_rng(self.config.seed)
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
                self._timing_rng = _timing_rng(new.seed)
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

    def jobs(self) -> list[dict[str, Any]]:
        """Every job's true start and end, in creation order, as ``GET /_emulator/jobs``.

        Times are seconds after the first job was created, so a benchmark can compare a
        client's schedule with a perfect one over the very durations the emulator used.

        Example:
            >>> EmulatorState(EmulatorConfig(seed=1)).jobs()
            []
        """
        with self.lock:
            jobs = sorted(self._jobs.values(), key=lambda job: job.created)
        origin = jobs[0].created if jobs else 0.0
        return [job.timeline(origin) for job in jobs]

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
            detail = {"detail": "Emulated server error"}
            return self._respond(route, status, detail, authorization=authorization)
        draw -= config.error_5xx_rate
        if draw < config.rate_429:
            self._faults["429"] += 1
            return self._respond(
                route,
                429,
                {"detail": "Emulated rate limit"},
                {"Retry-After": _seconds_header(config.retry_after_s)},
                authorization,
            )
        if self._token(authorization) is None:
            return self._respond(
                route,
                401,
                {"detail": "Missing or invalid bearer token"},
                {"WWW-Authenticate": "Bearer"},
                authorization,
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
        style = config.resolved_style()
        if style.shuffled:
            self._rng.shuffle(order)
        fails_after: int | None = None
        if self._rng.random() < config.failed_job_rate:
            self._faults["failed_job"] += 1
            fails_after = self._rng.randrange(n)
        task_failed = [self._rng.random() < config.task_failure_rate for _ in range(n)]
        self._faults["failed_task"] += sum(task_failed)
        duration, task_ends = self._timing(n)
        empty_results = [self._happens(config.empty_result_rate) for _ in range(n)]
        duplicate_first = self._happens(config.duplicate_index_rate)
        index_base = int(self._happens(config.shifted_index_rate))
        self._faults["empty_result"] += sum(empty_results)
        self._faults["duplicate_index"] += duplicate_first
        self._faults["shifted_index"] += index_base
        return _Job(
            job_id=str(uuid.UUID(int=self._rng.getrandbits(128), version=4)),
            organization_id=organization_id,
            token_key=key,
            answers=[
                _answer(request.model_id, conversation, config.json_answers)
                for conversation in request.messages
            ],
            task_failed=task_failed,
            created=now,
            duration=duration,
            fails_after=fails_after,
            order=order,
            task_ends=task_ends,
            empty_results=empty_results,
            duplicate_first=duplicate_first,
            index_base=index_base,
            style=style,
        )

    def _happens(self, rate: float) -> bool:
        # No draw at rate 0: a knob left off keeps every seeded run's faults as they were.
        return rate > 0 and self._rng.random() < rate

    def next_timing(self, tasks: int) -> tuple[float, list[float] | None]:
        """The duration and task ends the next job of ``tasks`` conversations will get.

        What a fake-clock replay of the emulator's jobs reads (``bench/poll_replay.py``).

        Example:
            >>> state = EmulatorState(EmulatorConfig(job_latency_s=2.0, seed=1))
            >>> state.next_timing(3)
            (2.0, None)
        """
        return self._timing(tasks)

    def _timing(self, n: int) -> tuple[float, list[float] | None]:
        """A new job's duration and its tasks' end times, from the timing generator.

        Its own generator: the k-th job gets the same times whatever requests came before.
        """
        config = self.config
        duration = config.job_latency_s + config.task_latency_s * n
        sigma = config.job_latency_jitter
        if sigma > 0:
            # exp(N(-sigma^2/2, sigma)) has mean 1: jobs of "5 s" take 5 s on average.
            duration *= math.exp(self._timing_rng.gauss(-sigma * sigma / 2, sigma))
        if not config.uneven_tasks:
            return duration, None
        points = sorted(self._timing_rng.uniform(0.0, duration) for _ in range(n - 1))
        return duration, [*points, duration]

    def _respond(
        self,
        route: str,
        status: int,
        body: Any,
        headers: dict[str, str] | None = None,
        authorization: str | None = None,
    ) -> Response:
        self._requests[route][str(status)] += 1
        if status >= 400 and self.config.echo_authorization_in_errors:
            # A hostile server: the detail quotes the request's header, token and all.
            body = {**body, "detail": f"{body['detail']} (token revoked: {authorization})"}
        return _json(status, body, headers)

    def _drop(self, route: str) -> Response:
        self._requests[route][DROPPED] += 1
        return _Drop()
