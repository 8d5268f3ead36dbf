"""How a slot pool talks to the Prefect API: asks for leases, doubles held asks, renews
and gives back.

One fetcher thread per pool asks the server (one request every ``poll_s``, no
``Retry-After`` sleep) only while more callers wait than leases are ready. It asks again
at once when another process on this machine gives a slot back (its holder file shrinks,
:class:`~studio_flows.tasks.slot_holders.PeerWatch`), and only about once a second while
such peers hold every slot it lacks. It doubles an ask the server holds for long (a busy
SQLite server may hold one ~2 s, then answer 503), looks for the slots of dead holders now
and then, and tells the waiting callers when the API is gone for minutes. Every lease it
got is renewed by a thread of its own and listed in this process's holder file until the
server took it back.

Example:
    >>> asker = SlotAsker(SlotBooks(), "tag:model-studio", api=PrefectSlotApi())
    ... # doctest: +SKIP
    >>> asker.start()  # under the books' lock, once a caller waits  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass

from studio_flows.tasks.slot_api import SlotApi, SlotRefused, SlotServerUnavailable
from studio_flows.tasks.slot_books import SlotBooks
from studio_flows.tasks.slot_holders import HolderFile, PeerWatch, live_holders

from studio_flows.errors import PrefectUnavailableError

MIN_LEASE_S = 60.0  # the server refuses shorter leases
# A refused pool asks the server again at most this long after its last answer (jitter
# makes it sooner), unless peers on this machine hold every slot it lacks.
POLL_S = 0.25
# How long the pool keeps asking a Prefect API that does not answer before the run fails
# (the default of MODEL_STUDIO_PREFECT_UNAVAILABLE_LIMIT_S: a server restart takes less).
SERVER_UNAVAILABLE_LIMIT_S = 300.0
# ... and after how long it says so.
UNAVAILABLE_NOTICE_S = 10.0
# A waiting pool looks for slots of dead holders this often.
RECLAIM_EVERY_S = 5.0
# A refused pool looks this often whether a process on this machine gave a slot back (a
# few file sizes, no Prefect call), to ask again then instead of at its next poll.
PEER_WATCH_S = 0.02
# An ask of a new lease not answered this soon is doubled (see SlotAsker._ask_hedged); a
# healthy server answers in tens of milliseconds.
HEDGE_AFTER_S = 0.15
# Asks of one pool in flight at once, the first and those doubling it (a held ask ends
# within seconds, often in a 503, and must not keep the next ones from going out).
MAX_ASKS_IN_FLIGHT = 6
# How often a refused pool asks the server while peers on this machine hold every slot.
PEERS_HOLD_POLL_S = 1.0
# Every waiter checks the limit's size each poll; an operator changes it rarely.
LIMIT_READ_EVERY_S = 5.0

logger = logging.getLogger("studio_flows.slots")


@dataclass
class _Asking:
    """What the fetcher remembers between asks, from the moment callers started waiting."""

    next_reclaim: float = 0.0
    unavailable_since: float | None = None
    backoff: float = 0.0


class SlotAsker:
    """The Prefect side of one pool: leases asked for, renewed and given back (see the
    module docstring). Granted leases go into ``books`` for the pool to hand over."""

    def __init__(
        self,
        books: SlotBooks,
        limit_name: str,
        *,
        api: SlotApi,
        holders: HolderFile | None = None,
        reclaim: Callable[[], int] | None = None,
        peers: PeerWatch | None = None,
        poll_s: float = POLL_S,
        lease_s: float = MIN_LEASE_S,
        unavailable_limit_s: float = SERVER_UNAVAILABLE_LIMIT_S,
        hedge_after_s: float | None = None,
    ) -> None:
        self.limit_name = limit_name
        self.poll_s = poll_s
        self.lease_s = max(lease_s, MIN_LEASE_S)
        self.unavailable_limit_s = unavailable_limit_s
        self.hedge_after_s = hedge_after_s
        self.peers_hold_poll_s = PEERS_HOLD_POLL_S
        self.refusals = 0
        self._books = books
        self._api = api
        self._holders = holders
        self._reclaim = reclaim
        self._peers = peers
        self._unreturned: set[uuid.UUID] = set()
        self._asking = 0
        self._fetcher: threading.Thread | None = None
        self._renewer: threading.Thread | None = None
        self._limit_read: tuple[int, float] | None = None

    # ----------------------------------------------------------------- for the pool

    def start(self) -> None:
        """Start the fetcher thread if it is not running (under the books' lock)."""
        if self._fetcher is None:
            self._fetcher = threading.Thread(
                target=self._fetch_forever, name="slot-lease-fetcher", daemon=True
            )
            self._fetcher.start()

    def settle(self, timeout_s: float) -> None:
        """Wait (up to ``timeout_s``) until no ask is in flight."""
        with self._books.cond:
            self._books.cond.wait_for(lambda: self._asking == 0, timeout=timeout_s)

    def give_back(self, lease_id: uuid.UUID) -> None:
        """Release a lease this pool took off its books; a failure only logs (it expires)."""
        try:
            self._api.release(lease_id)
        except Exception as err:  # its lease expires; the run must not fail for it
            logger.warning("could not give a fair-use slot back (%s); its lease expires", err)
            return
        with self._books.cond:
            self._unreturned.discard(lease_id)
            self._record_holders()

    def give_back_unknown(self, lease_id: uuid.UUID) -> None:
        """Release a lease this pool never held (another process took it), quietly."""
        with contextlib.suppress(Exception):  # unknown or expired: nothing is held
            self._api.release(lease_id)

    def holds_every_slot(self, *, refresh: bool = False) -> bool:
        """True when this process holds the whole limit (its jobs queue behind its own).

        Callers read the limit's size as the fetcher last read it (``refresh``): a caller
        must never wait on a Prefect call while a lease waits for it.
        """
        held = self._books.held_count()
        limit = self._limit_size(refresh=refresh) if held else None
        return limit is not None and held >= limit

    def who_holds(self) -> str:
        """``"2 of 3 slots are taken of the Prefect concurrency limit ..."``, for notices."""
        try:
            active, limit = self._api.occupancy(self.limit_name)
            taken = f"{active} of {limit} slots are taken"
        except Exception:  # a notice must never fail the wait it describes
            taken = "every slot is taken"
        others = ""
        if self._holders is not None:
            count = live_holders(self._holders.path.parent, exclude=self._holders.path)
            others = f" ({count} other studio-flows process(es) on this machine)"
        return f"{taken} of the Prefect concurrency limit {self.limit_name!r}{others}"

    # ----------------------------------------------------------------- fetching

    def _fetch_forever(self) -> None:
        """Ask the server for a lease whenever more callers wait than leases are ready."""
        books = self._books
        asking = _Asking()
        while True:
            with books.cond:
                while not books.wanted() or books.fetch_error is not None:
                    books.cond.wait()
                    asking = _Asking()
            try:
                if self.holds_every_slot(refresh=True):
                    # Asking would be refused: this process's own jobs hold the limit, and
                    # the next one to end hands its lease over (a busy server answers a
                    # refusal in seconds, and every other call of this process waits).
                    with books.cond:
                        books.cond.wait(timeout=self.poll_s)
                    continue
                self._fetch_one(asking)
            except Exception as err:  # the limit is missing, the API gone: tell the callers
                with books.cond:
                    books.fetch_error = err
                    books.cond.notify_all()

    def _fetch_one(self, asking: _Asking) -> None:
        try:
            if self.hedge_after_s is None:
                self._granted(self._api.acquire(self.limit_name, self.lease_s))
            else:
                self._ask_hedged(self.hedge_after_s)
        except SlotRefused:
            self.refusals += 1
            self._on_refused(asking)
            return
        except SlotServerUnavailable as err:
            self._server_unavailable(asking, str(err))
            return
        asking.unavailable_since = None

    def _ask_hedged(self, hedge_after_s: float) -> None:
        """Ask for a lease; return once one was granted (and booked), raise if none was.

        Why hedge: a busy SQLite Prefect server sometimes holds a request ~2 s and then
        answers 503 (bench/NOTES.md); a slot freed meanwhile would idle. Each ask runs in
        a thread of its own, on its own connection; one not answered after
        ``hedge_after_s`` is joined by another every ``poll_s`` while callers still wait
        (at most ``MAX_ASKS_IN_FLIGHT``). A lease granted late goes back as an orphan.
        """
        pending = {self._start_ask()}
        timeout = hedge_after_s
        while True:
            done, pending = wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
            failed = [err for f in done if (err := f.exception()) is not None]
            if len(failed) < len(done):
                return  # granted, and booked by the ask itself
            if not pending and failed:
                raise failed[-1]  # every ask failed: refused, or the server unavailable
            if done:
                continue  # an answer (a refusal) came: no ask has waited long this time
            timeout = self.poll_s
            if self._may_double():
                pending.add(self._start_ask())

    def _may_double(self) -> bool:
        """Callers still wait, and fewer than ``MAX_ASKS_IN_FLIGHT`` asks are out."""
        with self._books.cond:
            return self._books.wanted() and self._asking < MAX_ASKS_IN_FLIGHT

    def _start_ask(self) -> Future[uuid.UUID]:
        """One ask in a thread of its own; a granted lease is booked the moment it comes."""
        answer: Future[uuid.UUID] = Future()

        def ask() -> None:
            try:
                lease_id = self._api.acquire(self.limit_name, self.lease_s)
            except BaseException as err:  # handed to the fetcher, which waits on ``answer``
                answer.set_exception(err)
            else:
                self._granted(lease_id)
                answer.set_result(lease_id)
            finally:
                with self._books.cond:
                    self._asking -= 1
                    self._books.cond.notify_all()

        with self._books.cond:
            self._asking += 1
        threading.Thread(target=ask, name="slot-lease-ask", daemon=True).start()
        return answer

    def _granted(self, lease_id: uuid.UUID) -> None:
        """A lease the server granted: listed, renewed, and handed to a waiting caller."""
        with self._books.cond:
            self._unreturned.add(lease_id)
            self._record_holders()
            self._start_renewer()
            orphans = self._books.grant(lease_id)
        for orphan in orphans:
            self.give_back(orphan.lease_id)

    # ----------------------------------------------------------------- refused or gone

    def _server_unavailable(self, asking: _Asking, cause: str) -> None:
        """A busy or restarting Prefect server is asked again; one gone for minutes fails."""
        now = self._books.clock()
        if asking.unavailable_since is None:
            asking.unavailable_since = now
        if now - asking.unavailable_since > self.unavailable_limit_s:
            raise PrefectUnavailableError(
                f"The Prefect API ({self._api.server}) did not answer for "
                f"{self.unavailable_limit_s:g} s ({cause}); check PREFECT_API_URL "
                "(MODEL_STUDIO_PREFECT_UNAVAILABLE_LIMIT_S bounds this wait)."
            )
        # A busy server answers a 503 now and then: said only once it lasts.
        quiet = now - asking.unavailable_since < UNAVAILABLE_NOTICE_S
        logger.log(
            logging.DEBUG if quiet else logging.WARNING,
            "Prefect API unavailable (%s); asking again",
            cause,
        )
        asking.backoff = min(max(asking.backoff * 2, self.poll_s), 10.0)
        # The fetcher serves every run of the process and reads no run's stop: it pauses
        # while callers still wait (a stopped run's callers leave, and so ends the demand).
        with self._books.cond:
            self._books.cond.wait_for(
                lambda: not self._books.wanted(),
                timeout=asking.backoff * random.uniform(0.5, 1.0),
            )

    def _on_refused(self, asking: _Asking) -> None:
        """The limit is full: look for dead holders' slots now and then, then ask again."""
        now = self._books.clock()
        asking.unavailable_since = None
        if self._reclaim is not None and now >= asking.next_reclaim:
            asking.next_reclaim = now + RECLAIM_EVERY_S
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
        held = self._books.held_count()
        return self._peers.holding() >= limit - held

    def _pause_before_asking(self, pause_s: float) -> None:
        """Wait ``pause_s`` before asking again; less when a peer on this machine gave a
        slot back, or when a lease handed over locally ended the demand."""
        books = self._books
        deadline = books.clock() + pause_s
        step = pause_s if self._peers is None else PEER_WATCH_S
        while True:
            with books.cond:
                remaining = deadline - books.clock()
                if remaining <= 0 or not books.wanted():
                    return
                books.cond.wait(timeout=min(remaining, step))
            if self._peers is not None and self._peers.released():
                return

    def _limit_size(self, *, refresh: bool) -> int | None:
        """The limit's number of slots, read again (``refresh``) every ``LIMIT_READ_EVERY_S``."""
        now = self._books.clock()
        stale = self._limit_read is None or now - self._limit_read[1] >= LIMIT_READ_EVERY_S
        if refresh and stale:
            with contextlib.suppress(Exception):  # unknown: keep the last size read
                _, limit = self._api.occupancy(self.limit_name)
                self._limit_read = (limit, now)
        return None if self._limit_read is None else self._limit_read[0]

    # ----------------------------------------------------------------- keeping leases

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
            with self._books.cond:
                leases = list(self._books.held)
            for lease_id in leases:
                try:
                    self._api.renew(lease_id, self.lease_s)
                except Exception as err:
                    logger.warning("fair-use lease renewal failed (%s)", err)
