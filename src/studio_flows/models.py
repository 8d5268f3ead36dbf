"""Pydantic models of the Model Studio wire format (see the API reference).

Requests are strict; responses accept extra fields, since the service may add some.

Example:
    >>> req = GenerateRequest(model_id="m", messages=[[Message(role="user", content="Hi")]])
    >>> req.model_dump()["messages"][0][0]["role"]
    'user'
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "user", "assistant"]

FAILED_JOB_STATUSES = frozenset({"FAILED", "ERROR", "CANCELLED", "CANCELED"})
FINISHED_JOB_STATUS = "FINISHED"
COMPLETED_TASK_STATUS = "completed"


class Message(BaseModel):
    """One turn of a conversation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Role
    content: str = Field(min_length=1)


Conversation = Annotated[list[Message], Field(min_length=1)]


class GenerateRequest(BaseModel):
    """Body of ``POST /organizations/{org}/generate``: one job of several conversations."""

    model_config = ConfigDict(extra="forbid")

    model_id: str = Field(min_length=1)
    messages: list[Conversation] = Field(min_length=1)
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(default=512, gt=0)


class _Response(BaseModel):
    model_config = ConfigDict(extra="allow")


class JobCreated(_Response):
    """Answer to a job creation."""

    job_id: str
    status: str = "CREATED"
    message: str | None = None


class TaskResult(_Response):
    """The answer to conversation ``task_index`` of a job."""

    task_index: int = Field(ge=0)
    status: str
    result: str | None = None

    @property
    def is_completed(self) -> bool:
        """A task whose status is not ``completed`` is a per-row failure."""
        return self.status.lower() == COMPLETED_TASK_STATUS


class JobStatus(_Response):
    """Answer to ``GET /organizations/{org}/generate/{job_id}``."""

    job_id: str
    job_status: str
    total_tasks: int = 0
    completed_tasks: int = 0
    results: list[TaskResult] = Field(default_factory=list)

    @property
    def is_finished(self) -> bool:
        """True when the job ended normally (``FINISHED``)."""
        return self.job_status.upper() == FINISHED_JOB_STATUS

    @property
    def is_failed(self) -> bool:
        """True for FAILED / ERROR / CANCELLED / CANCELED, in any case."""
        return self.job_status.upper() in FAILED_JOB_STATUSES

    @property
    def is_terminal(self) -> bool:
        """Unknown statuses count as still running (the caller enforces a deadline)."""
        return self.is_finished or self.is_failed

    def results_by_index(self) -> dict[int, TaskResult]:
        """Results keyed by ``task_index``: the service may return them in any order."""
        return {r.task_index: r for r in self.results}
