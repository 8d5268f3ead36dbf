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

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any, Protocol

import httpx

from studio_flows.errors import (
    FairUseError,
)

# A release the server could not take (a busy SQLite server answers 503) is tried again
# after these pauses: the slot is someone's next job, and an unreturned lease idles for a
# whole lease (60 s) before it expires.
RELEASE_RETRY_PAUSES_S = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2)


# Prefect clients kept open for the pool's calls (asks, renewals, releases overlap).
MAX_IDLE_CLIENTS = 3


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
    """:class:`SlotApi` over Prefect's sync clients, one per call in progress.

    Why not one client under a lock: a busy SQLite server may take seconds to answer one
    request (then 503), and a release queued behind it would keep a slot from a peer.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[Any] = [self._new_client()]
        self.server = str(self._idle[0].api_url).rstrip("/")
        self._no_retries = _settings_without_client_retries()

    @staticmethod
    def _new_client() -> Any:
        from prefect.client.orchestration import get_client

        client = get_client(sync_client=True)
        client.__enter__()
        return client

    def acquire(self, limit_name: str, lease_s: float) -> uuid.UUID:
        # Asked once: the pool asks again on its own schedule. Prefect's client would sleep
        # 2 s, 4 s, ... inside the call after a 503 (a busy SQLite server answers one now
        # and then), holding a slot that came free meanwhile away from this process.
        with self._client_retries_off():
            response = self._call(
                "increment_concurrency_slots_with_lease",
                names=[limit_name],
                slots=1,
                mode="concurrency",
                lease_duration=lease_s,
            )
        body = response.json()
        if not body.get("limits"):
            self._call("release_concurrency_slots_with_lease", body["lease_id"])
            raise FairUseError(
                f"The Prefect concurrency limit {limit_name!r} does not exist: it must be "
                "created before jobs are submitted (studio-flows creates it on first use)."
            )
        return uuid.UUID(body["lease_id"])

    def renew(self, lease_id: uuid.UUID, lease_s: float) -> None:
        self._call("renew_concurrency_lease", lease_id, lease_duration=lease_s)

    def release(self, lease_id: uuid.UUID) -> None:
        # Tried again soon rather than after Prefect's 2 s backoff: a peer waits for it.
        for pause in (*RELEASE_RETRY_PAUSES_S, None):
            try:
                with self._client_retries_off():
                    self._call("release_concurrency_slots_with_lease", lease_id)
                return
            except SlotServerUnavailable:
                if pause is None:
                    raise
                time.sleep(pause)

    def occupancy(self, limit_name: str) -> tuple[int, int]:
        limit = self._call("read_global_concurrency_limit_by_name", limit_name)
        return int(limit.active_slots), int(limit.limit)

    def close(self) -> None:
        """Close the Prefect clients (a pool's own API stays open for the process)."""
        with self._lock:
            clients, self._idle = self._idle, []
        for client in clients:
            client.__exit__(None, None, None)

    def limit_id(self, limit_name: str) -> uuid.UUID:
        """The limit's id (lease files name limits by id)."""
        limit = self._call("read_global_concurrency_limit_by_name", limit_name)
        return uuid.UUID(str(limit.id))

    def decrement(self, limit_name: str, slots: int) -> None:
        """Take ``slots`` off the limit's active count (slots no lease accounts for)."""
        self._call(
            "release_concurrency_slots",
            names=[limit_name],
            slots=slots,
            occupancy_seconds=0.0,
        )

    @contextlib.contextmanager
    def _client_retries_off(self) -> Iterator[None]:
        """Prefect's client, in this thread, answers a 503 or 429 at once instead of retrying."""
        from prefect.context import SettingsContext

        current = SettingsContext.get()
        if current is None:  # no settings context at all: nothing to turn off
            yield
            return
        with SettingsContext(profile=current.profile, settings=self._no_retries):
            yield

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            client = self._idle.pop() if self._idle else None
        if client is None:  # every client is in a call: this one gets its own
            client = self._new_client()
        try:
            return getattr(client, method)(*args, **kwargs)
        except httpx.HTTPStatusError as err:
            status = err.response.status_code
            if status == 423:
                raise SlotRefused from None
            if status == 429 or status >= 500:
                raise SlotServerUnavailable(f"HTTP {status}") from None
            raise
        except httpx.TransportError as err:
            raise SlotServerUnavailable(type(err).__name__) from None
        finally:
            with self._lock:
                keep = len(self._idle) < MAX_IDLE_CLIENTS
                if keep:
                    self._idle.append(client)
            if not keep:
                client.__exit__(None, None, None)


def _settings_without_client_retries() -> Any:
    """This process's Prefect settings with the client's own retries off."""
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, get_current_settings

    return get_current_settings().copy_with_update(updates={PREFECT_CLIENT_MAX_RETRIES: 0})
