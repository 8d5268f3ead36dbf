"""The Model Studio credentials and the results database as Prefect Blocks, and how a run
picks its settings.

This is the one module of :mod:`studio_flows` that imports Prefect:
the rest of the core stays usable without a Prefect server.

Register the block type once per Prefect server or workspace, then create a document in
the UI or in Python::

    prefect block register -m studio_flows.blocks

Example:
    >>> ModelStudioCredentials(token="t", organization_id="org").save("prod")  # doctest: +SKIP
    >>> settings = resolve_settings("prod")  # doctest: +SKIP
    >>> settings.organization_id  # doctest: +SKIP
    'org'
"""

from __future__ import annotations

from typing import Any, ClassVar

from prefect.blocks.core import Block
from prefect.exceptions import ObjectNotFound
from pydantic import Field, SecretStr

from studio_flows.client import AsyncModelStudioClient, ModelStudioClient
from studio_flows.errors import ConfigurationError
from studio_flows.redaction import redact_url
from studio_flows.settings import DEFAULT_BASE_URL, Settings, load_settings


class ModelStudioCredentials(Block):
    """Bearer token and organisation of an IONOS AI Model Studio account.

    The token is a ``SecretStr``: Prefect stores it encrypted, masks it in the UI, in
    ``repr`` and in block documents read without ``include_secrets``.

    Example:
        >>> credentials = ModelStudioCredentials(token="t", organization_id="org")
        >>> with credentials.get_client() as client:  # doctest: +SKIP
        ...     client.get_job("job-id")
    """

    _block_type_name: ClassVar[str | None] = "Model Studio Credentials"
    _block_type_slug: ClassVar[str | None] = "model-studio-credentials"
    _description: ClassVar[str | None] = (
        "Bearer token and organisation id for IONOS AI Model Studio (studio-flows)."
    )

    token: SecretStr = Field(description="Bearer token made in Model Studio")
    organization_id: str = Field(min_length=1, description="Model Studio organisation id")
    base_url: str = Field(default=DEFAULT_BASE_URL, description="API base, up to /api/v1")
    concurrency_limit_name: str = Field(
        default="tag:model-studio",
        min_length=1,
        description="The Prefect concurrency limit of this account's fair-use slots (a "
        "second organisation names its own; a limit IONOS raised is that limit's size)",
    )

    def get_client(self, **kwargs: Any) -> ModelStudioClient:
        """A synchronous client for this account; ``kwargs`` go to the client (timeouts...).

        Example:
            >>> with credentials.get_client(timeout_s=10) as client:  # doctest: +SKIP
            ...     status = client.get_job("job-id")
        """
        return ModelStudioClient(**{**self._client_kwargs(), **kwargs})

    def get_async_client(self, **kwargs: Any) -> AsyncModelStudioClient:
        """An asynchronous client for this account; ``kwargs`` go to the client.

        Example:
            >>> async with credentials.get_async_client() as client:  # doctest: +SKIP
            ...     status = await client.get_job("job-id")
        """
        return AsyncModelStudioClient(**{**self._client_kwargs(), **kwargs})

    def apply_to(self, settings: Settings) -> Settings:
        """A copy of ``settings`` with this block's token, organisation, base URL and limit.

        Example:
            >>> block = ModelStudioCredentials(token="t", organization_id="org")
            >>> block.apply_to(Settings(_env_file=None)).organization_id
            'org'
        """
        return settings.model_copy(
            update={
                "token": self.token,
                "organization_id": self.organization_id,
                "base_url": self.base_url,
                "concurrency_limit_name": self.concurrency_limit_name,
            }
        )

    def _client_kwargs(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "organization_id": self.organization_id,
            "base_url": self.base_url,
        }


class ResultsDatabase(Block):
    """The SQLAlchemy URL of a results database, password included, as a ``SecretStr``.

    Pass it to a flow or task as an object (a saved document, picked in a deployment's
    form, or one built in code): Prefect writes a Block parameter with its secret fields
    as ``**********``, so the password never reaches flow-run parameters.

    Example:
        >>> database = ResultsDatabase(url="postgresql+psycopg://app:pw@db/results")
        >>> database.safe_url()
        'postgresql+psycopg://app:***@db/results'
        >>> database.model_dump(mode="json")["url"]
        '**********'
    """

    _block_type_name: ClassVar[str | None] = "Results Database"
    _block_type_slug: ClassVar[str | None] = "results-database"
    _description: ClassVar[str | None] = (
        "SQLAlchemy URL of the database studio-flows keeps its results in (studio-flows)."
    )

    url: SecretStr = Field(
        description="SQLAlchemy URL, e.g. postgresql+psycopg://user:password@host:5432/db"
    )

    def get_url(self) -> str:
        """The URL with its password, for the engine only (log :meth:`safe_url`).

        Example:
            >>> ResultsDatabase(url="sqlite:///r.db").get_url()
            'sqlite:///r.db'
        """
        url: str = self.url.get_secret_value()
        return url

    def safe_url(self) -> str:
        """The URL with its password masked."""
        return redact_url(self.get_url())


def _block_name(name: str) -> str:
    # Accept the "slug/name" form the Prefect CLI and UI print, as well as the bare name.
    prefix = ModelStudioCredentials.get_block_type_slug() + "/"
    return name.removeprefix(prefix)


def _load_error(name: str, err: Exception) -> ConfigurationError:
    """A readable error for a block that cannot be loaded (never quoting block data)."""
    if isinstance(err.__cause__, ObjectNotFound) or isinstance(err, ObjectNotFound):
        return ConfigurationError(
            f"No ModelStudioCredentials block named {name!r} on this Prefect server: create it "
            "(UI, or ModelStudioCredentials(...).save(name)) after "
            "`prefect block register -m studio_flows.blocks`, or leave credentials_block "
            "empty to use MODEL_STUDIO_TOKEN and MODEL_STUDIO_ORGANIZATION_ID."
        )
    # Not the message: a validation error of the stored data may quote its values.
    return ConfigurationError(
        f"The ModelStudioCredentials block {name!r} cannot be loaded ({type(err).__name__})."
    )


def load_credentials(name: str) -> ModelStudioCredentials:
    """Load the named block synchronously (also inside an async flow's thread).

    Example:
        >>> load_credentials("prod").organization_id  # doctest: +SKIP
        'org'
    """
    block_name = _block_name(name)
    try:
        # _sync=True: a sync call must not hand back a coroutine when an event loop runs.
        block = ModelStudioCredentials.load(block_name, _sync=True)  # type: ignore[call-arg]
    except (ValueError, ObjectNotFound) as err:
        raise _load_error(block_name, err) from None
    assert isinstance(block, ModelStudioCredentials)  # async_dispatch widens the type
    return block


async def aload_credentials(name: str) -> ModelStudioCredentials:
    """Load the named block from async code.

    Example:
        >>> (await aload_credentials("prod")).organization_id  # doctest: +SKIP
        'org'
    """
    block_name = _block_name(name)
    try:
        return await ModelStudioCredentials.aload(block_name)
    except (ValueError, ObjectNotFound) as err:
        raise _load_error(block_name, err) from None


def resolve_settings(credentials: ModelStudioCredentials | str | None) -> Settings:
    """Settings from the environment, with the credentials block applied if given (the
    block itself, or the name of a saved one).

    Raises :class:`ConfigurationError` naming the block when it does not exist.

    Example:
        >>> resolve_settings(None).base_url  # doctest: +SKIP
        'https://studio.ionos.de/api/v1'
        >>> resolve_settings("prod").organization_id  # doctest: +SKIP
        'org'
    """
    settings = load_settings()
    if isinstance(credentials, ModelStudioCredentials):
        return credentials.apply_to(settings)
    if not credentials:
        return settings
    return load_credentials(credentials).apply_to(settings)


def credentials_object(
    credentials: ModelStudioCredentials | None, block_name: str | None
) -> ModelStudioCredentials | None:
    """The credentials a flow hands its tasks: the block given, else the named one loaded,
    else None (the environment, read in each task).

    Example:
        >>> credentials_object(None, None) is None
        True
    """
    if credentials is not None:
        return credentials
    return load_credentials(block_name) if block_name else None


async def aresolve_settings(credentials: ModelStudioCredentials | str | None) -> Settings:
    """:func:`resolve_settings` for async flows and tasks.

    Example:
        >>> settings = await aresolve_settings("prod")  # doctest: +SKIP
    """
    settings = load_settings()
    if isinstance(credentials, ModelStudioCredentials):
        return credentials.apply_to(settings)
    if not credentials:
        return settings
    return (await aload_credentials(credentials)).apply_to(settings)


__all__ = [
    "ModelStudioCredentials",
    "ResultsDatabase",
    "aload_credentials",
    "aresolve_settings",
    "credentials_object",
    "load_credentials",
    "resolve_settings",
]
