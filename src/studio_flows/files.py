"""Files an export writes and databases it reads: written beside and renamed, never created
by a read.

Example:
    >>> from pathlib import Path
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> with replacing(folder / "out.txt") as temp:
    ...     _ = temp.write_text("done")
    >>> (folder / "out.txt").read_text()
    'done'
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.engine import make_url

from studio_flows.errors import ConfigurationError
from studio_flows.settings import check_database_url


@contextmanager
def replacing(target: Path) -> Iterator[Path]:
    """A fresh path beside ``target``, renamed onto it if the block succeeds, else removed."""
    if not target.parent.is_dir():
        raise ConfigurationError(f"cannot write {target}: no such directory {target.parent}")
    temp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
    try:
        yield temp
        os.replace(temp, target)
    except OSError as err:
        temp.unlink(missing_ok=True)
        raise ConfigurationError(f"cannot write {target}: {err.strerror or err}") from None
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def check_database_exists(url: str) -> None:
    """Reading back must not create an empty SQLite file where a path was mistyped.

    Example:
        >>> check_database_exists("sqlite:///no/such/results.db")
        Traceback (most recent call last):
        studio_flows.errors.ConfigurationError: no results database at no/such/results.db (nothing has been written there yet): check --database-url or MODEL_STUDIO_DATABASE_URL
    """  # noqa: E501
    try:
        parsed = make_url(check_database_url(url))
    except ValueError as err:  # MODEL_STUDIO_DATABASE_URL was checked with the settings
        raise ConfigurationError(f"Invalid options: --database-url: {err}") from None
    path = parsed.database
    is_file = parsed.get_backend_name() == "sqlite" and path and path != ":memory:"
    if is_file and not Path(str(path)).exists():
        raise ConfigurationError(
            f"no results database at {path} (nothing has been written there yet): "
            "check --database-url or MODEL_STUDIO_DATABASE_URL"
        )
