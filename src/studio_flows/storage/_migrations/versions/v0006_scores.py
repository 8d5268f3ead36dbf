"""Schema 6: ``generation_scores``, a judge model's verdict on one answer.

The answer's identity (dataset, row key, answered model, its ``RowIdentity.key`` and
result id), the judge model and the hash of the judge template, the score and its reason,
``completed`` or ``failed`` with the error, the flow run and the time. Unique on
(answer, judge, template): each answer is judged once per judge and template.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from studio_flows.storage._migrations import forget_version, record_version

revision = "0006"
down_revision: str | None = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "generation_scores",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("dataset", sa.String(512), nullable=False),
        sa.Column("row_key", sa.String(255), nullable=False),
        sa.Column("model_id", sa.String(128), nullable=False),
        sa.Column("answer_key", sa.String(32), nullable=False),
        sa.Column("answer_id", sa.BigInteger, nullable=True),
        sa.Column("judge_model", sa.String(128), nullable=False),
        sa.Column("template_hash", sa.String(64), nullable=False),
        sa.Column("score", sa.Float, nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("flow_run_id", sa.String(64), nullable=True),
        sa.Column("scored_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("status IN ('completed', 'failed')", name="ck_generation_scores_status"),
        sa.PrimaryKeyConstraint("id", name="pk_generation_scores"),
        sa.UniqueConstraint(
            "answer_key",
            "judge_model",
            "template_hash",
            name="uq_generation_scores_answer_key_judge_model_template_hash",
        ),
    )
    op.create_index(
        "ix_generation_scores_dataset_model_id", "generation_scores", ["dataset", "model_id"]
    )
    record_version(6)


def downgrade() -> None:
    op.drop_index("ix_generation_scores_dataset_model_id", table_name="generation_scores")
    op.drop_table("generation_scores")
    forget_version(6)
