"""Make sure the fair-use concurrency limit exists before anything is submitted."""

from __future__ import annotations

import logging
import threading

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from studio_flows.tasks.slot_api import configured_api_url
from studio_flows.tasks.slots import FAIR_USE_TAG

_ensured: set[tuple[str, str]] = set()
_ensured_lock = threading.Lock()


@task(name="ensure-concurrency-limit", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def ensure_concurrency_limit(limit: int = 3, tag: str = FAIR_USE_TAG) -> int:
    """Create the ``model-studio`` tag limit only if it is missing; return the limit in force.

    Reads first: the server's create call upserts and would overwrite a value an operator
    set (for an account whose fair-use limit was raised).

    Example:
        >>> ensure_concurrency_limit(limit=3)  # doctest: +SKIP
        3
    """
    return ensure_limit_exists(limit, tag, get_run_logger())  # type: ignore[arg-type]


def ensure_limit_once(limit: int, tag: str = FAIR_USE_TAG) -> None:
    """:func:`ensure_limit_exists` once per Prefect API and tag in this process.

    For tasks that take slots themselves (a user's mapped ``generate``): one read per
    process, not one per job.

    Example:
        >>> ensure_limit_once(3)  # doctest: +SKIP
    """
    url = configured_api_url()
    if url is None:  # no URL configured (an ephemeral API): the client knows where it is
        with get_client(sync_client=True) as client:
            url = str(client.api_url)
    key = (url, tag)
    with _ensured_lock:
        if key in _ensured:
            return
        ensure_limit_exists(limit, tag, logging.getLogger("studio_flows.limits"))
        _ensured.add(key)


def ensure_limit_exists(limit: int, tag: str, log: logging.Logger) -> int:
    """The body of :func:`ensure_concurrency_limit`, callable outside a task run.

    Example:
        >>> ensure_limit_exists(3, "model-studio", logging.getLogger())  # doctest: +SKIP
        3
    """
    with get_client(sync_client=True) as client:
        try:
            existing = client.read_concurrency_limit_by_tag(tag)
        except ObjectNotFound:
            try:
                client.create_concurrency_limit(tag=tag, concurrency_limit=limit)
            except ObjectAlreadyExists:
                log.info("Concurrency limit %r was created meanwhile by another run", tag)
                return int(client.read_concurrency_limit_by_tag(tag).concurrency_limit)
            log.info("Created concurrency limit %r with %d slots", tag, limit)
            return limit
    in_force = int(existing.concurrency_limit)
    if in_force != limit:
        log.info(
            "Concurrency limit %r exists with %d slots (settings say %d); keeping the server's",
            tag,
            in_force,
            limit,
        )
    else:
        log.info("Concurrency limit %r exists with %d slots", tag, in_force)
    return in_force
