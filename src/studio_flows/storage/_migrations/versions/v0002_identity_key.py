"""Schema 2: results unique on ``(row_key, identity_key)``, a digest of the four identity columns.

``identity_key`` is filled in for every existing row. The unique constraint on the four
columns is dropped, except on SQLite, which cannot drop a constraint in place (it costs those
writes time, not correctness; a database created at schema 2 or later has only the new
index), and where ``identity_key`` stays nullable for the same reason (it is always written).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from studio_flows.rows import RowIdentity
from studio_flows.storage._migrations import record_version

revision = "0002"
down_revision: str | None = "0001"
branch_labels = None
depends_on = None

_IDENTITY = ("row_key", "prompt_hash", "model_id", "params_hash")
_BATCH_ROWS = 1000
_RESULTS = sa.table(
    "generation_results",
    sa.column("id", sa.BigInteger),
    sa.column("identity_key", sa.String(32)),
    *(sa.column(name, sa.String) for name in _IDENTITY),
)


def upgrade() -> None:
    conn = op.get_bind()
    op.add_column("generation_results", sa.Column("identity_key", sa.String(32), nullable=True))
    _fill_identity_keys(conn)
    op.create_index(
        "ix_generation_results_row_key_identity_key",
        "generation_results",
        ["row_key", "identity_key"],
        unique=True,
    )
    if conn.dialect.name != "sqlite":
        _drop_wide_unique(conn)
    if conn.dialect.name == "postgresql":
        op.alter_column("generation_results", "identity_key", nullable=False)
    record_version(2)


def _fill_identity_keys(conn: sa.Connection) -> None:
    """Every existing row's key, in batches by id (memory stays flat for any table)."""
    table = _RESULTS
    select = (
        sa.select(table.c.id, *(table.c[name] for name in _IDENTITY))
        .where(table.c.id > sa.bindparam("after"))
        .order_by(table.c.id)
        .limit(_BATCH_ROWS)
    )
    fill = (
        table.update()
        .where(table.c.id == sa.bindparam("row_id"))
        .values(identity_key=sa.bindparam("key"))
    )
    after = 0
    while rows := conn.execute(select, {"after": after}).all():
        conn.execute(fill, [{"row_id": row[0], "key": RowIdentity(*row[1:]).key} for row in rows])
        after = rows[-1][0]


def _drop_wide_unique(conn: sa.Connection) -> None:
    for unique in sa.inspect(conn).get_unique_constraints("generation_results"):
        if tuple(unique["column_names"]) == _IDENTITY and unique["name"]:
            op.drop_constraint(unique["name"], "generation_results", type_="unique")


def downgrade() -> None:
    raise NotImplementedError("schema 2 cannot be downgraded: restore a backup instead")
