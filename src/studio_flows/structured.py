"""Structured answers: a response schema shown to the model, and each answer checked against it.

A :class:`ResponseSchema` is a JSON Schema (2020-12) or a pydantic model class. It is shown
to the model (:meth:`ResponseSchema.instruction`, appended to the system message unless a
template places ``{{ response_schema }}``), its hash is part of the rows' identity (a
changed schema is new paid work), and it checks each answer: the answer's first JSON value
(:func:`first_json_value`) must match, or the row fails with
``answer does not match the response schema: <path>: <reason>``.

Example:
    >>> schema = ResponseSchema.of({"type": "object", "required": ["score"]})
    >>> schema.check('Here: {"score": 3}').parsed
    {'score': 3}
    >>> print(schema.check('{"grade": 3}').error)
    answer does not match the response schema: $: 'score' is a required property
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from studio_flows.errors import ConfigurationError
from studio_flows.models import Message, TaskAnswer
from studio_flows.rows import canonical_json, sha256_hex

# The name a template uses to place the schema itself.
TEMPLATE_NAME = "response_schema"
INVALID_PREFIX = "answer does not match the response schema: "
NO_JSON = "no JSON value found"
# A fenced block: ```json, ```JSON or a bare ``` (another language is not an answer).
_FENCED = re.compile(r"```(?:json|JSON)?[ \t]*\r?\n(.*?)```", re.DOTALL)
_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class Checked:
    """What checking one answer gave: the parsed value, or why the answer is not valid."""

    parsed: Any = None
    error: str | None = None


@dataclass(frozen=True)
class ResponseSchema:
    """A JSON Schema (and, for a pydantic model, its class) that answers must match.

    Equal schemas compare (and hash) equal by :attr:`digest`, whatever their key order.
    """

    schema: dict[str, Any] = field(compare=False, hash=False)
    digest: str
    model: type[BaseModel] | None = field(default=None, compare=False, hash=False)

    @classmethod
    def of(cls, value: Mapping[str, Any] | type[BaseModel] | ResponseSchema) -> ResponseSchema:
        """The schema of a JSON Schema dict or a pydantic model class; ConfigurationError
        with the reason when it is not valid JSON Schema 2020-12.

        Example:
            >>> ResponseSchema.of({"type": "nonsense"})
            Traceback (most recent call last):
            studio_flows.errors.ConfigurationError: the response schema is not valid JSON Schema: 'nonsense' is not valid under any of the given schemas
        """  # noqa: E501
        if isinstance(value, ResponseSchema):
            return value
        model = None
        if isinstance(value, type) and issubclass(value, BaseModel):
            model, schema = value, value.model_json_schema()
        elif isinstance(value, Mapping):
            schema = dict(value)
        else:
            raise ConfigurationError(
                "a response schema is a JSON Schema dict or a pydantic model class, "
                f"not {type(value).__name__}"
            )
        check_json_schema(schema)
        return cls(schema=schema, digest=sha256_hex(canonical_json(schema)), model=model)

    @classmethod
    def from_file(cls, path: str | Path) -> ResponseSchema:
        """The schema in a JSON file; ConfigurationError (one sentence) when it cannot be read,
        is not JSON, or is not valid JSON Schema.

        Example:
            >>> ResponseSchema.from_file("missing.json")
            Traceback (most recent call last):
            studio_flows.errors.ConfigurationError: --response-schema missing.json: no such file
        """
        where = f"--response-schema {path}"
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigurationError(f"{where}: no such file") from None
        except (OSError, UnicodeError) as err:
            raise ConfigurationError(f"{where}: cannot be read ({err})") from None
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigurationError(f"{where}: not JSON ({err})") from None
        if not isinstance(value, dict):
            raise ConfigurationError(f"{where}: a JSON Schema is an object")
        try:
            return cls.of(value)
        except ConfigurationError as err:
            raise ConfigurationError(f"{where}: {str(err).removeprefix('the response ')}") from None

    @property
    def text(self) -> str:
        """The schema as shown to the model: indented JSON, keys sorted."""
        return json.dumps(self.schema, indent=2, sort_keys=True, ensure_ascii=False)

    def instruction(self) -> str:
        """The sentence and schema appended to the system message."""
        return (
            "Answer with one JSON value that matches this JSON Schema, "
            f"in a ```json block:\n```json\n{self.text}\n```"
        )

    def check(self, answer: str) -> Checked:
        """``answer``'s first JSON value if it matches, else the reason it does not."""
        found = first_json_value(answer)
        if found is None:
            return Checked(error=INVALID_PREFIX + NO_JSON)
        problem = self._problem(found[0])
        if problem is not None:
            return Checked(error=INVALID_PREFIX + problem)
        return Checked(parsed=found[0])

    def _problem(self, value: Any) -> str | None:
        """``<path>: <reason>`` of the first problem of ``value``, None if it matches."""
        if self.model is not None:
            try:
                # Strict, from JSON: the types the JSON Schema shown to the model names, no
                # coercion ("5" is not an integer, as for a dict schema), and the model's own
                # validators still run (checks a JSON Schema cannot say).
                self.model.model_validate_json(json.dumps(value), strict=True)
            except ValidationError as err:
                first = err.errors(include_url=False)[0]
                path = ".".join(str(part) for part in first["loc"]) or "$"
                return f"{path}: {first['msg']}"
            return None
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import best_match

        error = best_match(Draft202012Validator(self.schema).iter_errors(value))
        return None if error is None else f"{error.json_path}: {error.message}"


def is_invalid_answer(error: str | None) -> bool:
    """True when a row's ``error`` says its answer does not match the response schema.

    Example:
        >>> is_invalid_answer(INVALID_PREFIX + NO_JSON), is_invalid_answer("task 0 ended failed")
        (True, False)
    """
    return error is not None and error.startswith(INVALID_PREFIX)


def check_answer(answer: TaskAnswer, schema: ResponseSchema | None) -> Checked:
    """What one task's answer comes to: its error if the job gave none; else, with a
    ``schema``, its parsed JSON value or why it does not match (no schema: nothing to parse).

    Example:
        >>> check_answer(TaskAnswer(error="task 0 ended failed"), None).error
        'task 0 ended failed'
        >>> check_answer(TaskAnswer(text="hi"), None)
        Checked(parsed=None, error=None)
    """
    if answer.text is None:
        return Checked(error=answer.error or "no answer")
    if schema is None:
        return Checked()
    return schema.check(answer.text)


def with_instruction(conversation: list[Message], instruction: str) -> list[Message]:
    """``conversation`` with ``instruction`` appended to its system message (a new first
    message when it has none).

    Example:
        >>> turns = with_instruction([Message(role="user", content="Hi")], "Answer in JSON.")
        >>> [(t.role, t.content) for t in turns]
        [('system', 'Answer in JSON.'), ('user', 'Hi')]
    """
    first = conversation[0]
    if first.role == "system":
        joined = Message(role="system", content=f"{first.content}\n\n{instruction}")
        return [joined, *conversation[1:]]
    return [Message(role="system", content=instruction), *conversation]


def check_json_schema(schema: Mapping[str, Any]) -> None:
    """Raise ConfigurationError (one sentence) unless ``schema`` is valid JSON Schema 2020-12.

    Example:
        >>> check_json_schema({"type": "object"})
    """
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as err:
        raise ConfigurationError(
            f"the response schema is not valid JSON Schema: {err.message}"
        ) from None


def first_json_value(text: str) -> tuple[Any] | None:
    """The first JSON object or array of an answer (in a 1-tuple), None if there is none.

    The first fenced block (```json, ```JSON or a bare ```) whose content is an object or
    an array; else the first object or array anywhere in the text that parses. Scalars are
    not answers.

    Example:
        >>> first_json_value('Sure! ```json\\n[1, 2]\\n``` and {"a": 1}')
        ([1, 2],)
        >>> first_json_value('The answer is {"a": 1}, I think.')
        ({'a': 1},)
        >>> first_json_value("42") is None
        True
    """
    for block in _FENCED.finditer(text):
        try:
            value = json.loads(block.group(1))
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict | list):
            return (value,)
    index = _next_opening(text, 0)
    while index >= 0:
        try:
            value, _ = _DECODER.raw_decode(text, index)
        except json.JSONDecodeError:
            index = _next_opening(text, index + 1)
            continue
        return (value,)
    return None


def _next_opening(text: str, start: int) -> int:
    """The index of the next ``{`` or ``[`` from ``start``, -1 if none."""
    braces, brackets = text.find("{", start), text.find("[", start)
    found = [i for i in (braces, brackets) if i >= 0]
    return min(found) if found else -1


__all__ = [
    "INVALID_PREFIX",
    "TEMPLATE_NAME",
    "Checked",
    "ResponseSchema",
    "check_answer",
    "check_json_schema",
    "first_json_value",
    "is_invalid_answer",
    "with_instruction",
]
