"""Wire models: strict requests, lenient responses, status helpers for every job status."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from studio_flows.models import GenerateRequest, JobCreated, JobStatus, Message, TaskResult


def conversation(text: str = "Hi") -> list[Message]:
    return [Message(role="user", content=text)]


@pytest.mark.parametrize("role", ["system", "user", "assistant"])
def test_message_accepts_the_three_roles(role: str) -> None:
    assert Message(role=role, content="x").role == role


@pytest.mark.parametrize("role", ["tool", "User", "", "bot"])
def test_message_rejects_unknown_roles(role: str) -> None:
    with pytest.raises(ValidationError, match="role"):
        Message(role=role, content="x")


def test_message_rejects_empty_content() -> None:
    with pytest.raises(ValidationError, match="content"):
        Message(role="user", content="")


def test_message_rejects_extra_fields() -> None:
    with pytest.raises(ValidationError):
        Message.model_validate({"role": "user", "content": "x", "name": "bob"})


def test_generate_request_serialises_as_the_reference_body() -> None:
    req = GenerateRequest(
        model_id="m", messages=[conversation("a"), conversation("b")], temperature=0.5
    )
    assert req.model_dump(mode="json") == {
        "model_id": "m",
        "messages": [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]],
        "temperature": 0.5,
        "max_tokens": 512,
    }


@pytest.mark.parametrize("temperature", [0.0, 1.0, 2.0])
def test_temperature_within_0_to_2_is_accepted(temperature: float) -> None:
    req = GenerateRequest(model_id="m", messages=[conversation()], temperature=temperature)
    assert req.temperature == temperature


@pytest.mark.parametrize("temperature", [-0.1, 2.01, 5.0])
def test_temperature_outside_0_to_2_is_rejected(temperature: float) -> None:
    with pytest.raises(ValidationError, match="temperature"):
        GenerateRequest(model_id="m", messages=[conversation()], temperature=temperature)


@pytest.mark.parametrize("max_tokens", [0, -1])
def test_max_tokens_must_be_positive(max_tokens: int) -> None:
    with pytest.raises(ValidationError, match="max_tokens"):
        GenerateRequest(model_id="m", messages=[conversation()], max_tokens=max_tokens)
    assert GenerateRequest(model_id="m", messages=[conversation()], max_tokens=1).max_tokens == 1


def test_generate_request_needs_a_conversation_and_a_model() -> None:
    with pytest.raises(ValidationError, match="messages"):
        GenerateRequest(model_id="m", messages=[])
    with pytest.raises(ValidationError, match="model_id"):
        GenerateRequest(model_id="", messages=[conversation()])


def test_response_models_accept_extra_fields() -> None:
    created = JobCreated.model_validate(
        {"job_id": "j", "status": "CREATED", "message": "ok", "queue_position": 3}
    )
    assert created.job_id == "j"
    assert created.model_extra == {"queue_position": 3}

    status = JobStatus.model_validate(
        {
            "job_id": "j",
            "job_status": "RUNNING",
            "total_tasks": 1,
            "completed_tasks": 0,
            "results": [
                {"task_index": 0, "status": "completed", "result": "r", "tokens": 12},
            ],
            "created_at": "2030-01-01T00:00:00Z",
        }
    )
    assert status.model_extra == {"created_at": "2030-01-01T00:00:00Z"}
    assert status.results[0].model_extra == {"tokens": 12}

    task = TaskResult.model_validate({"task_index": 2, "status": "failed", "reason": "x"})
    assert task.result is None and task.model_extra == {"reason": "x"}


def test_job_created_parses_the_reference_answer() -> None:
    created = JobCreated.model_validate(
        {"job_id": "abc", "status": "CREATED", "message": "Generation job created successfully"}
    )
    assert (created.job_id, created.status) == ("abc", "CREATED")


def _finished(*results: dict[str, object]) -> JobStatus:
    return JobStatus.model_validate({"job_id": "j", "job_status": "FINISHED", "results": results})


def test_answers_match_out_of_order_results_by_task_index() -> None:
    status = _finished(
        {"task_index": 2, "status": "completed", "result": "two"},
        {"task_index": 0, "status": "completed", "result": "zero"},
        {"task_index": 1, "status": "failed", "result": None, "error": "too long"},
    )
    answers = status.answers(3)
    assert [a.text for a in answers] == ["zero", None, "two"]
    assert answers[1].error == "task 1 ended too long"


@pytest.mark.parametrize(
    "listed",
    [
        {"task_index": 0, "status": "completed", "result": None},
        {"task_index": 0, "status": "completed"},
        {"task_index": 0, "status": "completed", "result": ""},
    ],
    ids=["null", "missing", "empty"],
)
def test_a_task_completed_without_a_result_is_a_failed_row(listed: dict[str, object]) -> None:
    answer = _finished(listed).answers(1)[0]
    assert answer.text is None
    assert answer.error == "job j marked task_index 0 completed without a result"


def test_one_task_index_listed_twice_with_different_answers_is_a_failed_row() -> None:
    status = _finished(
        {"task_index": 0, "status": "completed", "result": "answer to row 0"},
        {"task_index": 0, "status": "completed", "result": "answer to row 1"},
        {"task_index": 1, "status": "completed", "result": "answer to row 1"},
    )
    first, second = status.answers(2)
    assert first.text is None
    assert first.error == "job j listed task_index 0 2 times with different answers"
    assert second.text == "answer to row 1"


def test_an_identical_duplicate_is_harmless() -> None:
    same = {"task_index": 0, "status": "completed", "result": "A"}
    assert _finished(same, same).answers(1)[0].text == "A"


def test_an_index_outside_the_job_fails_every_row_of_it() -> None:
    # Numbered from 1: each answer would land on the next conversation's row.
    status = _finished(
        {"task_index": 1, "status": "completed", "result": "answer to row 0"},
        {"task_index": 2, "status": "completed", "result": "answer to row 1"},
    )
    answers = status.answers(2)
    assert [a.text for a in answers] == [None, None]
    assert all("listed task_index 2 for a job of 2 conversations" in str(a.error) for a in answers)


@pytest.mark.parametrize(
    ("job_status", "finished", "failed"),
    [
        ("FINISHED", True, False),
        ("finished", True, False),
        ("Finished", True, False),
        ("FAILED", False, True),
        ("failed", False, True),
        ("ERROR", False, True),
        ("error", False, True),
        ("CANCELLED", False, True),
        ("Cancelled", False, True),
        ("canceled", False, True),
    ],
)
def test_terminal_statuses_are_case_insensitive(
    job_status: str, finished: bool, failed: bool
) -> None:
    status = JobStatus(job_id="j", job_status=job_status)
    assert status.is_finished is finished
    assert status.is_failed is failed
    assert status.is_terminal is True


@pytest.mark.parametrize("job_status", ["CREATED", "RUNNING", "QUEUED", "", "FINISHING"])
def test_unknown_statuses_are_still_running(job_status: str) -> None:
    status = JobStatus(job_id="j", job_status=job_status)
    assert not status.is_terminal
    assert not status.is_failed
    assert not status.is_finished


@pytest.mark.parametrize(
    ("task_status", "completed"),
    [("completed", True), ("COMPLETED", True), ("failed", False), ("pending", False)],
)
def test_a_task_not_completed_is_a_row_failure(task_status: str, completed: bool) -> None:
    assert TaskResult(task_index=0, status=task_status).is_completed is completed


def test_task_index_must_not_be_negative() -> None:
    with pytest.raises(ValidationError, match="task_index"):
        TaskResult(task_index=-1, status="completed")
