"""What the generation tasks take and return: conversations in, jobs and answers out.

A conversation is a plain string (one user message) or a list of ``{role, content}``
turns. :class:`GenerationJob` is a submitted job and the fair-use slot it holds;
:class:`GenerationResult` is one :class:`Generation` per conversation, in task-index order.

Example:
    >>> request = generation_request(["Hi", [{"role": "user", "content": "Yo"}]], "m")
    >>> [turns[0].content for turns in request.messages]
    ['Hi', 'Yo']
    >>> from studio_flows.models import TaskResult
    >>> status = JobStatus(job_id="j", job_status="FINISHED",
    ...                    results=[TaskResult(task_index=0, status="completed", result="Hey")])
    >>> [g.text for g in generations_of(status, size=2)]
    ['Hey', None]
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from studio_flows.errors import DatasetError
from studio_flows.models import GenerateRequest, JobStatus, Message
from studio_flows.structured import ResponseSchema, check_answer, with_instruction

# The API's limit of units per generation operation (the reference).
MAX_CONVERSATIONS_PER_JOB = 100

Turn: TypeAlias = Mapping[str, str] | Message
ConversationInput: TypeAlias = str | Sequence[Turn]


class GenerationJob(BaseModel):
    """A submitted job: what :func:`wait_for_generation_job` needs to wait on it.

    ``lease_id`` is the fair-use slot the job holds until it is terminal;
    ``submitted_at`` is when the POST was sent (UTC).
    """

    model_config = ConfigDict(frozen=True)

    job_id: str
    size: int = Field(ge=1, description="Conversations in the job")
    model_id: str
    lease_id: uuid.UUID | None = None
    submitted_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class Generation(BaseModel):
    """The answer to one conversation: ``text`` when completed, else ``error``.

    With a response schema, ``parsed`` is the answer's JSON value; an answer that does not
    match is ``failed`` with the reason in ``error`` and its text kept in ``text``.
    """

    model_config = ConfigDict(frozen=True)

    task_index: int = Field(ge=0)
    status: Literal["completed", "failed"]
    text: str | None = None
    error: str | None = None
    parsed: Any = None

    @property
    def ok(self) -> bool:
        """True when the conversation was answered."""
        return self.status == "completed"


class GenerationResult(BaseModel):
    """A terminal job and its answers, one per conversation in task-index order."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    job_status: str
    generations: list[Generation]

    @property
    def texts(self) -> list[str | None]:
        """The answers' texts in conversation order (None where one failed)."""
        return [g.text for g in self.generations]


def to_conversation(item: ConversationInput, index: int = 0) -> list[Message]:
    """One conversation from a string or a list of turns; a bad one is a DatasetError.

    Example:
        >>> to_conversation("Hi")[0].role
        'user'
    """
    try:
        if isinstance(item, str):
            return [Message(role="user", content=item)]
        turns = [t if isinstance(t, Message) else Message.model_validate(dict(t)) for t in item]
    except (ValidationError, TypeError, ValueError) as err:
        raise DatasetError(f"conversation {index}: {_reason(err)}") from None
    if not turns:
        raise DatasetError(f"conversation {index}: no messages")
    return turns


def generation_request(
    conversations: Sequence[ConversationInput],
    model_id: str,
    *,
    temperature: float = 0.7,
    max_tokens: int = 512,
    response_schema: ResponseSchema | None = None,
) -> GenerateRequest:
    """The POST body of one job; input errors are a DatasetError naming the conversation.

    With ``response_schema`` each conversation's system message ends with its instruction.

    Example:
        >>> generation_request(["Hi"], "m", max_tokens=16).max_tokens
        16
    """
    if isinstance(conversations, str):
        raise DatasetError("conversations must be a list of prompts or conversations, not a str")
    if not 1 <= len(conversations) <= MAX_CONVERSATIONS_PER_JOB:
        raise DatasetError(
            f"a job takes 1 to {MAX_CONVERSATIONS_PER_JOB} conversations, got "
            f"{len(conversations)}: split them into batches and map over the batches"
        )
    messages = [to_conversation(item, index) for index, item in enumerate(conversations)]
    if response_schema is not None:
        instruction = response_schema.instruction()
        messages = [with_instruction(turns, instruction) for turns in messages]
    try:
        return GenerateRequest(
            model_id=model_id, messages=messages, temperature=temperature, max_tokens=max_tokens
        )
    except ValidationError as err:
        raise DatasetError(f"invalid generation request: {_reason(err)}") from None


def generations_of(
    status: JobStatus, size: int, response_schema: ResponseSchema | None = None
) -> list[Generation]:
    """One :class:`Generation` per conversation of a terminal job, by task index; with
    ``response_schema`` an answer that does not match it is failed."""
    generations = []
    for index, answer in enumerate(status.answers(size)):
        checked = check_answer(answer, response_schema)
        generations.append(
            Generation(
                task_index=index,
                status="failed" if checked.error is not None else "completed",
                text=answer.text,
                error=checked.error,
                parsed=checked.parsed,
            )
        )
    return generations


def _reason(err: Exception) -> str:
    if isinstance(err, ValidationError):
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        return f"{where}: {first['msg']}" if where else str(first["msg"])
    return str(err)


__all__ = [
    "MAX_CONVERSATIONS_PER_JOB",
    "ConversationInput",
    "Generation",
    "GenerationJob",
    "GenerationResult",
    "generation_request",
    "generations_of",
    "to_conversation",
]
