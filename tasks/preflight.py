"""Prefect task over the preflight check."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from studio_flows.blocks import ModelStudioCredentials, resolve_settings
from studio_flows.client import ModelStudioClient, RetryPolicy
from studio_flows.preflight import check_access


@task(name="check-model-studio-access", cache_policy=NO_CACHE)
def check_model_studio_access(credentials: ModelStudioCredentials | str | None = None) -> None:
    """Fail fast, with one sentence, on a wrong token or an unreachable base URL.

    Settings are read here, not passed in: task parameters must never carry the token
    (``credentials`` is a block, whose token Prefect masks, or a saved block's name).

    Example:
        >>> check_model_studio_access()  # doctest: +SKIP
    """
    settings = resolve_settings(credentials)
    with ModelStudioClient.from_settings(settings, retry=RetryPolicy(max_retries=2)) as client:
        check_access(client)
