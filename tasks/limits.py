"""Make sure the fair-use concurrency limit exists before anything is submitted."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from studio_flows.tasks.slots import FAIR_USE_TAG


@task(name="ensure-concurrency-limit", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def ensure_concurrency_limit(limit: int = 3, tag: str = FAIR_USE_TAG) -> int:
    """Create the ``model-studio`` tag limit only if it is missing; return the limit in force.

    Reads first: the server's create call upserts and would overwrite a value an operator
    set (for an account whose fair-use limit was raised).

    Example:
        >>> ensure_concurrency_limit(limit=3)  # doctest: +SKIP
        3
    """
    log = get_run_logger()
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
