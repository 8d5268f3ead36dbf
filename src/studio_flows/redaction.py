"""Secrets out of text: the one scrubber for server text, and URLs with their password masked.

Two kinds of text may carry a secret back to a user, a log or Prefect's database: what a
server sends (an error detail that quotes the request's ``Authorization`` header, a
driver's message that quotes the connection string), and a database URL itself. Every
such text passes through :func:`scrub` (the token, a database password) or
:func:`redact_url` before it is shown, logged, stored or raised.

Example:
    >>> scrub("token revoked: Bearer s3cr3t-token", ["s3cr3t-token"])
    'token revoked: Bearer ***'
    >>> redact_url("postgresql+psycopg://app:pw@db/results")
    'postgresql+psycopg://app:***@db/results'
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

from pydantic import PlainSerializer
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

MASK = "***"
# Shorter secrets would also mask ordinary words; no real token or password is this short.
MIN_SECRET_LEN = 4


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every occurrence of each secret replaced by ``***``.

    Example:
        >>> scrub("401: Bearer abcd1234 (user app, password pw-123)", ["abcd1234", "pw-123", None])
        '401: Bearer *** (user app, password ***)'
    """
    for secret in _longest_first(secrets):
        text = text.replace(secret, MASK)
    return text


def scrub_bytes(content: bytes, secrets: Iterable[str | None]) -> bytes:
    """:func:`scrub` over raw bytes (a response body, before anything parses it).

    Example:
        >>> scrub_bytes(b'{"detail": "bad token abcd1234"}', ["abcd1234"])
        b'{"detail": "bad token ***"}'
    """
    for secret in _longest_first(secrets):
        content = content.replace(secret.encode(), MASK.encode())
    return content


def _longest_first(secrets: Iterable[str | None]) -> list[str]:
    # Longest first: a secret that contains another is masked whole.
    return sorted({s for s in secrets if s and len(s) >= MIN_SECRET_LEN}, key=len, reverse=True)


def url_password(url: str | URL | None) -> str | None:
    """The password of a database URL, if it has one (None for a URL that does not parse).

    Example:
        >>> url_password("postgresql://app:pw-123@db/results")
        'pw-123'
        >>> url_password("sqlite:///r.db") is None
        True
    """
    if url is None:
        return None
    try:
        password = make_url(url).password
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        return None
    return None if password is None else str(password)


def redact_url(url: str | URL) -> str:
    """The URL with its password masked, for parameters, logs and messages.

    Example:
        >>> redact_url("postgresql+psycopg://app:secret@db/results")
        'postgresql+psycopg://app:***@db/results'
        >>> redact_url("not a url with pw")
        '<unparsable database URL>'
    """
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<unparsable database URL>"  # never echo it: it may hold a password


def is_redacted(url: str | None) -> bool:
    """True for a URL whose password was masked by :func:`redact_url` (it cannot connect).

    Example:
        >>> is_redacted(redact_url("postgresql://app:pw@db/r"))
        True
    """
    return url_password(url) == MASK


# A URL field of a model: the full URL in Python, the redacted one wherever the model is
# written as JSON (Prefect's flow-run parameters are the model's JSON form).
RedactedUrl = Annotated[str, PlainSerializer(redact_url, return_type=str, when_used="json")]

__all__ = [
    "MASK",
    "RedactedUrl",
    "is_redacted",
    "redact_url",
    "scrub",
    "scrub_bytes",
    "url_password",
]
