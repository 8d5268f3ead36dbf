"""The exceptions studio-flows raises. No message ever contains the API token.

The whole tree::

    StudioFlowsError
    ├── ConfigurationError            a setting is missing or invalid (CLI exit code 2)
    ├── DatasetError                  the input file has bad rows (CLI exit code 2)
    ├── ResultsDatabaseUnavailableError  the results database did not answer within its bound
    │   └── JobNotRecordedError       ... when a created job's job_id was to be recorded
    ├── RunInterrupted                a signal asked this process to stop (CLI exit 130/143)
    ├── FairUseError                  the fair-use slots of the Prefect concurrency limit
    │   ├── SlotWaitTimeoutError          no slot came free within the wait limit (exit 2)
    │   ├── SlotDeadlockError             (no longer raised)
    │   └── PrefectUnavailableError       the Prefect API cannot be started or reached (exit 2)
    └── ModelStudioError              anything that went wrong talking to Model Studio
        ├── APIConnectionError        no HTTP response at all
        │   └── APITimeoutError       the request timed out
        ├── AmbiguousSubmissionError  a POST may have created a job; its outcome is unknown
        │   └── AmbiguousShardError       ... and the policy forbids resubmitting the shard
        ├── APIStatusError            the API answered with an error status
        │   ├── BadRequestError           400
        │   ├── AuthenticationError       401
        │   ├── PermissionDeniedError     403
        │   ├── NotFoundError             404
        │   ├── ConflictError             409
        │   ├── UnprocessableEntityError  422
        │   ├── RateLimitError            429 (fair use: too many parallel queries)
        │   └── ServerError               5xx
        ├── RequestRejectedError      POST /generate answered 400/404: every job would be refused
        ├── UnexpectedResponseError   a 2xx whose body is not what the reference documents
        ├── JobFailedError            the job ended FAILED / ERROR / CANCELLED
        │   ├── GenerationJobFailed       ... FAILED or ERROR (wait_for_generation_job)
        │   └── GenerationJobCancelled    ... CANCELLED or CANCELED (wait_for_generation_job)
        └── JobDeadlineExceededError  the job was still running at the deadline
            └── GenerationJobTimedOut     ... (wait_for_generation_job)
"""

from __future__ import annotations

from typing import Any


class StudioFlowsError(Exception):
    """Base class of every error studio-flows raises on purpose."""


class ConfigurationError(StudioFlowsError):
    """A setting is missing or invalid; the message says which variable to set."""


class DatasetError(StudioFlowsError):
    """The dataset cannot be used as it is; the message names file, line and reason."""


class ResultsDatabaseUnavailableError(StudioFlowsError):
    """The results database did not answer within the retry bound; the message names it."""


class JobNotRecordedError(ResultsDatabaseUnavailableError):
    """A POST created a job, but its job_id could not be written to the ledger.

    Carries the job_id, so that whoever retries re-attaches to the job instead of paying
    for the shard again; the shard's ledger row stays ``pending`` until it is recorded.
    """

    def __init__(self, message: str, *, shard_key: str, job_id: str, reason: str) -> None:
        super().__init__(message)
        self.shard_key = shard_key
        self.job_id = job_id
        self.reason = reason


class RunInterrupted(StudioFlowsError):
    """A signal (Ctrl-C, ``kill``, a container stop) asked this process to stop.

    Jobs in flight keep their recorded job_id, so the next run re-attaches to them. A
    flow that stops this way sets ``summary`` to what it did so far.
    """

    summary: Any = None


class FairUseError(StudioFlowsError):
    """The fair-use guard (the Prefect concurrency limit) could not give a slot."""


class SlotWaitTimeoutError(FairUseError):
    """Every slot stayed taken for longer than the wait limit; the message says how to look."""


class SlotDeadlockError(FairUseError):
    """No longer raised: a submitted job's slot is kept by a watcher, not by its wait, so
    submitting past the limit before waiting completes. Kept so code naming it imports."""


class PrefectUnavailableError(FairUseError):
    """The Prefect API could not be started or reached; the message names PREFECT_API_URL."""


class ModelStudioError(StudioFlowsError):
    """Something went wrong talking to Model Studio."""


class APIConnectionError(ModelStudioError):
    """No HTTP response was received (refused, reset, DNS, TLS...)."""


class APITimeoutError(APIConnectionError):
    """The request timed out."""


class AmbiguousSubmissionError(ModelStudioError):
    """A POST /generate was sent but its outcome is unknown: a job may exist.

    Never retried blindly (that could pay twice); the caller records it and follows its
    policy. ``cause`` says what happened, e.g. ``"read timeout"`` or ``"HTTP 502"``.
    """

    def __init__(self, message: str, *, cause: str) -> None:
        super().__init__(message)
        self.cause = cause


class AmbiguousShardError(AmbiguousSubmissionError):
    """The POST stayed ambiguous and the policy forbids (more) resubmission."""

    def __init__(self, message: str, *, cause: str, shard_key: str, resubmits: int = 0) -> None:
        super().__init__(message, cause=cause)
        self.shard_key = shard_key
        self.resubmits = resubmits


class APIStatusError(ModelStudioError):
    """The API answered with an error status. Carries ``status_code`` and ``response``."""

    def __init__(
        self, message: str, *, status_code: int, response: Any = None, detail: str = ""
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.response = response
        self.detail = detail

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled (Prefect persists a failed state's exception) without ``response``: its
        # body and headers are the server's own text, which no repr shows and no check of
        # ours reads; the message and ``detail`` carry what is worth keeping.
        return (type(self), self.args, {**self.__dict__, "response": None})


class BadRequestError(APIStatusError):
    """400: the request was malformed."""


class AuthenticationError(APIStatusError):
    """401: the token is missing, wrong or expired."""


class PermissionDeniedError(APIStatusError):
    """403: the token may not use this organisation or model."""


class NotFoundError(APIStatusError):
    """404: no such organisation or job."""


class ConflictError(APIStatusError):
    """409: the request conflicts with the resource's state."""


class UnprocessableEntityError(APIStatusError):
    """422: the body was well-formed JSON but not a valid generation request."""


class RateLimitError(APIStatusError):
    """429: too many parallel queries for this account (fair use)."""


class ServerError(APIStatusError):
    """5xx: the service failed."""


class RequestRejectedError(ModelStudioError):
    """POST /generate answered 400 or 404: the service refuses the request itself.

    An unknown model id or a malformed body: every other shard of the run would be refused
    the same way, so the run stops at the first (a 404 on a GET is a different thing: a
    job the service has not caught up with yet). ``status_code`` and ``detail`` are the
    service's answer.

    Example:
        >>> err = RequestRejectedError.for_model("m", status_code=404, detail="no such model")
        >>> print(err)
        Model Studio refused the generation request for model 'm' (HTTP 404: no such model); ...
    """

    def __init__(self, message: str, *, status_code: int, detail: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.detail = detail

    @classmethod
    def for_model(cls, model_id: str, *, status_code: int, detail: str) -> RequestRejectedError:
        """The error for a refused POST of a job for ``model_id``, in one sentence."""
        answer = f"HTTP {status_code}: {detail}" if detail else f"HTTP {status_code}"
        return cls(
            f"Model Studio refused the generation request for model {model_id!r} ({answer}); "
            "no job was created.",
            status_code=status_code,
            detail=detail,
        )


class UnexpectedResponseError(ModelStudioError):
    """A successful response whose body does not match the documented shape."""


class JobFailedError(ModelStudioError):
    """The job reached a failed terminal status (FAILED, ERROR, CANCELLED, ...)."""

    def __init__(self, message: str, *, job_id: str, job_status: str) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.job_status = job_status


class JobDeadlineExceededError(ModelStudioError):
    """The job was still running when the deadline passed."""

    def __init__(self, message: str, *, job_id: str) -> None:
        super().__init__(message)
        self.job_id = job_id


class GenerationJobFailed(JobFailedError):
    """A job of ``wait_for_generation_job`` ended FAILED or ERROR: none of its answers came."""


class GenerationJobCancelled(JobFailedError):
    """A job of ``wait_for_generation_job`` was cancelled (CANCELLED or CANCELED)."""


class GenerationJobTimedOut(JobDeadlineExceededError):
    """A job of ``wait_for_generation_job`` was still running when its deadline passed."""


STATUS_ERRORS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def error_for_status(status_code: int) -> type[APIStatusError]:
    """The error class for an HTTP status (5xx share :class:`ServerError`)."""
    if status_code >= 500:
        return ServerError
    return STATUS_ERRORS.get(status_code, APIStatusError)
