"""Thin Prefect tasks over the core: run one job, persist one job's results.

Retries live in one layer per failure kind: the HTTP client retries transport errors and
429/5xx; these tasks retry what the client gave up on. Status reads are never cached.
"""

from __future__ import annotations

import functools

from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy.engine import Engine

from model_studio.blocks import resolve_settings
from model_studio.client import ClientStats, ModelStudioClient
from model_studio.errors import (
    AuthenticationError,
    ConfigurationError,
    PermissionDeniedError,
    UnprocessableEntityError,
)
from model_studio.jobs import (
    AmbiguousPolicy,
    AmbiguousShardError,
    JobOutcome,
    JobReport,
    WorkItem,
    run_shard,
)
from model_studio.polling import DurationHistory
from model_studio.settings import Settings
from model_studio.storage import complete_shard, make_engine


@functools.cache
def engine_for(database_url: str) -> Engine:
    """One engine (and pool) per database per process, created where it is used."""
    return make_engine(database_url)


@functools.cache
def _history_for(base_url: str) -> DurationHistory:
    # Jobs of one service take similar time per conversation: every job task in this
    # process learns from the ones before it, so polls land near the end of each job.
    return DurationHistory()


def job_client(settings: Settings, stats: ClientStats | None = None) -> ModelStudioClient:
    """A client for one task run, sharing the timing history of this process."""
    client = ModelStudioClient.from_settings(
        settings, history=_history_for(settings.base_url), shared_pool=True
    )
    if stats is not None:
        client.stats = stats
    return client


def _give_up(task: object, task_run: object, state: object) -> bool:
    """Retry a job task unless retrying cannot help (bad credentials, bad request, policy)."""
    try:
        state.result()  # type: ignore[attr-defined]
    except (
        AuthenticationError,
        PermissionDeniedError,
        UnprocessableEntityError,
        ConfigurationError,
        AmbiguousShardError,
    ):
        return False
    except Exception:
        return True
    return False


@task(
    name="run-generation-job",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=_give_up,
    task_run_name="job {work.shard.shard_key}",
)
def run_generation_job(
    work: WorkItem,
    *,
    deadline_s: float | None = None,
    database_url: str,
    policy: AmbiguousPolicy = "resubmit",
    stats: ClientStats | None = None,
    credentials_block: str | None = None,
    flow_run_id: str | None = None,
) -> JobReport:
    """Submit the shard's job (or re-attach to its recorded job_id), wait, and persist it.

    The caller holds the fair-use slot for the whole call. The job_id is written to the
    ledger the moment the POST returns; the results and the shard's end are written in one
    transaction before the task returns its :class:`JobReport`. Persisting here
    rather than in a second task run halves the Prefect API traffic per job (the ephemeral
    API server was the bottleneck at 10,000 jobs, bench/RESULTS.md), and is safe: a retry
    of this task re-attaches to the recorded job instead of paying again.

    Example:
        >>> report = run_generation_job(WorkItem(shard), database_url=url)  # doctest: +SKIP
        >>> report.job_status, report.completed  # doctest: +SKIP
        ('FINISHED', 50)
    """
    settings = resolve_settings(credentials_block)  # read here: parameters never hold the token
    with job_client(settings, stats) as client:
        outcome = run_shard(
            client,
            engine_for(database_url),
            work,
            deadline_s=deadline_s or settings.job_deadline_s,
            policy=policy,
        )
    _persist(outcome, database_url, flow_run_id)
    return outcome.report()


def _persist(outcome: JobOutcome, database_url: str, flow_run_id: str | None) -> None:
    complete_shard(
        engine_for(database_url),
        outcome.shard,
        job_id=outcome.job_id,
        job_status=outcome.job_status,
        records=outcome.records,
        flow_run_id=flow_run_id,
    )


@task(name="persist-job-results", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=1)
def persist_job_results(
    outcome: JobOutcome, *, database_url: str, flow_run_id: str | None = None
) -> int:
    """Upsert the job's rows and mark its shard done, in one transaction; return rows written.

    For flows that run jobs with the core's :func:`model_studio.jobs.run_shard` and write
    them in a task of their own.

    Example:
        >>> persist_job_results(outcome, database_url="sqlite:///r.db")  # doctest: +SKIP
        50
    """
    _persist(outcome, database_url, flow_run_id)
    return len(outcome.records)
