"""The books of one slot pool: the leases it holds, has ready and keeps, and who waits.

Shared, under one lock, by the pool's local hand-off (:mod:`studio_flows.tasks.slot_handoff`)
and its asker (:mod:`studio_flows.tasks.slot_asker`): a lease the server grants and a lease
a job gives back reach the next waiter through the same ``idle`` list, so one lock guards
both and neither can hand a lease over twice.

Example:
    >>> books = SlotBooks()
    >>> with books.cond:
    ...     books.waiters += 1
    ...     orphans = books.grant(uuid.uuid4())
    >>> len(books.idle), orphans
    (1, [])
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from studio_flows.interrupts import RunControl


@dataclass
class Lease:
    """One slot this process holds; ``since`` is when the server granted it, ``run`` the
    run that holds it now (see :class:`~studio_flows.interrupts.RunControl`)."""

    lease_id: uuid.UUID
    since: float
    run: RunControl | None = field(default=None, compare=False, repr=False)


class SlotBooks:
    """Leases ``held`` (in use, ready or parked), ``idle`` (ready for the next waiter) and
    ``parked`` (a submitted job nobody waits on yet); callers of ``acquire`` ``waiters``;
    the asker's failure to tell them (``fetch_error``); when a lease was last freed.

    Read and change them under ``cond`` (re-entrant: the asker books a grant inside its
    own critical section).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.cond = threading.Condition()
        self.clock = clock
        self.held: dict[uuid.UUID, Lease] = {}
        self.idle: list[Lease] = []
        self.parked: set[uuid.UUID] = set()
        self.waiters = 0
        self.fetch_error: Exception | None = None
        self.last_freed = float("-inf")

    def held_count(self) -> int:
        """Leases held now (takes the lock)."""
        with self.cond:
            return len(self.held)

    def wanted(self) -> bool:
        """More callers wait than leases are ready (under ``cond``)."""
        return self.waiters > len(self.idle)

    def grant(self, lease_id: uuid.UUID) -> list[Lease]:
        """Book a lease the server granted and hand it to a waiter (under ``cond``).

        Returns the ready leases nobody waits for any more, for the caller to give back.
        """
        lease = Lease(lease_id, self.clock())
        self.held[lease_id] = lease
        self.idle.append(lease)
        orphans = self.take_orphans()  # a caller got a lease handed over meanwhile
        self.cond.notify_all()
        return orphans

    def take_orphans(self) -> list[Lease]:
        """Ready leases nobody waits for any more, taken off the books (under ``cond``)."""
        extra = len(self.idle) - self.waiters
        if extra <= 0:
            return []
        orphans, self.idle = self.idle[:extra], self.idle[extra:]
        for lease in orphans:
            del self.held[lease.lease_id]
        return orphans
