"""When to look at a running job next.

Polling fast wastes requests (and counts against the account); polling slowly leaves a
finished job's slot idle. A job's tasks finish steadily, so the progress already seen
(``completed_tasks`` of ``total_tasks`` after ``elapsed`` seconds) predicts when it ends;
before any progress is seen, the jobs already finished in this run (seconds per task)
predict it. Without either, the interval backs off from ``start`` to ``maximum``.

Example:
    >>> history = DurationHistory()
    >>> history.record(seconds=5.0, tasks=50)
    >>> plan = PollPlan(start=0.5, maximum=10.0, history=history)
    >>> round(plan.first_delay(tasks=50), 2)
    5.02
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

# Poll a little after the predicted end, not at it: arriving early costs one more request.
# For very short jobs a fixed 20 ms would be most of the job: at most a tenth of it then.
_LATE_BY_S = 0.02
_LATE_FRACTION = 0.1
# A job already terminal at its first poll only says "it took at most this long", and the
# first poll is timed from the history itself: recording that as the duration can only grow
# the prediction (it would never learn that jobs got faster). Such a sample is shrunk, so the
# next first poll comes earlier; if that one finds the job running, its progress gives the
# true end again. With shrink f and a GET taking g, the first delay settles at about
# f*g / (1 - 1.1*f): 0.5 settles near g.
_UPPER_BOUND_SHRINK = 0.5
# Where to poll between the earliest and the latest end the progress allows: early, so a
# job is rarely seen late (each look that finds it running narrows the range). Aiming at
# the latest end, as a plain ``elapsed / completed * total`` does, sees jobs up to a whole
# task's time late (bench/NOTES.md).
_AIM = 1 / 3
# Once a prediction has passed, re-poll quickly and back off from there.
_OVERDUE_START_S = 0.05


@dataclass
class DurationHistory:
    """Seconds per task of the jobs finished so far (thread-safe; one per run or client)."""

    _seconds_per_task: float | None = None
    _longest_per_task: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, *, seconds: float, tasks: int, upper_bound: bool = False) -> None:
        """Remember how long a finished job of ``tasks`` conversations took.

        ``upper_bound``: the job was already terminal when first seen, so it took at most
        ``seconds``; the sample is shrunk so that predictions can come down.
        """
        if tasks <= 0 or seconds <= 0:
            return
        sample = seconds / tasks * (_UPPER_BOUND_SHRINK if upper_bound else 1.0)
        with self._lock:
            # As seen, never shrunk: an upper bound is still a time a job may take.
            self._longest_per_task = max(self._longest_per_task, seconds / tasks)
            previous = self._seconds_per_task
            # An exponential average follows a service that slows down or speeds up.
            self._seconds_per_task = sample if previous is None else 0.5 * previous + 0.5 * sample

    def predict(self, tasks: int) -> float | None:
        """Expected duration of a job of ``tasks`` conversations, or None before any sample."""
        with self._lock:
            per_task = self._seconds_per_task
        return None if per_task is None else per_task * max(tasks, 1)

    def longest(self, tasks: int) -> float:
        """The longest a job of ``tasks`` conversations took so far, per task (0 before any).

        Example:
            >>> history = DurationHistory()
            >>> history.record(seconds=2.0, tasks=4, upper_bound=True)
            >>> history.longest(4), history.predict(4)
            (2.0, 1.0)
        """
        with self._lock:
            return self._longest_per_task * max(tasks, 1)


@dataclass
class PollPlan:
    """Chooses the delay before each poll of one job."""

    start: float
    maximum: float
    history: DurationHistory = field(default_factory=DurationHistory)
    _backoff: float = 0.0
    _overdue: float = 0.0
    # What this job's progress says of its end (seconds after the POST): after it, and
    # no later than the upper bound (None until a task was seen done).
    ends_after: float = 0.0
    ends_by: float | None = None

    def first_delay(self, *, tasks: int) -> float:
        """Delay between the POST and the first GET."""
        predicted = self.history.predict(tasks)
        if predicted is not None:
            return self._clamp(predicted + min(_LATE_BY_S, _LATE_FRACTION * predicted))
        self._backoff = self.start
        return self.start

    def next_delay(self, *, elapsed: float, completed: int, total: int) -> float:
        """Delay before the next GET, given the job's progress ``elapsed`` s after the POST."""
        predicted_end = self._predict_end(elapsed=elapsed, completed=completed, total=total)
        if predicted_end is None:
            self._backoff = min(max(self._backoff * 2, self.start), self.maximum)
            return self._backoff
        remaining = predicted_end - elapsed
        if remaining > 0:
            self._overdue = 0.0
            return self._clamp(remaining + _LATE_BY_S)
        # The prediction has passed and the job is still running: look again soon.
        self._overdue = min(max(self._overdue * 2, _OVERDUE_START_S), self.maximum)
        return self._overdue

    def _predict_end(self, *, elapsed: float, completed: int, total: int) -> float | None:
        if total > 0 and 0 < completed < total and elapsed > 0:
            self._narrow(elapsed=elapsed, completed=completed, total=total)
            assert self.ends_by is not None
            return self.ends_after + _AIM * (self.ends_by - self.ends_after)
        return self.history.predict(total) if total > 0 else None

    def _narrow(self, *, elapsed: float, completed: int, total: int) -> None:
        """Intersect what every progress seen so far says of the end.

        Tasks end steadily, so ``completed`` of ``total`` after ``elapsed`` s means the job
        ends after ``elapsed * total / (completed + 1)`` (and after ``elapsed``: it still
        runs) and by ``elapsed * total / completed``.
        """
        after = max(elapsed * total / (completed + 1), elapsed)
        by = elapsed * total / completed
        if self.ends_by is not None and max(after, self.ends_after) <= min(by, self.ends_by):
            after, by = max(after, self.ends_after), min(by, self.ends_by)
        # else: the service is not steady (or this is the first look): trust the latest.
        self.ends_after, self.ends_by = after, by

    def _clamp(self, delay: float) -> float:
        return min(max(delay, 0.0), self.maximum)
