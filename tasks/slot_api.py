"""The four calls the fair-use pool makes to the Prefect API, and how their failures read.

A lease on one slot of a concurrency limit, its renewal and its release, through Prefect's
client (``increment-with-lease``, ``renew``, ``decrement-with-lease``); a 423 is a refusal
(the limit is full), a 5xx, a 429 or no connection a server to ask again later.

Example:
    >>> api = PrefectSlotApi()  # doctest: +SKIP
    >>> lease_id = api.acquire("tag:model-studio", lease_s=60)  # doctest: +SKIP
    >>> api.release(lease_id)  # doctest: +SKIP
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import httpx

from studio_flows.errors import (
    FairUseError,
)


class SlotRefused(Exception):
    """The limit is full right now (HTTP 423)."""


class SlotServerUnavailable(Exception):
    """The Prefect API could not answer (5xx, 429, no connection): ask again later."""


class SlotApi(Protocol):
    """The four calls the pool makes to the Prefect API."""

    server: str

    def acquire(self, limit_name: str, lease_s: float) -> uuid.UUID:
        """A new lease on one slot; raises SlotRefused or SlotServerUnavailable."""

    def renew(self, lease_id: uuid.UUID, lease_s: float) -> None:
        """Extend a lease."""

    def release(self, lease_id: uuid.UUID) -> None:
        """Give a lease back (a lease the server no longer knows is fine)."""

    def occupancy(self, limit_name: str) -> tuple[int, int]:
        """``(active_slots, limit)`` of the limit."""


def configured_api_url() -> str | None:
    """The Prefect API URL this process's settings name now (None: none is configured).

    Read from the settings, not from a client: a Prefect client costs ~25 ms of CPU to
    build, and every job asks which pool it belongs to.

    Example:
        >>> configured_api_url()  # doctest: +SKIP
        'http://127.0.0.1:4200/api'
    """
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    return str(url).rstrip("/") if url else None


class PrefectSlotApi:
    """:class:`SlotApi` over Prefect's client (one sync client, used under a lock)."""

    def __init__(self) -> None:
        from prefect.client.orchestration import get_client

        self._client = get_client(sync_client=True)
        self._client.__enter__()
        self._lock = threading.Lock()
        self.server = str(self._client.api_url).rstrip("/")

    def acquire(self, limit_name: str, lease_s: float) -> uuid.UUID:
        response = self._call(
            self._client.increment_concurrency_slots_with_lease,
            names=[limit_name],
            slots=1,
            mode="concurrency",
            lease_duration=lease_s,
        )
        body = response.json()
        if not body.get("limits"):
            self._call(self._client.release_concurrency_slots_with_lease, body["lease_id"])
            raise FairUseError(
                f"The Prefect concurrency limit {limit_name!r} does not exist: it must be "
                "created before jobs are submitted (studio-flows creates it on first use)."
            )
        return uuid.UUID(body["lease_id"])

    def renew(self, lease_id: uuid.UUID, lease_s: float) -> None:
        self._call(self._client.renew_concurrency_lease, lease_id, lease_duration=lease_s)

    def release(self, lease_id: uuid.UUID) -> None:
        self._call(self._client.release_concurrency_slots_with_lease, lease_id)

    def occupancy(self, limit_name: str) -> tuple[int, int]:
        limit = self._call(self._client.read_global_concurrency_limit_by_name, limit_name)
        return int(limit.active_slots), int(limit.limit)

    def close(self) -> None:
        """Close the Prefect client (a pool's own API stays open for the process)."""
        self._client.__exit__(None, None, None)

    def limit_id(self, limit_name: str) -> uuid.UUID:
        """The limit's id (lease files name limits by id)."""
        limit = self._call(self._client.read_global_concurrency_limit_by_name, limit_name)
        return uuid.UUID(str(limit.id))

    def decrement(self, limit_name: str, slots: int) -> None:
        """Take ``slots`` off the limit's active count (slots no lease accounts for)."""
        self._call(
            self._client.release_concurrency_slots,
            names=[limit_name],
            slots=slots,
            occupancy_seconds=0.0,
        )

    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            with self._lock:
                return method(*args, **kwargs)
        except httpx.HTTPStatusError as err:
            status = err.response.status_code
            if status == 423:
                raise SlotRefused from None
            if status == 429 or status >= 500:
                raise SlotServerUnavailable(f"HTTP {status}") from None
            raise
        except httpx.TransportError as err:
            raise SlotServerUnavailable(type(err).__name__) from None
