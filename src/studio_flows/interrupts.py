"""A process-wide request to stop: set once by a signal handler, seen by every wait.

Signals reach a process, not a run, so the request is one per process. Work checks it
between jobs, and every sleep of the client, the job loop and the slot pool sleeps through
:func:`sleep`, which returns early and raises :class:`~studio_flows.errors.RunInterrupted`
once a stop was requested. Nothing is interrupted mid-request: a POST that was sent is
answered (or times out) and its job_id is recorded, so the next run re-attaches to it.

Example:
    >>> from studio_flows import interrupts
    >>> interrupts.sleep(0.0)
    >>> interrupts.stop_requested()
    False
"""

from __future__ import annotations

import threading

from studio_flows.errors import RunInterrupted

_stop = threading.Event()
_reason: list[str] = []


def request_stop(reason: str) -> None:
    """Ask every wait of this process to stop (called from a signal handler).

    Example:
        >>> request_stop("SIGINT")  # doctest: +SKIP
    """
    if not _stop.is_set():
        _reason.append(reason)
        _stop.set()


def stop_requested() -> bool:
    """True once :func:`request_stop` was called."""
    return _stop.is_set()


def stop_reason() -> str | None:
    """What asked to stop (``"SIGINT"``, ``"SIGTERM"``), if anything did."""
    return _reason[0] if _reason else None


def check() -> None:
    """Raise :class:`RunInterrupted` if a stop was requested."""
    if _stop.is_set():
        raise RunInterrupted(f"stopped by {stop_reason()}")


def sleep(seconds: float) -> None:
    """Sleep ``seconds``, or less and raise :class:`RunInterrupted` when a stop is requested."""
    if _stop.wait(max(seconds, 0.0)):
        check()


def reset() -> None:
    """Forget a stop request (tests, and a long-lived process that handled one)."""
    _stop.clear()
    _reason.clear()
