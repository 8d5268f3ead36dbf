"""Check, before anything is written or paid for, that Model Studio answers and takes the token.

Without this, a wrong token or base URL would surface from the first job, after intent rows
were written, and an unreachable host would be retried shard by shard.

Example:
    >>> check_access(client)  # doctest: +SKIP
"""

from __future__ import annotations

from model_studio.client import ModelStudioClient
from model_studio.errors import (
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    ConfigurationError,
    NotFoundError,
    PermissionDeniedError,
)

# No job has this id: a 404 proves the host answers and the token was accepted.
PROBE_JOB_ID = "studio-flows-preflight"


def check_access(client: ModelStudioClient) -> None:
    """Raise :class:`ConfigurationError` (one sentence) if the API is unusable as configured."""
    try:
        client.get_job(PROBE_JOB_ID)
    except NotFoundError:
        return
    except (AuthenticationError, PermissionDeniedError) as err:
        raise ConfigurationError(
            f"Model Studio refused the token (HTTP {err.status_code}) for organisation "
            f"{client.organization_id!r}: check MODEL_STUDIO_TOKEN and "
            "MODEL_STUDIO_ORGANIZATION_ID (or the credentials block)."
        ) from None
    except APIConnectionError as err:
        raise ConfigurationError(
            f"Cannot reach Model Studio at {client.base_url} ({err.__class__.__name__}: "
            f"{_cause(err)}): check MODEL_STUDIO_BASE_URL and the network."
        ) from None
    except APIStatusError:
        # 400/422 for an id the service finds malformed still proves access.
        return


def _cause(err: Exception) -> str:
    return str(err).rsplit(": ", 1)[-1]
