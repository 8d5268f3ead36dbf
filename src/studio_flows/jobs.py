"""Run one shard as one Model Studio job, with the ledger writes that make it exactly-once.

The order of writes is the whole point (never pay twice for a row, never lose one):

1. an intent row for the shard (status ``pending``) before the POST;
2. the ``job_id`` the moment the POST returns (status ``submitted``);
3. after the job is terminal, the results and the shard's end in one transaction.

A crash between 2 and 3 loses nothing: the next run finds ``submitted`` with a job_id and
re-attaches (polls) instead of paying again. A POST whose outcome is unknown is recorded
as ``ambiguous`` and resubmitted only by policy, in this run or a later one (a shard an
earlier run left ``pending`` or ``ambiguous`` may have a job running: its slot is held
for that job first). When 2 fails past its retry bound, the job_id travels in
:class:`JobNotRecordedError` so that the retry re-attaches instead of paying again.

Example:
    >>> outcome = run_shard(client, engine, WorkItem(shard))  # doctest: +SKIP
    >>> outcome.completed, outcome.failed  # doctest: +SKIP
    (50, 0)
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from sqlalchemy.engine import Engine

from studio_flows import interrupts
from studio_flows.client import ModelStudioClient
from studio_flows.errors import (
    AmbiguousShardError,
    AmbiguousSubmissionError,
    BadRequestError,
    JobFailedError,
    JobNotRecordedError,
    NotFoundError,
    RequestRejectedError,
    RunInterrupted,
)
from studio_flows.models import JobStatus
from studio_flows.polling import DurationHistory
from studio_flows.rows import ResultRecord, Shard
from studio_flows.statuses import RowStatus, ShardStatus
from studio_flows.storage import (
    ShardRecord,
    get_shard,
    recent_job_seconds,
    record_ambiguous,
    record_job_submitted,
    record_rejected,
    record_shard_intent,
    utcnow,
)
from studio_flows.storage.outages import DEFAULT_BOUND_S, retry_while_unavailable
from studio_flows.structured import check_answer, is_invalid_answer

logger = logging.getLogger("studio_flows.jobs")

AmbiguousPolicy = Literal["resubmit", "stop"]
MAX_AMBIGUOUS_RESUBMITS = 3


class HeldSlot(Protocol):
    """The fair-use slot a job runs under (a lease of :mod:`studio_flows.tasks.fair_use`)."""

    @property
    def lease_id(self) -> uuid.UUID:
        """Recorded beside the job_id."""
        ...

    def check(self) -> None:
        """Raise :class:`FairUseError` if the slot was lost: no POST may start on it."""
        ...


@dataclass(frozen=True)
class WorkItem:
    """A shard to run; ``job_id`` is set when a job must be re-attached.

    ``unrecorded``: ``job_id`` is a job this process's POST created whose job_id the ledger
    does not hold yet (the database did not answer); it is recorded before anything else.
    ``unknown_outcome``: the ledger row of an earlier run's POST of this shard whose outcome
    is unknown (``pending`` or ``ambiguous``): a job may run for it now.
    """

    shard: Shard
    job_id: str | None = None
    unrecorded: bool = False
    unknown_outcome: ShardRecord | None = None


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
        """Rows not answered (per-task failures, a failed job, answers the schema refused)."""
        return len(self.records) - self.completed

    @property
    def invalid(self) -> int:
        """Rows failed because their answer does not match the response schema."""
        return sum(1 for r in self.records if is_invalid_answer(r.error))

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
            invalid=self.invalid,
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
    # Of ``failed``: answers that do not match the response schema.
    invalid: int = 0

    @classmethod
    def gave_up(
        cls, shard: Shard, error: str, *, ambiguous_resubmits: int = 0, job_id: str = ""
    ) -> JobReport:
        """A shard given up on in this run: its rows stay unfinished for the next run."""
        return cls(
            ambiguous_resubmits=ambiguous_resubmits,
            shard_key=shard.shard_key,
            job_id=job_id,
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
    schema = shard.params.response_schema
    for index, (row, answer) in enumerate(zip(shard.rows, answers, strict=True)):
        # With a response schema an answer counts only if its JSON matches; an invalid
        # one keeps its text for inspection and fails the row (the next run pays again).
        checked = check_answer(answer, schema)
        records.append(
            ResultRecord(
                identity=row.identity(shard.params),
                task_index=index,
                messages=row.messages,
                status=RowStatus.FAILED if checked.error is not None else RowStatus.COMPLETED,
                result=answer.text,
                error=checked.error,
                metadata=row.metadata,
                parsed=checked.parsed,
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
    database_retry_s: float = DEFAULT_BOUND_S,
    slot: HeldSlot | None = None,
) -> tuple[str, int]:
    """POST the shard's job, recording intent and job_id (and the lease of the fair-use
    ``slot`` it runs under, checked before every POST); return ``(job_id, resubmits)``.

    An ambiguous POST may have created a job that now runs on the account. Before
    resubmitting, and before giving up, wait about as long as such a job takes (the caller
    still holds the fair-use slot), so the orphan's slot is not counted twice.

    Raises :class:`JobNotRecordedError` (carrying the job_id) when the job was created but
    the database did not take its job_id within ``database_retry_s``: re-attach, never POST.
    """
    resubmits = 0
    while True:
        if slot is not None:
            slot.check()  # a resubmit too: on a lost slot it could be the account's 4th job
        record_shard_intent(engine, shard, None if slot is None else str(slot.lease_id))
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
        record_job_id(engine, shard, created.job_id, bound_s=database_retry_s, slot=slot)
        return created.job_id, resubmits


def record_job_id(
    engine: Engine, shard: Shard, job_id: str, *, bound_s: float, slot: HeldSlot | None = None
) -> None:
    """Write ``job_id`` (and the lease of ``slot``, the job's fair-use slot) as the shard's
    job, retrying a database that does not answer.

    Raises :class:`JobNotRecordedError` carrying ``job_id`` when it could not be written
    (and logs one sentence when a stop request cuts the wait short): the job is paid for,
    so whoever catches it re-attaches to ``job_id`` instead of submitting again.

    Example:
        >>> record_job_id(engine, shard, created.job_id, bound_s=60)  # doctest: +SKIP
    """
    lease_id = None if slot is None else str(slot.lease_id)
    write = functools.partial(record_job_submitted, engine, shard.shard_key, job_id, lease_id)
    try:
        retry_while_unavailable(write, bound_s=bound_s, url=engine.url)
    except RunInterrupted:
        logger.warning(
            "shard %s: %s",
            shard.shard_key,
            unrecorded_job_sentence(shard, job_id, "the run was stopped"),
        )
        raise
    except Exception as err:
        raise JobNotRecordedError(
            f"job {job_id} was created but its job_id could not be recorded ({err})",
            shard_key=shard.shard_key,
            job_id=job_id,
            reason=str(err),
        ) from err


def unrecorded_job_sentence(shard: Shard, job_id: str, why: object) -> str:
    """One sentence (after the shard's key) for a created job whose job_id this run
    could not record: which job, why, and what the next run may pay for.

    Example:
        >>> from studio_flows.models import Message
        >>> from studio_flows.rows import GenerationParams, Row
        >>> row = Row.from_messages([Message(role="user", content="Hi")], line=1)
        >>> shard = Shard("d", GenerationParams(model_id="m"), (row,))
        >>> print(unrecorded_job_sentence(shard, "job-1", "the database did not answer"))
        job job-1 runs for its 1 rows but its job_id is not recorded (the database did not \
answer); the next run may pay again for those rows unless job job-1 is recorded for this shard
    """
    return (
        f"job {job_id} runs for its {len(shard.rows)} rows but its job_id is not recorded "
        f"({why}); the next run may pay again for those rows unless job {job_id} is "
        "recorded for this shard"
    )


def earlier_orphan_wait_s(
    client: ModelStudioClient,
    engine: Engine,
    earlier: ShardRecord,
    *,
    now: Callable[[], datetime] = utcnow,
) -> float:
    """How much longer a job that an earlier run's unanswered POST (its ledger row
    ``earlier``) may have created could still run (0 once it must have ended).

    :func:`orphan_wait_s`, with the model's jobs that earlier runs finished (the ledger)
    counted too: a run resumed right after a crash has seen no job of its own. Measured
    from when the earlier POST went (the ledger row's last change).

    Example:
        >>> earlier_orphan_wait_s(client, engine, record)  # doctest: +SKIP
        8.4
    """
    tasks = earlier.row_count
    longest = orphan_wait_s(client, tasks)
    recorded = DurationHistory()
    for seconds, rows in recent_job_seconds(engine, earlier.model_id):
        recorded.record(seconds=seconds, tasks=rows)
    predicted = recorded.predict(tasks)
    if predicted is not None:
        longest = max(longest, 2 * predicted + client.poll_interval_s)
    since = earlier.updated_at
    age = (now() - since).total_seconds() if since is not None else 0.0
    return max(longest - max(age, 0.0), 0.0)


def _resume_unknown_outcome(
    client: ModelStudioClient,
    engine: Engine,
    work: WorkItem,
    policy: AmbiguousPolicy,
    sleep: Callable[[float], None] = interrupts.sleep,
) -> int:
    """Before a shard an earlier run left with an unknown POST outcome is submitted: hold
    the slot while that POST's job may run, then resubmit (return 1, a resubmission) or,
    under ``stop``, raise :class:`AmbiguousShardError` (nothing is POSTed)."""
    earlier = work.unknown_outcome
    if earlier is None:
        return 0
    shard = work.shard
    wait = earlier_orphan_wait_s(client, engine, earlier)
    if wait > 0:
        # The caller's slot is the orphan's until it must have ended: a POST now could be
        # a 4th active job on the account.
        logger.info(
            "shard %s: an earlier run's POST may have a job running; holding its slot %.1f s",
            shard.shard_key,
            wait,
        )
        sleep(wait)
    if policy == "resubmit":
        return 1
    raise AmbiguousShardError(
        f"an earlier run's POST of its {len(shard.rows)} rows has an unknown outcome "
        f"(left '{earlier.status}' in generation_jobs); not resubmitted under the ambiguous "
        "policy 'stop' (a job may exist and be paid for), its rows stay unfinished",
        cause=earlier.error or earlier.status,
        shard_key=shard.shard_key,
    )


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
    database_retry_s: float = DEFAULT_BOUND_S,
    slot: HeldSlot | None = None,
) -> JobOutcome:
    """Submit (or re-attach to) the shard's job and wait until it is terminal; the lease of
    ``slot`` (the fair-use slot the caller holds) is recorded beside the job_id.

    The results are returned, not written: :func:`studio_flows.storage.complete_shard`
    persists them in one transaction. ``database_retry_s`` bounds the wait for a database
    that does not answer when a job_id is recorded (see :func:`record_job_id`).
    """
    shard = work.shard
    job_id, resubmits = work.job_id or _recorded_job(engine, shard), 0
    if work.unrecorded and job_id is not None:
        # A job an earlier try of this run created: its job_id goes to the ledger first.
        record_job_id(engine, shard, job_id, bound_s=database_retry_s, slot=slot)
    reattached = job_id is not None
    try:
        if job_id is None:
            resubmits = _resume_unknown_outcome(client, engine, work, policy)
            job_id, more = submit_shard(
                client,
                engine,
                shard,
                policy=policy,
                database_retry_s=database_retry_s,
                slot=slot,
            )
            resubmits += more
            status = _wait(client, job_id, shard, deadline_s)
        else:
            logger.info("shard %s: re-attaching to job %s", shard.shard_key, job_id)
            work = WorkItem(shard, job_id)
            status, resubmitted = _wait_reattached(
                client, engine, work, deadline_s, policy, database_retry_s, slot
            )
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
    database_retry_s: float = DEFAULT_BOUND_S,
    slot: HeldSlot | None = None,
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
    job_id, resubmits = submit_shard(
        client,
        engine,
        work.shard,
        policy=policy,
        database_retry_s=database_retry_s,
        slot=slot,
    )
    return _wait(client, job_id, work.shard, deadline_s), resubmits
