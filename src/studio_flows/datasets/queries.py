"""What ``--sql`` may run on a user's database: one query, in a read-only transaction.

Two guards, one before and one during the run:

- :func:`single_query` refuses, before anything runs, a text that is not one query: two
  statements, DDL, DML (``DELETE ... RETURNING`` too). Statements are split by SQLite's own
  tokenizer (:func:`sqlite3.complete_statement`: a ``;`` inside a string, a quoted name or a
  comment ends nothing), and the one statement must start with SELECT, WITH or VALUES.
- :func:`read_only` is the guarantee, since no check of the text sees a function that
  writes or a data-modifying ``WITH``: the query runs in a read-only transaction (SQLite
  ``PRAGMA query_only``, PostgreSQL ``SET TRANSACTION READ ONLY``, MySQL ``START
  TRANSACTION READ ONLY``) that is always rolled back.

Example:
    >>> single_query("SELECT id, question FROM faq; -- the nightly rows")
    'SELECT id, question FROM faq'
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Iterator
from typing import TYPE_CHECKING

from studio_flows.errors import DatasetError

if TYPE_CHECKING:  # SQLAlchemy is imported by whoever opens the connection
    from sqlalchemy.engine import Connection

QUERY_KEYWORDS = ("SELECT", "WITH", "VALUES")
_GIVE_ONE = "give one SELECT, WITH or VALUES query"
# Whitespace and comments before a statement's first word.
_LEADING_NOISE = re.compile(r"(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?\*/)*", re.DOTALL)
# The first word, after any opening parentheses: "(SELECT ...) UNION (SELECT ...)".
_FIRST_WORD = re.compile(r"[(\s]*(\w+)")


def statements(text: str) -> list[str]:
    """The statements of ``text`` without their ``;``, empty ones (comments only) left out.

    Example:
        >>> statements("SELECT ';' AS x; /* note */ ; DROP TABLE t")
        ["SELECT ';' AS x", 'DROP TABLE t']
    """
    found, start = [], 0
    for at, char in enumerate(text):
        if char == ";" and sqlite3.complete_statement(text[start : at + 1]):
            found.append(text[start:at])
            start = at + 1
    found.append(text[start:])
    return [statement.strip() for statement in found if _code(statement)]


def single_query(text: str) -> str:
    """The one query ``text`` holds, or :class:`DatasetError` naming ``--sql`` and why not.

    Example:
        >>> single_query("DELETE FROM faq RETURNING question")
        Traceback (most recent call last):
        studio_flows.errors.DatasetError: --sql: a DELETE statement is not a query and is \
never run (give one SELECT, WITH or VALUES query).
    """
    found = statements(text)
    if not found:
        raise DatasetError("--sql: the query is empty.")
    if len(found) > 1:
        raise DatasetError(
            f"--sql: the text holds {len(found)} statements and none is run ({_GIVE_ONE})."
        )
    match = _FIRST_WORD.match(_code(found[0]))
    keyword = match.group(1).upper() if match else ""
    if keyword not in QUERY_KEYWORDS:
        what = f"a {keyword} statement" if keyword else "the statement"
        raise DatasetError(f"--sql: {what} is not a query and is never run ({_GIVE_ONE}).")
    return found[0]


@contextlib.contextmanager
def read_only(connection: Connection) -> Iterator[Connection]:
    """``connection`` in a read-only transaction, rolled back at the end whatever happened.

    A dialect without a read-only switch here (not SQLite, PostgreSQL or MySQL) relies on
    :func:`single_query` and the rollback alone.

    Example:
        >>> import sqlalchemy as sa
        >>> with sa.create_engine("sqlite://").connect() as conn, read_only(conn):
        ...     conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        Traceback (most recent call last):
        sqlalchemy.exc.OperationalError: (sqlite3.OperationalError) attempt to write a \
readonly database...
    """
    dialect = connection.dialect.name
    match dialect:
        case "sqlite":
            # Per connection, not per transaction: switched off again below.
            connection.exec_driver_sql("PRAGMA query_only = ON")
        case "postgresql":
            # The first statement of the transaction SQLAlchemy begins here.
            connection.exec_driver_sql("SET TRANSACTION READ ONLY")
        case "mysql" | "mariadb":
            connection.exec_driver_sql("START TRANSACTION READ ONLY")
    try:
        yield connection
    finally:
        connection.rollback()
        if dialect == "sqlite":
            connection.exec_driver_sql("PRAGMA query_only = OFF")
            connection.rollback()


def _code(statement: str) -> str:
    """``statement`` from its first word on (leading whitespace and comments dropped)."""
    return statement[_LEADING_NOISE.match(statement).end() :]  # type: ignore[union-attr]
