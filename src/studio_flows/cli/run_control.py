"""How a command-line run meets Ctrl-C and ``kill``: stop cleanly, then exit with the signal.

The run works in a thread of its own, under the command's
:class:`~studio_flows.interrupts.RunControl`; the main thread only waits and takes the
signals. The first SIGINT or SIGTERM asks the command's run to stop (no new job starts, the
polls of jobs in flight end, their job_ids stay recorded for the next run) and gives the
fair-use slots the run holds back at once: a signal reaches the process, but what it stops
is the command's run, not every run the process may hold. The run then ends within seconds
with its summary so far. A second signal, or a run that does not end within ``grace_s``,
exits at once.

Example:
    >>> summary = run_until_signal(
    ...     lambda: generate_dataset(options), control=RunControl(), on_stop=print,
    ...     on_force_exit=print,
    ... )  # doctest: +SKIP
"""

from __future__ import annotations

import contextvars
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Generic, TypeVar

from studio_flows import interrupts
from studio_flows.interrupts import RunControl

T = TypeVar("T")
GRACE_S = 8.0
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


@dataclass
class _Outcome(Generic[T]):
    value: T | None = None
    error: BaseException | None = None


def exit_code_for(reason: str | None) -> int:
    """130 after SIGINT, 143 after SIGTERM (the shell's 128 + signal number)."""
    for number, code in EXIT_CODES.items():
        if reason == number.name:
            return code
    return 130


def run_until_signal(
    work: Callable[[], T],
    *,
    control: RunControl,
    on_stop: Callable[[str], None],
    on_force_exit: Callable[[str], None],
    grace_s: float = GRACE_S,
) -> T:
    """Run ``work`` in a thread as the run of ``control``; the first signal stops that run
    and gives its slots back, the second exits now.

    ``on_stop(signal_name)`` runs once, at the first signal (to tell the user);
    ``on_force_exit(signal_name)`` just before an immediate exit.
    """
    outcome: _Outcome[T] = _Outcome()

    def target() -> None:
        try:
            outcome.value = work()
        except BaseException as err:  # handed to the main thread
            outcome.error = err

    with interrupts.running(control):  # the worker's context carries the command's run
        context = contextvars.copy_context()
    worker = threading.Thread(target=context.run, args=(target,), name="run", daemon=True)
    signals: list[str] = []

    def handle(number: int, frame: FrameType | None) -> None:
        name = signal.Signals(number).name
        signals.append(name)
        if len(signals) > 1:
            on_force_exit(name)
            os._exit(exit_code_for(signals[0]))
        control.request_stop(name)
        threading.Thread(target=_stopping, args=(name,), daemon=True).start()

    def _stopping(name: str) -> None:
        on_stop(name)
        control.release_all()

    previous = {number: signal.signal(number, handle) for number in EXIT_CODES}
    try:
        worker.start()
        _wait(worker, signals, grace_s, on_force_exit)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if outcome.error is not None:
        raise outcome.error
    return outcome.value  # type: ignore[return-value]


def _wait(
    worker: threading.Thread,
    signals: list[str],
    grace_s: float,
    on_force_exit: Callable[[str], None],
) -> None:
    while worker.is_alive():
        worker.join(timeout=0.1)
        if signals and worker.is_alive():
            worker.join(timeout=grace_s)
            if worker.is_alive():
                on_force_exit(signals[0])
                os._exit(exit_code_for(signals[0]))
