"""The fair-use slot pool's decisions, against an in-memory limit (no Prefect server)."""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from studio_flows.tasks.fair_use import (
    Lease,
    LeaseGone,
    PrefectSlotApi,
    SlotPool,
    SlotRefused,
    SlotServerBusy,
    SlotServerUnavailable,
)

from studio_flows.errors import (
    FairUseError,
    PrefectUnavailableError,
    RunInterrupted,
    SlotWaitTimeoutError,
)
from studio_flows.interrupts import RunControl
from tests.fixtures.cli_runs import wait_for
from tests.fixtures.hung_server import HungServer


class FakeLimit:
    """A limit of ``size`` slots that counts what the pool asked of it."""

    server = "fake"

    def __init__(self, size: int, unavailable: int = 0, busy: int = 0) -> None:
        self.size = size
        self.leases: set[uuid.UUID] = set()
        self.acquired = 0
        self.released: list[uuid.UUID] = []
        self.unavailable = unavailable
        self.busy = busy
        self._lock = threading.Lock()

    def acquire(self, limit_name: str, lease_s: float, holder: object = None) -> uuid.UUID:
        with self._lock:
            if self.busy:
                self.busy -= 1
                raise SlotServerBusy("HTTP 503")
            if self.unavailable:
                self.unavailable -= 1
                raise SlotServerUnavailable("ConnectError")
            if len(self.leases) >= self.size:
                raise SlotRefused
            lease = uuid.uuid4()
            self.leases.add(lease)
            self.acquired += 1
            return lease

    def renew(self, lease_id: uuid.UUID, lease_s: float) -> None:
        with self._lock:
            if lease_id not in self.leases:
                raise LeaseGone("HTTP 410")

    def release(self, lease_id: uuid.UUID) -> None:
        with self._lock:
            self.leases.discard(lease_id)
            self.released.append(lease_id)

    def occupancy(self, limit_name: str) -> tuple[int, int]:
        return len(self.leases), self.size


def hand_over(pool: SlotPool) -> tuple[Lease, list[Lease]]:
    """Take a lease, let another thread wait for one, release the first; what it got."""
    first = pool.acquire()
    got: list[Lease] = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire()))
    waiter.start()
    wait_for(lambda: pool.waiting == 1, 10, "the pool to get there")
    pool.release(first)
    waiter.join(timeout=10)
    return first, got


def test_a_freed_slot_goes_straight_to_a_local_waiter_without_the_server() -> None:
    limit = FakeLimit(1)
    pool = SlotPool(api=limit, poll_s=0.01)
    first, got = hand_over(pool)

    assert got == [first], "the waiter got another lease than the one handed over"
    assert limit.acquired == 1 and limit.released == []


def test_a_second_release_of_a_handed_on_lease_leaves_the_new_holders_slot_alone() -> None:
    limit = FakeLimit(1)
    pool = SlotPool(api=limit, poll_s=0.01)
    first, got = hand_over(pool)

    pool.release(first)  # the first holder's clean-up gives it back once more

    assert (pool.held, limit.released) == (1, []), "the waiter's slot was freed under it"
    pool.release(got[0])
    assert (pool.held, limit.released) == (0, [first.lease_id])


def test_a_lease_held_for_a_turn_goes_back_to_the_server_not_to_a_local_waiter() -> None:
    limit = FakeLimit(1)
    pool = SlotPool(api=limit, poll_s=0.01, turn_s=0.0)
    first, got = hand_over(pool)

    assert limit.released == [first.lease_id]
    assert got and got[0] != first and limit.acquired == 2


def test_release_all_gives_every_lease_back() -> None:
    limit = FakeLimit(3)
    pool = SlotPool(api=limit)
    leases = [pool.acquire() for _ in range(3)]

    assert pool.release_all() == 3

    assert limit.leases == set() and pool.held == 0
    pool.release(leases[0])  # a job ending after the stop gives nothing back twice
    assert len(limit.released) == 3


def test_a_lease_given_back_by_release_all_starts_no_new_job() -> None:
    # A service shutting down gives every lease back while a run still holds one: the
    # server may grant that slot to another process at once, so the run must stop.
    pool = SlotPool(api=FakeLimit(3))
    lease = pool.acquire()

    pool.release_all()

    with pytest.raises(FairUseError, match="given back"):
        lease.check()


def test_a_wait_past_the_limit_is_a_clear_error_naming_the_limit() -> None:
    pool = SlotPool(api=FakeLimit(0), poll_s=0.01, wait_limit_s=0.1)

    with pytest.raises(SlotWaitTimeoutError) as caught:
        pool.acquire()

    message = str(caught.value)
    assert "0 of 0 slots are taken" in message
    assert "prefect gcl inspect tag:model-studio" in message
    assert "MODEL_STUDIO_SLOT_WAIT_LIMIT_S" in message


def test_a_waiting_pool_says_so_within_seconds(caplog: pytest.LogCaptureFixture) -> None:
    ticks = itertools.count()  # the fetcher thread reads this clock too: never run dry
    pool = SlotPool(api=FakeLimit(0), poll_s=0.001, wait_limit_s=8, clock=lambda: next(ticks))

    with (
        caplog.at_level(logging.WARNING, "studio_flows.slots"),
        pytest.raises(SlotWaitTimeoutError),
    ):
        pool.acquire()

    notices = [r.getMessage() for r in caplog.records if "waiting for a fair-use slot" in r.message]
    assert len(notices) == 1  # at 3 ticks; the next is due after 30
    assert "0 of 0 slots are taken" in notices[0]
    assert "a killed run's slots come back when their leases expire" in notices[0]


def test_a_pool_waiting_behind_slots_it_adopted_says_they_wait_for_a_killed_runs_jobs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ticks = itertools.count()
    limit = FakeLimit(1)
    pool = SlotPool(api=limit, poll_s=0.001, wait_limit_s=8, clock=lambda: next(ticks))
    pool.adopt(limit.acquire("tag:model-studio", 60))

    with (
        caplog.at_level(logging.WARNING, "studio_flows.slots"),
        pytest.raises(SlotWaitTimeoutError),
    ):
        pool.acquire()

    notices = [r.getMessage() for r in caplog.records if "waiting for a fair-use slot" in r.message]
    assert "1 of 1 slots are taken" in notices[0]
    assert "1 kept while a killed run's jobs still run" in notices[0]


def test_three_lanes_waiting_together_give_one_notice(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    reads: collections.Counter[int] = collections.Counter()

    def clock() -> float:
        reads[threading.get_ident()] += 1
        return now[0]

    pool = SlotPool(api=FakeLimit(0), poll_s=0.001, wait_limit_s=8, clock=clock)
    waiters = [threading.Thread(target=_waits_out, args=(pool,)) for _ in range(3)]
    with caplog.at_level(logging.WARNING, "studio_flows.slots"):
        for waiter in waiters:
            waiter.start()
        now[0] = 3.5  # every waiter's first notice is due
        _each_reads_the_clock_again(reads, waiters)
        now[0] = 20.0  # past the wait limit, before the next notice is due
        for waiter in waiters:
            waiter.join(timeout=10)

    notices = [r for r in caplog.records if "waiting for a fair-use slot" in r.message]
    assert len(notices) == 1


def _waits_out(pool: SlotPool) -> None:
    with contextlib.suppress(SlotWaitTimeoutError):
        pool.acquire()


def _each_reads_the_clock_again(
    reads: collections.Counter[int], threads: list[threading.Thread]
) -> None:
    """Return once every thread has read the clock twice more: a whole turn of its loop."""
    before = {t.ident: reads[t.ident or 0] for t in threads}
    while any(reads[t.ident or 0] < before[t.ident] + 2 for t in threads):
        time.sleep(0.001)


def test_a_busy_prefect_api_is_asked_again_not_a_failed_run() -> None:
    limit = FakeLimit(1, unavailable=2)
    pool = SlotPool(api=limit, poll_s=0.001)

    lease = pool.acquire()

    assert limit.unavailable == 0 and lease.lease_id in limit.leases


def test_a_busy_prefect_api_is_asked_again_within_a_fraction_of_the_poll_interval() -> None:
    """A 503 is a database locked for a moment: a pool starting 30 task runs at once got one
    on every second ask, and waited a whole poll interval after each (bench/NOTES.md, 30)."""
    limit = FakeLimit(1, busy=3)
    pool = SlotPool(api=limit, poll_s=3.0)
    asked = time.monotonic()
    pool.acquire()
    assert time.monotonic() - asked < 3.0  # three quick asks, not three poll intervals
    assert limit.busy == 0 and limit.acquired == 1


def test_a_stop_request_ends_a_wait_at_once() -> None:
    pool = SlotPool(api=FakeLimit(0), poll_s=0.05, wait_limit_s=60)
    errors: list[BaseException] = []
    run = RunControl()

    def wait() -> None:
        try:
            pool.acquire(run)
        except RunInterrupted as err:
            errors.append(err)

    waiter = threading.Thread(target=wait)
    waiter.start()
    wait_for(lambda: pool.refusals >= 1, 10, "the pool to get there")
    run.request_stop("SIGINT")
    waiter.join(timeout=5)

    assert not waiter.is_alive() and len(errors) == 1


def test_a_lease_freed_while_the_server_is_slow_goes_to_the_waiter_at_once() -> None:
    class SlowLimit(FakeLimit):
        def acquire(self, limit_name: str, lease_s: float, holder: object = None) -> uuid.UUID:
            if self.leases:
                time.sleep(2.0)  # a busy Prefect server
            return super().acquire(limit_name, lease_s)

    limit = SlowLimit(1)
    pool = SlotPool(api=limit, poll_s=0.01)
    first = pool.acquire()
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire()))
    waiter.start()
    wait_for(lambda: pool.waiting == 1, 10, "the pool to get there")

    handed = time.monotonic()
    pool.release(first)
    waiter.join(timeout=10)

    assert got == [first] and time.monotonic() - handed < 1.0


@contextlib.contextmanager
def prefect_slot_api(
    api_url: str, *, retries: int, timeout_s: float | None = None
) -> Iterator[PrefectSlotApi]:
    """A :class:`PrefectSlotApi` on ``api_url`` with Prefect's client retrying ``retries``
    times, set globally too: the pool's threads read Prefect's settings outside this
    context, as they read a user's environment (the default retries take 60 s a call)."""
    from prefect.context import SettingsContext, _temporary_global_settings_context
    from prefect.settings import (
        PREFECT_API_REQUEST_TIMEOUT,
        PREFECT_API_URL,
        PREFECT_CLIENT_MAX_RETRIES,
        temporary_settings,
    )

    updates: dict[Any, Any] = {PREFECT_API_URL: api_url, PREFECT_CLIENT_MAX_RETRIES: retries}
    if timeout_s is not None:
        updates[PREFECT_API_REQUEST_TIMEOUT] = timeout_s
    with temporary_settings(updates=updates):
        context = SettingsContext.get()
        assert context is not None
        with _temporary_global_settings_context(context):
            api = PrefectSlotApi()
            try:
                yield api
            finally:
                api.close()


def test_a_prefect_api_that_never_answers_fails_the_wait_naming_the_api_and_the_setting(
    hung_server: HungServer,
) -> None:
    """Prefect's own client against a hung server: each call times out, the pool gives up."""
    api_url = f"http://{hung_server.address}/api"
    with prefect_slot_api(api_url, retries=0, timeout_s=0.3) as api:
        pool = SlotPool(api=api, poll_s=0.05, unavailable_limit_s=1.0)
        with pytest.raises(PrefectUnavailableError) as info:
            pool.acquire()
    assert str(info.value).startswith(f"The Prefect API ({api_url}) did not answer for 1 s (")
    assert "MODEL_STUDIO_PREFECT_UNAVAILABLE_LIMIT_S" in str(info.value)
    assert hung_server.accepted >= 1


def test_an_ask_the_prefect_server_cannot_serve_now_is_made_once_and_asked_again_later() -> None:
    """A 503 on increment-with-lease (SQLite's "database is locked" on a busy server) is a
    refusal to the waiter, which asks again within its poll: Prefect's send would sleep 2 s
    first and send it again, while another process's freed slot stays idle."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    asks: list[str] = []

    class Busy(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            asks.append(self.path)
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    api_url = f"http://127.0.0.1:{server.server_address[1]}/api"
    try:
        with (
            prefect_slot_api(api_url, retries=1) as api,
            pytest.raises(SlotServerUnavailable, match="HTTP 503"),
        ):
            api.acquire("tag:model-studio", 60)
    finally:
        server.shutdown()
        server.server_close()
    assert asks == ["/api/v2/concurrency_limits/increment-with-lease"]


def test_a_lease_the_server_lost_is_never_handed_on_and_its_holder_starts_nothing() -> None:
    limit = FakeLimit(1)
    pool = SlotPool(api=limit, poll_s=0.01, renew_every_s=0.05)
    lease = pool.acquire()
    limit.release(lease.lease_id)  # revoked on the server (or expired)

    wait_for(lambda: lease.lost is not None, 10, "the renewal to find the lease gone")
    with pytest.raises(FairUseError, match="was lost"):
        lease.check()
    assert pool.held == 0
    pool.release(lease)  # its job ended: nothing to hand on, nothing to give back
    assert limit.released == [lease.lease_id]


def test_a_watched_lease_is_held_until_the_job_ends_whatever_its_run_does() -> None:
    limit = FakeLimit(1)
    pool = SlotPool(api=limit, poll_s=0.01)
    run = RunControl()
    lease = pool.acquire(run)
    job_ended = threading.Event()

    outcome = pool.watch(lease, "job-1", lambda: job_ended.wait(10))
    run.request_stop("GenerationJobTimedOut")
    assert run.release_all() == 0  # the caller's run no longer owns the slot
    assert lease.lease_id in limit.leases and pool.held == 1
    assert pool.watching("job-1") is outcome

    job_ended.set()
    assert outcome.result(timeout=10) is True
    assert limit.leases == set() and pool.held == 0


def test_an_adopted_lease_is_held_renewed_and_handed_to_a_local_waiter() -> None:
    limit = FakeLimit(1)
    killed_runs = limit.acquire("tag:model-studio", 60)  # a lease a killed process took
    pool = SlotPool(api=limit, poll_s=0.01)

    adopted = pool.adopt(killed_runs)
    assert adopted is not None and pool.lease_ids() == [killed_runs]
    got: list[Lease] = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire()))
    waiter.start()
    wait_for(lambda: pool.waiting == 1, 10, "the waiter")
    pool.release(adopted)  # the killed run's job ended
    waiter.join(timeout=10)

    assert [lease.lease_id for lease in got] == [killed_runs]
    assert limit.acquired == 1, "the waiter asked the server although a slot was handed over"


def test_a_lease_that_expired_is_not_adopted() -> None:
    pool = SlotPool(api=FakeLimit(1), poll_s=0.01)

    assert pool.adopt(uuid.uuid4()) is None
    assert pool.held == 0
