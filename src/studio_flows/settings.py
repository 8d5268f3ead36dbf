"""Settings read from ``MODEL_STUDIO_*`` environment variables (or a ``.env`` file).

Example:
    >>> settings = Settings(token="t", organization_id="org", _env_file=None)
    >>> settings.shard_size
    50
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from studio_flows.errors import ConfigurationError

DEFAULT_BASE_URL = "https://studio.ionos.de/api/v1"
DEFAULT_DATABASE_URL = "sqlite:///studio_flows.db"


class Settings(BaseSettings):
    """Everything studio-flows needs to reach Model Studio and the results database.

    ``token`` and ``organization_id`` may be left empty here: only code that talks to the
    API asks for them, through :meth:`require_credentials`, which names the variable to set.
    """

    model_config = SettingsConfigDict(
        env_prefix="MODEL_STUDIO_", env_file=".env", extra="ignore", validate_default=True
    )

    token: SecretStr | None = Field(default=None, description="Bearer token made in Model Studio")
    organization_id: str | None = Field(default=None, description="Model Studio organisation id")
    base_url: str = Field(default=DEFAULT_BASE_URL, description="API base, up to /api/v1")
    database_url: str = Field(default=DEFAULT_DATABASE_URL, description="SQLAlchemy URL")
    database_auto_upgrade: bool = Field(
        default=True,
        description="Create or upgrade the results schema on first use; if false, an "
        "out-of-date database is an error until `studio-flows db upgrade` runs",
    )
    concurrency_limit: int = Field(default=3, ge=1, description="Jobs in flight per account")
    concurrency_limit_name: str = Field(
        default="tag:model-studio",
        min_length=1,
        description="The Prefect concurrency limit of this account's fair-use slots",
    )
    shard_size: int = Field(default=50, ge=1, le=100, description="Conversations per job")
    request_timeout_s: float = Field(
        default=30.0, gt=0, description="Give up on one Model Studio request (connect, read) after"
    )
    poll_interval_s: float = Field(default=0.5, gt=0, description="First poll interval")
    poll_max_interval_s: float = Field(default=10.0, gt=0, description="Longest poll interval")
    poll_budget: float | None = Field(
        default=None,
        ge=1.5,
        description="Requests a job to aim at, POST included (none: 2 + half its seconds)",
    )
    job_deadline_s: float = Field(default=3600.0, gt=0, description="Give up on a job after")
    max_retries: int = Field(default=5, ge=0, description="Transport retries per request")
    slot_turn_s: float = Field(
        default=60.0, gt=0, description="Re-acquire a slot at least this often"
    )
    database_retry_s: float = Field(
        default=60.0, ge=0, description="Retry a results database that does not answer this long"
    )
    slot_wait_limit_s: float = Field(
        default=600.0, gt=0, description="Give up when no fair-use slot comes free in this time"
    )
    slot_watch_limit_s: float = Field(
        default=3600.0,
        gt=0,
        description="Hold the slot of a job a caller gave up on until it ends, at most this long",
    )
    # psycopg counts whole seconds and waits at least 2 s whatever it is given.
    database_connect_timeout_s: int = Field(
        default=10, ge=2, description="Give up connecting to a PostgreSQL database after"
    )
    prefect_check_timeout_s: float = Field(
        default=10.0, gt=0, description="Give up on the PREFECT_API_URL health check after"
    )
    prefect_unavailable_limit_s: float = Field(
        default=300.0, gt=0, description="Fail a run whose fair-use pool got no answer this long"
    )
    local_server_idle_s: float = Field(
        default=3600.0, gt=0, description="Stop the local Prefect server after this long unused"
    )

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, url: str) -> str:
        return check_database_url(url)

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, url: str) -> str:
        return check_base_url(url)

    @model_validator(mode="after")
    def _poll_bounds(self) -> Settings:
        if self.poll_max_interval_s < self.poll_interval_s:
            raise ValueError(
                "MODEL_STUDIO_POLL_MAX_INTERVAL_S must be >= MODEL_STUDIO_POLL_INTERVAL_S"
            )
        return self

    def require_credentials(self) -> tuple[SecretStr, str]:
        """Return ``(token, organization_id)`` or raise one clear :class:`ConfigurationError`."""
        missing = [
            name
            for name, value in (
                ("MODEL_STUDIO_TOKEN", self.token and self.token.get_secret_value()),
                ("MODEL_STUDIO_ORGANIZATION_ID", self.organization_id),
            )
            if not value
        ]
        if missing:
            raise ConfigurationError(
                f"Set {' and '.join(missing)} (or name a ModelStudioCredentials block) "
                "to reach Model Studio."
            )
        assert self.token is not None and self.organization_id is not None
        return self.token, self.organization_id


def check_database_url(url: str) -> str:
    """``url`` if SQLAlchemy can read it, else a ValueError saying why in a few words.

    The reason never quotes the URL: it may hold a password that failed to parse out.

    Example:
        >>> check_database_url("postgresql://app:secret@db:notaport/results")
        Traceback (most recent call last):
        ValueError: the URL's port is not a number
    """
    # Imported here: SQLAlchemy loads slowly and settings are read by every command.
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(url)
    except ArgumentError:
        raise ValueError(
            "not a SQLAlchemy URL (expected e.g. sqlite:///studio_flows.db or "
            "postgresql://user:***@host/db)"
        ) from None
    except ValueError:  # make_url's int() of the port, the one ValueError it raises
        raise ValueError("the URL's port is not a number") from None
    return url


def check_base_url(url: str) -> str:
    """``url`` if it is an http(s) URL with a host and a numeric port, else a ValueError.

    Example:
        >>> check_base_url("studio.ionos.de/api/v1")
        Traceback (most recent call last):
        ValueError: expected an http(s) URL such as https://studio.ionos.de/api/v1
    """
    expected = f"expected an http(s) URL such as {DEFAULT_BASE_URL}"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (reading it checks it: a ValueError when not a number)
    except ValueError:
        raise ValueError(f"its host or port is malformed ({expected})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(expected)
    return url


def load_settings(**overrides: object) -> Settings:
    """Build :class:`Settings`, turning a validation failure into one readable sentence.

    Example:
        >>> load_settings(shard_size=10, _env_file=None).shard_size
        10
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as err:
        raise ConfigurationError(describe_validation_error(err, prefix="MODEL_STUDIO_")) from None


def describe_validation_error(
    err: ValidationError, prefix: str = "", flags: Mapping[str, str] | None = None
) -> str:
    """One line per bad field: ``NAME: reason`` (input values are left out: they may be secret).

    ``prefix`` names fields as environment variables; ``flags`` maps a field to the
    command-line flag that set it, so a user reads the name they typed.

    Example:
        >>> try:
        ...     Settings(shard_size=500, _env_file=None)
        ... except ValidationError as err:
        ...     print(describe_validation_error(err, flags={"shard_size": "--shard-size"}))
        Invalid options: --shard-size: Input should be less than or equal to 100
    """
    parts = []
    for item in err.errors(include_input=False, include_url=False):
        # pydantic's "Value error, " heads the sentences our validators raise.
        message = item["msg"].removeprefix("Value error, ")
        if not item["loc"]:  # a model validator: its message names the variables itself
            parts.append(message)
            continue
        field = ".".join(str(p) for p in item["loc"])
        if flags and field in flags:
            name = flags[field]
        else:
            name = f"{prefix}{field.upper()}" if prefix else field
        parts.append(f"{name}: {message}")
    heading = "Invalid options" if flags else "Invalid settings"
    return f"{heading}: " + "; ".join(parts)
