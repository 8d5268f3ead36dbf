"""Validating one record into a row (a conversation and a key), or a bad row and why."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ValidationError

from studio_flows.datasets.options import DatasetOptions
from studio_flows.datasets.readers import _json_error_reason, _json_type, _single_line
from studio_flows.datasets.templates import CompiledTemplate, TemplateRowError, compile_template
from studio_flows.errors import DatasetError
from studio_flows.models import Message
from studio_flows.rows import MAX_ROW_KEY_LENGTH, BadRow, Row
from studio_flows.structured import TEMPLATE_NAME, with_instruction

_ROLES = frozenset({"system", "user", "assistant"})
_MESSAGE_KEYS = frozenset({"role", "content"})


class RowBuilder:
    """Builds one file's rows from its records, as its options say."""

    def __init__(self, file: str, options: DatasetOptions, *, messages_as_text: bool) -> None:
        self.file = file
        self.options = options
        system = options.system_prompt
        self._system = Message(role="system", content=system) if system else None
        # CSV cells are text, so messages arrive as JSON; Parquet may hold either shape.
        self._messages_as_text = messages_as_text
        self._template, self._system_template = templates_of(options)
        self._schema_text, self._instruction = _schema_shown(
            options, self._template, self._system_template
        )

    @property
    def template_columns(self) -> tuple[str, ...]:
        """The columns the templates read, which the reader must hand over with a record."""
        names: set[str] = set()
        for template in (self._template, self._system_template):
            if template is not None:
                names |= template.columns
        if self._schema_text is not None:
            names.discard(TEMPLATE_NAME)  # the schema, not a column
        return tuple(sorted(names))

    def _bad(self, line: int, reason: str) -> BadRow:
        return BadRow(self.file, line, reason)

    def build(
        self,
        line: int,
        messages: Any,
        prompt: Any,
        key: Any,
        columns: Any = None,
        kept: dict[str, Any] | None = None,
    ) -> Row | BadRow:
        """Validate one record's values and build its row; the hot path, kept flat."""
        options = self.options
        try:
            conversation: list[Message]
            if self._template is not None:
                text = self._rendered(self._template, columns)
                conversation = [Message(role="user", content=text)]
            elif messages is not None:
                if prompt is not None:
                    return self._bad(
                        line,
                        f"both {options.prompt_column!r} and {options.messages_column!r} "
                        "are set; give one",
                    )
                if self._messages_as_text and type(messages) is str:
                    try:
                        messages = orjson.loads(messages)
                    except orjson.JSONDecodeError as err:
                        return self._bad(
                            line,
                            f"{options.messages_column!r} is not valid JSON: "
                            + _json_error_reason(messages.encode("utf-8", "surrogateescape"), err),
                        )
                parsed = _conversation(messages, options.messages_column)
                if type(parsed) is str:
                    return self._bad(line, parsed)
                conversation = parsed  # type: ignore[assignment]
            elif prompt is not None:
                if type(prompt) is not str:
                    return self._bad(
                        line,
                        f"{options.prompt_column!r} must be a string, got {_json_type(prompt)}",
                    )
                if not prompt or prompt.isspace():
                    return self._bad(line, f"{options.prompt_column!r} is empty")
                conversation = [Message(role="user", content=prompt)]
            else:
                return self._bad(
                    line,
                    f"no {options.prompt_column!r} and no {options.messages_column!r}: "
                    "a row needs one of them",
                )
            if self._system is not None and conversation[0].role != "system":
                conversation.insert(0, self._system)
            elif self._system_template is not None and conversation[0].role != "system":
                system = self._rendered(self._system_template, columns)
                conversation.insert(0, Message(role="system", content=system))
            if self._instruction is not None:
                conversation = with_instruction(conversation, self._instruction)
            last = conversation[-1].role
            if last != "user":
                return self._bad(
                    line, f"the last message is from {last!r}; a conversation must end with 'user'"
                )
            row_key: str | None = None
            if options.id_column is not None:
                if type(key) is int:
                    row_key = str(key)
                elif key is None:
                    return self._bad(line, f"missing id: no value in {options.id_column!r}")
                elif type(key) is not str:
                    return self._bad(
                        line,
                        f"id {options.id_column!r} must be a string or an integer, "
                        f"got {_json_type(key)}",
                    )
                elif not key or key.isspace():
                    return self._bad(line, f"missing id: {options.id_column!r} is empty")
                elif len(key) > MAX_ROW_KEY_LENGTH:
                    return self._bad(
                        line, f"id is {len(key)} characters long; at most {MAX_ROW_KEY_LENGTH}"
                    )
                else:
                    if not key.isascii():
                        key.encode("utf-8")  # undecodable bytes raise, caught below
                    row_key = key
            return Row.from_messages(conversation, line=line, row_key=row_key, metadata=kept)
        except TemplateRowError as err:
            return self._bad(line, str(err))
        except (ValidationError, UnicodeError) as err:
            # Our own checks come first; this is the net for text pydantic refuses, chiefly
            # undecodable bytes (lone surrogates) from a non-UTF-8 CSV.
            if any(
                isinstance(value, str) and _has_surrogates(value)
                for value in (messages, prompt, key)
            ) or "unicode" in str(err):
                return self._bad(line, "the text is not valid UTF-8")
            return self._bad(line, f"invalid row: {_single_line(str(err))}")

    def _rendered(self, template: CompiledTemplate, columns: Any) -> str:
        """The text ``template`` makes of a row's columns (:class:`TemplateRowError` if none)."""
        if self._schema_text is not None and TEMPLATE_NAME in template.columns:
            columns = {**(columns or {}), TEMPLATE_NAME: self._schema_text}
        text: str = template.render(columns)
        if not text or text.isspace():
            raise TemplateRowError("template: renders an empty message")
        return text


def templates_of(
    options: DatasetOptions,
) -> tuple[CompiledTemplate | None, CompiledTemplate | None]:
    """The compiled ``template`` and ``system_template`` of ``options`` (None where unset)."""
    if options.system_template is not None and options.system_prompt is not None:
        raise DatasetError("give --system-prompt or --system-template, not both")
    template = system = None
    if options.template is not None:
        template = compile_template(options.template, "--template")
    if options.system_template is not None:
        system = compile_template(options.system_template, "--system-template")
    return template, system


def _schema_shown(
    options: DatasetOptions, *templates: CompiledTemplate | None
) -> tuple[str | None, str | None]:
    """``(schema text a template places, instruction appended to the system message)``:
    both None without a schema; no instruction when a template places the schema itself."""
    schema = options.response_schema
    if schema is None:
        return None, None
    placed = any(t is not None and TEMPLATE_NAME in t.columns for t in templates)
    return schema.text, None if placed else schema.instruction()


def _conversation(value: Any, column: str) -> list[Message] | str:
    """The messages of a row, or the reason they are not a valid conversation."""
    if type(value) is not list:
        return f"{column!r} must be an array of {{role, content}} objects, got {_json_type(value)}"
    if not value:
        return f"{column!r} is empty"
    conversation: list[Message] = []
    for i, item in enumerate(value):
        where = f"{column}[{i}]"
        if type(item) is not dict:
            return f"{where} must be an object with 'role' and 'content', got {_json_type(item)}"
        if len(item) != 2 or item.keys() != _MESSAGE_KEYS:
            extra = sorted(str(k) for k in item.keys() - _MESSAGE_KEYS)
            if extra:
                return f"{where} has unexpected keys {', '.join(map(repr, extra))}"
        role = item.get("role")
        content = item.get("content")
        if role is None:
            return f"{where} has no 'role'"
        if content is None:
            return f"{where} has no 'content'"
        if type(role) is not str or role not in _ROLES:
            return f"{where} has role {_show(role)}; expected 'system', 'user' or 'assistant'"
        if type(content) is not str:
            return f"{where} content must be a string, got {_json_type(content)}"
        if not content or content.isspace():
            return f"{where} content is empty"
        conversation.append(Message(role=role, content=content))
    return conversation


def _show(value: object, limit: int = 40) -> str:
    """A short, single-line repr of user data for a reason."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _has_surrogates(text: str) -> bool:
    """True when ``text`` holds undecodable bytes (surrogateescape) or lone surrogates."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
