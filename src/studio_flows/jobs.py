"""Run one shard as one Model Studio job, with the ledger writes that make it exactly-once.

The order of writes is the whole point (never pay twice for a row, never lose one):

1. an intent row for the shard (status ``pending``) before the POST;
2. the ``job_id`` the moment the POST returns (status ``submitted``);
3. after the job is terminal, the results and the shard's end in one transaction.

A crash between 2 and 3 loses nothing: the next run finds ``submitted`` with a job_id and
re-attaches (polls) instead of paying again. A POST whose outcome is unknown is recorded
as ``ambiguous`` and resubmitted only by policy.

Example:
    >>> outcome = run_shard(client, engine, WorkItem(shard))  # doctest: +SKIP
    >>> outcome.completed, outcome.failed  # doctest: +SKIP
    (50, 0)
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from sqlalchemy.engine import Engine

from studio_flows import interrupts
from studio_flows.client import ModelStudioClient
from studio_flows.errors import (
    AmbiguousShardError,
    AmbiguousSubmissionError,
    BadRequestError,
    JobFailedError,
    NotFoundError,
    RequestRejectedError,
)
from studio_flows.models import JobStatus
from studio_flows.rows import ResultRecord, Shard
from studio_flows.statuses import RowStatus, ShardStatus
from studio_flows.storage import (
    get_shard,
    record_ambiguous,
    record_job_submitted,
    record_rejected,
    record_shard_intent,
)
from studio_flows.storage.outages import retry_while_unavailable

logger = logging.getLogger("studio_flows.jobs")

AmbiguousPolicy = Literal["resubmit", "stop"]
MAX_AMBIGUOUS_RESUBMITS = 3


@dataclass(frozen=True)
class WorkItem:
    """A shard to run; ``job_id`` is set when a recorded job must be re-attached."""

    shard: Shard
    job_id: str | None = None


@dataclass
class JobOutcome:
    """What one job produced, ready to persist."""

    shard: Shard
    job_id: str
    job_status: str
    records: list[ResultRecord]
    reattached: bool = False
    ambiguous_resubmits: int = 0
    error: str | None = None

    @property
    def completed(self) -> int:
        """Rows answered."""
        return sum(1 for r in self.records if r.status == RowStatus.COMPLETED)

    @property
    def failed(self) -> int:
        """Rows not answered (per-task failures or a failed job)."""
        return len(self.records) - self.completed

    def report(self) -> JobReport:
        """The counts of this job, without its rows."""
        return JobReport(
            shard_key=self.shard.shard_key,
            job_id=self.job_id,
            job_status=self.job_status,
            completed=self.completed,
            failed=self.failed,
            reattached=self.reattached,
            ambiguous_resubmits=self.ambiguous_resubmits,
            error=self.error,
            model_id=self.shard.params.model_id,
        )


@dataclass(frozen=True)
class JobReport:
    """What a persisted job did, in a few fields.

    Job tasks return this, not the :class:`JobOutcome`: Prefect keeps every task run's
    return value for the rest of the flow run, and 10,000 outcomes of 100 rows each were
    most of the memory a 1 M-row run grew by (bench/RESULTS.md, P4).
    """

    shard_key: str
    job_id: str
    job_status: str
    completed: int
    failed: int
    reattached: bool = False
    ambiguous_resubmits: int = 0
    error: str | None = None
    # Rows left for the next run: the shard's job could not be run or persisted.
    unfinished: int = 0
    model_id: str = ""

    @classmethod
    def gave_up(cls, shard: Shard, error: str, *, ambiguous_resubmits: int = 0) -> JobReport:
        """A shard given up on in this run: its rows stay unfinished for the next run."""
        return cls(
            ambiguous_resubmits=ambiguous_resubmits,
            shard_key=shard.shard_key,
            job_id="",
            job_status="NOT_RUN",
            completed=0,
            failed=0,
            error=f"shard {shard.shard_key}: {error}",
            unfinished=len(shard.rows),
            model_id=shard.params.model_id,
        )


def map_results(shard: Shard, status: JobStatus) -> list[ResultRecord]:
    """One record per row, matched by ``task_index`` (results may arrive in any order).

    Example:
        >>> [r.status for r in map_results(shard, status)]  # doctest: +SKIP
        ['completed', 'failed']
    """
    records = []
    answers = status.answers(len(shard.rows))
    for index, (row, answer) in enumerate(zip(shard.rows, answers, strict=True)):
        records.append(
            ResultRecord(
                identity=row.identity(shard.params),
                task_index=index,
                messages=row.messages,
                status=RowStatus.COMPLETED if answer.text is not None else RowStatus.FAILED,
                result=answer.text,
                error=answer.error,
                metadata=row.metadata,
            )
        )
    return records


def failed_records(shard: Shard, error: str) -> list[ResultRecord]:
    """Every row of ``shard`` marked failed with ``error`` (a FAILED job)."""
    return [
        ResultRecord(
            identity=row.identity(shard.params),
            task_index=index,
            messages=row.messages,
            status=RowStatus.FAILED,
            result=None,
            error=error,
            metadata=row.metadata,
        )
        for index, row in enumerate(shard.rows)
    ]


def submit_shard(
    client: ModelStudioClient,
    engine: Engine,
    shard: Shard,
    *,
    policy: AmbiguousPolicy = "resubmit",
    sleep: Callable[[float], None] = interrupts.sleep,
) -> tuple[str, int]:
    """POST the shard's job, recording intent and job_id; return ``(job_id, resubmits)``.

    An ambiguous POST may have created a job that now runs on the account. Before
    resubmitting, and before giving up, wait about as long as such a job takes (the caller
    still holds the fair-use slot), so the orphan's slot is not counted twice.
    """
    resubmits = 0
    while True:
        record_shard_intent(engine, shard)
        try:
            created = client.create_job(shard.request())
        except (BadRequestError, NotFoundError) as err:
            # Refused as a request (unknown model, bad body): every other shard would be too,
            # and no job exists, so the intent is closed rather than left an unknown outcome.
            record_rejected(engine, shard.shard_key, f"HTTP {err.status_code}: {err.detail}")
            raise RequestRejectedError.for_model(
                shard.params.model_id, status_code=err.status_code, detail=err.detail
            ) from err
        except AmbiguousSubmissionError as err:
            record_ambiguous(engine, shard.shard_key, err.cause)
            orphan_wait = orphan_wait_s(client, len(shard.rows))
            if policy != "resubmit" or resubmits >= MAX_AMBIGUOUS_RESUBMITS:
                # Giving up frees the slot for the lane's next job: the orphan must have
                # ended by then too, or the account runs a 4th job.
                tried = f"after {resubmits} resubmits" if resubmits else "not resubmitted"
                logger.warning(
                    "shard %s: %s, %s; giving up in %.1f s",
                    shard.shard_key,
                    err.cause,
                    tried,
                    orphan_wait,
                )
                sleep(orphan_wait)
                raise AmbiguousShardError(
                    f"job submission outcome unknown ({err.cause}), {tried}; "
                    "left as 'ambiguous' in generation_jobs",
                    cause=err.cause,
                    shard_key=shard.shard_key,
                    resubmits=resubmits,
                ) from err
            resubmits += 1
            logger.warning(
                "shard %s: %s; resubmitting in %.1f s (%d)",
                shard.shard_key,
                err.cause,
                orphan_wait,
                resubmits,
            )
            sleep(orphan_wait)
            continue
        # The job runs and is paid for now: its job_id must reach the ledger even if the
        # database is restarting, or the next run would pay for the shard again.
        retry_while_unavailable(
            functools.partial(record_job_submitted, engine, shard.shard_key, created.job_id),
            url=engine.url,
        )
        return created.job_id, resubmits


def orphan_wait_s(client: ModelStudioClient, tasks: int) -> float:
    """How long a job of ``tasks`` conversations that a lost POST may have created could run.

    The longer of twice the predicted duration and the longest such job seen (predictions
    run short after jobs seen late), plus one poll interval; with no job seen yet, the
    longest poll interval. Whoever holds the POST's fair-use slot keeps it that long:
    waiting too little lets the slot's next job overlap the orphan, a 4th active job.

    Example:
        >>> with ModelStudioClient(token="t", organization_id="org") as client:
        ...     orphan_wait_s(client, 50)  # no job seen yet: the longest poll interval
        10.0
    """
    predicted = client.history.predict(tasks)
    if predicted is None:
        return client.poll_max_interval_s
    return max(2 * predicted, client.history.longest(tasks)) + client.poll_interval_s


def run_shard(
    client: ModelStudioClient,
    engine: Engine,
    work: WorkItem,
    *,
    deadline_s: float = 3600.0,
    policy: AmbiguousPolicy = "resubmit",
) -> JobOutcome:
    """Submit (or re-attach to) the shard's job and wait until it is terminal.

    The results are returned, not written: :func:`studio_flows.storage.complete_shard`
    persists them in one transaction.
    """
    shard = work.shard
    job_id, resubmits = work.job_id or _recorded_job(engine, shard), 0
    work = WorkItem(shard, job_id)
    reattached = job_id is not None
    try:
        if job_id is None:
            job_id, resubmits = submit_shard(client, engine, shard, policy=policy)
            status = _wait(client, job_id, shard, deadline_s)
        else:
            logger.info("shard %s: re-attaching to job %s", shard.shard_key, job_id)
            status, resubmitted = _wait_reattached(client, engine, work, deadline_s, policy)
            job_id = status.job_id
            if resubmitted is not None:  # the service had forgotten the job: paid again
                reattached, resubmits = False, resubmitted
    except JobFailedError as err:
        assert job_id is not None
        return JobOutcome(
            shard=shard,
            job_id=err.job_id or job_id,
            job_status=err.job_status,
            records=failed_records(shard, str(err)),
            reattached=reattached,
            ambiguous_resubmits=resubmits,
            error=str(err),
        )
    return JobOutcome(
        shard=shard,
        job_id=job_id,
        job_status=status.job_status,
        records=map_results(shard, status),
        reattached=reattached,
        ambiguous_resubmits=resubmits,
    )


def _recorded_job(engine: Engine, shard: Shard) -> str | None:
    """The job_id the ledger holds for this shard, if its job may still be running.

    This makes a retried task re-attach instead of paying again: the POST of the first
    try may have succeeded before the task failed while waiting.
    """
    record = get_shard(engine, shard.shard_key)
    if record is not None and record.status == ShardStatus.SUBMITTED and record.job_id:
        return record.job_id
    return None


def _wait(
    client: ModelStudioClient,
    job_id: str,
    shard: Shard,
    deadline_s: float,
    *,
    reattached: bool = False,
) -> JobStatus:
    return client.wait_for_job(
        job_id, deadline_s=deadline_s, total_tasks=len(shard.rows), poll_now=reattached
    )


def _wait_reattached(
    client: ModelStudioClient,
    engine: Engine,
    work: WorkItem,
    deadline_s: float,
    policy: AmbiguousPolicy,
) -> tuple[JobStatus, int | None]:
    """Poll a recorded job; if the service no longer knows it, submit the shard again.

    Returns the job's status and, when it was submitted again, the ambiguous POSTs that
    resubmission took (None: the recorded job was re-attached).
    """
    assert work.job_id is not None
    try:
        return _wait(client, work.job_id, work.shard, deadline_s, reattached=True), None
    except NotFoundError:
        logger.warning(
            "shard %s: recorded job %s is unknown to the service; resubmitting",
            work.shard.shard_key,
            work.job_id,
        )
    job_id, resubmits = submit_shard(client, engine, work.shard, policy=policy)
    return _wait(client, job_id, work.shard, deadline_s), resubmits
