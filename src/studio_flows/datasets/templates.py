"""Templates: a row's columns rendered into its conversation (Jinja2, sandboxed, strict).

``--template 'Answer in one word: {{ question }}'`` makes the user message of every row;
``--system-template`` its system message. Undefined names are errors: a row without a
column the template uses (or with a null there) is a bad row
``source:line: template: 'question' is undefined``. The rendered conversation is what is
hashed, so a changed template is new work and an unchanged one is not.

Example:
    >>> template = compile_template("Answer in one word: {{ question }}", "--template")
    >>> sorted(template.columns)
    ['question']
    >>> template.render({"question": "Sky colour?"})
    'Answer in one word: Sky colour?'
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from studio_flows.errors import DatasetError


class TemplateRowError(Exception):
    """A row the template cannot render; the message is the bad row's reason."""


@dataclass(frozen=True)
class CompiledTemplate:
    """A compiled template and the columns it reads."""

    text: str
    columns: frozenset[str]
    _template: Any

    def render(self, columns: Mapping[str, Any] | None) -> str:
        """The text for one row; raise :class:`TemplateRowError` with the reason if it fails."""
        from jinja2 import TemplateError

        # Only the names the template uses, nulls left out: a NULL renders as undefined,
        # never as the word "None".
        context = {}
        if columns is not None:
            for name in self.columns:
                value = columns.get(name)
                if value is not None:
                    context[name] = value
        try:
            return str(self._template.render(context))
        except TemplateError as err:
            raise TemplateRowError(f"template: {err.message or type(err).__name__}") from None
        except Exception as err:  # a filter applied to the wrong type, a division by zero...
            raise TemplateRowError(f"template: {type(err).__name__}: {err}") from None


@functools.lru_cache(maxsize=16)
def compile_template(text: str, flag: str) -> CompiledTemplate:
    """Compile ``text`` once per process; a syntax error is one :class:`DatasetError` naming
    ``flag`` (``--template`` or ``--system-template``) and the line.

    Example:
        >>> compile_template("{{ question", "--template")
        Traceback (most recent call last):
        ...
        studio_flows.errors.DatasetError: --template: unexpected end of template, expected 'end of print statement' (line 1)
    """  # noqa: E501
    from jinja2 import StrictUndefined, TemplateSyntaxError, meta
    from jinja2.sandbox import SandboxedEnvironment

    environment = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
    try:
        parsed = environment.parse(text)
        template = environment.from_string(parsed)
    except TemplateSyntaxError as err:
        message = (err.message or "syntax error").rstrip(".")
        raise DatasetError(f"{flag}: {message} (line {err.lineno})") from None
    columns = frozenset(meta.find_undeclared_variables(parsed))
    return CompiledTemplate(text=text, columns=columns, _template=template)
