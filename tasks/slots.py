"""The fair-use slot pool: one per process and limit, the only part that asks Prefect for slots.

A slot of the ``tag:model-studio`` concurrency limit is a lease on the Prefect server,
held from before a job's POST until the job is terminal. Why a pool and not a tag on the
job task? Measured on Prefect 3.9: a tagged task run per job lost ~3 s per turn, because a
refused holder sleeps through the server's ``Retry-After`` while a freed slot idles. The
pool instead:

- hands a lease a job gives back straight to the next local waiter (no server round trip,
  no idle slot), unless the lease has been held ``turn_s`` already;
- asks the server itself (one request every ``poll_s``, no ``Retry-After`` sleep) only when
  a local waiter needs one more slot; asks again at once when another process on this
  machine gives a slot back (its holder file shrinks), and only once a second while such
  peers hold every slot it lacks; doubles an ask the server holds for long (a busy SQLite
  server may hold one ~2 s, then answer 503);
- renews every lease it holds, and writes them to a holder file that the operating system
  unlocks when this process dies, so a later process gives them back at once
  (:mod:`studio_flows.tasks.slot_holders`); leases also expire on a server with a repossessor;
- gives every lease back at once when the process is asked to stop (:meth:`release_all`);
- says within seconds that it waits, then every 30 s, and gives up with a clear error after
  ``wait_limit_s`` without a slot coming free (a job queued behind this process's own jobs
  is not waiting on anyone else: it is neither announced nor timed out while they turn);
- keeps a *parked* lease (its job was submitted by ``submit_generation_job`` and nobody
  waits on it yet) for the task that will wait on that job (:meth:`park`, :meth:`claim`),
  and refuses with :class:`SlotDeadlockError` a wait that only this process's parked jobs
  could end (see :meth:`_check_not_deadlocked`).

Example:
    >>> pool = slot_pool()  # doctest: +SKIP
    >>> lease = pool.acquire()  # before the POST  # doctest: +SKIP
    >>> pool.release(lease)  # once the job is terminal  # doctest: +SKIP
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from datetime import datetime

from studio_flows.tasks.slot_api import (
    PrefectSlotApi,
    SlotApi,
    SlotRefused,
    SlotServerUnavailable,
    configured_api_url,
)
from studio_flows.tasks.slot_holders import (
    HolderFile,
    PeerWatch,
    holders_directory,
    live_holders,
    reclaim_dead_holders,
)

from studio_flows import interrupts
from studio_flows.errors import (
    PrefectUnavailableError,
    RunInterrupted,
    SlotDeadlockError,
    SlotWaitTimeoutError,
)

FAIR_USE_TAG = "model-studio"
FAIR_USE_LIMIT_NAME = f"tag:{FAIR_USE_TAG}"
MIN_LEASE_S = 60.0  # the server refuses shorter leases
# How long the pool keeps asking a Prefect API that does not answer before the run fails
# (the default of MODEL_STUDIO_PREFECT_UNAVAILABLE_LIMIT_S: a server restart takes less).
SERVER_UNAVAILABLE_LIMIT_S = 300.0
# ... and after how long it says so.
UNAVAILABLE_NOTICE_S = 10.0
FIRST_WAIT_NOTICE_S = 3.0
WAIT_NOTICE_EVERY_S = 30.0
# A waiting pool looks for slots of dead holders this often.
RECLAIM_EVERY_S = 5.0
# A wait fails as a deadlock once parked jobs have filled the limit for this long: long
# enough for a mapped wait task to start after its submit (tens of ms), short enough to be
# told within seconds.
PARKED_DEADLOCK_S = 5.0
# A refused pool looks this often whether a process on this machine gave a slot back (a
# few file sizes, no Prefect call), to ask again then instead of at its next poll.
PEER_WATCH_S = 0.02
# An ask of a new lease not answered this soon is doubled (see SlotPool._ask); a healthy
# server answers in tens of milliseconds.
HEDGE_AFTER_S = 0.15
# Asks of one pool in flight at once, the first and those doubling it (a held ask ends
# within seconds, often in a 503, and must not keep the next ones from going out).
MAX_ASKS_IN_FLIGHT = 6
# How often a refused pool asks the server while peers on this machine hold every slot.
PEERS_HOLD_POLL_S = 1.0
# Every waiter checks the limit's size each poll; an operator changes it rarely.
LIMIT_READ_EVERY_S = 5.0
# Set by the command line when it started the local Prefect server of this machine.
LOCAL_SERVER_ENV = "STUDIO_FLOWS_LOCAL_PREFECT_API"

logger = logging.getLogger("studio_flows.slots")


@dataclass
class Lease:
    """One slot this process holds; ``since`` is when the server granted it."""

    lease_id: uuid.UUID
    since: float


@dataclass
class _Waiting:
    """How long this pool has waited, for the notices and the wait limit."""

    since: float
    since_wall: datetime = field(default_factory=datetime.now)
    next_notice: float = 0.0
    next_reclaim: float = 0.0
    unavailable_since: float | None = None
    backoff: float = 0.0
    deadlocked_since: float | None = None


class SlotPool:
    """The fair-use slots of one limit held by this process (see the module docstring)."""

    def __init__(
        self,
        limit_name: str = FAIR_USE_LIMIT_NAME,
        *,
        api: SlotApi,
        holders: HolderFile | None = None,
        reclaim: Callable[[], int] | None = None,
        peers: PeerWatch | None = None,
        turn_s: float = 60.0,
        poll_s: float = 0.25,
        lease_s: float = MIN_LEASE_S,
        wait_limit_s: float = 600.0,
        unavailable_limit_s: float = SERVER_UNAVAILABLE_LIMIT_S,
        hedge_after_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit_name = limit_name
        self.unavailable_limit_s = unavailable_limit_s
        self.turn_s = turn_s
        self.poll_s = poll_s
        self.lease_s = max(lease_s, MIN_LEASE_S)
        self.wait_limit_s = wait_limit_s
        self.refusals = 0
        self._api = api
        self._holders = holders
        self._reclaim = reclaim
        self._peers = peers
        self._clock = clock
        self._cond = threading.Condition()
        self._held: dict[uuid.UUID, Lease] = {}
        self._unreturned: set[uuid.UUID] = set()
        self._idle: list[Lease] = []
        self._parked: set[uuid.UUID] = set()
        self._waiters = 0
        self._fetcher: threading.Thread | None = None
        self._fetch_error: Exception | None = None
        self._last_freed = float("-inf")
        self._renewer: threading.Thread | None = None
        self.deadlock_after_s = PARKED_DEADLOCK_S
        self.hedge_after_s = hedge_after_s
        self._asking = 0
        self.peers_hold_poll_s = PEERS_HOLD_POLL_S
        self._limit_read: tuple[int, float] | None = None

    @property
    def held(self) -> int:
        """Leases this process holds now (in use or about to be handed over)."""
        with self._cond:
            return len(self._held)

    def acquire(self) -> Lease:
        """A slot for one job: a lease handed over locally, or a new one from the server.

        Callers queue here; the pool's one fetcher thread asks the server while more
        callers wait than leases are ready, so a lease freed meanwhile is handed over at
        once. Raises :class:`RunInterrupted` when the process is asked to stop,
        :class:`SlotWaitTimeoutError` after ``wait_limit_s`` without a slot and
        :class:`SlotDeadlockError` (see :meth:`_check_not_deadlocked`).
        """
        with self._cond:
            if self._idle:
                return self._idle.pop()
            self._waiters += 1
            self._start_fetcher()
            self._cond.notify_all()
        try:
            return self._wait_for_slot(_Waiting(since=self._clock()))
        finally:
            with self._cond:
                self._waiters -= 1
                if not self._waiters:
                    self._fetch_error = None  # told to every caller that waited
                    self._cond.notify_all()
                orphans = self._orphans()
            for lease in orphans:
                self._give_back(lease.lease_id)

    @property
    def waiting(self) -> int:
        """Callers of :meth:`acquire` waiting for a slot now."""
        with self._cond:
            return self._waiters

    @property
    def parked(self) -> int:
        """Leases of submitted jobs that no task waits on yet."""
        with self._cond:
            return len(self._parked)

    def park(self, lease: Lease) -> None:
        """``lease``'s job was submitted: keep it (renewed) for whoever will wait on the job."""
        with self._cond:
            if lease.lease_id in self._held:
                self._parked.add(lease.lease_id)

    def claim(self, lease_id: uuid.UUID) -> Lease | None:
        """The lease of a parked job, now held by its waiter; None if this process lacks it."""
        with self._cond:
            self._parked.discard(lease_id)
            return self._held.get(lease_id)

    def release_id(self, lease_id: uuid.UUID) -> None:
        """:meth:`release` by id; a lease another process took is given back to the server."""
        lease = self.claim(lease_id)
        if lease is not None:
            self.release(lease)
        else:
            with contextlib.suppress(Exception):  # unknown or expired: nothing is held
                self._api.release(lease_id)

    def release(self, lease: Lease) -> None:
        """Done with ``lease``: hand it to a local waiter, or give it back to the server."""
        with self._cond:
            if lease.lease_id not in self._held:
                return  # already given back (release_all)
            self._parked.discard(lease.lease_id)
            self._last_freed = self._clock()
            fresh = self._clock() - lease.since < self.turn_s
            if self._waiters > len(self._idle) and fresh and not interrupts.stop_requested():
                self._idle.append(lease)
                self._cond.notify_all()
                return
            del self._held[lease.lease_id]
        self._give_back(lease.lease_id)

    def release_all(self) -> int:
        """Give every lease back at once (the process is stopping); return how many."""
        with self._cond:
            leases = list(self._held)
            self._held.clear()
            self._idle.clear()
            self._parked.clear()
            self._cond.notify_all()
        for lease_id in leases:
            self._give_back(lease_id)
        return len(leases)

    def settle_asks(self, timeout_s: float = 10.0) -> None:
        """Wait (up to ``timeout_s``) for asks still in flight, so that a lease the server
        grants after the last job still goes back (called when the process exits)."""
        with self._cond:
            self._cond.wait_for(lambda: self._asking == 0, timeout=timeout_s)

    @contextlib.contextmanager
    def slot(self):  # type: ignore[no-untyped-def]
        """``with pool.slot():`` holds one slot for the block."""
        lease = self.acquire()
        try:
            yield lease
        finally:
            self.release(lease)

    # ----------------------------------------------------------------- waiting

    def _wait_for_slot(self, waiting: _Waiting) -> Lease:
        waiting.next_notice = waiting.since + FIRST_WAIT_NOTICE_S
        while True:
            interrupts.check()
            with self._cond:
                if not self._idle and self._fetch_error is None:
                    self._cond.wait(timeout=self.poll_s)
                if self._idle:
                    lease = self._idle.pop()
                    break
                if self._fetch_error is not None:
                    raise self._fetch_error
            self._still_waiting(waiting)
            self._check_not_deadlocked(waiting)
        waited = self._clock() - waiting.since
        if waited >= FIRST_WAIT_NOTICE_S and not self._holds_every_slot():
            logger.warning("fair-use slot acquired after waiting %.0f s", waited)
        return lease

    def _still_waiting(self, waiting: _Waiting) -> None:
        """Say within seconds that this caller waits, and give up after the wait limit."""
        now = self._clock()
        if now >= waiting.next_notice:
            waiting.next_notice = now + WAIT_NOTICE_EVERY_S
            if not self._holds_every_slot():
                logger.warning(self._describe_wait(waiting, timed_out=False))
        # A slot this process freed is a turn: its queued jobs are moving, not stuck.
        if now - max(waiting.since, self._last_freed) >= self.wait_limit_s:
            raise SlotWaitTimeoutError(self._describe_wait(waiting, timed_out=True))

    def _orphans(self) -> list[Lease]:
        """Ready leases nobody waits for any more, taken off the books (under the lock)."""
        extra = len(self._idle) - self._waiters
        if extra <= 0:
            return []
        orphans, self._idle = self._idle[:extra], self._idle[extra:]
        for lease in orphans:
            del self._held[lease.lease_id]
        return orphans

    # ----------------------------------------------------------------- fetching

    def _start_fetcher(self) -> None:
        if self._fetcher is None:
            self._fetcher = threading.Thread(
                target=self._fetch_forever, name="slot-lease-fetcher", daemon=True
            )
            self._fetcher.start()

    def _fetch_forever(self) -> None:
        """Ask the server for a lease whenever more callers wait than leases are ready."""
        fetching = _Waiting(since=self._clock())
        while True:
            with self._cond:
                while self._waiters <= len(self._idle) or self._fetch_error is not None:
                    self._cond.wait()
                    fetching = _Waiting(since=self._clock())
            try:
                if self._holds_every_slot(refresh=True):
                    # Asking would be refused: this process's own jobs hold the limit, and
                    # the next one to end hands its lease over (a busy server answers a
                    # refusal in seconds, and every other call of this process waits).
                    with self._cond:
                        self._cond.wait(timeout=self.poll_s)
                    continue
                self._fetch_one(fetching)
            except RunInterrupted:
                pass  # each waiting caller sees the stop request itself
            except Exception as err:  # the limit is missing, the API gone: tell the callers
                with self._cond:
                    self._fetch_error = err
                    self._cond.notify_all()

    def _fetch_one(self, fetching: _Waiting) -> None:
        try:
            if self.hedge_after_s is None:
                self._add_lease(self._api.acquire(self.limit_name, self.lease_s))
            else:
                self._ask_hedged()
        except SlotRefused:
            self.refusals += 1
            self._on_refused(fetching)
            return
        except SlotServerUnavailable as err:
            self._server_unavailable(fetching, str(err))
            return
        fetching.unavailable_since = None

    def _ask_hedged(self) -> None:
        """Ask for a lease; return once one was granted (and added), raise if none was.

        Why hedge: a busy SQLite Prefect server sometimes holds a request ~2 s and then
        answers 503 (bench/NOTES.md); a slot freed meanwhile would idle. Each ask runs in
        a thread of its own, on its own connection; one not answered after
        ``hedge_after_s`` is joined by another every ``poll_s`` while callers still wait
        (at most ``MAX_ASKS_IN_FLIGHT``). A lease granted late goes back as an orphan.
        """
        pending = {self._start_ask()}
        timeout = self.hedge_after_s
        while True:
            done, pending = wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
            failed = [err for f in done if (err := f.exception()) is not None]
            if len(failed) < len(done):
                return  # granted, and added by the ask itself
            if not pending and failed:
                raise failed[-1]  # every ask failed: refused, or the server unavailable
            if done:
                continue  # an answer (a refusal) came: no ask has waited long this time
            timeout = self.poll_s
            with self._cond:
                wanted = self._waiters > len(self._idle)
                room = self._asking < MAX_ASKS_IN_FLIGHT
            if wanted and room and not interrupts.stop_requested():
                pending.add(self._start_ask())

    def _start_ask(self) -> Future[uuid.UUID]:
        """One ask in a thread of its own; a granted lease is added the moment it comes."""
        answer: Future[uuid.UUID] = Future()

        def ask() -> None:
            try:
                lease_id = self._api.acquire(self.limit_name, self.lease_s)
            except BaseException as err:  # handed to the fetcher, which waits on ``answer``
                answer.set_exception(err)
            else:
                self._add_lease(lease_id)
                answer.set_result(lease_id)
            finally:
                with self._cond:
                    self._asking -= 1
                    self._cond.notify_all()

        with self._cond:
            self._asking += 1
        threading.Thread(target=ask, name="slot-lease-ask", daemon=True).start()
        return answer

    def _add_lease(self, lease_id: uuid.UUID) -> None:
        """A lease the server granted: record it and hand it to a waiting caller."""
        lease = Lease(lease_id, self._clock())
        with self._cond:
            self._held[lease_id] = lease
            self._unreturned.add(lease_id)
            self._record_holders()
            self._start_renewer()
            self._idle.append(lease)
            orphans = self._orphans()  # a caller got a lease handed over meanwhile
            self._cond.notify_all()
        for orphan in orphans:
            self._give_back(orphan.lease_id)

    def _server_unavailable(self, waiting: _Waiting, cause: str) -> None:
        """A busy or restarting Prefect server is asked again; one gone for minutes fails."""
        now = self._clock()
        if waiting.unavailable_since is None:
            waiting.unavailable_since = now
        if now - waiting.unavailable_since > self.unavailable_limit_s:
            raise PrefectUnavailableError(
                f"The Prefect API ({self._api.server}) did not answer for "
                f"{self.unavailable_limit_s:g} s ({cause}); check PREFECT_API_URL "
                "(MODEL_STUDIO_PREFECT_UNAVAILABLE_LIMIT_S bounds this wait)."
            )
        # A busy server answers a 503 now and then: said only once it lasts.
        quiet = now - waiting.unavailable_since < UNAVAILABLE_NOTICE_S
        logger.log(
            logging.DEBUG if quiet else logging.WARNING,
            "Prefect API unavailable (%s); asking again",
            cause,
        )
        waiting.backoff = min(max(waiting.backoff * 2, self.poll_s), 10.0)
        interrupts.sleep(waiting.backoff * random.uniform(0.5, 1.0))

    def _on_refused(self, fetching: _Waiting) -> None:
        """The limit is full: look for dead holders' slots now and then, then ask again."""
        now = self._clock()
        fetching.unavailable_since = None
        if self._reclaim is not None and now >= fetching.next_reclaim:
            fetching.next_reclaim = now + RECLAIM_EVERY_S
            with contextlib.suppress(SlotServerUnavailable):
                if self._reclaim():
                    return
        # Peers on this machine holding every slot this pool lacks show their releases in
        # their holder files, so the server is asked rarely then (each refusal is a write
        # to the server's database, racing the peers' releases).
        pause = self.peers_hold_poll_s if self._peers_hold_the_rest() else self.poll_s
        self._pause_before_asking(pause * random.uniform(0.5, 1.0))

    def _peers_hold_the_rest(self) -> bool:
        if self._peers is None:
            return False
        limit = self._limit_size(refresh=True)  # read again every LIMIT_READ_EVERY_S at most
        if limit is None:
            return False
        with self._cond:
            held = len(self._held)
        return self._peers.holding() >= limit - held

    def _pause_before_asking(self, pause_s: float) -> None:
        """Wait ``pause_s`` before asking again; less when a peer on this machine gave a
        slot back, or when a lease handed over locally ended the demand."""
        deadline = self._clock() + pause_s
        step = pause_s if self._peers is None else PEER_WATCH_S
        while True:
            with self._cond:
                remaining = deadline - self._clock()
                if remaining <= 0 or self._waiters <= len(self._idle):
                    return
                self._cond.wait(timeout=min(remaining, step))
            if self._peers is not None and self._peers.released():
                return

    def _holds_every_slot(self, *, refresh: bool = False) -> bool:
        """True when this process holds the whole limit (its jobs queue behind its own).

        Callers read the limit's size as the fetcher last read it (``refresh``): a caller
        must never wait on a Prefect call while a lease waits for it.
        """
        with self._cond:
            held = len(self._held)
        limit = self._limit_size(refresh=refresh) if held else None
        return limit is not None and held >= limit

    def _limit_size(self, *, refresh: bool) -> int | None:
        """The limit's number of slots, read again (``refresh``) every ``LIMIT_READ_EVERY_S``."""
        now = self._clock()
        stale = self._limit_read is None or now - self._limit_read[1] >= LIMIT_READ_EVERY_S
        if refresh and stale:
            with contextlib.suppress(Exception):  # unknown: keep the last size read
                _, limit = self._api.occupancy(self.limit_name)
                self._limit_read = (limit, now)
        return None if self._limit_read is None else self._limit_read[0]

    def _check_not_deadlocked(self, waiting: _Waiting) -> None:
        """Raise :class:`SlotDeadlockError` when only this process's parked jobs hold slots.

        Why: a parked job's slot comes back only when a task waits on it, and a flow that
        submits one job more than the limit before it waits on any (a plain loop) never
        starts that wait; a mapped submit-then-wait pipeline claims each lease as its
        submit ends, so parked jobs filling the limit for seconds means nobody will wait.
        """
        with self._cond:
            parked, held = len(self._parked), len(self._held)
        stuck = parked > 0 and parked == held and self._holds_every_slot()
        now = self._clock()
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
        try:
            active, limit = self._api.occupancy(self.limit_name)
            taken = f"{active} of {limit} slots are taken"
        except Exception:  # a notice must never fail the wait it describes
            taken = "every slot is taken"
        others = ""
        if self._holders is not None:
            count = live_holders(self._holders.path.parent, exclude=self._holders.path)
            others = f" ({count} other studio-flows process(es) on this machine)"
        since = waiting.since_wall.strftime("%H:%M:%S")
        if not timed_out:
            return (
                f"waiting for a fair-use slot since {since}: {taken} of the Prefect "
                f"concurrency limit {self.limit_name!r}{others}"
            )
        return (
            f"No fair-use slot came free in {self.wait_limit_s:.0f} s (waiting since {since}): "
            f"{taken} of the Prefect concurrency limit {self.limit_name!r}{others}. "
            f"See who holds them with `prefect gcl inspect {self.limit_name}`; "
            "wait longer with MODEL_STUDIO_SLOT_WAIT_LIMIT_S."
        )

    # ----------------------------------------------------------------- leases

    def _give_back(self, lease_id: uuid.UUID) -> None:
        try:
            self._api.release(lease_id)
        except Exception as err:  # its lease expires; the run must not fail for it
            logger.warning("could not give a fair-use slot back (%s); its lease expires", err)
            return
        with self._cond:
            self._unreturned.discard(lease_id)
            self._record_holders()

    def _record_holders(self) -> None:
        # A lease stays in the holder file until the server took it back: a process that
        # dies while giving it back leaves it for the next one to give back.
        if self._holders is not None:
            self._holders.record(sorted(self._unreturned))

    def _start_renewer(self) -> None:
        if self._renewer is None:
            self._renewer = threading.Thread(
                target=self._renew_forever, name="slot-lease-renewer", daemon=True
            )
            self._renewer.start()

    def _renew_forever(self) -> None:
        # Renew well before expiry: a third of the lease leaves two tries to spare.
        while True:
            time.sleep(self.lease_s / 3)
            with self._cond:
                leases = list(self._held)
            for lease_id in leases:
                try:
                    self._api.renew(lease_id, self.lease_s)
                except Exception as err:
                    logger.warning("fair-use lease renewal failed (%s)", err)


_pools: dict[tuple[str, str], SlotPool] = {}
# The same pools by the API URL the settings named when each was made (see slot_pool).
_pools_by_setting: dict[tuple[str, str], SlotPool] = {}
_pools_lock = threading.Lock()


def slot_pool(
    limit_name: str = FAIR_USE_LIMIT_NAME,
    *,
    turn_s: float = 60.0,
    wait_limit_s: float = 600.0,
    unavailable_limit_s: float = SERVER_UNAVAILABLE_LIMIT_S,
) -> SlotPool:
    """This process's pool for ``limit_name`` on the Prefect API it points at now.

    Example:
        >>> with slot_pool().slot():  # doctest: +SKIP
        ...     run_one_job()
    """
    url = configured_api_url()
    with _pools_lock:
        # Found by the configured URL first: every job asks, and a client is costly to build.
        pool = _pools_by_setting.get((url, limit_name)) if url else None
        if pool is None:
            pool = _pool_of_client(limit_name, turn_s=turn_s, wait_limit_s=wait_limit_s)
            if url:
                _pools_by_setting[(url, limit_name)] = pool
        pool.turn_s, pool.wait_limit_s = turn_s, wait_limit_s
        pool.unavailable_limit_s = unavailable_limit_s
        return pool


def _pool_of_client(limit_name: str, *, turn_s: float, wait_limit_s: float) -> SlotPool:
    """The pool of the API a new Prefect client talks to (made if missing; under the lock)."""
    api = PrefectSlotApi()
    key = (api.server, limit_name)
    pool = _pools.get(key)
    if pool is None:
        pool = _new_pool(api, limit_name, turn_s=turn_s, wait_limit_s=wait_limit_s)
        _pools[key] = pool
    else:
        api.close()  # the pool talks through its own
    return pool


def release_all_slots() -> int:
    """Give back every lease of every pool of this process (a stop was requested)."""
    with _pools_lock:
        pools = list(_pools.values())
    return sum(pool.release_all() for pool in pools)


def _new_pool(
    api: PrefectSlotApi, limit_name: str, *, turn_s: float, wait_limit_s: float
) -> SlotPool:
    # Imported here: it loads Prefect's server-side lease storage, which only this needs.
    from studio_flows.tasks.local_leases import reclaim_local

    directory = holders_directory()
    server = _server_key(api.server)

    def reclaim() -> int:
        return reclaim_dead_holders(directory, server, api.release) + reclaim_local(
            api, limit_name, server
        )

    reclaim()
    holders = HolderFile(directory, server)
    pool = SlotPool(
        limit_name,
        api=api,
        holders=holders,
        reclaim=reclaim,
        peers=PeerWatch(directory, exclude=holders.path, server=server),
        hedge_after_s=HEDGE_AFTER_S,
        turn_s=turn_s,
        wait_limit_s=wait_limit_s,
    )
    # Registered after the holder file's own hook, so it runs first (atexit is LIFO): a
    # lease granted to a late ask is given back and leaves the file before it closes.
    atexit.register(pool.settle_asks)
    return pool


def _server_key(api_url: str) -> str:
    """The local server's port changes every run; its leases live in this PREFECT_HOME."""
    local = os.environ.get(LOCAL_SERVER_ENV, "").rstrip("/")
    return "local" if local and local == api_url.rstrip("/") else api_url
