"""The emulator's knobs (:class:`EmulatorConfig`) and the names its endpoints use."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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
    "empty_result",
    "duplicate_index",
    "shifted_index",
)
SERVER_ERROR_STATUSES = (500, 502, 503, 504)

Rate = Annotated[float, Field(ge=0.0, le=1.0)]


class EmulatorStyle(BaseModel):
    """How a running job looks where the API reference is silent.

    The reference documents only ``CREATED``, ``FINISHED`` and final results; a client
    that works on one reading of the rest may fail on the real service.
    """

    model_config = ConfigDict(frozen=True)

    running_statuses: tuple[str, ...] = Field(
        ("RUNNING",), description="Statuses between CREATED and the end, in order (may be none)."
    )
    lowercase: bool = Field(False, description="Every job status in lower case.")
    partial_results: bool = Field(True, description="Finished tasks listed while the job runs.")
    progress: bool = Field(True, description="completed_tasks counts while the job runs.")
    shuffled: bool = Field(False, description="Results listed in a seeded random order.")


# Named readings of what the reference leaves open; "reference" is the emulator's default.
STYLES: dict[str, EmulatorStyle] = {
    "reference": EmulatorStyle(),
    # Nothing shows until the end: no status change, no results, no count.
    "quiet": EmulatorStyle(running_statuses=(), partial_results=False, progress=False),
    # Status names of a queueing service; progress only as a count.
    "queued": EmulatorStyle(running_statuses=("QUEUED", "IN_PROGRESS"), partial_results=False),
    # Lower-case statuses, results as they end in any order, no count until the end.
    "lowercase": EmulatorStyle(lowercase=True, progress=False, shuffled=True),
}
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
    job_latency_jitter: float = Field(
        0.0,
        ge=0.0,
        le=3.0,
        description="Sigma of a seeded lognormal factor on each job's time (its mean is 1).",
    )
    uneven_tasks: bool = Field(
        False, description="Tasks end at seeded uniform points inside the job, not evenly."
    )
    error_5xx_rate: Rate = Field(0.0, description="Share of API requests answered 500/502/503/504.")
    rate_429: Rate = Field(0.0, description="Share of API requests answered 429 at random.")
    drop_connection_rate: Rate = Field(
        0.0, description="Share of API requests whose connection is closed without a response."
    )
    lost_post_response_rate: Rate = Field(
        0.0, description="Share of created jobs whose POST response is dropped."
    )
    post_response_delay_s: float = Field(
        0.0,
        ge=0.0,
        description="Seconds a POST that created a job waits before it answers (the job runs).",
    )
    failed_job_rate: Rate = Field(0.0, description="Share of jobs that end FAILED.")
    task_failure_rate: Rate = Field(0.0, description="Share of tasks that end failed.")
    not_found_window_s: float = Field(
        0.0, ge=0.0, description="Seconds after creation during which a GET of the job is 404."
    )
    shuffle_results: bool = Field(False, description="List results in a seeded random order.")
    style: str = Field(
        "reference",
        description="How a running job looks where the reference is silent: "
        + ", ".join(STYLES)
        + ".",
    )
    # Each dimension of a style on its own (None: the style's): a reading no style names.
    running_statuses: list[str] | None = Field(
        None, description="Statuses between CREATED and the end, in order (None: the style's)."
    )
    lowercase_statuses: bool | None = Field(
        None, description="Every job status in lower case (None: the style's)."
    )
    partial_results: bool | None = Field(
        None, description="Finished tasks listed while the job runs (None: the style's)."
    )
    progress_count: bool | None = Field(
        None, description="completed_tasks counts while the job runs (None: the style's)."
    )
    # Hostile answers: what a service may send that must never become a stored answer.
    empty_result_rate: Rate = Field(
        0.0,
        description="Share of tasks listed completed with no answer "
        "(result null; at odd task indexes no result key at all).",
    )
    duplicate_index_rate: Rate = Field(
        0.0,
        description="Share of jobs that list their first task_index a second time, "
        "with another conversation's answer.",
    )
    shifted_index_rate: Rate = Field(
        0.0, description="Share of jobs whose task_index counts from 1, not 0."
    )
    json_answers: bool = Field(
        False,
        description="Answers are JSON {answer, score}, shaped by the prompt's words: 'invalid' "
        "(score a string), 'fenced' (a ```json block in prose), 'bare' (an object in prose), "
        "'no json' (plain text).",
    )
    fair_use_limit: int = Field(3, ge=1, description="Active jobs allowed per token.")
    seed: int | None = Field(None, description="Seed of the fault generator (None: random).")
    retry_after_s: float = Field(1.0, ge=0.0, description="Retry-After sent with every 429.")
    echo_authorization_in_errors: bool = Field(
        False, description="Error details quote the request's Authorization header (hostile)."
    )
    known_models: list[str] | None = Field(
        None, description="Model ids a POST may name (None: any); another id is a 404."
    )
    prefix: str = Field("/api/v1", description="Path prefix of the API routes.")
    tokens: list[str] = Field(
        default_factory=lambda: [DEFAULT_TOKEN],
        min_length=1,
        description="Bearer tokens accepted; jobs are scoped to (organisation, token).",
    )

    def resolved_style(self) -> EmulatorStyle:
        """The named ``style`` with every dimension set here in its place.

        Example:
            >>> config = EmulatorConfig(style="quiet", progress_count=True)
            >>> config.resolved_style().progress, config.resolved_style().partial_results
            (True, False)
        """
        named = STYLES[self.style]
        overrides = {
            "running_statuses": None
            if self.running_statuses is None
            else tuple(self.running_statuses),
            "lowercase": self.lowercase_statuses,
            "partial_results": self.partial_results,
            "progress": self.progress_count,
            "shuffled": True if self.shuffle_results else None,
        }
        return named.model_copy(update={k: v for k, v in overrides.items() if v is not None})

    @field_validator("prefix")
    @classmethod
    def _normalise_prefix(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and not value.startswith("/"):
            value = "/" + value
        if value.startswith(CONTROL_PREFIX):
            raise ValueError(f"prefix may not start with {CONTROL_PREFIX}")
        return value

    @field_validator("style")
    @classmethod
    def _known_style(cls, value: str) -> str:
        if value not in STYLES:
            raise ValueError(f"unknown style {value!r}: one of {', '.join(STYLES)}")
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


def token_key(token: str) -> str:
    """How stats name a token: the first 12 hex digits of its sha256, never the token.

    Example:
        >>> token_key("studio-flows-emulator-token") == token_key("studio-flows-emulator-token")
        True
    """
    return hashlib.sha256(token.encode("utf-8")).hexdigest()[:12]


def public_config(config: EmulatorConfig) -> dict[str, Any]:
    """The knobs as ``POST /_emulator/config`` answers them: tokens only as ``token_keys``.

    Example:
        >>> public_config(EmulatorConfig())["token_keys"] == [token_key(DEFAULT_TOKEN)]
        True
    """
    knobs = config.model_dump(exclude={"tokens"})
    knobs["token_keys"] = [token_key(token) for token in config.tokens]
    return knobs
