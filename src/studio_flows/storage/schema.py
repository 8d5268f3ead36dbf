"""The tables, their indexes beside them, and the statuses and sizes they allow."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from studio_flows.rows import (
    MAX_ROW_KEY_LENGTH,
)
from studio_flows.statuses import RowStatus, ShardStatus

# The Alembic head (revision 000N is schema N, storage/_migrations/versions/).
SCHEMA_VERSION: Final = 8

# Plain strings of the enums: SQLAlchemy renders them into CHECK constraints and SQL.
COMPLETED: Final = RowStatus.COMPLETED.value
FAILED: Final = RowStatus.FAILED.value
RESULT_STATUSES: Final = tuple(status.value for status in RowStatus)

PENDING: Final = ShardStatus.PENDING.value
SUBMITTED: Final = ShardStatus.SUBMITTED.value
AMBIGUOUS: Final = ShardStatus.AMBIGUOUS.value
FINISHED: Final = ShardStatus.FINISHED.value
JOB_STATUSES: Final = tuple(status.value for status in ShardStatus)
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
# The same, where Python's None is SQL NULL rather than JSON null: "no columns were kept".
NullableJSONType = sa.JSON(none_as_null=True).with_variant(
    postgresql.JSONB(none_as_null=True), "postgresql"
)
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

# The versions a database has been through, as studio-flows kept them before Alembic (whose
# own table is the record now); each revision still appends to it, for older releases.
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
    # The input columns a user keeps (--keep-columns), by name; last, as schema 3 added it.
    sa.Column("metadata", NullableJSONType, nullable=True),
    # The answer's JSON value when the run had a response schema and it matched (schema 4).
    sa.Column("parsed", NullableJSONType, nullable=True),
    # What the row was asked with besides its parameters: the response schema's digest and
    # the templates' hash (None: none), for a training set's manifest (schema 4).
    sa.Column("schema_hash", sa.String(_HASH), nullable=True),
    sa.Column("template_hash", sa.String(_HASH), nullable=True),
    # The row's line (row number for Parquet) in its dataset when last sent (schema 5): the
    # dataset's order, which no other column knows (lanes take shards in any order, and a
    # resent row's shard is a later one). None: written before schema 5.
    sa.Column("line", sa.Integer, nullable=True),
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
    # The fair-use lease the job runs under (a Prefect concurrency lease id), for re-attach.
    sa.Column("lease_id", sa.String(36), nullable=True),
    # The process that holds that lease (studio_flows.holders, schema 8): a rerun adopts the
    # lease of a holder that is gone instead of waiting for it to expire.
    sa.Column("lease_holder", sa.String(300), nullable=True),
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

# A judge's verdict on one answer (schema 6): the answer's identity (its dataset, row key
# and model, and its RowIdentity.key), who judged it with which template, and the verdict.
# Unique on (answer, judge, template): a rerun overwrites a failed verdict, never adds one.
generation_scores = sa.Table(
    "generation_scores",
    metadata,
    sa.Column("id", BigIntId, primary_key=True, autoincrement=True),
    sa.Column("dataset", sa.String(_DATASET), nullable=False),
    sa.Column("row_key", sa.String(_ROW_KEY), nullable=False),
    sa.Column("model_id", sa.String(_MODEL_ID), nullable=False),
    sa.Column("answer_key", sa.String(_IDENTITY_KEY), nullable=False),
    sa.Column("answer_id", sa.BigInteger, nullable=True),
    sa.Column("judge_model", sa.String(_MODEL_ID), nullable=False),
    sa.Column("template_hash", sa.String(_HASH), nullable=False),
    sa.Column("score", sa.Float, nullable=True),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("status", sa.String(_STATUS), nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("flow_run_id", sa.String(64), nullable=True),
    sa.Column("scored_at", UTCDateTime, nullable=False, default=utcnow),
    sa.CheckConstraint(sa.column("status").in_(RESULT_STATUSES), name="status"),
    sa.UniqueConstraint("answer_key", "judge_model", "template_hash"),
)
# The summary and `studio-flows scores` read a dataset's scores by model.
sa.Index(None, generation_scores.c.dataset, generation_scores.c.model_id)
