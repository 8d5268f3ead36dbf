"""The dialect-aware upsert of result rows, de-duplicated per batch, compiled once."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql.dml import Insert

from studio_flows.rows import (
    RowIdentity,
)
from studio_flows.storage.schema import (
    _BATCH_ROWS,
    COMPLETED,
    IDENTITY_COLUMNS,
    IDENTITY_INDEX,
    UTCDateTime,
    generation_results,
    utcnow,
)


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
        >>> from studio_flows.storage import make_engine
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
