"""Schema 8: a job's row in ``generation_jobs`` gets ``lease_holder``, the process that holds
its fair-use lease (``host/pid-namespace/pid``, :mod:`studio_flows.holders`), written with
the lease from the intent on, so a rerun adopts the lease of a killed run's job instead of
waiting for it to expire (nullable: rows written before).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from studio_flows.storage._migrations import forget_version, record_version

revision = "0008"
down_revision: str | None = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("generation_jobs", sa.Column("lease_holder", sa.String(300), nullable=True))
    record_version(8)


def downgrade() -> None:
    op.drop_column("generation_jobs", "lease_holder")
    forget_version(8)
