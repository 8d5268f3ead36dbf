"""A response schema judges an answer the same whether it is a pydantic model class or the
JSON Schema dict that class shows the model: no coercion on either side."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel, field_validator

from studio_flows.structured import ResponseSchema


class Graded(BaseModel):
    answer: str
    score: int
    passed: bool


class Positive(BaseModel):
    score: int

    @field_validator("score")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("a score is positive")
        return value


GOOD = {"answer": "four", "score": 4, "passed": True}


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        (GOOD, True),
        ({**GOOD, "score": "5"}, False),  # pydantic's lax mode would make it 5
        ({**GOOD, "answer": 5}, False),
        ({**GOOD, "passed": "true"}, False),
        ({**GOOD, "passed": 1}, False),
        ({**GOOD, "score": 4.5}, False),
        ({"answer": "four", "score": 4}, False),
    ],
)
def test_a_model_class_and_its_json_schema_give_the_same_verdict(
    value: dict[str, object], valid: bool
) -> None:
    answer = f"```json\n{json.dumps(value)}\n```"
    by_model = ResponseSchema.of(Graded).check(answer)
    by_dict = ResponseSchema.of(Graded.model_json_schema()).check(answer)

    assert (by_model.error is None, by_dict.error is None) == (valid, valid), (by_model, by_dict)
    if valid:
        assert by_model.parsed == by_dict.parsed == value  # stored as the model wrote it


def test_a_models_own_validators_still_run() -> None:
    checked = ResponseSchema.of(Positive).check('{"score": -1}')

    assert checked.error is not None and checked.error.endswith(
        "score: Value error, a score is positive"
    ), checked
