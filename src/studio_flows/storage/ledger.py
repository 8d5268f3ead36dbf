"""The job ledger: intent before the POST, the job_id after it, the shard's end with its
results in one transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from studio_flows.holders import this_process
from studio_flows.models import FAILED_JOB_STATUSES
from studio_flows.rows import (
    GenerationParams,
    ResultRecord,
    RowIdentity,
    Shard,
    messages_payload,
)
from studio_flows.storage.engine import _reading, _writing
from studio_flows.storage.schema import (
    AMBIGUOUS,
    COMPLETED,
    FAILED,
    FINISHED,
    LOOKUP_CHUNK,
    OPEN_JOB_STATUSES,
    PENDING,
    SUBMITTED,
    generation_jobs,
    generation_results,
    utcnow,
)
from studio_flows.storage.upserts import _execute_upsert, _UpsertBatches


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
    # When the row last changed: for a pending or ambiguous shard, about when its POST went.
    updated_at: datetime | None = None
    submitted_at: datetime | None = None
    # The fair-use lease the shard's POST went under, and the process holding it (schema 8).
    lease_id: str | None = None
    lease_holder: str | None = None

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
        >>> from studio_flows.storage import make_engine
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
    "lease_id",
    "lease_holder",
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


def record_shard_intent(engine: Engine, shard: Shard, lease_id: str | None = None) -> ShardRecord:
    """Write the intent to submit ``shard`` (status ``pending``) before its POST, under the
    fair-use lease ``lease_id`` that this process holds (recorded with this process as its
    holder, so that a rerun after a kill knows the POSTs on the lease it adopts).

    A new shard gets attempts 1; an existing ledger row is reset to ``pending`` with its job
    id cleared and attempts incremented (ambiguous_count is kept: it counts over all tries).
    The caller decides whether a shard should be (re)submitted; this only records it.

    Example:
        >>> from studio_flows.storage import make_engine
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
        "lease_id": lease_id,
        "lease_holder": None if lease_id is None else this_process(),
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
        lease_id=sa.bindparam("new_lease_id"),
        lease_holder=sa.bindparam("new_lease_holder"),
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


_REJECTED: Final = (
    generation_jobs.update()
    .where(generation_jobs.c.shard_key == sa.bindparam("key"))
    .values(
        status=FAILED,
        error=sa.bindparam("new_error"),
        finished_at=sa.bindparam("new_now"),
        updated_at=sa.bindparam("new_now"),
    )
)


def record_rejected(engine: Engine, shard_key: str, reason: str) -> None:
    """Record that the service refused the shard's POST: no job exists, nothing was paid.

    The shard is closed ``failed`` with ``reason``, so the next run plans its rows afresh
    instead of counting an unknown outcome.

    Example:
        >>> record_rejected(engine, shard.shard_key, "HTTP 404: model not found")  # doctest: +SKIP
    """
    with _writing(engine) as conn:
        _update_shard(conn, _REJECTED, shard_key, new_error=reason, new_now=utcnow())


def record_job_submitted(
    engine: Engine, shard_key: str, job_id: str, lease_id: str | None = None
) -> None:
    """Record the job created for ``shard_key`` at once after its POST returned, and the
    fair-use lease it runs under (``lease_id``).

    Raises LookupError if no intent was recorded for the shard.

    Example:
        >>> record_job_submitted(engine, shard.shard_key, created.job_id)  # doctest: +SKIP
    """
    with _writing(engine) as conn:
        _update_shard(
            conn,
            _SUBMITTED,
            shard_key,
            new_job_id=job_id,
            new_lease_id=lease_id,
            new_lease_holder=None if lease_id is None else this_process(),
            new_now=utcnow(),
        )


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
    schema_hash = params.response_schema.digest if params.response_schema else None
    lines = {row.row_key: row.line for row in shard.rows}
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
            "status": str(r.status),  # the plain string, for every driver
            "error": r.error,
            "temperature": params.temperature,
            "max_tokens": params.max_tokens,
            "flow_run_id": flow_run_id,
            "created_at": now,
            "completed_at": now if r.status == COMPLETED else None,
            "metadata": None if r.metadata is None else dict(r.metadata),
            "parsed": r.parsed,
            "schema_hash": schema_hash,
            "template_hash": params.template_hash,
            "line": lines.get(r.identity.row_key),
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
) -> None:
    """Write a terminal job's results and close its ledger row, in one transaction.

    Every record is upserted by identity; the ledger row becomes ``failed`` when
    ``job_status`` is FAILED/ERROR/CANCELLED/CANCELED (any case), else ``finished``. If no
    intent row exists, one is created closed.

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
        >>> from studio_flows.storage import make_engine
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
        >>> from studio_flows.storage import make_engine
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
        >>> from studio_flows.storage import make_engine
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


_CLAIM_LEASE: Final = (
    generation_jobs.update()
    .where(
        generation_jobs.c.lease_id == sa.bindparam("lease"),
        generation_jobs.c.lease_holder == sa.bindparam("gone"),
    )
    .values(lease_holder=sa.bindparam("holder"))
)


def claim_lease(engine: Engine, lease_id: str, gone_holder: str) -> bool:
    """Make this process the holder of ``lease_id`` in every row that names ``gone_holder``
    as its holder; False if another process claimed it first (or no row names it).

    Two reruns after one kill may both find the killed run's lease: one adopts it.

    Example:
        >>> from studio_flows.storage import make_engine
        >>> claim_lease(make_engine("sqlite://"), "0" * 36, "host/0/1")
        False
    """
    with _writing(engine) as conn:
        claimed = conn.execute(
            _CLAIM_LEASE, {"lease": lease_id, "gone": gone_holder, "holder": this_process()}
        )
        return claimed.rowcount > 0


def recent_job_seconds(engine: Engine, model_id: str, count: int = 20) -> list[tuple[float, int]]:
    """``(seconds, rows)`` of the last ``count`` finished jobs of ``model_id``, newest first.

    The seconds run from the recorded job_id to the stored results, so they include the
    last poll's lag: what a job of the model took at most, as earlier runs saw it.

    Example:
        >>> from studio_flows.storage import make_engine
        >>> recent_job_seconds(make_engine("sqlite://"), "my-model")
        []
    """
    query = (
        sa.select(
            generation_jobs.c.submitted_at,
            generation_jobs.c.finished_at,
            generation_jobs.c.row_count,
        )
        .where(
            generation_jobs.c.model_id == model_id,
            generation_jobs.c.status == FINISHED,
            generation_jobs.c.submitted_at.is_not(None),
            generation_jobs.c.finished_at.is_not(None),
        )
        .order_by(generation_jobs.c.id.desc())
        .limit(count)
    )
    with _reading(engine) as conn:
        rows = conn.execute(query).all()
    return [((end - start).total_seconds(), size) for start, end, size in rows]
