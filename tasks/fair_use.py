"""Fair use: at most the account's limit of jobs active, on the leases of Prefect's server.

A slot is a lease on one slot of a Prefect global concurrency limit (``tag:model-studio``
unless the credentials name another), taken before a job's POST and given back once the
job is terminal, with the calls ``prefect.concurrency`` makes (``increment-with-lease``,
``renew``, ``decrement-with-lease``; Prefect's client retries a busy server). Around them:

- **hand-off** (prefect#23183): a lease a job gives back goes straight to a job of this
  process that waits, unless it has been held ``turn_s``; then it goes back to the server
  so other runs get a turn;
- **strict renewal**: one thread renews every lease this process holds; a lease the server
  no longer knows (410), or could not renew for a whole lease, is *lost*: it is never
  handed on, and its holder starts no new job on it (:meth:`Lease.check`);
- **nothing repaired on the client**: a dead process's leases expire on the server (its
  lease repossessor), nowhere else;
- a lease names its holder (the task run, else the flow run) for the server's books.

Example:
    >>> pool = slot_pool()  # doctest: +SKIP
    >>> with pool.slot() as lease:  # held from before the POST until the job ends
    ...     run_one_job()  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

import httpx
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from studio_flows import interrupts
from studio_flows.errors import (
    FairUseError,
    PrefectUnavailableError,
    SlotWaitTimeoutError,
)
from studio_flows.interrupts import RunControl
from studio_flows.settings import Settings

FAIR_USE_TAG = "model-studio"
FAIR_USE_LIMIT_NAME = f"tag:{FAIR_USE_TAG}"
LEASE_S = 60.0  # the server's shortest lease
POLL_S = 0.25  # a refused waiter asks again this often (jittered)
FIRST_WAIT_NOTICE_S = 3.0
WAIT_NOTICE_EVERY_S = 30.0
LIMIT_READ_EVERY_S = 5.0
RENEW_TICK_S = 1.0
REPOSSESSOR_LOOP_S = 15.0  # how often Prefect's server reclaims expired leases

logger = logging.getLogger("studio_flows.slots")
T = TypeVar("T")


class SlotRefused(Exception):
    """The limit is full right now (HTTP 423)."""


class SlotServerUnavailable(Exception):
    """The Prefect API did not answer (an ask: at once; any other call: after retries)."""


class SlotServerBusy(SlotServerUnavailable):
    """The Prefect API answered 503: busy now (SQLite's "database is locked"), not gone."""


class LeaseGone(Exception):
    """The server no longer knows the lease (expired or revoked: HTTP 404 or 410)."""


class SlotApi(Protocol):
    """The Prefect calls a pool makes (:class:`PrefectSlotApi`; tests pass a fake)."""

    def acquire(self, limit_name: str, lease_s: float, holder: Any = None) -> uuid.UUID: ...
    def renew(self, lease_id: uuid.UUID, lease_s: float) -> None: ...
    def release(self, lease_id: uuid.UUID) -> None: ...
    def occupancy(self, limit_name: str) -> tuple[int, int]: ...


class PrefectSlotApi:
    """:class:`SlotApi` over one Prefect sync client (thread-safe; retries on, but for asks).

    Example:
        >>> PrefectSlotApi().acquire("tag:model-studio", 60)  # doctest: +SKIP
        UUID('...')
    """

    def __init__(self) -> None:
        from prefect.client.orchestration import get_client

        self._client = get_client(sync_client=True)
        self._client.__enter__()
        self.server = str(self._client.api_url).rstrip("/")

    def acquire(self, limit_name: str, lease_s: float, holder: Any = None) -> uuid.UUID:
        body: dict[str, Any] = {
            "names": [limit_name],
            "slots": 1,
            "mode": "concurrency",
            "lease_duration": lease_s,
        }
        if holder is not None:
            body["holder"] = holder.model_dump(mode="json")
        lease = self._call(self._ask_once, body).json()
        if not lease.get("limits"):
            self.release(uuid.UUID(lease["lease_id"]))
            raise FairUseError(
                f"The Prefect concurrency limit {limit_name!r} does not exist: it must be "
                "created before jobs are submitted (studio-flows creates it on first use)."
            )
        return uuid.UUID(lease["lease_id"])

    def renew(self, lease_id: uuid.UUID, lease_s: float) -> None:
        self._call(self._client.renew_concurrency_lease, lease_id, lease_duration=lease_s)

    def release(self, lease_id: uuid.UUID) -> None:
        with contextlib.suppress(LeaseGone):  # expired or revoked: nothing is held
            self._call(self._client.release_concurrency_slots_with_lease, lease_id)

    def occupancy(self, limit_name: str) -> tuple[int, int]:
        limit = self._call(self._client.read_global_concurrency_limit_by_name, limit_name)
        return int(limit.active_slots), int(limit.limit)

    def close(self) -> None:
        """Close the Prefect client (a pool's own API stays open for the process)."""
        self._client.__exit__(None, None, None)

    def _ask_once(self, body: dict[str, Any]) -> httpx.Response:
        """POST increment-with-lease with one try: a waiter asks again within ``POLL_S``
        anyway, and an ask the server cannot serve now (503: SQLite's "database is locked"
        while runs write) is a refusal to it. Prefect's own send would sleep 2 s first, even
        with its retries set to 0, a freed slot idle that long (bench/NOTES.md, item 30)."""
        http = self._client._client  # Prefect's httpx client: base URL, auth, headers
        path = "/v2/concurrency_limits/increment-with-lease"
        request = http.build_request("POST", path, json=body)
        response = httpx.Client.send(http, request)
        if response.status_code == 403:  # a server that wants a CSRF token: Prefect's send
            response = http.send(request)
        return response.raise_for_status()

    def _call(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except httpx.HTTPStatusError as err:
            status = err.response.status_code
            if status == 423:
                raise SlotRefused from None
            if status in (404, 410):
                raise LeaseGone(f"HTTP {status}") from None
            if status == 503:
                raise SlotServerBusy(f"HTTP {status}") from None
            if status == 429 or status >= 500:
                raise SlotServerUnavailable(f"HTTP {status}") from None
            raise
        except httpx.TransportError as err:
            raise SlotServerUnavailable(type(err).__name__) from None


@dataclass
class Lease:
    """One slot this process holds: granted at ``since`` (monotonic), held by ``run``;
    ``lost`` says why the server no longer counts it (then no new job may start on it)."""

    lease_id: uuid.UUID
    since: float
    run: RunControl | None = field(default=None, repr=False, compare=False)
    renewed_at: float = field(default=0.0, compare=False)
    lost: str | None = field(default=None, compare=False)
    adopted: bool = field(default=False, compare=False)  # a killed run's, until its job ends

    def check(self) -> None:
        """Raise :class:`FairUseError` if the slot was lost: a new job on it could be a 4th."""
        if self.lost is not None:
            raise FairUseError(
                f"The fair-use lease {self.lease_id} was lost ({self.lost}): no new job "
                "starts on it; jobs in flight keep their recorded job_id for the next run."
            )


def lease_holder() -> Any:
    """Who holds a slot taken now, for the server's books: the task run, else the flow run."""
    from prefect.context import FlowRunContext, TaskRunContext
    from prefect.types._concurrency import ConcurrencyLeaseHolder

    task_run = TaskRunContext.get()
    if task_run is not None:
        return ConcurrencyLeaseHolder(type="task_run", id=task_run.task_run.id)
    flow_run = FlowRunContext.get()
    if flow_run is not None and flow_run.flow_run is not None:
        return ConcurrencyLeaseHolder(type="flow_run", id=flow_run.flow_run.id)
    return None


class SlotPool:
    """The slots of one limit this process holds (see the module docstring)."""

    def __init__(
        self,
        limit_name: str = FAIR_USE_LIMIT_NAME,
        *,
        api: SlotApi,
        turn_s: float = 60.0,
        poll_s: float = POLL_S,
        lease_s: float = LEASE_S,
        renew_every_s: float | None = None,
        wait_limit_s: float = 600.0,
        unavailable_limit_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit_name, self.api, self.clock = limit_name, api, clock
        self.turn_s, self.poll_s, self.lease_s = turn_s, poll_s, lease_s
        self.renew_every_s = renew_every_s or lease_s / 3  # two tries to spare
        self.wait_limit_s, self.unavailable_limit_s = wait_limit_s, unavailable_limit_s
        self.refusals = 0
        self._cond = threading.Condition()
        self._held: dict[uuid.UUID, Lease] = {}
        self._idle: list[Lease] = []  # handed back, for the next local waiter
        # The job each watcher polls, while it polls or a wait holds it (watch()).
        self._watched: weakref.WeakValueDictionary[str, Future[Any]] = weakref.WeakValueDictionary()
        self._waiters = 0
        self._asking = False  # one ask of the server at a time
        self._ask_error: Exception | None = None
        self._unavailable: tuple[float, str] | None = None  # since when, and why
        self._last_freed = float("-inf")
        self._quiet_until = float("-inf")  # no waiting notice before this (see _notice_due)
        self._limit_read: tuple[int, float] | None = None
        self._renewer: threading.Thread | None = None

    @property
    def held(self) -> int:
        """Leases this process holds now."""
        with self._cond:
            return len(self._held)

    def lease_ids(self) -> list[uuid.UUID]:
        """The leases this process holds now (for notices and tests)."""
        with self._cond:
            return list(self._held)

    @property
    def waiting(self) -> int:
        """Callers of :meth:`acquire` waiting now."""
        with self._cond:
            return self._waiters

    def acquire(self, run: RunControl | None = None) -> Lease:
        """A slot for one job of ``run`` (default: the current run), booked on it.

        Raises :class:`RunInterrupted` when ``run`` stops, :class:`SlotWaitTimeoutError`
        or :class:`PrefectUnavailableError`.

        Example:
            >>> lease = pool.acquire()  # before the POST  # doctest: +SKIP
        """
        run = run if run is not None else interrupts.current()
        run.check()
        holder = lease_holder()
        with self._cond:
            if self._idle:
                return self._booked(self._idle.pop(), run)
            self._waiters += 1
        try:
            return self._booked(self._wait(run, holder), run)
        finally:
            with self._cond:
                self._waiters -= 1
            self._give_back_extra()

    def release(self, lease: Lease) -> None:
        """Done with ``lease``: hand it to a local waiter, or give it back to the server.

        Example:
            >>> pool.release(lease)  # once the job is terminal  # doctest: +SKIP
        """
        if lease.run is not None:
            lease.run.let_go(lease)
        with self._cond:
            if self._held.get(lease.lease_id) is not lease:
                return  # given back already, handed on, or lost
            self._last_freed = self.clock()
            fresh = self.clock() - lease.since < self.turn_s
            if fresh and self._waiters > len(self._idle):
                # The next holder gets its own handle: a second release of this one must
                # not free the slot under the job that now runs on it.
                handed = Lease(lease.lease_id, lease.since, renewed_at=lease.renewed_at)
                self._held[lease.lease_id] = handed
                self._idle.append(handed)
                self._cond.notify_all()
                return
            del self._held[lease.lease_id]
        self._give_back(lease.lease_id)

    def release_all(self) -> int:
        """Give every lease of every run back; return how many (tests; a process that ends)."""
        with self._cond:
            leases = list(self._held.values())
            self._held.clear()
            self._idle.clear()
            self._cond.notify_all()
        for lease in leases:
            # A run still on it stops: the server may grant the slot to another at once.
            lease.lost = lease.lost or "given back by release_all()"
            self._give_back(lease.lease_id)
        return len(leases)

    def adopt(self, lease_id: uuid.UUID) -> Lease | None:
        """Hold ``lease_id``, a lease a process that is gone took (None: it expired already).

        The lease is renewed from now on and counts as this process's; give it back with
        :meth:`release` (or hand it to :meth:`watch`) once its job is terminal.

        Example:
            >>> lease = pool.adopt(recorded_lease_id)  # doctest: +SKIP
        """
        try:
            self.api.renew(lease_id, self.lease_s)
        except LeaseGone:
            return None
        now = self.clock()
        with self._cond:
            lease = self._held[lease_id] = Lease(lease_id, now, renewed_at=now, adopted=True)
            self._start_renewer()
        return lease

    @contextlib.contextmanager
    def slot(self) -> Iterator[Lease]:
        """``with pool.slot():`` holds one slot for the block."""
        lease = self.acquire()
        try:
            yield lease
        finally:
            self.release(lease)

    def watch(self, lease: Lease, key: str, poll: Callable[[], T]) -> Future[T]:
        """Keep ``lease`` until ``poll()`` returns or raises (the job ``key`` is terminal,
        or the poll's own bound passed), then release it: a job counts until it ends, past
        its caller's deadline, stop or thread. Returns the poll's outcome, which
        :meth:`watching` finds by ``key`` while the watcher runs or a caller holds it.

        Example:
            >>> outcome = pool.watch(lease, job_id, lambda: wait_for(job_id))  # doctest: +SKIP
            >>> outcome.result()  # doctest: +SKIP
        """
        if lease.run is not None:
            lease.run.let_go(lease)  # no longer the run's: its stop must not free it
            lease.run = None
        outcome: Future[T] = Future()
        with self._cond:
            self._watched[key] = outcome

        def watch() -> None:
            try:
                with interrupts.running(RunControl()):  # nothing of the caller's run
                    value = poll()
            except BaseException as err:  # handed to whoever waits on the job
                self.release(lease)
                outcome.set_exception(err)
            else:
                self.release(lease)  # first: the next job may start as this one ends
                outcome.set_result(value)

        threading.Thread(target=watch, name="fair-use-watcher", daemon=True).start()
        return outcome

    def watching(self, key: str) -> Future[Any] | None:
        """The outcome of this process's watcher of ``key``; None once nobody holds it."""
        with self._cond:
            return self._watched.get(key)

    # ----------------------------------------------------------------- waiting

    def _booked(self, lease: Lease, run: RunControl) -> Lease:
        lease.run = run
        run.hold(lease, lambda: self.release(lease))
        return lease

    def _wait(self, run: RunControl, holder: Any) -> Lease:
        """Wait for a lease handed back here or granted to this pool's ask (one at a time,
        in a thread of its own, so a lease handed back meanwhile is taken at once)."""
        since, since_wall = self.clock(), datetime.now()
        next_notice = since + FIRST_WAIT_NOTICE_S
        while True:
            run.check()
            full = self._holds_every_slot()  # outside the lock: it may ask the server
            with self._cond:
                if self._idle and not run.stop_requested():
                    return self._idle.pop()
                if self._ask_error is not None:
                    raise self._ask_error
                if not self._asking and not full:
                    self._asking = True
                    threading.Thread(target=self._ask, args=(holder,), daemon=True).start()
                self._cond.wait(timeout=self.poll_s)
            self._check_available()
            now = self.clock()
            if now >= next_notice and self._notice_due(now):
                next_notice = now + WAIT_NOTICE_EVERY_S
                logger.warning(
                    "waiting for a fair-use slot since %s: %s",
                    f"{since_wall:%H:%M:%S}",
                    self._who_holds(),
                )
            if now - max(since, self._last_freed) >= self.wait_limit_s:
                raise SlotWaitTimeoutError(
                    f"No fair-use slot came free in {self.wait_limit_s:.0f} s (waiting since "
                    f"{since_wall:%H:%M:%S}): {self._who_holds()}. See who holds them with "
                    f"`prefect gcl inspect {self.limit_name}`; wait longer with "
                    "MODEL_STUDIO_SLOT_WAIT_LIMIT_S."
                )

    def _notice_due(self, now: float) -> bool:
        """One waiting notice per pool every ``WAIT_NOTICE_EVERY_S``, however many wait (a
        run's three lanes waiting together are one wait to the user)."""
        with self._cond:
            if now < self._quiet_until:
                return False
            self._quiet_until = now + WAIT_NOTICE_EVERY_S
            return True

    def _ask(self, holder: Any) -> None:
        """Ask the server for one lease for the waiters; a refusal pauses the next ask."""
        pause = 0.0
        try:
            lease_id = self.api.acquire(self.limit_name, self.lease_s, holder)
        except SlotRefused:
            self.refusals += 1
            pause = self.poll_s * random.uniform(0.5, 1.0)
        except SlotServerUnavailable as err:
            self._unavailable = (self._unavailable or (self.clock(), ""))[0], str(err)
            # A busy server (its database locked for a moment) may well grant the next ask:
            # 30 task runs starting at once made every second ask a 503 (NOTES.md, item 30).
            busy = isinstance(err, SlotServerBusy)
            pause = self.poll_s * (random.uniform(0.1, 0.3) if busy else 1.0)
        except Exception as err:  # the limit is missing: every waiter is told
            with self._cond:
                self._ask_error = err
        else:
            self._unavailable = None
            now = self.clock()
            with self._cond:
                self._held[lease_id] = Lease(lease_id, now, renewed_at=now)
                self._idle.append(self._held[lease_id])
                self._start_renewer()
            self._give_back_extra()  # every waiter was served meanwhile
        finally:
            with self._cond:
                self._cond.wait_for(lambda: self._idle, timeout=pause)  # ended by a hand-back
                self._asking = False
                self._cond.notify_all()

    def _give_back_extra(self) -> None:
        """Leases ready for waiters who left (stopped, or served by a hand-back) go back."""
        with self._cond:
            extra = self._idle[: max(len(self._idle) - self._waiters, 0)]
            for lease in extra:
                self._idle.remove(lease)
                self._held.pop(lease.lease_id, None)
            if not self._waiters:
                self._ask_error = None  # told to every caller that waited
        for lease in extra:
            self._give_back(lease.lease_id)

    def _check_available(self) -> None:
        """A Prefect API that has not answered for ``unavailable_limit_s`` fails the wait."""
        if self._unavailable is None:
            return
        since, cause = self._unavailable
        if self.clock() - since > self.unavailable_limit_s:
            raise PrefectUnavailableError(
                f"The Prefect API ({getattr(self.api, 'server', '?')}) did not answer for "
                f"{self.unavailable_limit_s:g} s ({cause}); check PREFECT_API_URL "
                "(MODEL_STUDIO_PREFECT_UNAVAILABLE_LIMIT_S bounds this wait)."
            )

    def _holds_every_slot(self) -> bool:
        """This process holds the whole limit (read every few seconds): asking is useless."""
        if not self._held:
            return False
        now = self.clock()
        if self._limit_read is None or now - self._limit_read[1] >= LIMIT_READ_EVERY_S:
            with contextlib.suppress(Exception):  # unknown: keep the last size read
                self._limit_read = (self.api.occupancy(self.limit_name)[1], now)
        return self._limit_read is not None and len(self._held) >= self._limit_read[0]

    def _who_holds(self) -> str:
        try:
            active, limit = self.api.occupancy(self.limit_name)
            taken = f"{active} of {limit} slots are taken"
        except Exception:  # a notice must never fail the wait it describes
            taken = "every slot is taken"
        with self._cond:
            adopted = sum(lease.adopted for lease in self._held.values())
        why = (
            f"{adopted} kept while a killed run's jobs still run"
            if adopted
            else "a killed run's slots come back when their leases expire, within "
            f"{self.lease_s + REPOSSESSOR_LOOP_S:.0f} s"
        )
        return f"{taken} of the Prefect concurrency limit {self.limit_name!r} ({why})"

    # ----------------------------------------------------------------- keeping leases

    def _give_back(self, lease_id: uuid.UUID) -> None:
        try:
            self.api.release(lease_id)
        except Exception as err:  # its lease expires on the server; the run must not fail
            logger.warning("could not give a fair-use slot back (%s); its lease expires", err)

    def _start_renewer(self) -> None:
        """Start the renewer thread (under the lock) once a lease is held."""
        if self._renewer is None:
            self._renewer = threading.Thread(
                target=self._renew_forever, name="fair-use-renewer", daemon=True
            )
            self._renewer.start()

    def _renew_forever(self) -> None:
        # Short ticks, each lease on its own schedule: a lease taken just after a renewal
        # round is not left a whole interval older, and a changed interval applies at once.
        while True:
            time.sleep(min(self.renew_every_s, RENEW_TICK_S))
            now = self.clock()
            with self._cond:
                due = [
                    lease
                    for lease in self._held.values()
                    if now - lease.renewed_at >= self.renew_every_s
                ]
            for lease in due:
                self._renew(lease)

    def _renew(self, lease: Lease) -> None:
        """Renew ``lease``; one the server lost, or not renewed for a whole lease, is lost."""
        try:
            self.api.renew(lease.lease_id, self.lease_s)
            lease.renewed_at = self.clock()
            return
        except LeaseGone as err:
            why = f"the Prefect server no longer knows it, {err}"
        except Exception as err:
            if self.clock() - lease.renewed_at < self.lease_s:
                logger.warning("fair-use lease renewal failed (%s); trying again", err)
                return
            why = f"not renewed for {self.lease_s:g} s: {err}"
        with self._cond:
            current = self._held.pop(lease.lease_id, None)
            if current is not None:
                current.lost = why
                if current in self._idle:
                    self._idle.remove(current)
        logger.error("fair-use lease %s lost (%s): no new job starts on it", lease.lease_id, why)


# One pool per Prefect API and limit per process: every task of the process shares its
# leases (as Prefect's own client caches are per process).
_POOLS: dict[tuple[str, str], SlotPool] = {}
_POOLS_LOCK = threading.Lock()


def _pool(api_url: str, limit_name: str) -> SlotPool:
    with _POOLS_LOCK:
        if (api_url, limit_name) not in _POOLS:  # a pool talks to the API its client knows
            _POOLS[api_url, limit_name] = SlotPool(limit_name, api=PrefectSlotApi())
        return _POOLS[api_url, limit_name]


def release_every_lease() -> int:
    """Give back every lease of every pool of this process; return how many.

    For a process that is done with studio-flows (a test's teardown, a service shutting
    down): a watched job's lease goes back too, so call it once no job of it may run.

    Example:
        >>> release_every_lease()
        0
    """
    with _POOLS_LOCK:
        pools = list(_POOLS.values())
    return sum(pool.release_all() for pool in pools if pool.held)


def slot_pool(
    limit_name: str = FAIR_USE_LIMIT_NAME,
    *,
    turn_s: float = 60.0,
    wait_limit_s: float = 600.0,
    unavailable_limit_s: float = 300.0,
) -> SlotPool:
    """This process's pool for ``limit_name`` on the Prefect API it points at now.

    Example:
        >>> with slot_pool().slot():  # doctest: +SKIP
        ...     run_one_job()
    """
    pool = _pool(api_url(), limit_name)
    pool.turn_s, pool.wait_limit_s = turn_s, wait_limit_s
    pool.unavailable_limit_s = unavailable_limit_s
    return pool


def settings_pool(settings: Settings) -> SlotPool:
    """:func:`slot_pool` for the settings' limit, with their turn and wait limits.

    Example:
        >>> settings_pool(load_settings()).limit_name  # doctest: +SKIP
        'tag:model-studio'
    """
    return slot_pool(
        settings.concurrency_limit_name,
        turn_s=settings.slot_turn_s,
        wait_limit_s=settings.slot_wait_limit_s,
        unavailable_limit_s=settings.prefect_unavailable_limit_s,
    )


def api_url() -> str:
    """The API URL the settings name (cheap), else the one a client finds (an ephemeral API).

    Example:
        >>> api_url()  # doctest: +SKIP
        'http://127.0.0.1:4200/api'
    """
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if url:
        return str(url).rstrip("/")
    with get_client(sync_client=True) as client:
        return str(client.api_url).rstrip("/")


@functools.cache
def ensure_limit_once(limit: int, limit_name: str, api_url: str) -> int:
    """:func:`ensure_limit_exists` once per limit and Prefect API in this process.

    Example:
        >>> ensure_limit_once(3, "tag:model-studio", api_url())  # doctest: +SKIP
        3
    """
    del api_url  # the key only
    return ensure_limit_exists(limit, limit_name, logging.getLogger("studio_flows.limits"))


def ensure_limit_exists(limit: int, limit_name: str, log: logging.Logger) -> int:
    """Create ``limit_name`` with ``limit`` slots if it is missing; return the limit in force.

    Reads first: an operator's value (an account whose limit IONOS raised) is kept.

    Example:
        >>> ensure_limit_exists(3, "tag:model-studio", logging.getLogger())  # doctest: +SKIP
        3
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            in_force = int(client.read_global_concurrency_limit_by_name(limit_name).limit)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=limit_name, limit=limit)
                )
                log.info("Created concurrency limit %r with %d slots", limit_name, limit)
                return limit
            except ObjectAlreadyExists:  # another run created it meanwhile
                in_force = int(client.read_global_concurrency_limit_by_name(limit_name).limit)
    log.info("Concurrency limit %r has %d slots (settings say %d)", limit_name, in_force, limit)
    return in_force


@task(name="ensure-concurrency-limit", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def ensure_concurrency_limit(limit: int = 3, limit_name: str = FAIR_USE_LIMIT_NAME) -> int:
    """Create the account's limit only if it is missing; return the limit in force.

    Example:
        >>> ensure_concurrency_limit(limit=3)  # doctest: +SKIP
        3
    """
    return ensure_limit_exists(limit, limit_name, get_run_logger())  # type: ignore[arg-type]
