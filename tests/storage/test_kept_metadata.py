"""Kept input columns in generation_results.metadata, on SQLite and the real PostgreSQL."""

from __future__ import annotations

import dataclasses

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from studio_flows.storage import complete_shard, generation_results, iter_metadata, iter_results
from tests.fixtures.storage_rows import make_records, make_shard


def test_kept_values_are_written_with_the_shard_and_read_back_as_json(engine: Engine) -> None:
    shard = make_shard(3)
    kept = [{"id": 7, "expected": "four", "tags": ["a"], "none": None}, None, {"id": 9}]
    records = [
        dataclasses.replace(record, metadata=values)
        for record, values in zip(make_records(shard), kept, strict=True)
    ]
    complete_shard(
        engine, shard, job_id="j", job_status="FINISHED", records=records, flow_run_id=None
    )

    by_index = {row["task_index"]: row["metadata"] for row in iter_results(engine)}
    assert by_index == dict(enumerate(kept))
    found = list(iter_metadata(engine))  # only the rows that kept any, in no set order
    assert len(found) == 2 and kept[0] in found and kept[2] in found
    with engine.connect() as conn:
        # No columns kept is SQL NULL, not JSON null: nullable as the column says.
        nulls = conn.execute(
            sa.select(sa.func.count()).where(generation_results.c.metadata.is_(None))
        ).scalar_one()
    assert nulls == 1
