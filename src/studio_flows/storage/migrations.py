"""Creating the schema on first use and upgrading an older one in place."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import Connection, Engine

from studio_flows.errors import ConfigurationError
from studio_flows.rows import (
    RowIdentity,
)
from studio_flows.storage.engine import _writing
from studio_flows.storage.schema import (
    _BATCH_ROWS,
    _PG_SCHEMA_LOCK,
    IDENTITY_COLUMNS,
    IDENTITY_INDEX,
    SCHEMA_VERSION,
    generation_results,
    metadata,
    schema_version,
)


def ensure_schema(engine: Engine) -> None:
    """Create the tables if missing and record the schema version (idempotent).

    On PostgreSQL a transaction-level advisory lock serialises concurrent starters; on other
    dialects a lost creation race ("already exists", duplicate version row) is retried.

    Example:
        >>> from studio_flows.storage import make_engine
        >>> engine = make_engine("sqlite://")  # make_engine already calls it
        >>> ensure_schema(engine)
    """
    for attempt in range(3):
        try:
            with _writing(engine) as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_SCHEMA_LOCK)))
                metadata.create_all(conn, checkfirst=True)
                found = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar()
                if found is None:
                    conn.execute(schema_version.insert().values(version=SCHEMA_VERSION))
                elif found == 1:
                    _upgrade_from_1(conn)
                    conn.execute(schema_version.insert().values(version=SCHEMA_VERSION))
                elif found > SCHEMA_VERSION:
                    raise ConfigurationError(
                        f"The database schema is version {found}, newer than this studio-flows "
                        f"understands ({SCHEMA_VERSION}); upgrade studio-flows."
                    )
            return
        except (exc.IntegrityError, exc.OperationalError, exc.ProgrammingError) as err:
            # Another process created a table or the version row between our check and write.
            lost_race = isinstance(err, exc.IntegrityError) or "already exists" in str(err.orig)
            if not lost_race or attempt == 2:
                raise


def _upgrade_from_1(conn: Connection) -> None:
    """Schema 1 -> 2: results get ``identity_key``, filled in, and unique instead of the four
    identity columns (kept on SQLite, which cannot drop a table's constraint in place: it
    costs those writes time, not correctness; a new database has only the new index)."""
    table = generation_results
    key_type = table.c.identity_key.type.compile(dialect=conn.dialect)
    conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN identity_key {key_type}")
    select = (
        sa.select(table.c.id, *(table.c[name] for name in IDENTITY_COLUMNS))
        .where(table.c.id > sa.bindparam("after"))
        .order_by(table.c.id)
        .limit(_BATCH_ROWS)
    )
    fill = (
        table.update()
        .where(table.c.id == sa.bindparam("row_id"))
        .values(identity_key=sa.bindparam("key"))
    )
    after = 0
    while rows := conn.execute(select, {"after": after}).all():
        conn.execute(fill, [{"row_id": row[0], "key": RowIdentity(*row[1:]).key} for row in rows])
        after = rows[-1][0]
    IDENTITY_INDEX.create(conn)
    if conn.dialect.name == "sqlite":
        return
    quote = conn.dialect.identifier_preparer.quote
    for unique in sa.inspect(conn).get_unique_constraints(table.name):
        if tuple(unique["column_names"]) == IDENTITY_COLUMNS and unique["name"]:
            drop = "DROP INDEX" if conn.dialect.name in ("mysql", "mariadb") else "DROP CONSTRAINT"
            conn.exec_driver_sql(f"ALTER TABLE {table.name} {drop} {quote(unique['name'])}")
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"ALTER TABLE {table.name} ALTER COLUMN identity_key SET NOT NULL")
