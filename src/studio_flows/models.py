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
    def tasks_done(self) -> int:
        """Tasks this status shows ended: ``completed_tasks``, or the tasks listed in
        ``results`` where a service lists them while the job runs but counts only at the end.

        Example:
            >>> JobStatus(job_id="j", job_status="running", total_tasks=3, results=[
            ...     TaskResult(task_index=2, status="completed", result="C")]).tasks_done
            1
        """
        return max(self.completed_tasks, len({result.task_index for result in self.results}))

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

    def answers(self, size: int) -> list[TaskAnswer]:
        """One :class:`TaskAnswer` per conversation of a job of ``size``, by task index.

        The service may list results in any order. An answer counts only when the job says
        it unambiguously: a task ``completed`` without a result, an index listed twice with
        different content, or any index outside the job (its numbering cannot be trusted,
        so no row of the job takes an answer) fails the row with a reason. Identical
        duplicates are harmless.

        Example:
            >>> status = JobStatus(job_id="j", job_status="FINISHED", results=[
            ...     TaskResult(task_index=1, status="completed", result="B"),
            ...     TaskResult(task_index=0, status="completed", result=None)])
            >>> [(a.text, a.error) for a in status.answers(2)]
            [(None, 'job j marked task_index 0 completed without a result'), ('B', None)]
        """
        outside = sorted({r.task_index for r in self.results if r.task_index >= size})
        if outside:
            reason = (
                f"job {self.job_id} listed task_index {outside[0]} for a job of {size} "
                "conversations, so no answer of it can be matched to its row"
            )
            return [TaskAnswer(error=reason) for _ in range(size)]
        listed: dict[int, list[TaskResult]] = {}
        for result in self.results:
            listed.setdefault(result.task_index, []).append(result)
        return [self._answer(index, listed.get(index, [])) for index in range(size)]

    def _answer(self, index: int, listed: list[TaskResult]) -> TaskAnswer:
        if not listed:
            return TaskAnswer(error=f"job {self.job_id} returned no result for task_index {index}")
        if len({(r.status, r.result) for r in listed}) > 1:
            return TaskAnswer(
                error=f"job {self.job_id} listed task_index {index} {len(listed)} times "
                "with different answers"
            )
        task = listed[0]
        if not task.is_completed:
            detail = (task.model_extra or {}).get("error") or task.status
            return TaskAnswer(error=f"task {index} ended {detail}")
        if not task.result:
            return TaskAnswer(
                error=f"job {self.job_id} marked task_index {index} completed without a result"
            )
        return TaskAnswer(text=task.result)


class TaskAnswer(BaseModel):
    """What one conversation of a terminal job came to: its answer, or why there is none."""

    model_config = ConfigDict(frozen=True)

    text: str | None = None
    error: str | None = None
