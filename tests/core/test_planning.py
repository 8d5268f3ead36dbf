"""Planning: completed rows skipped, recorded jobs re-attached, in groups of shards."""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy.engine import Engine

from studio_flows import planning
from studio_flows.planning import Planner
from studio_flows.rows import Shard
from studio_flows.storage import complete_shard, record_job_submitted, record_shard_intent
from tests.fixtures.storage_rows import counting_selects, make_records, make_shard


def test_plan_skips_done_rows_reattaches_jobs_and_keeps_the_order(engine: Engine) -> None:
    shards = [make_shard(100, start=100 * i) for i in range(25)]
    complete_shard(
        engine,
        shards[0],
        job_id="j0",
        job_status="FINISHED",
        records=make_records(shards[0]),
        flow_run_id=None,
    )
    half = Shard(shards[1].dataset, shards[1].params, shards[1].rows[:50])
    complete_shard(
        engine,
        half,
        job_id="j1",
        job_status="FINISHED",
        records=make_records(half),
        flow_run_id=None,
    )
    record_shard_intent(engine, shards[2])
    record_job_submitted(engine, shards[2].shard_key, "job-2")
    record_shard_intent(engine, shards[3])  # a POST whose outcome is unknown

    planner = Planner(engine)
    with counting_selects(engine) as selects:
        work = list(planner.plan(shards))

    assert [item.shard.rows[0].line for item in work] == [151] + [100 * i + 1 for i in range(2, 25)]
    assert [row.line for row in work[0].shard.rows] == list(range(151, 201))
    assert work[1].job_id == "job-2"
    assert [item.job_id for item in work if item is not work[1]] == [None] * 23
    counts = planner.counts
    assert (counts.already_done, counts.rows_planned, counts.unknown_outcome) == (150, 2350, 1)
    # Three groups of at most 1,000 rows, each: two chunks of completed rows and the ledger.
    assert len(selects) <= 3 * 3 < 2 * len(shards)


def test_plan_reads_one_group_ahead_at_most(engine: Engine) -> None:
    pulled: list[Shard] = []

    def shards() -> Iterator[Shard]:
        for i in range(30):
            shard = make_shard(100, start=100 * i)
            pulled.append(shard)
            yield shard

    work = Planner(engine).plan(shards())
    next(work)
    assert len(pulled) == planning.PLAN_GROUP_ROWS // 100
