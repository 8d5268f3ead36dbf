"""The slot pool's local side: leases handed from one job of this process to the next.

A lease a job gives back goes straight to the next local waiter (no server round trip, no
idle slot), unless it has been held ``turn_s`` already: then it goes back to the server so
other processes get their turn. New leases come from the pool's asker
(:mod:`studio_flows.tasks.slot_asker`). A waiting caller

- is told within seconds that it waits, then every 30 s, and gives up with a clear error
  after ``wait_limit_s`` without a slot coming free (a job queued behind this process's
  own jobs is not waiting on anyone else: it is neither announced nor timed out while
  they turn);
- stops at once when its run is asked to stop (the run's
  :class:`~studio_flows.interrupts.RunControl`, which books every lease the run takes and
  gives them back when it stops); the pool serves every run of the process and reads no
  run's stop of its own;
- is refused with :class:`SlotDeadlockError` when only this process's *parked* leases
  could end its wait (a job ``submit_generation_job`` submitted and nobody waits on yet,
  kept for the task that will: :meth:`SlotPool.park`, :meth:`SlotPool.claim`).

Example:
    >>> pool = SlotPool(api=PrefectSlotApi())  # doctest: +SKIP
    >>> with pool.slot():  # doctest: +SKIP
    ...     run_one_job()
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from studio_flows.tasks.slot_api import SlotApi
from studio_flows.tasks.slot_asker import (
    MIN_LEASE_S,
    POLL_S,
    SERVER_UNAVAILABLE_LIMIT_S,
    SlotAsker,
)
from studio_flows.tasks.slot_books import Lease, SlotBooks
from studio_flows.tasks.slot_holders import HolderFile, PeerWatch

from studio_flows import interrupts
from studio_flows.errors import SlotDeadlockError, SlotWaitTimeoutError
from studio_flows.interrupts import RunControl

FAIR_USE_TAG = "model-studio"
FAIR_USE_LIMIT_NAME = f"tag:{FAIR_USE_TAG}"
FIRST_WAIT_NOTICE_S = 3.0
WAIT_NOTICE_EVERY_S = 30.0
# A wait fails as a deadlock once parked jobs have filled the limit for this long: long
# enough for a mapped wait task to start after its submit (tens of ms), short enough to be
# told within seconds.
PARKED_DEADLOCK_S = 5.0

logger = logging.getLogger("studio_flows.slots")


@dataclass
class _Waiting:
    """How long one caller has waited, for the notices and the wait limit."""

    since: float
    since_wall: datetime = field(default_factory=datetime.now)
    next_notice: float = 0.0
    deadlocked_since: float | None = None


class SlotPool:
    """The fair-use slots of one limit held by this process (see the module docstring and
    :mod:`studio_flows.tasks.slots`)."""

    def __init__(
        self,
        limit_name: str = FAIR_USE_LIMIT_NAME,
        *,
        api: SlotApi,
        holders: HolderFile | None = None,
        reclaim: Callable[[], int] | None = None,
        peers: PeerWatch | None = None,
        turn_s: float = 60.0,
        poll_s: float = POLL_S,
        lease_s: float = MIN_LEASE_S,
        wait_limit_s: float = 600.0,
        unavailable_limit_s: float = SERVER_UNAVAILABLE_LIMIT_S,
        hedge_after_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit_name = limit_name
        self.turn_s = turn_s
        self.poll_s = poll_s
        self.wait_limit_s = wait_limit_s
        self.deadlock_after_s = PARKED_DEADLOCK_S
        self._books = SlotBooks(clock)
        self._asker = SlotAsker(
            self._books,
            limit_name,
            api=api,
            holders=holders,
            reclaim=reclaim,
            peers=peers,
            poll_s=poll_s,
            lease_s=lease_s,
            unavailable_limit_s=unavailable_limit_s,
            hedge_after_s=hedge_after_s,
        )

    # ----------------------------------------------------------------- what it holds

    @property
    def held(self) -> int:
        """Leases this process holds now (in use or about to be handed over)."""
        return self._books.held_count()

    @property
    def waiting(self) -> int:
        """Callers of :meth:`acquire` waiting for a slot now."""
        with self._books.cond:
            return self._books.waiters

    @property
    def parked(self) -> int:
        """Leases of submitted jobs that no task waits on yet."""
        with self._books.cond:
            return len(self._books.parked)

    @property
    def refusals(self) -> int:
        """How many asks the server refused (the limit was full) since the pool was made."""
        return self._asker.refusals

    @property
    def lease_s(self) -> float:
        """How long each lease lasts unless renewed."""
        return self._asker.lease_s

    @property
    def unavailable_limit_s(self) -> float:
        """How long a Prefect API that does not answer is asked again before waits fail."""
        return self._asker.unavailable_limit_s

    @unavailable_limit_s.setter
    def unavailable_limit_s(self, value: float) -> None:
        self._asker.unavailable_limit_s = value

    @property
    def peers_hold_poll_s(self) -> float:
        """How often a refused pool asks while peers on this machine hold every slot."""
        return self._asker.peers_hold_poll_s

    @peers_hold_poll_s.setter
    def peers_hold_poll_s(self, value: float) -> None:
        self._asker.peers_hold_poll_s = value

    # ----------------------------------------------------------------- taking and giving

    def acquire(self, run: RunControl | None = None) -> Lease:
        """A slot for one job of ``run``: a lease handed over locally, or a new one from
        the server. ``run`` is the caller's run (default: the current one); the lease is
        booked on it until released.

        Callers queue here; the asker's one fetcher thread asks the server while more
        callers wait than leases are ready, so a lease freed meanwhile is handed over at
        once. Raises :class:`RunInterrupted` when ``run`` is asked to stop,
        :class:`SlotWaitTimeoutError` after ``wait_limit_s`` without a slot and
        :class:`SlotDeadlockError` (see :meth:`_check_not_deadlocked`).

        Example:
            >>> lease = pool.acquire()  # before the POST  # doctest: +SKIP
        """
        run = run if run is not None else interrupts.current()
        run.check()
        books = self._books
        with books.cond:
            if books.idle:
                return self._booked(books.idle.pop(), run)
            books.waiters += 1
            self._asker.start()
            books.cond.notify_all()
        try:
            return self._booked(self._wait_for_slot(_Waiting(since=books.clock()), run), run)
        finally:
            with books.cond:
                books.waiters -= 1
                if not books.waiters:
                    books.fetch_error = None  # told to every caller that waited
                    books.cond.notify_all()
                orphans = books.take_orphans()
            for lease in orphans:
                self._asker.give_back(lease.lease_id)

    def park(self, lease: Lease) -> None:
        """``lease``'s job was submitted: keep it (renewed) for whoever will wait on the job."""
        with self._books.cond:
            if lease.lease_id in self._books.held:
                self._books.parked.add(lease.lease_id)

    def claim(self, lease_id: uuid.UUID, run: RunControl | None = None) -> Lease | None:
        """The lease of a parked job, now held by its waiter's ``run`` (default: the current
        one); None if this process lacks it."""
        with self._books.cond:
            self._books.parked.discard(lease_id)
            lease = self._books.held.get(lease_id)
        if lease is None:
            return None
        if lease.run is not None:
            lease.run.let_go(lease)
        return self._booked(lease, run if run is not None else interrupts.current())

    def release_id(self, lease_id: uuid.UUID) -> None:
        """:meth:`release` by id; a lease another process took is given back to the server."""
        lease = self.claim(lease_id)
        if lease is not None:
            self.release(lease)
        else:
            self._asker.give_back_unknown(lease_id)

    def release(self, lease: Lease) -> None:
        """Done with ``lease``: hand it to a local waiter, or give it back to the server.

        Example:
            >>> pool.release(lease)  # once the job is terminal  # doctest: +SKIP
        """
        if lease.run is not None:
            lease.run.let_go(lease)
        books = self._books
        with books.cond:
            if books.held.get(lease.lease_id) is not lease:
                return  # already given back (release_all) or handed on by an earlier release
            books.parked.discard(lease.lease_id)
            books.last_freed = books.clock()
            fresh = books.clock() - lease.since < self.turn_s
            if books.wanted() and fresh:
                # The next holder gets its own handle: a second release of this one must
                # not free the slot under the job that now runs on it.
                handed = Lease(lease.lease_id, lease.since)
                books.held[lease.lease_id] = handed
                books.idle.append(handed)
                books.cond.notify_all()
                return
            del books.held[lease.lease_id]
        self._asker.give_back(lease.lease_id)

    def release_all(self) -> int:
        """Give every lease of every run back at once; return how many (tests, and a process
        that ends: a stopping run gives back its own, :meth:`RunControl.release_all`)."""
        books = self._books
        with books.cond:
            leases = list(books.held)
            books.held.clear()
            books.idle.clear()
            books.parked.clear()
            books.cond.notify_all()
        for lease_id in leases:
            self._asker.give_back(lease_id)
        return len(leases)

    def settle_asks(self, timeout_s: float = 10.0) -> None:
        """Wait (up to ``timeout_s``) for asks still in flight, so that a lease the server
        grants after the last job still goes back (called when the process exits)."""
        self._asker.settle(timeout_s)

    @contextlib.contextmanager
    def slot(self) -> Iterator[Lease]:
        """``with pool.slot():`` holds one slot for the block."""
        lease = self.acquire()
        try:
            yield lease
        finally:
            self.release(lease)

    # ----------------------------------------------------------------- waiting

    def _booked(self, lease: Lease, run: RunControl) -> Lease:
        """``lease`` is ``run``'s now: a stop of ``run`` gives it back, another run's does not."""
        lease.run = run
        run.hold(lease, lambda: self.release(lease))
        return lease

    def _wait_for_slot(self, waiting: _Waiting, run: RunControl) -> Lease:
        books = self._books
        waiting.next_notice = waiting.since + FIRST_WAIT_NOTICE_S
        while True:
            run.check()
            with books.cond:
                if not books.idle and books.fetch_error is None:
                    books.cond.wait(timeout=self.poll_s)
                if books.idle and not run.stop_requested():  # a stopping run starts nothing
                    lease = books.idle.pop()
                    break
                if books.fetch_error is not None:
                    raise books.fetch_error
            self._still_waiting(waiting)
            self._check_not_deadlocked(waiting)
        waited = books.clock() - waiting.since
        if waited >= FIRST_WAIT_NOTICE_S and not self._asker.holds_every_slot():
            logger.warning("fair-use slot acquired after waiting %.0f s", waited)
        return lease

    def _still_waiting(self, waiting: _Waiting) -> None:
        """Say within seconds that this caller waits, and give up after the wait limit."""
        now = self._books.clock()
        if now >= waiting.next_notice:
            waiting.next_notice = now + WAIT_NOTICE_EVERY_S
            if not self._asker.holds_every_slot():
                logger.warning(self._describe_wait(waiting, timed_out=False))
        # A slot this process freed is a turn: its queued jobs are moving, not stuck.
        if now - max(waiting.since, self._books.last_freed) >= self.wait_limit_s:
            raise SlotWaitTimeoutError(self._describe_wait(waiting, timed_out=True))

    def _check_not_deadlocked(self, waiting: _Waiting) -> None:
        """Raise :class:`SlotDeadlockError` when only this process's parked jobs hold slots.

        Why: a parked job's slot comes back only when a task waits on it, and a flow that
        submits one job more than the limit before it waits on any (a plain loop) never
        starts that wait; a mapped submit-then-wait pipeline claims each lease as its
        submit ends, so parked jobs filling the limit for seconds means nobody will wait.
        """
        with self._books.cond:
            parked, held = len(self._books.parked), len(self._books.held)
        stuck = parked > 0 and parked == held and self._asker.holds_every_slot()
        now = self._books.clock()
        if not stuck:
            waiting.deadlocked_since = None
            return
        if waiting.deadlocked_since is None:
            waiting.deadlocked_since = now
        if now - waiting.deadlocked_since >= self.deadlock_after_s:
            raise SlotDeadlockError(
                f"All {held} slots of the Prefect concurrency limit {self.limit_name!r} are "
                "held by jobs this flow submitted and has not started waiting for, so the "
                "next job would wait forever. Wait for those jobs (wait_for_generation_job) "
                "before submitting more, map submit_generation_job and then "
                "wait_for_generation_job over the jobs, or use generate, which submits and "
                "waits in one task."
            )

    def _describe_wait(self, waiting: _Waiting, *, timed_out: bool) -> str:
        since = waiting.since_wall.strftime("%H:%M:%S")
        if not timed_out:
            return f"waiting for a fair-use slot since {since}: {self._asker.who_holds()}"
        return (
            f"No fair-use slot came free in {self.wait_limit_s:.0f} s (waiting since {since}): "
            f"{self._asker.who_holds()}. "
            f"See who holds them with `prefect gcl inspect {self.limit_name}`; "
            "wait longer with MODEL_STUDIO_SLOT_WAIT_LIMIT_S."
        )
