"""Schema 1: results unique on the four identity columns, the job ledger, the version table.

Written out rather than taken from ``schema.py``, which moves on with later revisions.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from studio_flows.storage._migrations import record_version

revision = "0001"
down_revision: str | None = None
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TIME = sa.DateTime(timezone=True)
_RESULT_STATUSES = "status IN ('completed', 'failed')"
_JOB_STATUSES = "status IN ('pending', 'submitted', 'ambiguous', 'finished', 'failed')"


def upgrade() -> None:
    op.create_table(
        "studio_flows_schema",
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("applied_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("version", name="pk_studio_flows_schema"),
    )
    op.create_table(
        "generation_results",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("row_key", sa.String(255), nullable=False),
        sa.Column("prompt_hash", sa.String(64), nullable=False),
        sa.Column("model_id", sa.String(128), nullable=False),
        sa.Column("params_hash", sa.String(64), nullable=False),
        sa.Column("dataset", sa.String(512), nullable=False),
        sa.Column("shard_key", sa.String(64), nullable=False),
        sa.Column("job_id", sa.String(128), nullable=True),
        sa.Column("task_index", sa.Integer, nullable=False),
        sa.Column("messages", _JSON, nullable=False),
        sa.Column("result", sa.Text, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("temperature", sa.Float, nullable=False),
        sa.Column("max_tokens", sa.Integer, nullable=False),
        sa.Column("flow_run_id", sa.String(64), nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("completed_at", _TIME, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_generation_results"),
        sa.UniqueConstraint(
            "row_key",
            "prompt_hash",
            "model_id",
            "params_hash",
            name="uq_generation_results_row_key_prompt_hash_model_id_params_hash",
        ),
        sa.CheckConstraint(_RESULT_STATUSES, name="ck_generation_results_status"),
    )
    op.create_index(
        "ix_generation_results_dataset_model_id_status",
        "generation_results",
        ["dataset", "model_id", "status"],
    )
    op.create_index("ix_generation_results_shard_key", "generation_results", ["shard_key"])
    op.create_index("ix_generation_results_flow_run_id", "generation_results", ["flow_run_id"])
    op.create_table(
        "generation_jobs",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("shard_key", sa.String(64), nullable=False),
        sa.Column("dataset", sa.String(512), nullable=False),
        sa.Column("job_id", sa.String(128), nullable=True),
        sa.Column("model_id", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("row_count", sa.Integer, nullable=False),
        sa.Column("row_keys", _JSON, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("ambiguous_count", sa.Integer, nullable=False),
        sa.Column("submitted_at", _TIME, nullable=True),
        sa.Column("finished_at", _TIME, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_generation_jobs"),
        sa.UniqueConstraint("shard_key", name="uq_generation_jobs_shard_key"),
        sa.CheckConstraint(_JOB_STATUSES, name="ck_generation_jobs_status"),
    )
    op.create_index("ix_generation_jobs_status_dataset", "generation_jobs", ["status", "dataset"])
    record_version(1)


def downgrade() -> None:
    for table in ("generation_jobs", "generation_results", "studio_flows_schema"):
        op.drop_table(table)
