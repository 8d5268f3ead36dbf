"""Schema 5: results get ``line``, the row's place in its dataset (the 1-based line of a
JSONL or CSV file, the row number of a Parquet file) when it was last sent, so that a
training export can give the rows in the dataset's order (nullable: a row written before
has none, and sorts by the order it was first sent in).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from studio_flows.storage._migrations import forget_version, record_version

revision = "0005"
down_revision: str | None = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("generation_results", sa.Column("line", sa.Integer, nullable=True))
    record_version(5)


def downgrade() -> None:
    op.drop_column("generation_results", "line")
    forget_version(5)
