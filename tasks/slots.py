"""The fair-use slot pool: one per process and limit, the only part that asks Prefect for slots.

A slot of the ``tag:model-studio`` concurrency limit is a lease on the Prefect server,
held from before a job's POST until the job is terminal. Why a pool and not a tag on the
job task? Measured on Prefect 3.9: a tagged task run per job lost ~3 s per turn, because a
refused holder sleeps through the server's ``Retry-After`` while a freed slot idles. The
pool is made of

- its local hand-off (:mod:`studio_flows.tasks.slot_handoff`, :class:`SlotPool`): a lease
  a job gives back goes straight to the next local waiter unless it has been held
  ``turn_s``; waits are announced, bounded, and refused when only parked jobs could end
  them;
- its asker (:mod:`studio_flows.tasks.slot_asker`): asks the server only when a local
  waiter needs one more slot, doubles asks a busy server holds, renews every lease and
  gives them back;
- the holder files (:mod:`studio_flows.tasks.slot_holders`): the leases this process
  holds, which the operating system unlocks when it dies, so a later process gives them
  back at once, and which tell a refused pool when a peer on this machine gave one back
  (leases also expire on a server that runs its lease repossessor);
- the four Prefect calls (:mod:`studio_flows.tasks.slot_api`).

This module keeps one pool per Prefect API and limit for the whole process
(:func:`slot_pool`), so the flow's own work and users' mapped ``generate`` /
``submit_generation_job`` calls share the same leases. Each lease is booked on the run
that took it (:class:`~studio_flows.interrupts.RunControl`): a run that stops gives back
its own, never another run's.

Example:
    >>> pool = slot_pool()  # doctest: +SKIP
    >>> lease = pool.acquire()  # before the POST  # doctest: +SKIP
    >>> pool.release(lease)  # once the job is terminal  # doctest: +SKIP
"""

from __future__ import annotations

import atexit
import os
import threading

from studio_flows.tasks.slot_api import (
    PrefectSlotApi,
    SlotRefused,
    SlotServerUnavailable,
    configured_api_url,
)
from studio_flows.tasks.slot_asker import HEDGE_AFTER_S, POLL_S, SERVER_UNAVAILABLE_LIMIT_S
from studio_flows.tasks.slot_books import Lease
from studio_flows.tasks.slot_handoff import FAIR_USE_LIMIT_NAME, FAIR_USE_TAG, SlotPool
from studio_flows.tasks.slot_holders import (
    HolderFile,
    PeerWatch,
    holders_directory,
    reclaim_dead_holders,
)

__all__ = [
    "FAIR_USE_LIMIT_NAME",
    "FAIR_USE_TAG",
    "LOCAL_SERVER_ENV",
    "POLL_S",
    "Lease",
    "PrefectSlotApi",
    "SlotPool",
    "SlotRefused",
    "SlotServerUnavailable",
    "slot_pool",
]

# Set by the command line when it started the local Prefect server of this machine.
LOCAL_SERVER_ENV = "STUDIO_FLOWS_LOCAL_PREFECT_API"

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
