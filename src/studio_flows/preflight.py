"""Check, before anything is written or paid for, that Model Studio answers and takes the token.

Without this, a wrong token or base URL would surface from the first job, after intent rows
were written, and an unreachable host would be retried shard by shard.

Example:
    >>> check_access(client)  # doctest: +SKIP
"""

from __future__ import annotations

from studio_flows.client import ModelStudioClient, RetryPolicy
from studio_flows.datasets import DatasetReport, validate_dataset_once
from studio_flows.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    ConfigurationError,
    NotFoundError,
    PermissionDeniedError,
)
from studio_flows.options import GenerateOptions
from studio_flows.settings import load_settings
from studio_flows.storage import make_engine

# No job has this id: a 404 proves the host answers and the token was accepted.
PROBE_JOB_ID = "studio-flows-preflight"


def check_access(client: ModelStudioClient) -> None:
    """Raise :class:`ConfigurationError` (one sentence) if the API is unusable as configured."""
    try:
        client.get_job(PROBE_JOB_ID)
    except NotFoundError as err:
        if _is_api_answer(err):
            return
        raise ConfigurationError(
            f"No Model Studio API answers at {client.base_url} (HTTP 404 for a job's path, "
            "not an answer about the job): check MODEL_STUDIO_BASE_URL (it ends in /api/v1)."
        ) from None
    except (AuthenticationError, PermissionDeniedError) as err:
        raise ConfigurationError(
            f"Model Studio refused the token (HTTP {err.status_code}) for organisation "
            f"{client.organization_id!r}: check MODEL_STUDIO_TOKEN and "
            "MODEL_STUDIO_ORGANIZATION_ID (or the credentials block)."
        ) from None
    except APITimeoutError as err:
        # The client's sentence names the timeout, its setting and the tries.
        raise ConfigurationError(
            f"Cannot reach Model Studio at {client.base_url}: {_cause(err)}: check "
            "MODEL_STUDIO_BASE_URL and the network, or raise that timeout."
        ) from None
    except APIConnectionError as err:
        raise ConfigurationError(
            f"Cannot reach Model Studio at {client.base_url} ({err.__class__.__name__}: "
            f"{_cause(err)}): check MODEL_STUDIO_BASE_URL and the network."
        ) from None
    except APIStatusError:
        # 400/422 for an id the service finds malformed still proves access.
        return


def _is_api_answer(err: NotFoundError) -> bool:
    # The API says in JSON that the made-up job does not exist; a router or web server
    # without that path answers HTML, nothing, or a framework's bare "Not Found".
    headers = getattr(err.response, "headers", {})
    is_json = "json" in headers.get("content-type", "")
    return is_json and err.detail.strip().lower() not in ("", "not found")


def _cause(err: Exception) -> str:
    return str(err).rsplit(": ", 1)[-1]


def check_run_inputs(
    options: GenerateOptions, *, require_credentials: bool = True
) -> DatasetReport | None:
    """Find a run's configuration and input errors without any Prefect server.

    Settings and credentials from the environment (unless ``require_credentials`` is
    false: a dry run pays nothing), the results database, the whole dataset (a file, or
    a query's rows): each raises one sentence (:class:`ConfigurationError` or
    :class:`~studio_flows.errors.DatasetError`). What lives in blocks needs the Prefect
    API and is checked by the flow: a query whose URL is in a block returns None here.

    Example:
        >>> options = GenerateOptions(dataset_path="p.jsonl", model_id="m")
        >>> check_run_inputs(options)  # doctest: +SKIP
        DatasetReport(path=PosixPath('p.jsonl'), rows=40, ...)
    """
    settings = load_settings()
    probe = require_credentials and options.credentials_block is None
    if probe:
        settings.require_credentials()
    results_url = options.database_url or settings.database_url
    if options.database_block is None:
        make_engine(results_url).dispose()
    if options.sql is None:
        source = options.source()
    elif options.source_url or not (options.source_block or options.database_block):
        source = options.source(options.source_url or results_url)
    else:
        source = None
    if source is not None:
        source.check()  # a missing file is named as such, offline too, before the probe
    if probe:
        # After the local checks, before the rows are read: token, organisation and base
        # URL answer in a second, not after a Prefect start.
        with ModelStudioClient.from_settings(settings, retry=RetryPolicy(max_retries=2)) as client:
            check_access(client)
    if source is None:
        return None
    return validate_dataset_once(source, options.dataset_options(), on_bad_rows=options.on_bad_rows)
