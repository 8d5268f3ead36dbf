"""Engines: URL normalising, SQLite's pragmas and WAL, one writer at a time per file."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.engine import URL, Connection, Engine, make_url

from studio_flows.errors import ConfigurationError
from studio_flows.storage.schema import (
    _SQLITE_BACKSTOP_CHECKPOINT_PAGES,
    _SQLITE_BUSY_TIMEOUT_MS,
    _SQLITE_CHECKPOINT_EVERY,
)


def _redact(text: str, url: URL) -> str:
    """``text`` with the URL's password masked, in case a driver echoes it."""
    if url.password:
        text = text.replace(str(url.password), "***")
    return text


def _normalise_url(raw: str) -> URL:
    from studio_flows.settings import check_database_url  # settings need no storage

    try:
        url = make_url(check_database_url(raw))
    except ValueError as err:
        # The reason never echoes the raw string: it may hold a password not parsed out.
        raise ConfigurationError(f"The database URL is not valid: {err}.") from None
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


def _configured_connect_timeout() -> int:
    """``MODEL_STUDIO_DATABASE_CONNECT_TIMEOUT_S`` (imported here: settings need no storage)."""
    from studio_flows.settings import load_settings

    return load_settings().database_connect_timeout_s


# The connect timeout each PostgreSQL engine was made with (None: the URL's own), for errors.
_CONNECT_TIMEOUTS: weakref.WeakKeyDictionary[Engine, int | None] = weakref.WeakKeyDictionary()


def _timeout_hint(cause: str, engine: Engine) -> str:
    """Which setting bounded a PostgreSQL connection that timed out, so a user can change it."""
    if "timeout" not in cause or engine not in _CONNECT_TIMEOUTS:
        return ""
    seconds = _CONNECT_TIMEOUTS[engine]
    if seconds is None:
        return " (connect_timeout in the URL)"
    return f" after {seconds} s (MODEL_STUDIO_DATABASE_CONNECT_TIMEOUT_S)"


def make_engine(
    url: str, *, auto_upgrade: bool | None = None, connect_timeout_s: int | None = None
) -> Engine:
    """An engine for ``url`` with the schema in place; raise ConfigurationError if unusable.

    SQLite gets WAL, a busy timeout and foreign keys; ``postgresql://`` URLs use psycopg 3
    with ``pool_pre_ping`` and a connect timeout (``connect_timeout`` in the URL, else
    ``connect_timeout_s``, else ``MODEL_STUDIO_DATABASE_CONNECT_TIMEOUT_S``). The schema is
    checked on every call (two small queries when it is current) and created or upgraded on
    first use, safe when several processes start at once, unless ``auto_upgrade`` is False
    (None: ``MODEL_STUDIO_DATABASE_AUTO_UPGRADE``, default true; see
    :mod:`studio_flows.storage.migrations`). Dispose of the engine when done.

    Example:
        >>> engine = make_engine("sqlite://")
        >>> engine.dialect.name
        'sqlite'
        >>> engine.dispose()
    """
    engine, parsed = _open_engine(url, connect_timeout_s)
    # Imported here: migrations write through this module's transaction helpers.
    from studio_flows.storage.migrations import ensure_schema

    with _opening(engine, parsed):
        ensure_schema(engine, auto_upgrade=auto_upgrade)
    return engine


def _open_engine(url: str, connect_timeout_s: int | None = None) -> tuple[Engine, URL]:
    """An engine for ``url`` (and the parsed URL), its schema not looked at yet."""
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
                timeout = None
                if "connect_timeout" not in parsed.query:
                    timeout = connect_timeout_s or _configured_connect_timeout()
                    connect_args["connect_timeout"] = timeout
                engine = sa.create_engine(
                    parsed,
                    pool_pre_ping=True,
                    pool_size=5,
                    max_overflow=5,
                    pool_recycle=1800,
                    connect_args=connect_args,
                )
                _CONNECT_TIMEOUTS[engine] = timeout
            case _:
                engine = sa.create_engine(parsed, pool_pre_ping=True)
    except (exc.ArgumentError, exc.NoSuchModuleError, ImportError) as err:
        raise ConfigurationError(
            f"Cannot use database {shown}: {_redact(str(err).splitlines()[0], parsed)}"
        ) from None
    return engine, parsed


@contextlib.contextmanager
def _opening(engine: Engine, parsed: URL) -> Iterator[None]:
    """Dispose of ``engine`` if the block fails; a driver error becomes one redacted sentence."""
    shown = parsed.render_as_string(hide_password=True)
    try:
        yield
    except exc.DBAPIError as err:
        engine.dispose()
        cause = _redact(str(err.orig).strip().splitlines()[0] if err.orig else str(err), parsed)
        raise ConfigurationError(
            f"Cannot open database {shown}: {cause}{_timeout_hint(cause, engine)}"
        ) from None
    except BaseException:
        engine.dispose()
        raise
