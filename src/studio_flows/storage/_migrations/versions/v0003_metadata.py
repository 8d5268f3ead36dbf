"""Schema 3: results get ``metadata``, the input columns a user keeps (JSON, nullable).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from studio_flows.storage._migrations import forget_version, record_version

revision = "0003"
down_revision: str | None = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    json_type = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
    op.add_column("generation_results", sa.Column("metadata", json_type, nullable=True))
    record_version(3)


def downgrade() -> None:
    op.drop_column("generation_results", "metadata")
    forget_version(3)
