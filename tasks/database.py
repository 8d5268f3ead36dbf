"""Where a run writes its results: a ``ResultsDatabase`` block, a URL, a prefect-sqlalchemy
connector block, or settings.

A deployment keeps the database password out of its parameters with a ``ResultsDatabase``
block (its ``SecretStr`` URL is written as ``**********`` into parameters) or by naming a
``SqlAlchemyConnector`` block; the URL is built from it in the process that opens the
engine. The rendered URL carries the password because the engine needs it: log
:func:`safe_url` instead, never it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from prefect.exceptions import ObjectNotFound
from prefect.logging import get_logger
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from studio_flows.blocks import ResultsDatabase
from studio_flows.errors import ConfigurationError
from studio_flows.redaction import MASK, is_redacted, redact_url
from studio_flows.settings import Settings

if TYPE_CHECKING:  # imported where a connector block is named: a third of a second a run
    from prefect_sqlalchemy import SqlAlchemyConnector  # type: ignore[import-untyped]

logger = get_logger("studio_flows.database")


# The one URL masker (studio_flows.redaction), under the name this module always used.
safe_url = redact_url


def connector_url(connector: SqlAlchemyConnector) -> URL:
    """The SQLAlchemy URL a ``SqlAlchemyConnector`` block describes (password included).

    Example:
        >>> from prefect_sqlalchemy import ConnectionComponents, SqlAlchemyConnector, SyncDriver
        >>> info = ConnectionComponents(driver=SyncDriver.SQLITE_PYSQLITE, database="r.db")
        >>> block = SqlAlchemyConnector(connection_info=info)
        >>> connector_url(block).render_as_string()
        'sqlite+pysqlite:///r.db'
    """
    from prefect_sqlalchemy import ConnectionComponents

    info = connector.connection_info
    if isinstance(info, ConnectionComponents):
        url: URL = info.create_url()
        return url
    return make_url(str(info))


def load_connector_url(block_name: str) -> str:
    """Load the named ``SqlAlchemyConnector`` block and render its URL with the password.

    Raises :class:`ConfigurationError` naming the block (never its contents) when the block
    is missing or unusable.

    Example:
        >>> load_connector_url("results-db")  # doctest: +SKIP
        'postgresql+psycopg://app:...@db:5432/results'
    """
    from prefect_sqlalchemy import SqlAlchemyConnector

    name = block_name.removeprefix(SqlAlchemyConnector.get_block_type_slug() + "/")
    try:
        # _sync=True: stay synchronous even when an event loop runs in this thread.
        connector = SqlAlchemyConnector.load(name, _sync=True)
    except (ValueError, ObjectNotFound) as err:
        if isinstance(err, ObjectNotFound) or isinstance(err.__cause__, ObjectNotFound):
            raise ConfigurationError(
                f"No SqlAlchemyConnector block named {name!r} on this Prefect server: "
                "create it (pip install prefect-sqlalchemy; UI or "
                "SqlAlchemyConnector(...).save(name)), or pass database_url instead."
            ) from None
        # Not the message: a validation error of the stored data may quote the password.
        raise ConfigurationError(
            f"The SqlAlchemyConnector block {name!r} cannot be used ({type(err).__name__})."
        ) from None
    # Only the URL is used: the connector opens no engine until asked, so nothing to close.
    try:
        url = connector_url(connector)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise ConfigurationError(
            f"The SqlAlchemyConnector block {name!r} holds a URL SQLAlchemy cannot read."
        ) from None
    if url.drivername.split("+")[-1] in _ASYNC_DRIVERS:
        raise ConfigurationError(
            f"The SqlAlchemyConnector block {name!r} uses the async driver "
            f"{url.drivername!r}; studio-flows writes with a synchronous one "
            "(postgresql+psycopg, sqlite, mysql+pymysql...)."
        )
    logger.debug("Results database from block %r: %s", name, safe_url(url))
    return url.render_as_string(hide_password=False)


# Drivers of prefect_sqlalchemy.AsyncDriver; the block refuses them anyway, but say why.
_ASYNC_DRIVERS = frozenset({"asyncpg", "aiosqlite", "aiomysql", "asyncmy"})


def resolve_database_url(
    database_url: str | None, database_block: str | None, settings: Settings
) -> str:
    """The results database: the URL given, else the connector block's, else the settings'.

    Call it inside the flow or task that opens the engine; the result may contain a
    password, so pass it only to the engine and log :func:`safe_url` of it.

    Example:
        >>> resolve_database_url("sqlite:///r.db", None, settings)  # doctest: +SKIP
        'sqlite:///r.db'
        >>> resolve_database_url(None, "results-db", settings)  # doctest: +SKIP
        'postgresql+psycopg://app:...@db:5432/results'
    """
    if database_url:
        _refuse_redacted(database_url)
        if database_block:
            logger.warning(
                "Both database_url and database_block %r are set: using database_url",
                database_block,
            )
        return database_url
    if database_block:
        return load_connector_url(database_block)
    return settings.database_url


def _refuse_redacted(url: str) -> None:
    if is_redacted(url):
        raise ConfigurationError(
            f"The database URL {url} has its password masked ({MASK}): flow-run parameters "
            "never carry a password. Pass a ResultsDatabase block (database=...) or set "
            "MODEL_STUDIO_DATABASE_URL where the flow runs."
        )


def results_database(
    database: ResultsDatabase | None,
    database_url: str | None,
    database_block: str | None,
    settings: Settings,
) -> ResultsDatabase:
    """The results database as a block: the one given, else :func:`resolve_database_url`'s
    URL wrapped in an unsaved block, which flows hand to their tasks (a Block parameter
    never shows its password).

    Example:
        >>> results_database(None, "sqlite:///r.db", None, settings).get_url()  # doctest: +SKIP
        'sqlite:///r.db'
    """
    if database is not None:
        return database
    return ResultsDatabase(url=resolve_database_url(database_url, database_block, settings))


def resolve_source_url(
    sql: str | None,
    source_url: str | None,
    source_block: str | None,
    results_url: Callable[[], str],
) -> str | None:
    """Where a SQL source runs: its URL, else its connector block's, else the results
    database (``results_url()``, resolved only when needed); None without a query.

    Example:
        >>> resolve_source_url("SELECT 1", "sqlite:///faq.db", None, lambda: "unused")
        'sqlite:///faq.db'
    """
    if sql is None:
        return None
    if source_url:
        _refuse_redacted(source_url)
        return source_url
    if source_block:
        return load_connector_url(source_block)
    return results_url()
