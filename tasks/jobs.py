"""Thin Prefect tasks over the core: run a lane's jobs one after another, persist results.

Retries live in one layer per failure kind: the HTTP client retries transport errors and
429/5xx; the database calls wait out an outage (``database_retry_s``); a job is retried
here only for what neither covers (a job_id to re-attach, a job that failed to be read).
Status reads are never cached.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from sqlalchemy.engine import Engine

from studio_flows import interrupts
from studio_flows.blocks import ModelStudioCredentials, ResultsDatabase, resolve_settings
from studio_flows.client import ClientStats, ModelStudioClient
from studio_flows.errors import (
    AmbiguousShardError,
    AuthenticationError,
    ConfigurationError,
    FairUseError,
    JobNotRecordedError,
    PermissionDeniedError,
    RequestRejectedError,
    RunInterrupted,
    UnprocessableEntityError,
)
from studio_flows.jobs import (
    AmbiguousPolicy,
    HeldSlot,
    JobOutcome,
    JobReport,
    WorkItem,
    run_shard,
    unrecorded_job_sentence,
)
from studio_flows.polling import DurationHistory
from studio_flows.settings import Settings
from studio_flows.storage import complete_shard, make_engine
from studio_flows.storage.outages import (
    describe_unavailable,
    is_unavailable,
    retry_while_unavailable,
)


@functools.cache
def engine_for(database_url: str) -> Engine:
    """One engine (and pool) per database per process, created where it is used."""
    return make_engine(database_url)


def history_of(settings: Settings, model_id: str) -> DurationHistory:
    """How long this process saw ``model_id``'s jobs take on the settings' service."""
    return _history_for(settings.base_url, model_id)


@functools.cache
def _history_for(base_url: str, model_id: str) -> DurationHistory:
    # Jobs of one model on one service take similar time per conversation: every job task
    # in this process learns from the ones before it, so polls land near the end of each
    # job. Another model (a judge, a larger base model) has times of its own.
    return DurationHistory()


def job_client(
    settings: Settings, model_id: str | None = None, stats: ClientStats | None = None
) -> ModelStudioClient:
    """A client for one task run's jobs, sharing the timing history this process keeps of
    ``model_id`` (None: the caller sets ``client.history`` to :func:`history_of` each job's
    model)."""
    history = None if model_id is None else history_of(settings, model_id)
    client = ModelStudioClient.from_settings(settings, history=history, shared_pool=True)
    if stats is not None:
        client.stats = stats
    return client


# Errors every other shard would hit too: the run stops instead of failing shard by shard.
FATAL_ERRORS = (
    AuthenticationError,
    PermissionDeniedError,
    UnprocessableEntityError,
    RequestRejectedError,
    ConfigurationError,
)
JOB_RETRIES = 2
JOB_RETRY_DELAY_S = 5.0


@task(name="run-generation-jobs", cache_policy=NO_CACHE)
def run_generation_jobs(
    works: Iterable[WorkItem],
    *,
    database: ResultsDatabase,
    on_report: Callable[[JobReport], None],
    policy: AmbiguousPolicy = "resubmit",
    stats: ClientStats | None = None,
    credentials: ModelStudioCredentials | None = None,
    flow_run_id: str | None = None,
    slot: HeldSlot | None = None,
) -> int:
    """Run consecutive jobs, one after another: submit (or re-attach), wait, persist each.

    For jobs of milliseconds, where a task run per job would cost more than the job: the
    flow hands a task run its lane's next jobs until the task run has lasted a second
    (``works`` may be a lazy iterator; each job is pulled when the previous one is done).
    Each job is retried on its own (``JOB_RETRIES`` times, ``JOB_RETRY_DELAY_S`` apart,
    re-attaching to its recorded job_id); a job that still fails is reported given up (its
    rows stay for the next run) and the others go on. Errors retrying cannot help with
    (bad credentials) stop the task. ``slot`` (the lane's fair-use lease) is checked before
    each POST and recorded beside each job_id. ``on_report`` gets each job's :class:`JobReport` as
    the job is persisted. Returns the number of rows completed.

    Example:
        >>> run_generation_jobs(items, database=database, on_report=print)  # doctest: +SKIP
        300
    """
    settings = resolve_settings(credentials)
    completed = 0
    with job_client(settings, stats=stats) as client:  # one client for the task run's jobs
        runner = _JobRunner(client, settings, database.get_url(), policy, flow_run_id, slot)
        for work in works:
            interrupts.check()  # a stopping run starts no new job
            # A lane may run several models' jobs (an evaluation, its judges): each is timed
            # on its own model's history.
            client.history = history_of(settings, work.shard.params.model_id)
            report = runner.run_with_retries(work)
            completed += report.completed
            on_report(report)
    return completed


@dataclass(frozen=True)
class _JobRunner:
    """Runs and persists one job at a time with one client (what both job tasks share)."""

    client: ModelStudioClient
    settings: Settings
    database_url: str
    policy: AmbiguousPolicy
    flow_run_id: str | None
    slot: HeldSlot | None = None

    def run(self, work: WorkItem) -> JobReport:
        """Submit (or re-attach), wait and persist ``work``'s job; return its report.

        The job_id is written to the ledger the moment the POST returns; the results and
        the shard's end are written in one transaction (a retry re-attaches, never pays
        again).
        """
        outcome = run_shard(
            self.client,
            engine_for(self.database_url),
            work,
            deadline_s=self.settings.job_deadline_s,
            policy=self.policy,
            database_retry_s=self.settings.database_retry_s,
            slot=self.slot,
        )
        _persist(
            outcome, self.database_url, self.flow_run_id, bound_s=self.settings.database_retry_s
        )
        return outcome.report()

    def run_with_retries(self, work: WorkItem) -> JobReport:
        """:meth:`run`, retried ``JOB_RETRIES`` times; a job a try created is re-attached.

        The job_id of a POST whose recording failed is kept here, in the retried work, and
        the retry records it and polls the job instead of paying again; if the run gives
        the shard up unrecorded, its report says so in one sentence.
        """
        for attempt in range(JOB_RETRIES + 1):
            try:
                return self.run(work)
            except (*FATAL_ERRORS, FairUseError, RunInterrupted):
                raise  # a stop while a job_id is recorded says so itself (record_job_id)
            except AmbiguousShardError as err:
                return JobReport.gave_up(work.shard, str(err), ambiguous_resubmits=err.resubmits)
            except Exception as err:
                if is_unavailable(err):  # waited out for database_retry_s already
                    return _given_up(work, describe_unavailable(err, self.database_url))
                work = _to_retry(work, err)
                # A driver's error spans lines; the summary shows one sentence per shard.
                said = describe_unavailable(err, self.database_url) if is_unavailable(err) else err
                if attempt == JOB_RETRIES:
                    reason = err.reason if isinstance(err, JobNotRecordedError) else said
                    return _given_up(work, reason)
                get_run_logger().warning(
                    "shard %s: %s; retrying in %.0f s",
                    work.shard.shard_key,
                    said,
                    JOB_RETRY_DELAY_S,
                )
                try:
                    interrupts.sleep(JOB_RETRY_DELAY_S)
                except RunInterrupted:
                    _say_if_unrecorded(work, "the run was stopped")
                    raise
        raise AssertionError("unreachable")


def _say_if_unrecorded(work: WorkItem, why: str) -> None:
    """Log the one sentence for a job this run created and could not record, if any."""
    if work.unrecorded and work.job_id is not None:
        sentence = unrecorded_job_sentence(work.shard, work.job_id, why)
        get_run_logger().warning("shard %s: %s", work.shard.shard_key, sentence)


def _to_retry(work: WorkItem, err: Exception) -> WorkItem:
    """What the retry after ``err`` runs: the job a try created, never a second POST."""
    if isinstance(err, JobNotRecordedError):
        return WorkItem(work.shard, job_id=err.job_id, unrecorded=True)
    if work.unrecorded:  # run_shard records such a job first: this try got past that
        return WorkItem(work.shard, job_id=work.job_id)
    return work


def _given_up(work: WorkItem, said: object) -> JobReport:
    """The report of a shard this run gives up on after its retries."""
    if work.unrecorded and work.job_id is not None:
        sentence = unrecorded_job_sentence(work.shard, work.job_id, said)
        return JobReport.gave_up(work.shard, sentence, job_id=work.job_id)
    return JobReport.gave_up(work.shard, f"{said}; its rows stay for the next run")


def _persist(
    outcome: JobOutcome,
    database_url: str,
    flow_run_id: str | None,
    *,
    bound_s: float = 60.0,
) -> None:
    """Write the job's results and close its shard, retrying a database that went away.

    The job's outcome is only in memory: a database restart must not cost its answers
    (after ``bound_s`` its job_id stays recorded, so a retry or the next run re-reads it).
    """
    retry_while_unavailable(
        lambda: complete_shard(
            engine_for(database_url),
            outcome.shard,
            job_id=outcome.job_id,
            job_status=outcome.job_status,
            records=outcome.records,
            flow_run_id=flow_run_id,
        ),
        bound_s=bound_s,
        url=database_url,
    )


# No task retries: _persist already waits out a database outage (one layer per failure kind).
@task(name="persist-job-results", cache_policy=NO_CACHE)
def persist_job_results(
    outcome: JobOutcome, *, database: ResultsDatabase, flow_run_id: str | None = None
) -> int:
    """Upsert the job's rows and mark its shard done, in one transaction; return rows written.

    For flows that run jobs with the core's :func:`studio_flows.jobs.run_shard` and write
    them in a task of their own.

    Example:
        >>> persist_job_results(outcome, database=ResultsDatabase(url="sqlite:///r.db"))
        ... # doctest: +SKIP
        50
    """
    _persist(outcome, database.get_url(), flow_run_id)
    return len(outcome.records)
