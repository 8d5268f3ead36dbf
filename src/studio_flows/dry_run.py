"""What a run would pay for, found without paying: read, validate and plan, submit nothing.

Planning reads the results database (rows already done, jobs a past run recorded) exactly as
a run does, so the figures are the run's own: rows in the source, bad rows, exact
duplicates, rows already done, and the rows and jobs that would be submitted (jobs a past
run recorded are re-attached, not paid again).

Example:
    >>> plan = plan_run(options, report, "sqlite:///r.db", shard_size=50)  # doctest: +SKIP
    >>> plan.jobs_to_submit  # doctest: +SKIP
    4
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine

from studio_flows.datasets import DatasetReport, iter_good_rows, iter_shards
from studio_flows.judging import judge_items, judge_shards
from studio_flows.options import GenerateOptions
from studio_flows.planning import Planner, for_each_model
from studio_flows.storage import make_engine

if TYPE_CHECKING:
    from studio_flows.jobs import WorkItem


@dataclass(frozen=True)
class DryRunPlan:
    """The counts a dry run prints: rows of the source, then answers (one per row and
    model) and jobs."""

    dataset: str
    model_id: str
    rows_in_source: int
    bad_rows: int
    duplicates: int
    already_done: int
    rows_to_submit: int
    jobs_to_submit: int
    jobs_to_reattach: int
    judge_rows_to_submit: int = 0
    judge_jobs_to_submit: int = 0
    judged: bool = False
    models: int = 1

    def table(self) -> list[tuple[str, int]]:
        """Label and value of each count, in the order a user reads them, each naming its
        unit; ``rows in source`` counts every row read, bad ones and duplicates included.

        Example:
            >>> DryRunPlan("d", "m", 3, 0, 0, 1, 2, 1, 0).table()[-2]
            ('jobs that would be submitted', 1)
        """
        models = [("models (an answer is a row and a model)", self.models)]
        return [
            ("rows in source", self.rows_in_source),
            ("bad rows", self.bad_rows),
            ("exact duplicate rows", self.duplicates),
            *(models if self.models > 1 else []),
            ("answers already done", self.already_done),
            ("answers that would be submitted", self.rows_to_submit),
            ("jobs that would be submitted", self.jobs_to_submit),
            ("recorded jobs to re-attach", self.jobs_to_reattach),
        ] + (
            [
                ("verdicts that would be submitted", self.judge_rows_to_submit),
                ("judge jobs that would be submitted", self.judge_jobs_to_submit),
            ]
            if self.judged
            else []
        )


def plan_run(
    options: GenerateOptions, report: DatasetReport, database_url: str, *, shard_size: int
) -> DryRunPlan:
    """Plan the run ``options`` describe over the rows ``report`` validated; submit nothing."""
    assert report.source is not None  # every validation pass names what it read
    engine = make_engine(database_url)
    try:
        planner = Planner(engine)
        jobs = reattach = submitted_rows = 0
        for work in _planned(planner, options, report, shard_size):
            if work.job_id is not None:
                reattach += 1
            else:
                jobs += 1
                submitted_rows += len(work.shard.rows)
        judge_rows, judge_jobs = _judge_plan(
            options,
            report,
            engine,
            shard_size=shard_size,
            new_answers=planner.counts.planned_by_model,
        )
    finally:
        engine.dispose()
    return DryRunPlan(
        dataset=report.source.dataset,
        model_id=", ".join(options.models),
        # Every row read: the good ones, the bad ones, the exact duplicates.
        rows_in_source=report.rows + report.bad_count + report.duplicates,
        bad_rows=report.bad_count,
        duplicates=report.duplicates,
        already_done=planner.counts.already_done,
        rows_to_submit=submitted_rows,
        jobs_to_submit=jobs,
        jobs_to_reattach=reattach,
        judge_rows_to_submit=judge_rows,
        judge_jobs_to_submit=judge_jobs,
        judged=options.judge is not None,
        models=len(options.models),
    )


def already_stored(
    options: GenerateOptions, report: DatasetReport, database_url: str, *, shard_size: int
) -> int | None:
    """The answers stored already when a run of ``options`` would submit nothing, else
    None (found at the first job it would submit or re-attach, not after a whole pass).

    Example:
        >>> already_stored(options, report, "sqlite:///r.db", shard_size=50)  # doctest: +SKIP
        40
    """
    engine = make_engine(database_url)
    try:
        planner = Planner(engine)
        if next(_planned(planner, options, report, shard_size), None) is not None:
            return None
        return planner.counts.already_done
    finally:
        engine.dispose()


def _planned(
    planner: Planner, options: GenerateOptions, report: DatasetReport, shard_size: int
) -> Iterator[WorkItem]:
    """The jobs a run would submit or re-attach, planned as the run plans them."""
    assert report.source is not None  # every validation pass names what it read
    params = options.generation_params()
    rows = iter_good_rows(report.source, options.dataset_options(), verdict=report.verdict)
    shards = iter_shards(
        rows, dataset=report.source.dataset, params=params[0], shard_size=shard_size
    )
    return planner.plan(for_each_model(shards, params))


def _judge_plan(
    options: GenerateOptions,
    report: DatasetReport,
    engine: Engine,
    *,
    shard_size: int,
    new_answers: Mapping[str, int],
) -> tuple[int, int]:
    """Verdicts and judge jobs a run would submit: the stored answers without a verdict,
    planned as the run plans them, and one per answer this run would give (counted as if
    each completes; their judge rows cannot be known before the answers are)."""
    spec = options.judge
    if spec is None:
        return 0, 0
    assert report.source is not None
    rows = iter_good_rows(report.source, options.dataset_options(), verdict=report.verdict)
    items = judge_items(
        engine,
        rows,
        options.models,
        params_hash=options.generation_params()[0].params_hash,
        dataset=report.source.dataset,
        spec=spec,
        expected_column=options.expected_column,
    )
    planner = Planner(engine)
    stored_jobs = {judge: 0 for judge in spec.models}
    for work in planner.plan(
        judge_shards(items, spec, dataset=report.source.dataset, shard_size=shard_size)
    ):
        stored_jobs[work.shard.params.model_id] += int(work.job_id is None)
    fresh = sum(new_answers.values())
    rows_total = planner.counts.rows_planned + fresh * len(spec.models)
    jobs = sum(stored_jobs.values()) + len(spec.models) * math.ceil(fresh / shard_size)
    return rows_total, jobs
