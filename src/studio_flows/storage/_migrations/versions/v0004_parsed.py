"""Schema 4: results get ``parsed``, an answer's JSON value checked against the run's
response schema (JSON, nullable: no schema, or a failed row, has none), and the hashes of
that schema and of the templates the row was rendered with (what a training set's
manifest names; nullable: none was used, or the row was written before).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from studio_flows.storage._migrations import forget_version, record_version

revision = "0004"
down_revision: str | None = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    json_type = sa.JSON(none_as_null=True).with_variant(
        postgresql.JSONB(none_as_null=True), "postgresql"
    )
    op.add_column("generation_results", sa.Column("parsed", json_type, nullable=True))
    for name in ("schema_hash", "template_hash"):
        op.add_column("generation_results", sa.Column(name, sa.String(64), nullable=True))
    record_version(4)


def downgrade() -> None:
    for name in ("parsed", "schema_hash", "template_hash"):
        op.drop_column("generation_results", name)
    forget_version(4)
