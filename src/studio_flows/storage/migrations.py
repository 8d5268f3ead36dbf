"""Schema versions: the Alembic revisions in ``storage/_migrations``, applied on first use.

Revision ``000N`` is schema N (:data:`~studio_flows.storage.schema.SCHEMA_VERSION` is the
head). Alembic records it in its own table, ``studio_flows_alembic_version``, so a database
shared with another Alembic project (its ``alembic_version``) is left alone. Each revision
also appends its number to ``studio_flows_schema``, the table studio-flows kept before
Alembic: a release older than the database reads it there and refuses to write.

- Up to date: one read transaction of two small queries, no lock (every ``make_engine``).
- Empty: the tables are created from :mod:`~studio_flows.storage.schema` and stamped head.
- Older, Alembic's table absent (written before Alembic): stamped with the version
  ``studio_flows_schema`` holds, then upgraded through the revisions, in one transaction.
- Newer than this code: :class:`~studio_flows.errors.ConfigurationError`.

Upgrading is automatic unless ``MODEL_STUDIO_DATABASE_AUTO_UPGRADE=false``; then an
out-of-date database is an error naming ``studio-flows db upgrade --database-url URL``
(:func:`upgrade_database`). Concurrent starters are safe: PostgreSQL upgrades under a
transaction-level advisory lock, SQLite under its write lock (``BEGIN IMMEDIATE``), and
the state is read again once the lock is held.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import Connection, Engine

from studio_flows.errors import ConfigurationError
from studio_flows.storage.engine import _open_engine, _opening, _reading, _writing
from studio_flows.storage.schema import (
    _PG_SCHEMA_LOCK,
    SCHEMA_VERSION,
    metadata,
    schema_version,
)

if TYPE_CHECKING:  # imported where used: only a database needing work loads Alembic
    from alembic.runtime.migration import MigrationContext, RevisionStep
    from alembic.script import ScriptDirectory

VERSION_TABLE: Final = "studio_flows_alembic_version"
_SCRIPTS: Final = Path(__file__).with_name("_migrations")
_HEAD: Final = f"{SCHEMA_VERSION:04d}"
_VERSION_NUMBERS: Final = sa.select(sa.func.max(schema_version.c.version))
_ALEMBIC_REVISION: Final = sa.text(f"SELECT version_num FROM {VERSION_TABLE}")


@dataclass(frozen=True)
class SchemaUpgrade:
    """What :func:`ensure_schema` found and left: ``before`` None is an empty database.

    Example:
        >>> print(SchemaUpgrade("sqlite:///r.db", before=2, after=3))
        upgraded sqlite:///r.db from schema 2 to 3
        >>> print(SchemaUpgrade("sqlite:///r.db", before=3, after=3))
        sqlite:///r.db is already at schema 3
    """

    database: str  # the URL, password hidden
    before: int | None
    after: int

    def __str__(self) -> str:
        if self.before is None:
            return f"created schema {self.after} in {self.database}"
        if self.before == self.after:
            return f"{self.database} is already at schema {self.after}"
        return f"upgraded {self.database} from schema {self.before} to {self.after}"


def ensure_schema(engine: Engine, *, auto_upgrade: bool | None = None) -> SchemaUpgrade:
    """Check the schema is current; create or upgrade it unless ``auto_upgrade`` is False.

    ``auto_upgrade`` None reads ``MODEL_STUDIO_DATABASE_AUTO_UPGRADE`` (default true), and
    only when there is something to do: an up-to-date database costs two small queries.

    Example:
        >>> from studio_flows.storage import make_engine
        >>> engine = make_engine("sqlite://")  # make_engine already calls it
        >>> ensure_schema(engine).before == ensure_schema(engine).after
        True
    """
    shown = engine.url.render_as_string(hide_password=True)
    with _reading(engine) as conn:
        found = _schema_version(conn)
    if found == SCHEMA_VERSION:
        return SchemaUpgrade(shown, found, found)
    if auto_upgrade is None:
        # Imported here: settings are read only when the schema needs work.
        from studio_flows.settings import load_settings

        auto_upgrade = load_settings().database_auto_upgrade
    if not auto_upgrade:
        state = "has no studio-flows tables" if found is None else f"is at schema {found}"
        # The URL in the command: without it, `db upgrade` would upgrade the default database.
        raise ConfigurationError(
            f"The database {shown} {state}, this studio-flows needs schema {SCHEMA_VERSION}, "
            "and MODEL_STUDIO_DATABASE_AUTO_UPGRADE is off: run "
            f"`{upgrade_command(engine.url)}`."
        )
    return SchemaUpgrade(shown, found, _upgrade(engine))


def upgrade_database(url: str) -> SchemaUpgrade:
    """Bring the database at ``url`` to this code's schema, whatever the setting says.

    What ``studio-flows db upgrade`` runs. Raises ConfigurationError (password hidden) if
    the database cannot be opened or is newer than this code.

    Example:
        >>> print(upgrade_database("sqlite://"))
        created schema 8 in sqlite://
    """
    engine, parsed = _open_engine(url)
    try:
        with _opening(engine, parsed):
            return ensure_schema(engine, auto_upgrade=True)
    finally:
        engine.dispose()


def upgrade_command(url: sa.URL) -> str:
    """The ``studio-flows db upgrade`` command line for the database at ``url``, quoted for
    a shell, its password (if any) hidden.

    Example:
        >>> upgrade_command(sa.make_url("postgresql://app:secret@db/results"))
        "studio-flows db upgrade --database-url 'postgresql://app:***@db/results'"
    """
    shown = url.render_as_string(hide_password=True)
    return f"studio-flows db upgrade --database-url {shlex.quote(shown)}"


def _schema_version(conn: Connection) -> int | None:
    """The database's schema (None: no studio-flows tables); raise if newer than the code."""
    tables = set(sa.inspect(conn).get_table_names())
    legacy = conn.execute(_VERSION_NUMBERS).scalar() if schema_version.name in tables else None
    found: int | None = legacy
    if VERSION_TABLE in tables:
        revision: str | None = conn.execute(_ALEMBIC_REVISION).scalar()
        if revision is not None:
            # A revision this code does not ship is one a newer release wrote.
            found = int(revision) if revision.isdigit() else SCHEMA_VERSION + 1
    newest = max(version for version in (found, legacy, 0) if version is not None)
    if newest > SCHEMA_VERSION:
        raise ConfigurationError(
            f"The database schema is version {newest}, newer than this studio-flows "
            f"understands ({SCHEMA_VERSION}); upgrade studio-flows."
        )
    return found


def _upgrade(engine: Engine) -> int:
    """Create or upgrade the schema under the lock; return the version it is left at."""
    for attempt in range(3):
        try:
            with _writing(engine) as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_SCHEMA_LOCK)))
                found = _schema_version(conn)  # again: another starter may have done it
                if found is None:
                    _create(conn)
                elif found < SCHEMA_VERSION:
                    _migrate(conn, found)
            return SCHEMA_VERSION
        except (exc.IntegrityError, exc.OperationalError, exc.ProgrammingError) as err:
            # Without a lock (MySQL): another process created a table or row in between.
            lost_race = isinstance(err, exc.IntegrityError) or "already exists" in str(err.orig)
            if not lost_race or attempt == 2:
                raise
    raise AssertionError("unreachable")


def _create(conn: Connection) -> None:
    """A new database: today's tables as schema.py declares them, stamped at the head."""
    metadata.create_all(conn, checkfirst=True)
    conn.execute(schema_version.insert().values(version=SCHEMA_VERSION))
    _context(conn).stamp(_script(), _HEAD)


def _migrate(conn: Connection, found: int) -> None:
    """Run the revisions after ``found``, stamping a database written before Alembic first."""
    from alembic.operations import Operations

    context = _context(conn)
    if context.get_current_revision() is None:
        context.stamp(_script(), f"{found:04d}")
    with Operations.context(context):
        context.run_migrations()


def _script() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(_SCRIPTS))


def _context(conn: Connection) -> MigrationContext:
    """Alembic's migration context on ``conn`` (inside its transaction), upgrading to head."""
    from alembic.runtime.migration import MigrationContext

    script = _script()

    def to_head(revision: str, _context: MigrationContext) -> list[RevisionStep]:
        return script._upgrade_revs(_HEAD, revision)

    return MigrationContext.configure(
        conn, opts={"version_table": VERSION_TABLE, "fn": to_head, "target_metadata": metadata}
    )
