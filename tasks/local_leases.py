"""The lease files of the local Prefect server this machine's runs share.

The command line's local server keeps its concurrency leases in files under
``$PREFECT_HOME/concurrency_leases`` (Prefect's filesystem lease storage) and runs no
repossessor, so nobody else gives back a lease that expired or a slot that no lease
accounts for. These read that storage the way the server itself does.

Example:
    >>> expired_lease_ids()  # doctest: +SKIP
    []
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime

from prefect.server.concurrency.lease_storage.filesystem import ConcurrencyLeaseStorage
from prefect.utilities.asyncutils import run_coro_as_sync
from studio_flows.tasks.slot_api import PrefectSlotApi

# Seen twice this far apart: a slot counted a moment before its lease is written is not
# mistaken for a leaked one.
LEAK_RECHECK_S = 1.0

logger = logging.getLogger("studio_flows.slots")


def reclaim_local(api: PrefectSlotApi, limit_name: str, server: str) -> int:
    """On the local server (no repossessor), give back leases that expired, and slots no
    lease accounts for (left by a server that kept its leases in memory and died).

    Example:
        >>> reclaim_local(PrefectSlotApi(), "tag:model-studio", "local")  # doctest: +SKIP
        0
    """
    if server != "local":
        return 0
    expired = expired_lease_ids()
    for lease_id in expired:
        api.release(lease_id)
    try:
        limit_id = api.limit_id(limit_name)
    except Exception:  # no limit yet: nothing can be leaked
        return len(expired)
    leaked = _leaked(api, limit_name, limit_id)
    if leaked:
        time.sleep(LEAK_RECHECK_S)  # the pool's own machinery: no run's stop applies
        leaked = min(leaked, _leaked(api, limit_name, limit_id))
    if leaked:
        api.decrement(limit_name, leaked)
        logger.warning("gave back %d fair-use slot(s) that no live lease held", leaked)
    return len(expired) + leaked


def _leaked(api: PrefectSlotApi, limit_name: str, limit_id: uuid.UUID) -> int:
    active, _ = api.occupancy(limit_name)
    return max(active - slots_under_lease(limit_id), 0)


def expired_lease_ids() -> list[uuid.UUID]:
    """Leases whose holder stopped renewing them (the slot they count is leaked)."""
    ids = run_coro_as_sync(ConcurrencyLeaseStorage().read_expired_lease_ids(limit=1000))
    return list(ids or [])


def slots_under_lease(limit_id: uuid.UUID) -> int:
    """Slots of ``limit_id`` that live (unexpired) leases account for."""
    return run_coro_as_sync(_slots_under_lease(limit_id)) or 0


async def _slots_under_lease(limit_id: uuid.UUID) -> int:
    storage = ConcurrencyLeaseStorage()
    now = datetime.now(UTC)
    total = 0
    for lease_id in await storage.read_active_lease_ids(limit=10_000):
        lease = await storage.read_lease(lease_id)
        if lease and limit_id in lease.resource_ids and lease.expiration > now:
            total += lease.metadata.slots if lease.metadata else 0
    return total
