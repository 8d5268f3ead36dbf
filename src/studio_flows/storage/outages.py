"""A results database that stops answering for a while (a restart, a failover): retry, with a bound.

Only errors of the connection are retried (the server went away, refused or reset the
connection, SQLite's file was locked too long); a constraint or a syntax error is not an
outage and is raised at once. After ``bound_s`` the outage becomes one
:class:`~studio_flows.errors.ResultsDatabaseUnavailableError` sentence naming the database
(its password masked), so a run's summary shows a line, not a driver's traceback.

Example:
    >>> calls = []
    >>> retry_while_unavailable(lambda: calls.append(1) or len(calls), bound_s=1.0, url="sqlite://")
    1
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import exc
from sqlalchemy.engine import URL, make_url

from studio_flows import interrupts
from studio_flows.errors import ResultsDatabaseUnavailableError

T = TypeVar("T")
DEFAULT_BOUND_S = 60.0
FIRST_DELAY_S = 0.5
MAX_DELAY_S = 5.0

logger = logging.getLogger("studio_flows.storage")


def is_unavailable(err: BaseException) -> bool:
    """True when ``err`` says the database did not answer, not that the statement was wrong."""
    if isinstance(err, exc.DBAPIError) and err.connection_invalidated:
        return True
    return isinstance(err, exc.OperationalError | exc.InterfaceError | exc.DisconnectionError)


def describe_unavailable(err: BaseException, url: str | URL, waited_s: float = 0.0) -> str:
    """One sentence: which database, what the driver said first, for how long it was tried.

    Example:
        >>> describe_unavailable(exc.OperationalError("SELECT 1", {}, OSError("refused")),
        ...                      "postgresql://app:pw@db/results", 12.3)
        'the results database postgresql://app:***@db/results did not answer for 12 s (refused)'
    """
    cause = str(getattr(err, "orig", None) or err).strip().splitlines()
    first = cause[0] if cause else type(err).__name__
    safe = _safe(url)
    if isinstance(url, URL) and url.password:
        first = first.replace(str(url.password), "***")
    waited = f" for {waited_s:.0f} s" if waited_s >= 1 else ""
    return f"the results database {safe} did not answer{waited} ({first})"


def retry_while_unavailable(
    action: Callable[[], T],
    *,
    bound_s: float = DEFAULT_BOUND_S,
    url: str | URL,
    sleep: Callable[[float], None] = interrupts.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """``action()``, retried while the database does not answer, for at most ``bound_s``.

    Example:
        >>> retry_while_unavailable(lambda: 42, url="sqlite://")
        42
    """
    started = clock()
    delay = FIRST_DELAY_S
    while True:
        try:
            return action()
        except exc.SQLAlchemyError as err:
            waited = clock() - started
            if not is_unavailable(err):
                raise
            if waited + delay > bound_s:
                raise ResultsDatabaseUnavailableError(
                    describe_unavailable(err, url, waited)
                ) from None
            logger.warning("%s; retrying", describe_unavailable(err, url, waited))
            sleep(delay)
            delay = min(2 * delay, MAX_DELAY_S)


def _safe(url: str | URL) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (exc.ArgumentError, ValueError):  # ValueError: a port that is not a number
        return "<unparsable database URL>"
