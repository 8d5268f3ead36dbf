"""One run's stop request and the fair-use slots it holds: a :class:`RunControl` per run.

A run (a ``generate_dataset`` or ``generate_rows`` flow run, a command-line run) makes a
control and sets it for its own code with :func:`running`. Every wait of the run (the
client's backoff, a job's poll, the slot pool's queue) asks the control of the context it
runs in (:func:`current`), and every slot the run takes is booked on it. A stop (a signal
to the command line, a flow run's timeout or cancellation) is asked of one control: that
run's waits end with :class:`~studio_flows.errors.RunInterrupted` and its slots can be given
back (:meth:`RunControl.release_all`); another run of the process, or a later call, sees
nothing of it. Code outside any run gets a control of its own that nothing can stop.

The control reaches threads through their context: Prefect copies it into each task run,
the flow's lanes start in a copy. Machinery the process shares between runs (the slot
pool's fetcher) reads no run's control: a caller's wait brings its own.

Nothing is interrupted mid-request: a POST that was sent is answered (or times out) and
its job_id is recorded, so the next run re-attaches to it.

Example:
    >>> from studio_flows import interrupts
    >>> with interrupts.running() as run:
    ...     interrupts.sleep(0.0)
    ...     run.request_stop("SIGINT")
    ...     interrupts.stop_requested()
    True
    >>> interrupts.stop_requested()  # outside the run: nothing was asked of this call
    False
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterator

from studio_flows.errors import RunInterrupted

_current: contextvars.ContextVar[RunControl | None] = contextvars.ContextVar(
    "studio_flows_run_control", default=None
)


class RunControl:
    """A run's stop request and the slots it holds (see the module docstring).

    A control made inside another run's (``parent``) stops when the parent does, and its
    slots go back with the parent's: a flow run inside a command-line run. Its own stop
    touches neither the parent nor its siblings.

    Example:
        >>> run = RunControl()
        >>> run.hold("lease", lambda: print("given back"))
        >>> run.request_stop("TimeoutError")
        >>> run.release_all()
        given back
        1
    """

    def __init__(self, parent: RunControl | None = None) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._reason: str | None = None
        # What this run holds, by identity: the slot's object and how to give it back.
        self._held: dict[int, tuple[object, Callable[[], object]]] = {}
        self._children: set[RunControl] = set()
        self._parent = parent
        if parent is not None:
            parent._adopt(self)

    def request_stop(self, reason: str) -> None:
        """Ask every wait of this run (and of the runs inside it) to stop; the first reason
        is kept.

        Example:
            >>> RunControl().request_stop("SIGINT")
        """
        with self._lock:
            if self._reason is None:
                self._reason = reason
            children = list(self._children)
        self._stop.set()
        for child in children:
            child.request_stop(reason)

    def stop_requested(self) -> bool:
        """True once a stop was asked of this run."""
        return self._stop.is_set()

    @property
    def stop_reason(self) -> str | None:
        """What asked this run to stop (``"SIGINT"``, ``"TimeoutError"``), if anything did."""
        return self._reason

    def check(self) -> None:
        """Raise :class:`RunInterrupted` if this run was asked to stop."""
        if self._stop.is_set():
            raise RunInterrupted(f"stopped by {self._reason}")

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, or less and raise :class:`RunInterrupted` once a stop is asked."""
        if self._stop.wait(max(seconds, 0.0)):
            self.check()

    def hold(self, slot: object, give_back: Callable[[], object]) -> None:
        """Book ``slot`` (by identity) as this run's until :meth:`let_go`; ``give_back``
        frees it if the run releases everything first."""
        with self._lock:
            self._held[id(slot)] = (slot, give_back)

    def let_go(self, slot: object) -> None:
        """``slot`` is no longer this run's (given back, or handed on)."""
        with self._lock:
            self._held.pop(id(slot), None)

    @property
    def held(self) -> int:
        """Slots this run holds now, those of the runs inside it included."""
        with self._lock:
            own, children = len(self._held), list(self._children)
        return own + sum(child.held for child in children)

    def release_all(self) -> int:
        """Give back every slot this run (and every run inside it) holds; return how many.

        Only this run's: the slots of other runs in the process stay with them.
        """
        with self._lock:
            held = list(self._held.values())
            self._held.clear()
            children = list(self._children)
        for _, give_back in held:
            give_back()
        return len(held) + sum(child.release_all() for child in children)

    def _adopt(self, child: RunControl) -> None:
        with self._lock:
            self._children.add(child)
            reason = self._reason
        if reason is not None:  # asked to stop before this run began: it begins stopped
            child.request_stop(reason)

    def _close(self) -> None:
        if self._parent is not None:
            with self._parent._lock:
                self._parent._children.discard(self)


@contextlib.contextmanager
def running(control: RunControl | None = None) -> Iterator[RunControl]:
    """Run the block as a run of its own: a new control (inside the current run's, if any)
    or ``control``, current for the block and for the threads and tasks it starts.

    Example:
        >>> with running() as run:
        ...     current() is run
        True
    """
    control = control if control is not None else RunControl(parent=_current.get())
    token = _current.set(control)
    try:
        yield control
    finally:
        _current.reset(token)
        control._close()


def current() -> RunControl:
    """The control of the run this code belongs to; outside any run, a new one.

    Example:
        >>> current().stop_requested()
        False
    """
    control = _current.get()
    return control if control is not None else RunControl()


def stop_requested() -> bool:
    """True once the current run was asked to stop."""
    return current().stop_requested()


def stop_reason() -> str | None:
    """What asked the current run to stop, if anything did."""
    return current().stop_reason


def check() -> None:
    """Raise :class:`RunInterrupted` if the current run was asked to stop."""
    current().check()


def sleep(seconds: float) -> None:
    """Sleep ``seconds``, or less and raise :class:`RunInterrupted` once the current run is
    asked to stop.

    Example:
        >>> sleep(0.0)
    """
    current().sleep(seconds)
