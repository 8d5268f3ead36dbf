"""Result and job tables, the dialect-aware upsert and the job ledger (SQLAlchemy 2 Core).

Two tables hold everything a run must not lose (never pay twice for a row, never lose one):

- ``generation_results``: one row per row identity ``(row_key, prompt_hash, model_id,
  params_hash)``, written by :func:`upsert_results`, which never turns a ``completed`` result
  back into a failed one. The table is unique on ``(row_key, identity_key)``, where
  ``identity_key`` is a 128-bit digest of the identity
  (:attr:`~studio_flows.rows.RowIdentity.key`), not on the four wide columns (schema 2).
  Row keys are content hashes by default, so each row of a shard lands on a random page of
  that index and a commit writes every such page out: the narrower index halves that
  (measured on SQLite, 100-row shards: 28 -> 21 µs a row to write and commit). Leading
  with ``row_key`` keeps the rows of a shard with sequential ids on a few pages (8 µs a
  row), which a digest alone would scatter (16 µs a row).
- ``generation_jobs``: the ledger, one row per shard: ``pending`` (intent written before the
  POST), ``submitted`` (job id known), ``ambiguous`` (the POST's outcome is unknown), then
  ``finished`` or ``failed``. :func:`complete_shard` writes a shard's results and closes its
  ledger row in one transaction.

Every ledger function takes an :class:`~sqlalchemy.engine.Engine` and runs one transaction.
Engines are made where they are used (:func:`make_engine`), never passed between Prefect tasks.

Example:
    >>> engine = make_engine("sqlite://")
    >>> count_results(engine)
    {'completed': 0, 'failed': 0}
"""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

import orjson
import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Dialect, Engine, make_url
from sqlalchemy.sql.dml import Insert
from sqlalchemy.types import TypeDecorator

from studio_flows.errors import ConfigurationError
from studio_flows.models import FAILED_JOB_STATUSES
from studio_flows.rows import (
    MAX_ROW_KEY_LENGTH,
    GenerationParams,
    ResultRecord,
    Row,
    RowIdentity,
    Shard,
    messages_payload,
)

__all__ = [
    "IDENTITY_COLUMNS",
    "SCHEMA_VERSION",
    "ShardRecord",
    "complete_shard",
    "completed_identities",
    "count_results",
    "ensure_schema",
    "generation_jobs",
    "generation_results",
    "get_shard",
    "get_shards",
    "iter_results",
    "make_engine",
    "metadata",
    "open_shards",
    "record_ambiguous",
    "record_job_submitted",
    "record_shard_intent",
    "results_of_rows",
    "schema_version",
    "upsert_results",
    "upsert_statement",
]

SCHEMA_VERSION: Final = 2

COMPLETED: Final = "completed"
FAILED: Final = "failed"
RESULT_STATUSES: Final = (COMPLETED, FAILED)

PENDING: Final = "pending"
SUBMITTED: Final = "submitted"
AMBIGUOUS: Final = "ambiguous"
FINISHED: Final = "finished"
JOB_STATUSES: Final = (PENDING, SUBMITTED, AMBIGUOUS, FINISHED, FAILED)
OPEN_JOB_STATUSES: Final = (PENDING, SUBMITTED, AMBIGUOUS)

IDENTITY_COLUMNS: Final = ("row_key", "prompt_hash", "model_id", "params_hash")

# Sizes: sha256 hex is 64 characters. The identity's unique index must also fit MySQL's
# 3072-byte key limit under utf8mb4 (4 bytes a character): 255 + 64 + 128 + 64 = 511 chars.
_HASH = 64
_IDENTITY_KEY = 32
_ROW_KEY = MAX_ROW_KEY_LENGTH
_MODEL_ID = 128
_DATASET = 512
_JOB_ID = 128
_STATUS = 16

# One IN list per query when looking identities up: small enough for every dialect's
# parameter limit, large enough that a 100k-row dataset costs 200 queries, not 100k.
LOOKUP_CHUNK: Final = 500

# Rows converted and sent per executemany: bounds memory whatever the input length.
_BATCH_ROWS: Final = 1000

_PG_SCHEMA_LOCK: Final = 0x5F_F1_05  # any constant; only studio-flows takes this advisory lock
_SQLITE_BUSY_TIMEOUT_MS: Final = 30_000
# A checkpoint after this many write transactions of an engine (~1,000 WAL pages, SQLite's
# default threshold, at 100-row shards), and SQLite's own at this many pages if ours lag.
_SQLITE_CHECKPOINT_EVERY: Final = 8
_SQLITE_BACKSTOP_CHECKPOINT_PAGES: Final = 20_000
_PG_CONNECT_TIMEOUT_S: Final = 10


def utcnow() -> datetime:
    """Now, timezone-aware in UTC: every timestamp in the tables is UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as UTC and read back timezone-aware on every dialect.

    SQLite has no timezone type and would silently drop the offset, so values are converted
    to UTC before they are written and tagged as UTC when they are read.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: storage timestamps must be timezone-aware")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None or value.tzinfo is not None:
            return value
        return value.replace(tzinfo=UTC)


# JSONB on PostgreSQL (indexable, compact); SQLAlchemy's JSON (text) everywhere else.
JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
# SQLite only aliases the rowid (and auto-increments) for a column typed exactly INTEGER.
BigIntId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

schema_version = sa.Table(
    "studio_flows_schema",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("applied_at", UTCDateTime, nullable=False, default=utcnow),
)

generation_results = sa.Table(
    "generation_results",
    metadata,
    sa.Column("id", BigIntId, primary_key=True, autoincrement=True),
    sa.Column("row_key", sa.String(_ROW_KEY), nullable=False),
    sa.Column("prompt_hash", sa.String(_HASH), nullable=False),
    sa.Column("model_id", sa.String(_MODEL_ID), nullable=False),
    sa.Column("params_hash", sa.String(_HASH), nullable=False),
    # RowIdentity.key of the four columns above (a schema-1 table migrated on SQLite has it
    # nullable: SQLite cannot add a NOT NULL column without a default; it is always written).
    sa.Column("identity_key", sa.String(_IDENTITY_KEY), nullable=False),
    sa.Column("dataset", sa.String(_DATASET), nullable=False),
    sa.Column("shard_key", sa.String(_HASH), nullable=False),
    sa.Column("job_id", sa.String(_JOB_ID), nullable=True),
    sa.Column("task_index", sa.Integer, nullable=False),
    sa.Column("messages", JSONType, nullable=False),
    sa.Column("result", sa.Text, nullable=True),
    sa.Column("status", sa.String(_STATUS), nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("temperature", sa.Float, nullable=False),
    sa.Column("max_tokens", sa.Integer, nullable=False),
    sa.Column("flow_run_id", sa.String(64), nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False, default=utcnow),
    sa.Column("completed_at", UTCDateTime, nullable=True),
    sa.CheckConstraint(sa.column("status").in_(RESULT_STATUSES), name="status"),
)
# The row identity is unique through its digest, after the row key (see the module docstring).
IDENTITY_INDEX: Final = sa.Index(
    None, generation_results.c.row_key, generation_results.c.identity_key, unique=True
)
# The CLI reads back by dataset / model / status; the flow reads by shard and by run.
sa.Index(
    None, generation_results.c.dataset, generation_results.c.model_id, generation_results.c.status
)
sa.Index(None, generation_results.c.shard_key)
sa.Index(None, generation_results.c.flow_run_id)

generation_jobs = sa.Table(
    "generation_jobs",
    metadata,
    sa.Column("id", BigIntId, primary_key=True, autoincrement=True),
    sa.Column("shard_key", sa.String(_HASH), nullable=False, unique=True),
    sa.Column("dataset", sa.String(_DATASET), nullable=False),
    sa.Column("job_id", sa.String(_JOB_ID), nullable=True),
    sa.Column("model_id", sa.String(_MODEL_ID), nullable=False),
    sa.Column("status", sa.String(_STATUS), nullable=False),
    sa.Column("row_count", sa.Integer, nullable=False),
    sa.Column("row_keys", JSONType, nullable=False),  # in task-index order
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("ambiguous_count", sa.Integer, nullable=False, default=0),
    sa.Column("submitted_at", UTCDateTime, nullable=True),
    sa.Column("finished_at", UTCDateTime, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False, default=utcnow),
    sa.Column("updated_at", UTCDateTime, nullable=False, default=utcnow),
    sa.CheckConstraint(sa.column("status").in_(JOB_STATUSES), name="status"),
)
# open_shards() after a crash filters by status (and dataset).
sa.Index(None, generation_jobs.c.status, generation_jobs.c.dataset)


# --------------------------------------------------------------------------- engine


def _redact(text: str, url: URL) -> str:
    """``text`` with the URL's password masked, in case a driver echoes it."""
    if url.password:
        text = text.replace(str(url.password), "***")
    return text


def _normalise_url(raw: str) -> URL:
    try:
        url = make_url(raw)
    except exc.ArgumentError:
        # Never echo the raw string: it may hold a password we failed to parse out.
        raise ConfigurationError(
            "The database URL is not a valid SQLAlchemy URL "
            "(expected e.g. sqlite:///studio_flows.db or postgresql://user:***@host/db)."
        ) from None
    if url.drivername in ("postgresql", "postgres"):
        # psycopg 3 is the driver we ship; SQLAlchemy's bare default would be psycopg2.
        url = url.set(drivername="postgresql+psycopg")
    return url


def _enable_wal(cursor: sqlite3.Cursor) -> None:
    """Switch the database to WAL (a no-op once it is), retrying while it is busy.

    The switch needs the database to itself, and SQLite answers "database is locked" at
    once, without its busy handler, while another process is opening it: four processes
    creating one database failed this way about one start in five (tests/test_storage.py).
    """
    deadline = time.monotonic() + _SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            # busy_timeout first: switching to WAL needs a lock another process may hold.
            cursor.execute(f"PRAGMA busy_timeout = {_SQLITE_BUSY_TIMEOUT_MS}")
            _enable_wal(cursor)
            # In WAL mode NORMAL never corrupts and survives an application crash; only an OS
            # crash or power cut can roll back the last commits. Skipping the fsync per commit
            # is what makes a 100-row shard persist in about a millisecond.
            cursor.execute("PRAGMA synchronous = NORMAL")
            # Checkpoints run after our write transactions, outside the write lock (see
            # _writing); SQLite's own, in the commit that crosses the threshold, would hold
            # every other writer for its fsync. Its threshold stays as a backstop for writes
            # made through the engine directly.
            cursor.execute(f"PRAGMA wal_autocheckpoint = {_SQLITE_BACKSTOP_CHECKPOINT_PAGES}")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()
        # Let SQLAlchemy, not the driver, open transactions (the documented pysqlite recipe).
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # BEGIN IMMEDIATE takes the write lock up front. A deferred transaction that reads
        # and then writes fails at once with "database is locked" when another writer got
        # in between (the busy timeout cannot help an upgrade); lanes write concurrently.
        # Reads (marked by _reading) need no lock: in WAL mode they never block a writer.
        read_only = conn.get_execution_options().get(_READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


_READ_ONLY: Final = "studio_flows_read_only"


@dataclass
class _SQLiteWriters:
    """How the writers of one SQLite engine take turns, in this process.

    SQLite lets one writer in at a time, and a writer that finds the lock taken sleeps in
    SQLite's busy handler (1, 2, 5, 10 ms ...) even if the lock frees a moment later. The
    threads of one process queue on a Python lock instead and go in as soon as it is free:
    at latency 0 three lanes spent a fifth of their time in that handler (bench/). Writers
    in other processes still meet the busy handler, which is what it is for.
    """

    lock: threading.Lock = field(default_factory=threading.Lock)
    commits: int = 0

    def checkpoint_due(self) -> bool:
        """Count a commit (under the lock); True every _SQLITE_CHECKPOINT_EVERY commits."""
        self.commits += 1
        return self.commits % _SQLITE_CHECKPOINT_EVERY == 0


_WRITERS: weakref.WeakKeyDictionary[Engine, _SQLiteWriters] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def _reading(engine: Engine) -> Iterator[Connection]:
    """A read-only connection (SQLite: a deferred transaction, taking no write lock)."""
    with engine.connect().execution_options(**{_READ_ONLY: True}) as conn:
        yield conn


@contextlib.contextmanager
def _writing(engine: Engine) -> Iterator[Connection]:
    """``engine.begin()``, queued behind this process's other writers on SQLite."""
    writers = _WRITERS.get(engine)
    if writers is None:
        with engine.begin() as conn:
            yield conn
        return
    with writers.lock:
        with engine.begin() as conn:
            yield conn
        due = writers.checkpoint_due()
    if due:
        # PASSIVE: copies what it can without blocking writers; the other lanes write on
        # while this thread waits for the copy and its fsync.
        # On the driver's connection: outside a transaction (no BEGIN from our listener).
        with engine.connect() as conn:
            driver = conn.connection.driver_connection
            assert driver is not None
            driver.execute("PRAGMA wal_checkpoint(PASSIVE)").close()


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def make_engine(url: str) -> Engine:
    """An engine for ``url`` with the schema in place; raise ConfigurationError if unusable.

    SQLite gets WAL, a busy timeout and foreign keys; ``postgresql://`` URLs use psycopg 3
    with ``pool_pre_ping``. The schema is created on first use (idempotent, safe when several
    processes start at once). Dispose of the engine when done.

    Example:
        >>> engine = make_engine("sqlite://")
        >>> engine.dialect.name
        'sqlite'
        >>> engine.dispose()
    """
    parsed = _normalise_url(url)
    shown = parsed.render_as_string(hide_password=True)
    try:
        match parsed.get_backend_name():
            case "sqlite":
                # orjson writes the JSON columns (a conversation per row) 15x faster.
                engine = sa.create_engine(parsed, json_serializer=_json_text)
                _configure_sqlite(engine)
                _WRITERS[engine] = _SQLiteWriters()
            case "postgresql":
                connect_args: dict[str, Any] = {"application_name": "studio-flows"}
                if "connect_timeout" not in parsed.query:
                    connect_args["connect_timeout"] = _PG_CONNECT_TIMEOUT_S
                engine = sa.create_engine(
                    parsed,
                    pool_pre_ping=True,
                    pool_size=5,
                    max_overflow=5,
                    pool_recycle=1800,
                    connect_args=connect_args,
                )
            case _:
                engine = sa.create_engine(parsed, pool_pre_ping=True)
    except (exc.ArgumentError, exc.NoSuchModuleError, ImportError) as err:
        raise ConfigurationError(
            f"Cannot use database {shown}: {_redact(str(err).splitlines()[0], parsed)}"
        ) from None
    try:
        ensure_schema(engine)
    except exc.DBAPIError as err:
        engine.dispose()
        cause = _redact(str(err.orig).strip().splitlines()[0] if err.orig else str(err), parsed)
        raise ConfigurationError(f"Cannot open database {shown}: {cause}") from None
    except Exception:
        engine.dispose()
        raise
    return engine


def ensure_schema(engine: Engine) -> None:
    """Create the tables if missing and record the schema version (idempotent).

    On PostgreSQL a transaction-level advisory lock serialises concurrent starters; on other
    dialects a lost creation race ("already exists", duplicate version row) is retried.

    Example:
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


# --------------------------------------------------------------------------- upsert


def _identity(record: dict[str, Any]) -> tuple[str, str, str, str]:
    return (record["row_key"], record["prompt_hash"], record["model_id"], record["params_hash"])


def _dedupe(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per identity: the last wins, except that a completed one beats a failed one.

    PostgreSQL refuses to touch the same row twice in one statement, and the result must not
    depend on the batch's order when a completed answer and a failure meet. Sorted by identity
    so concurrent writers lock rows in the same order and cannot deadlock each other.
    """
    chosen: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for record in records:
        key = _identity(record)
        previous = chosen.get(key)
        if (
            previous is not None
            and previous["status"] == COMPLETED
            and record["status"] != COMPLETED
        ):
            continue
        chosen[key] = record
    return [chosen[key] for key in sorted(chosen)]


# Columns an upsert rewrites: everything but the key, the identity and the first-seen time.
_UPDATED_COLUMNS: Final = tuple(
    c.name
    for c in generation_results.columns
    if c.name not in (*IDENTITY_COLUMNS, "identity_key", "id", "created_at")
)


# A literal, not a bound parameter: the statement's only parameters are the row's columns.
_COMPLETED_SQL: Final = sa.literal_column(f"'{COMPLETED}'", sa.String)


def upsert_statement(dialect: Dialect) -> Insert:
    """The INSERT that adds results or updates them by identity, for ``dialect``.

    Existing ``completed`` results are only replaced by completed ones: on SQLite and
    PostgreSQL through the conflict clause's WHERE, on MySQL/MariaDB through an ``IF()`` per
    column (with ``status`` assigned last, because MySQL evaluates the assignments in order
    and later ones would see the new status). Other dialects raise ``NotImplementedError``.

    Example:
        >>> from sqlalchemy.dialects import mysql
        >>> sql = str(upsert_statement(mysql.dialect()).compile(dialect=mysql.dialect()))
        >>> "ON DUPLICATE KEY UPDATE" in sql
        True
    """
    table = generation_results
    match dialect.name:
        case "sqlite" | "postgresql":
            insert = sqlite.insert(table) if dialect.name == "sqlite" else postgresql.insert(table)
            excluded = insert.excluded
            return insert.on_conflict_do_update(
                index_elements=list(IDENTITY_INDEX.columns),
                set_={name: excluded[name] for name in _UPDATED_COLUMNS},
                where=sa.or_(table.c.status != _COMPLETED_SQL, excluded.status == _COMPLETED_SQL),
            )
        case "mysql" | "mariadb":
            my_insert = mysql.insert(table)
            incoming = my_insert.inserted
            keep_old = sa.and_(table.c.status == _COMPLETED_SQL, incoming.status != _COMPLETED_SQL)
            ordered = [name for name in _UPDATED_COLUMNS if name != "status"] + ["status"]
            return my_insert.on_duplicate_key_update(
                [(name, sa.func.IF(keep_old, table.c[name], incoming[name])) for name in ordered]
            )
        case other:
            raise NotImplementedError(f"upsert_results does not support the {other!r} dialect")


@dataclass(frozen=True)
class _UpsertPlan:
    """The upsert compiled once per dialect, with the bind processor of each column needing one.

    SQLAlchemy's generic per-row parameter handling cost more than SQLite's own insert;
    converting values with the very processors SQLAlchemy would use and handing the driver
    plain tuples (or dicts, for named paramstyles) halves the time of a 100-row shard.
    """

    sql: str
    keys: tuple[str, ...]  # parameter names, in the compiled statement's order when positional
    positional: bool
    processed: tuple[tuple[int, Callable[[Any], Any]], ...]  # (index in keys, processor)

    def parameters(self, row: dict[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        values = [row.get(key) for key in self.keys]
        for index, process in self.processed:
            values[index] = process(values[index])
        return tuple(values) if self.positional else dict(zip(self.keys, values, strict=True))


def _reusing_last(process: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``process`` remembering its last input: a shard's rows share one timestamp.

    The (input, output) pair is swapped in one assignment, so threads sharing the plan can
    never read one row's input with another's output.
    """
    last: tuple[Any, Any] = (object(), None)

    def reuse(value: Any) -> Any:
        nonlocal last
        seen, out = last
        if value is not seen:
            out = process(value)
            last = (value, out)
        return out

    return reuse


_INSERTED_COLUMNS: Final = tuple(c.name for c in generation_results.columns if c.name != "id")
_PLANS: weakref.WeakKeyDictionary[Dialect, _UpsertPlan] = weakref.WeakKeyDictionary()


def _upsert_plan(dialect: Dialect) -> _UpsertPlan:
    plan = _PLANS.get(dialect)
    if plan is None:
        compiled = upsert_statement(dialect).compile(
            # for_executemany: no implicit RETURNING of the generated id, which nothing reads.
            dialect=dialect,
            column_keys=list(_INSERTED_COLUMNS),
            for_executemany=True,
        )
        keys = tuple(compiled.positiontup or _INSERTED_COLUMNS)
        if set(keys) != set(_INSERTED_COLUMNS):
            raise RuntimeError(f"unexpected parameters in the upsert: {sorted(keys)}")
        processed = []
        for index, key in enumerate(keys):
            column_type = generation_results.c[key].type
            # dialect_impl resolves the JSONB variant and the driver's types (psycopg's Jsonb).
            process: Callable[[Any], Any] | None
            process = column_type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                if isinstance(column_type, UTCDateTime):
                    process = _reusing_last(process)
                processed.append((index, process))
        plan = _UpsertPlan(str(compiled), keys, bool(compiled.positional), tuple(processed))
        _PLANS[dialect] = plan
    return plan


def upsert_results(conn: Connection, records: Sequence[dict[str, Any]]) -> int:
    """Insert or update result rows by identity; return how many distinct rows were written.

    ``records`` are dicts keyed by ``generation_results`` column names (a missing column is
    NULL, a missing ``created_at`` is now). The batch is de-duplicated first (last wins, a
    completed row beats a failed one) and a ``completed`` result is never replaced by a
    failed one. Runs inside the caller's transaction.

    Rows go to the driver's executemany, one row's parameters per execution, so no dialect's
    bound-parameter limit (SQLite's 32766) can be reached whatever the input size; rows are
    still sent in batches to bound the memory of converted parameters.

    Example:
        >>> engine = make_engine("sqlite://")
        >>> row = dict(row_key="r1", prompt_hash="p", model_id="m", params_hash="h",
        ...            dataset="d", shard_key="s", job_id="j", task_index=0,
        ...            messages=[{"role": "user", "content": "Hi"}], result="Hello",
        ...            status="completed", error=None, temperature=0.7, max_tokens=64,
        ...            flow_run_id=None, completed_at=None)
        >>> with engine.begin() as conn:
        ...     upsert_results(conn, [row, row])
        1
    """
    return _execute_upsert(conn, _UpsertBatches.of(conn.dialect, records))


@dataclass(frozen=True)
class _UpsertBatches:
    """The driver-ready parameters of an upsert, built before its transaction begins.

    Converting values is most of an upsert's Python work; done before taking SQLite's
    write lock, it no longer holds up the other lanes' writes.
    """

    sql: str
    batches: list[list[tuple[Any, ...] | dict[str, Any]]]
    rows: int

    @classmethod
    def of(cls, dialect: Dialect, records: Iterable[dict[str, Any]]) -> _UpsertBatches:
        rows = _dedupe(records)
        plan = _upsert_plan(dialect)
        now = utcnow()
        batches = [
            [plan.parameters(_completed(row, now)) for row in rows[start : start + _BATCH_ROWS]]
            for start in range(0, len(rows), _BATCH_ROWS)
        ]
        return cls(plan.sql, batches, len(rows))


def _completed(row: dict[str, Any], now: datetime) -> dict[str, Any]:
    """``row`` with its identity key and creation time if it lacks them (a copy, then)."""
    missing: dict[str, Any] = {}
    if "identity_key" not in row:
        missing["identity_key"] = RowIdentity(*_identity(row)).key
    if "created_at" not in row:
        missing["created_at"] = now
    return {**row, **missing} if missing else row


def _execute_upsert(conn: Connection, upsert: _UpsertBatches) -> int:
    for batch in upsert.batches:
        # A list of parameter sets is one executemany: psycopg pipelines it, sqlite3 loops in C.
        conn.exec_driver_sql(upsert.sql, batch)
    return upsert.rows


# --------------------------------------------------------------------------- ledger


@dataclass(frozen=True)
class ShardRecord:
    """A shard's row in the job ledger.

    Example:
        >>> ShardRecord("k", "d", None, "m", "pending", 2, ("a", "b"), 1, 0, None).is_open
        True
    """

    shard_key: str
    dataset: str
    job_id: str | None
    model_id: str
    status: str
    row_count: int
    row_keys: tuple[str, ...]
    attempts: int
    ambiguous_count: int
    error: str | None

    @property
    def is_open(self) -> bool:
        """Pending, submitted or ambiguous: a restart must look at it again."""
        return self.status in OPEN_JOB_STATUSES


_SHARD_COLUMNS: Final = tuple(generation_jobs.c[name] for name in ShardRecord.__dataclass_fields__)


def _shard_record(row: sa.Row[Any]) -> ShardRecord:
    values = dict(row._mapping)
    values["row_keys"] = tuple(values["row_keys"])
    return ShardRecord(**values)


def _select_shard(conn: Connection, shard_key: str) -> ShardRecord | None:
    row = conn.execute(_SELECT_SHARD, {"key": shard_key}).one_or_none()
    return None if row is None else _shard_record(row)


def _update_shard(conn: Connection, update: sa.Update, shard_key: str, **values: Any) -> None:
    """Run a ledger ``update`` (bound to ``key``); raise LookupError if the shard has no row."""
    if conn.execute(update, {"key": shard_key, **values}).rowcount == 0:
        raise LookupError(f"no intent recorded for shard {shard_key}")


def get_shard(engine: Engine, shard_key: str) -> ShardRecord | None:
    """The ledger row of ``shard_key``, or None if no intent was ever recorded.

    Example:
        >>> engine = make_engine("sqlite://")
        >>> get_shard(engine, "0" * 32) is None
        True
    """
    return get_shards(engine, [shard_key]).get(shard_key)


# Ledger statements built once: building an UPDATE per call cost more than running it.
_INTENT_COLUMNS: Final = (
    "dataset",
    "model_id",
    "row_count",
    "row_keys",
    "status",
    "job_id",
    "error",
    "submitted_at",
    "finished_at",
    "updated_at",
)
_RETRY_INTENT: Final = (
    generation_jobs.update()
    .where(generation_jobs.c.shard_key == sa.bindparam("key"))
    .values(
        attempts=generation_jobs.c.attempts + 1,
        **{name: sa.bindparam(f"new_{name}") for name in _INTENT_COLUMNS},
    )
)
_NEW_INTENT: Final = generation_jobs.insert()
_SELECT_SHARD: Final = sa.select(*_SHARD_COLUMNS).where(
    generation_jobs.c.shard_key == sa.bindparam("key")
)


def _intent_upsert(insert: sqlite.Insert | postgresql.Insert) -> sa.Executable:
    """One statement for an intent, new or retried, that returns the ledger row."""
    return insert.on_conflict_do_update(
        index_elements=[generation_jobs.c.shard_key],
        set_={
            "attempts": generation_jobs.c.attempts + 1,
            **{name: insert.excluded[name] for name in _INTENT_COLUMNS},
        },
    ).returning(*_SHARD_COLUMNS)


# Where the dialect has an upsert with RETURNING, an intent is one statement instead of
# five (update, savepoint, insert, release, select): a lane holds SQLite's write lock for
# each statement it runs, and the other lanes wait behind it.
_INTENT_UPSERTS: Final = {
    "sqlite": _intent_upsert(sqlite.insert(generation_jobs)),
    "postgresql": _intent_upsert(postgresql.insert(generation_jobs)),
}


def _fresh(values: dict[str, Any]) -> dict[str, Any]:
    return {f"new_{name}": value for name, value in values.items()}


def record_shard_intent(engine: Engine, shard: Shard) -> ShardRecord:
    """Write the intent to submit ``shard`` (status ``pending``) before its POST.

    A new shard gets attempts 1; an existing ledger row is reset to ``pending`` with its job
    id cleared and attempts incremented (ambiguous_count is kept: it counts over all tries).
    The caller decides whether a shard should be (re)submitted; this only records it.

    Example:
        >>> from studio_flows.models import Message
        >>> from studio_flows.rows import GenerationParams, Row
        >>> row = Row.from_messages([Message(role="user", content="Hi")], line=1)
        >>> shard = Shard("d", GenerationParams(model_id="m"), (row,))
        >>> record_shard_intent(make_engine("sqlite://"), shard).status
        'pending'
    """
    now = utcnow()
    shard_key = shard.shard_key
    row_keys = [row.row_key for row in shard.rows]
    fresh = {
        "dataset": shard.dataset,
        "model_id": shard.params.model_id,
        "row_count": len(row_keys),
        "row_keys": row_keys,
        "status": PENDING,
        "job_id": None,
        "error": None,
        "submitted_at": None,
        "finished_at": None,
        "updated_at": now,
    }
    new = {"shard_key": shard_key, "attempts": 1, "ambiguous_count": 0, "created_at": now}
    upsert = _INTENT_UPSERTS.get(engine.dialect.name)
    with _writing(engine) as conn:
        if upsert is not None:
            return _shard_record(conn.execute(upsert, {**new, **fresh}).one())
        # Update first, insert if absent: portable, and the UPDATE takes the row lock so the
        # attempts count cannot be lost to a concurrent writer.
        updated = conn.execute(_RETRY_INTENT, {"key": shard_key, **_fresh(fresh)})
        if updated.rowcount == 0:
            try:
                with conn.begin_nested():
                    conn.execute(_NEW_INTENT, {**new, **fresh})
            except exc.IntegrityError:
                # Another process inserted it meanwhile: count our attempt on its row.
                conn.execute(_RETRY_INTENT, {"key": shard_key, **_fresh(fresh)})
        record = _select_shard(conn, shard_key)
    assert record is not None  # written in this very transaction
    return record


_SUBMITTED: Final = (
    generation_jobs.update()
    .where(generation_jobs.c.shard_key == sa.bindparam("key"))
    .values(
        status=SUBMITTED,
        job_id=sa.bindparam("new_job_id"),
        submitted_at=sa.bindparam("new_now"),
        updated_at=sa.bindparam("new_now"),
        error=None,
    )
)


_AMBIGUOUS: Final = (
    generation_jobs.update()
    .where(generation_jobs.c.shard_key == sa.bindparam("key"))
    .values(
        status=AMBIGUOUS,
        ambiguous_count=generation_jobs.c.ambiguous_count + 1,
        error=sa.bindparam("new_error"),
        updated_at=sa.bindparam("new_now"),
    )
)


def record_job_submitted(engine: Engine, shard_key: str, job_id: str) -> None:
    """Record the job created for ``shard_key`` at once after its POST returned.

    Raises LookupError if no intent was recorded for the shard.

    Example:
        >>> record_job_submitted(engine, shard.shard_key, created.job_id)  # doctest: +SKIP
    """
    with _writing(engine) as conn:
        _update_shard(conn, _SUBMITTED, shard_key, new_job_id=job_id, new_now=utcnow())


def record_ambiguous(engine: Engine, shard_key: str, cause: str) -> None:
    """Record that the POST for ``shard_key`` may or may not have created a job.

    Raises LookupError if no intent was recorded for the shard.

    Example:
        >>> record_ambiguous(engine, shard.shard_key, err.cause)  # doctest: +SKIP
    """
    with _writing(engine) as conn:
        _update_shard(conn, _AMBIGUOUS, shard_key, new_error=cause, new_now=utcnow())


def _result_rows(
    shard: Shard,
    shard_key: str,
    job_id: str,
    records: Sequence[ResultRecord],
    flow_run_id: str | None,
    now: datetime,
) -> list[dict[str, Any]]:
    params: GenerationParams = shard.params
    return [
        {
            "row_key": r.identity.row_key,
            "prompt_hash": r.identity.prompt_hash,
            "model_id": r.identity.model_id,
            "params_hash": r.identity.params_hash,
            "identity_key": r.identity.key,
            "dataset": shard.dataset,
            "shard_key": shard_key,
            "job_id": job_id,
            "task_index": r.task_index,
            "messages": messages_payload(r.messages),
            "result": r.result,
            "status": r.status,
            "error": r.error,
            "temperature": params.temperature,
            "max_tokens": params.max_tokens,
            "flow_run_id": flow_run_id,
            "created_at": now,
            "completed_at": now if r.status == COMPLETED else None,
        }
        for r in records
    ]


_CLOSING_COLUMNS: Final = ("status", "job_id", "finished_at", "error", "updated_at")
# Built once: constructing an UPDATE per call cost a tenth of a 100-row persist.
_CLOSE_SHARD: Final = (
    generation_jobs.update()
    .where(generation_jobs.c.shard_key == sa.bindparam("key"))
    .values({name: sa.bindparam(f"new_{name}") for name in _CLOSING_COLUMNS})
)


def complete_shard(
    engine: Engine,
    shard: Shard,
    *,
    job_id: str,
    job_status: str,
    records: Sequence[ResultRecord],
    flow_run_id: str | None,
    _between: Callable[[], None] | None = None,
) -> None:
    """Write a terminal job's results and close its ledger row, in one transaction.

    Every record is upserted by identity; the ledger row becomes ``failed`` when
    ``job_status`` is FAILED/ERROR/CANCELLED/CANCELED (any case), else ``finished``. If no
    intent row exists, one is created closed. ``_between`` is a test hook called between the
    two writes (raise in it to prove that neither is kept).

    Example:
        >>> complete_shard(engine, shard, job_id=status.job_id, job_status=status.job_status,
        ...                records=records, flow_run_id=None)  # doctest: +SKIP
    """
    now = utcnow()
    shard_key = shard.shard_key
    failed = job_status.upper() in FAILED_JOB_STATUSES
    closing = {
        "status": FAILED if failed else FINISHED,
        "job_id": job_id,
        "finished_at": now,
        "error": f"job {job_id} ended {job_status}" if failed else None,
        "updated_at": now,
    }
    rows = _result_rows(shard, shard_key, job_id, records, flow_run_id, now)
    upsert = _UpsertBatches.of(engine.dialect, rows)
    with _writing(engine) as conn:
        _execute_upsert(conn, upsert)
        if _between is not None:
            _between()
        closed = conn.execute(_CLOSE_SHARD, {"key": shard_key, **_fresh(closing)})
        if closed.rowcount == 0:
            conn.execute(
                generation_jobs.insert().values(
                    shard_key=shard_key,
                    dataset=shard.dataset,
                    model_id=shard.params.model_id,
                    row_count=len(shard.rows),
                    row_keys=[row.row_key for row in shard.rows],
                    attempts=1,
                    ambiguous_count=0,
                    created_at=now,
                    **closing,
                )
            )


_SELECT_COMPLETED: Final = sa.select(generation_results.c.identity_key).where(
    generation_results.c.status == COMPLETED,
    generation_results.c.row_key.in_(sa.bindparam("row_keys", expanding=True)),
    generation_results.c.identity_key.in_(sa.bindparam("keys", expanding=True)),
)


def completed_identities(engine: Engine, identities: Sequence[RowIdentity]) -> set[RowIdentity]:
    """The subset of ``identities`` that already has a completed result.

    One query per chunk of 500 identity keys, never one query per row.

    Example:
        >>> engine = make_engine("sqlite://")
        >>> completed_identities(engine, [RowIdentity("r", "p", "m", "h")])
        set()
    """
    by_key = {identity.key: identity for identity in map(RowIdentity._make, identities)}
    keys = sorted(by_key)
    found: set[RowIdentity] = set()
    with _reading(engine) as conn:
        for start in range(0, len(keys), LOOKUP_CHUNK):
            chunk = keys[start : start + LOOKUP_CHUNK]
            # By row key too: the unique index leads with it.
            row_keys = sorted({by_key[key].row_key for key in chunk})
            rows = conn.execute(_SELECT_COMPLETED, {"keys": chunk, "row_keys": row_keys})
            found.update(by_key[key] for key in rows.scalars())
    return found


_SELECT_SHARDS: Final = sa.select(*_SHARD_COLUMNS).where(
    generation_jobs.c.shard_key.in_(sa.bindparam("keys", expanding=True))
)


def get_shards(engine: Engine, shard_keys: Sequence[str]) -> dict[str, ShardRecord]:
    """The ledger rows of those ``shard_keys`` that have one, by key (a query per 500 keys).

    Example:
        >>> get_shards(make_engine("sqlite://"), ["0" * 32, "1" * 32])
        {}
    """
    keys = sorted(set(shard_keys))
    found: dict[str, ShardRecord] = {}
    with _reading(engine) as conn:
        for start in range(0, len(keys), LOOKUP_CHUNK):
            rows = conn.execute(_SELECT_SHARDS, {"keys": keys[start : start + LOOKUP_CHUNK]})
            found.update((record.shard_key, record) for record in map(_shard_record, rows))
    return found


def open_shards(engine: Engine, dataset: str | None = None) -> list[ShardRecord]:
    """Shards that are pending, submitted or ambiguous (to re-attach after a crash), oldest first.

    Example:
        >>> open_shards(make_engine("sqlite://"), dataset="examples/prompts.jsonl")
        []
    """
    query = (
        sa.select(*_SHARD_COLUMNS)
        .where(generation_jobs.c.status.in_(OPEN_JOB_STATUSES))
        .order_by(generation_jobs.c.id)
    )
    if dataset is not None:
        query = query.where(generation_jobs.c.dataset == dataset)
    with _reading(engine) as conn:
        return [_shard_record(row) for row in conn.execute(query)]


# --------------------------------------------------------------------------- read-back


def _result_filters(
    dataset: str | None, model_id: str | None, status: str | None, flow_run_id: str | None
) -> list[sa.ColumnElement[bool]]:
    table = generation_results
    wanted = {
        "dataset": dataset,
        "model_id": model_id,
        "status": status,
        "flow_run_id": flow_run_id,
    }
    return [table.c[name] == value for name, value in wanted.items() if value is not None]


ResultOrder = Literal["written", "shard"]


def _ordered(query: sa.Select[Any], order: ResultOrder) -> sa.Select[Any]:
    """``query`` in write order, or by its shard's ledger row then task index."""
    results = generation_results
    if order == "written":
        return query.order_by(results.c.id)
    ledger = generation_jobs
    joined = results.outerjoin(ledger, ledger.c.shard_key == results.c.shard_key)
    # A result written without a ledger row (upsert_results alone) sorts after the rest.
    return query.select_from(joined).order_by(
        ledger.c.id.is_(None), ledger.c.id, results.c.task_index, results.c.id
    )


def iter_results(
    engine: Engine,
    *,
    dataset: str | None = None,
    model_id: str | None = None,
    status: str | None = None,
    flow_run_id: str | None = None,
    batch_size: int = 1000,
    order: ResultOrder = "written",
) -> Iterator[dict[str, Any]]:
    """Stream result rows (as dicts of every column) matching the filters.

    ``order="written"`` is write order (within one written batch, identity order: not the
    dataset's). ``order="shard"`` is by the shard's ledger row (the order runs took the
    shards in, close to the dataset's) then task index: a fixed order per database, however
    the jobs' finishing times interleaved the writes.
    Rows are fetched ``batch_size`` at a time through a server-side cursor, so memory stays
    bounded for any table size. The connection is held until the iterator is exhausted or
    closed.

    Example:
        >>> engine = make_engine("sqlite://")
        >>> list(iter_results(engine, dataset="examples/prompts.jsonl", status="completed"))
        []
    """
    query = sa.select(generation_results).where(
        *_result_filters(dataset, model_id, status, flow_run_id)
    )
    query = _ordered(query, order)
    with _reading(engine) as conn:
        streamed = conn.execution_options(stream_results=True, yield_per=batch_size)
        for row in streamed.execute(query):
            yield dict(row._mapping)


_SELECT_BY_ROW_KEYS: Final = (
    sa.select(generation_results)
    .where(generation_results.c.row_key.in_(sa.bindparam("row_keys", expanding=True)))
    .order_by(generation_results.c.model_id, generation_results.c.id)
)


def results_of_rows(
    engine: Engine,
    rows: Iterable[Row],
    *,
    model_id: str | None = None,
    status: str | None = None,
) -> Iterator[tuple[Row, list[dict[str, Any]]]]:
    """Each of ``rows`` in its order, with the stored results of its conversation.

    A result belongs to a row when its ``row_key`` and ``prompt_hash`` are the row's,
    whatever dataset name or run wrote it; a row sent with several models or parameters
    has one result each (by model id, then write order); a row never run has none. One
    query per :data:`LOOKUP_CHUNK` rows, by row key (the unique index leads with it).

    Example:
        >>> from studio_flows.models import Message
        >>> row = Row.from_messages([Message(role="user", content="Hi")], line=1)
        >>> [(r.line, found) for r, found in results_of_rows(make_engine("sqlite://"), [row])]
        [(1, [])]
    """
    iterator = iter(rows)
    while batch := list(itertools.islice(iterator, LOOKUP_CHUNK)):
        stored = _stored_results(engine, batch, model_id, status)
        for row in batch:
            yield row, stored.get((row.row_key, row.prompt_hash), [])


def _stored_results(
    engine: Engine, batch: Sequence[Row], model_id: str | None, status: str | None
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The results of ``batch``'s row keys, by ``(row_key, prompt_hash)``."""
    query = _SELECT_BY_ROW_KEYS.where(*_result_filters(None, model_id, status, None))
    found: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with _reading(engine) as conn:
        for result in conn.execute(query, {"row_keys": sorted({row.row_key for row in batch})}):
            found.setdefault((result.row_key, result.prompt_hash), []).append(dict(result._mapping))
    return found


def count_results(
    engine: Engine,
    *,
    dataset: str | None = None,
    model_id: str | None = None,
    flow_run_id: str | None = None,
) -> dict[str, int]:
    """Number of result rows by status (``completed`` and ``failed`` always present).

    Example:
        >>> count_results(make_engine("sqlite://"), dataset="examples/prompts.jsonl")
        {'completed': 0, 'failed': 0}
    """
    table = generation_results
    query = (
        sa.select(table.c.status, sa.func.count())
        .where(*_result_filters(dataset, model_id, None, flow_run_id))
        .group_by(table.c.status)
    )
    counts = dict.fromkeys(RESULT_STATUSES, 0)
    with _reading(engine) as conn:
        counts.update({status: int(n) for status, n in conn.execute(query)})
    return counts
