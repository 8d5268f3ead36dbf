"""Schema 7: a job's row in ``generation_jobs`` gets ``lease_id``, the fair-use lease (a
Prefect concurrency lease) its job runs under, recorded with its job_id (nullable: the job
was submitted before, or outside a lease), so a re-attaching run adopts that lease.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from studio_flows.storage._migrations import forget_version, record_version

revision = "0007"
down_revision: str | None = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("generation_jobs", sa.Column("lease_id", sa.String(36), nullable=True))
    record_version(7)


def downgrade() -> None:
    op.drop_column("generation_jobs", "lease_id")
    forget_version(7)
