"""The Alembic script directory of the results database (``versions/``), shipped in the package.

Run by :mod:`studio_flows.storage.migrations` (no ``alembic.ini``, no ``env.py``): revision
``000N`` is schema N. A new revision is a file in ``versions/`` whose ``down_revision`` is
the previous head, and ``SCHEMA_VERSION`` in :mod:`studio_flows.storage.schema` bumped to it.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

# The version table of studio-flows before Alembic, still written: older releases read it
# and refuse a database newer than they are instead of writing to it.
_VERSIONS = sa.table(
    "studio_flows_schema",
    sa.column("version", sa.Integer),
    sa.column("applied_at", sa.DateTime(timezone=True)),
)


def record_version(version: int) -> None:
    """Append ``version`` to ``studio_flows_schema`` (inside a revision's ``upgrade``)."""
    op.execute(_VERSIONS.insert().values(version=version, applied_at=datetime.now(UTC)))


def forget_version(version: int) -> None:
    """Remove ``version`` from ``studio_flows_schema`` (inside a revision's ``downgrade``)."""
    op.execute(_VERSIONS.delete().where(_VERSIONS.c.version == version))
