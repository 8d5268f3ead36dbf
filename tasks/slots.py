"""The fair-use slot: one slot of the ``tag:model-studio`` concurrency limit, held by a lane.

Why not tag the job task with ``model-studio``? Measured on Prefect 3.9:
30 jobs of 0.5 s in a window of 3 took 39 s tagged against 6.1 s untagged. The cause is in
how a refused holder waits. When the limit is full the server answers ``423 Locked`` with
a ``Retry-After`` of about the limit's average slot occupancy times the queue length
(capped at 30 s, with Poisson jitter), and the client-side acquisition service, one per
limit name per process, sleeps through it while the other waiters of the process queue
behind it. A slot freed a moment later sits idle until some waiter's timer fires. Each job
paid that idle time.

So each lane takes its slot once and keeps it across consecutive jobs (nothing nested:
the job tasks carry no tag). A slot is given back and taken again at least every
``turn_s`` seconds, with a short pause between, so other flow runs sharing the limit get
their turn. A refused acquisition is retried by us every ``poll_s`` (one request each,
``max_retries=0``) instead of sleeping through the server's ``Retry-After``. The lease
(60 s, the server's minimum) is renewed by Prefect while held, so a SIGKILLed process's
slot comes back when its lease expires.

Example:
    >>> with FairUseSlot() as slot:  # doctest: +SKIP
    ...     for work in lane_work:
    ...         slot.hold()           # acquires, or takes a turn if held for turn_s
    ...         run_generation_job(work)
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable

import httpx
from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError
from prefect.concurrency.sync import concurrency

FAIR_USE_TAG = "model-studio"
FAIR_USE_LIMIT_NAME = f"tag:{FAIR_USE_TAG}"
MIN_LEASE_S = 60.0  # the server refuses shorter leases

logger = logging.getLogger("studio_flows.slots")


class SlotRefused(Exception):
    """The limit is full right now (HTTP 423)."""


class SlotServerUnavailable(Exception):
    """The Prefect API could not answer (5xx, 429, no connection): ask again later."""


# How long a lane keeps asking a Prefect API that does not answer before its run fails.
SERVER_UNAVAILABLE_LIMIT_S = 300.0


class _DropRefusalNoise(logging.Filter):
    """Prefect's acquisition service logs every refused attempt as an error; ours are expected."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (
            record.msg == "Service %r failed to process item %r"
            and args[:1] == ("ConcurrencySlotAcquisitionWithLeaseService",)
        )


logging.getLogger("prefect._internal.concurrency").addFilter(_DropRefusalNoise())


class FairUseSlot:
    """One slot of the fair-use limit, held across jobs and turned over every ``turn_s``."""

    def __init__(
        self,
        limit_name: str = FAIR_USE_LIMIT_NAME,
        *,
        turn_s: float = 60.0,
        poll_s: float = 0.5,
        pause_s: float = 1.0,
        lease_s: float = MIN_LEASE_S,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.limit_name = limit_name
        self.turn_s = turn_s
        self.poll_s = poll_s
        # Longer than a waiter's poll interval, so a waiting flow run sees the free slot.
        self.pause_s = max(pause_s, 2 * poll_s)
        self.lease_s = max(lease_s, MIN_LEASE_S)
        self._clock = clock
        self._sleep = sleep
        self._held: contextlib.ExitStack | None = None
        self._held_since = 0.0
        self.turns = 0
        self.refusals = 0

    def __enter__(self) -> FairUseSlot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    @property
    def held(self) -> bool:
        """True while this lane holds its slot."""
        return self._held is not None

    def hold(self) -> None:
        """Make sure the slot is held; take a turn first if it was held for ``turn_s``."""
        if self._held is not None and self._clock() - self._held_since >= self.turn_s:
            self.release()
            self._sleep(self.pause_s)
        if self._held is None:
            self._acquire()

    def release(self) -> None:
        """Give the slot back (a no-op when not held)."""
        if self._held is not None:
            held, self._held = self._held, None
            held.close()

    def _acquire(self) -> None:
        waited_since = self._clock()
        backoff = self.poll_s
        while True:
            try:
                self._held = self._try_acquire()
            except SlotRefused:
                self.refusals += 1
                self._sleep(self.poll_s * random.uniform(0.5, 1.0))
                continue
            except SlotServerUnavailable as err:
                # A busy or restarting Prefect server (503 was seen under a 10,000-job run)
                # must not fail a run that holds no slot; a server gone for minutes does.
                if self._clock() - waited_since > SERVER_UNAVAILABLE_LIMIT_S:
                    raise err.__cause__ or err from None
                logger.warning("Prefect API unavailable (%s); asking again", err)
                backoff = min(backoff * 2, 10.0)
                self._sleep(backoff * random.uniform(0.5, 1.0))
                continue
            self._held_since = self._clock()
            self.turns += 1
            waited = self._held_since - waited_since
            if waited >= 1.0:
                logger.info("fair-use slot acquired after %.1f s", waited)
            return

    def _try_acquire(self) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(
                concurrency(
                    self.limit_name,
                    occupy=1,
                    strict=True,
                    max_retries=0,
                    lease_duration=self.lease_s,
                    raise_on_lease_renewal_failure=False,
                )
            )
        except ConcurrencySlotAcquisitionError as err:
            cause = err.__cause__
            if isinstance(cause, httpx.HTTPStatusError):
                status = cause.response.status_code
                if status == 423:
                    raise SlotRefused from err
                if status == 429 or status >= 500:
                    raise SlotServerUnavailable(f"HTTP {status}") from err
            if isinstance(cause, httpx.TransportError):
                raise SlotServerUnavailable(type(cause).__name__) from err
            raise
        return stack
