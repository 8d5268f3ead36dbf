"""Tasks a user's own flow composes: submit a job, wait for it, or both in one task run.

Every job holds a fair-use slot of this process's pool (:mod:`studio_flows.tasks.fair_use`)
from before its POST until it is terminal: the process that POSTs it hands the slot to a
watcher thread that polls the job to its end, then gives the slot back. A slot so never
waits for a task to be scheduled, a caller's deadline or stop: mapping these tasks over any
number of batches, on any number of runner threads or processes, keeps at most the limit's
jobs active and never deadlocks, and a freed slot goes straight to the next local job. A
wait in the submitting process reads the watcher's outcome (no second poller). Retries
live in the HTTP client only (transport errors, 429, 5xx): a task retry of a POST could
pay twice, and one of a wait would only repeat the client's own.

Example:
    >>> from prefect import flow, unmapped
    >>> @flow
    ... def answers(batches: list[list[str]]) -> list[list[Generation]]:
    ...     return generate.map(batches, model_id=unmapped("my-model")).result()
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from studio_flows.tasks.fair_use import (
    Lease,
    SlotPool,
    api_url,
    ensure_limit_once,
    settings_pool,
)
from studio_flows.tasks.jobs import engine_for, job_client

from studio_flows import interrupts
from studio_flows.blocks import ModelStudioCredentials, ResultsDatabase
from studio_flows.client import ModelStudioClient
from studio_flows.errors import (
    AmbiguousSubmissionError,
    ConfigurationError,
    GenerationJobCancelled,
    GenerationJobFailed,
    GenerationJobTimedOut,
    JobDeadlineExceededError,
    JobFailedError,
)
from studio_flows.evaluation import wide_results
from studio_flows.generation import (
    ConversationInput,
    Generation,
    GenerationJob,
    GenerationResult,
    generation_request,
    generations_of,
)
from studio_flows.holders import holder_is_gone
from studio_flows.jobs import earlier_orphan_wait_s, orphan_wait_s
from studio_flows.models import GenerateRequest, JobStatus
from studio_flows.result_table import results_table, wide_table
from studio_flows.settings import Settings, load_settings
from studio_flows.storage import ShardRecord, claim_lease, iter_results, open_shards
from studio_flows.structured import ResponseSchema
from studio_flows.training import TrainingManifest, export_training

if TYPE_CHECKING:
    import pyarrow as pa
    from pydantic import BaseModel
    from sqlalchemy.engine import Engine

CANCELLED_STATUSES = frozenset({"CANCELLED", "CANCELED"})
STOP_CHECK_S = 0.25  # how soon a wait on the watcher sees its run asked to stop
logger = logging.getLogger("studio_flows.jobs")


@task(name="submit-generation-job", cache_policy=NO_CACHE)
def submit_generation_job(
    conversations: Sequence[ConversationInput],
    model_id: str,
    *,
    temperature: float = 0.7,
    max_tokens: int = 512,
    credentials: ModelStudioCredentials | None = None,
) -> GenerationJob:
    """Take a fair-use slot, POST one job of ``conversations``, return the job.

    The slot stays held until the job is terminal, by a watcher of this process, whether
    or not anything waits on the job; it is given back at once if the POST fails. So any
    number of jobs may be submitted before waiting on any: a submit past the limit waits
    for the first job to end.

    Example:
        >>> job = submit_generation_job(["Hi", "Name a colour"], "my-model")  # doctest: +SKIP
        >>> result = wait_for_generation_job(job)  # doctest: +SKIP
    """
    request = generation_request(
        conversations, model_id, temperature=temperature, max_tokens=max_tokens
    )
    settings = _settings(credentials)
    job, _ = _submit(_pool(settings, ensure=True), request, settings)
    get_run_logger().info("job %s submitted: %d conversation(s)", job.job_id, job.size)
    return job


@task(name="wait-for-generation-job", cache_policy=NO_CACHE)
def wait_for_generation_job(
    job: GenerationJob,
    *,
    credentials: ModelStudioCredentials | None = None,
    deadline_s: float | None = None,
) -> GenerationResult:
    """Wait until ``job`` is terminal and return its answers.

    In the process that submitted it, the answers are the watcher's (which gives the slot
    back as the job ends); in another (a task runner of processes) the job is polled here.
    Raises :class:`GenerationJobFailed`, :class:`GenerationJobCancelled` or
    :class:`GenerationJobTimedOut` (``deadline_s`` after the POST; default
    ``MODEL_STUDIO_JOB_DEADLINE_S``); the job keeps its slot until it ends regardless.

    Example:
        >>> result = wait_for_generation_job(job, deadline_s=600)  # doctest: +SKIP
        >>> result.job_status, result.texts  # doctest: +SKIP
        ('FINISHED', ['Hello!', 'Blue'])
    """
    settings = _settings(credentials)
    deadline = deadline_s or settings.job_deadline_s
    watcher = _pool(settings).watching(job.job_id)
    if watcher is not None:
        result = _answered(job, lambda: _outcome(watcher, job, deadline), deadline)
    else:  # submitted by another process (or ended already): its watcher holds the slot
        with job_client(settings, job.model_id) as client:
            result = await_generation(client, job, deadline)
    _log_result(result)
    return result


@task(name="generate", cache_policy=NO_CACHE)
def generate(
    prompts_or_conversations: Sequence[ConversationInput],
    model_id: str,
    *,
    temperature: float = 0.7,
    max_tokens: int = 512,
    credentials: ModelStudioCredentials | None = None,
    deadline_s: float | None = None,
    response_schema: Mapping[str, Any] | type[BaseModel] | None = None,
) -> list[Generation]:
    """Submit one job and wait for it in one task run; return one answer per prompt.

    ``.map`` it over batches (up to 100 prompts each): at most the limit's jobs are active,
    and the next job starts the moment one ends. Errors as :func:`wait_for_generation_job`.

    ``response_schema`` (a JSON Schema dict, or a pydantic model class) is appended to each
    conversation's system message; an answer whose first JSON value matches it is
    ``completed`` with the value in ``parsed``, any other is ``failed`` with the reason
    (its text kept in ``text``). A schema that is not valid JSON Schema raises
    :class:`ConfigurationError` before the POST.

    Example:
        >>> from prefect import unmapped
        >>> futures = generate.map([["Hi"], ["Bye"]], model_id=unmapped("m"))  # doctest: +SKIP
        >>> [g.text for batch in futures.result() for g in batch]  # doctest: +SKIP
        ['m answers: Hi', 'm answers: Bye']
    """
    schema = None if response_schema is None else ResponseSchema.of(response_schema)
    request = generation_request(
        prompts_or_conversations,
        model_id,
        temperature=temperature,
        max_tokens=max_tokens,
        response_schema=schema,
    )
    settings = _settings(credentials)
    job, watcher = _submit(_pool(settings, ensure=True), request, settings)
    deadline = deadline_s or settings.job_deadline_s
    result = _answered(job, lambda: _outcome(watcher, job, deadline), deadline, schema)
    _log_result(result)
    return result.generations


@task(name="read-results", cache_policy=NO_CACHE)
def read_results(
    *,
    database: ResultsDatabase | None = None,
    database_url: str | None = None,
    dataset: str | None = None,
    model_id: str | None = None,
    status: str | None = None,
    flow_run_id: str | None = None,
    wide: bool = False,
) -> pa.Table:
    """What runs wrote to the results database, as a ``pyarrow.Table`` in write order.

    The database is ``database`` (a ``ResultsDatabase`` block), else ``database_url``, else
    ``MODEL_STUDIO_DATABASE_URL``; the filters are exact matches. The columns are those of
    ``studio-flows results --format parquet``: the result columns, then one per kept input
    column (``keep_columns``; a name clashing with a result column becomes
    ``input_<name>``, see :mod:`studio_flows.kept_columns`); ``parsed`` is a checked
    answer's JSON value as text. One result per (row, model): the latest completed one (a
    row sent again after its template or response schema changed has two stored answers).
    With ``wide=True`` (an evaluation run): one row per input row of ``dataset`` (or
    ``model_id``), its kept columns and prompt, and an ``answer:<model>`` and
    ``status:<model>`` column per model, as ``studio-flows results --wide`` exports.

    Example:
        >>> table = read_results(database_url="sqlite:///r.db", dataset="prompts.jsonl")
        ... # doctest: +SKIP
        >>> table.column("result").to_pylist()[:1]  # doctest: +SKIP
        ['my-model answers: ...']
    """
    url = database.get_url() if database is not None else database_url
    engine = engine_for(url or load_settings().database_url)
    if wide:
        if status is not None or flow_run_id is not None:
            raise ConfigurationError("read_results(wide=True) takes dataset and model_id only")
        return wide_table(*wide_results(engine, dataset=dataset, model_id=model_id))
    rows = iter_results(
        engine,
        dataset=dataset,
        model_id=model_id,
        status=status,
        flow_run_id=flow_run_id,
        latest=True,
    )
    return results_table(rows)


@task(name="export-training-set", cache_policy=NO_CACHE)
def export_training_set(
    dataset: str,
    model_id: str,
    output: str | Path,
    *,
    eval_output: str | Path | None = None,
    eval_fraction: float | None = None,
    database: ResultsDatabase | None = None,
    database_url: str | None = None,
) -> TrainingManifest:
    """Write a fine-tuning file of ``dataset``'s completed rows answered by ``model_id``.

    One ``{"messages": [<conversation as sent>, {"role": "assistant", "content": <answer>}]}``
    line per row (the latest completed answer), in the dataset's order; with
    ``eval_output``, rows whose row key hashes below ``eval_fraction`` (default 0.1) go
    there instead, the same rows on every export. A manifest ``<output>.manifest.json``
    names the dataset, model, parameter/template/schema hashes, counts, flow runs and
    version. No completed row: :class:`ConfigurationError`, nothing written. The database
    is found as for :func:`read_results`.

    Example:
        >>> manifest = export_training_set(
        ...     "questions.jsonl", "my-model", "train.jsonl", eval_output="eval.jsonl"
        ... )  # doctest: +SKIP
        >>> manifest.files["eval"].rows  # doctest: +SKIP
        4
    """
    url = database.get_url() if database is not None else database_url
    engine = engine_for(url or load_settings().database_url)
    return export_training(
        engine,
        dataset,
        model_id,
        Path(output),
        eval_output=None if eval_output is None else Path(eval_output),
        eval_fraction=eval_fraction,
    )


def await_generation(
    client: ModelStudioClient,
    job: GenerationJob,
    deadline_s: float,
    *,
    response_schema: ResponseSchema | None = None,
) -> GenerationResult:
    """Poll ``job`` with ``client`` until terminal; typed errors for a failed or late job.
    With ``response_schema`` each answer is checked against it (:func:`generations_of`).

    Example:
        >>> await_generation(client, job, deadline_s=60).job_status  # doctest: +SKIP
        'FINISHED'
    """
    return _answered(job, lambda: _poll(client, job, deadline_s), deadline_s, response_schema)


def _answered(
    job: GenerationJob,
    status_of: Callable[[], JobStatus],
    deadline_s: float,
    schema: ResponseSchema | None = None,
) -> GenerationResult:
    """The answers of ``job`` from its terminal ``status_of()``, or its typed error."""
    try:
        status = status_of()
    except JobFailedError as err:
        raise _failed(job, err.job_status) from None
    except JobDeadlineExceededError:
        raise GenerationJobTimedOut(
            f"Generation job {job.job_id} still running {deadline_s:g} s after it was "
            "submitted (deadline_s)",
            job_id=job.job_id,
        ) from None
    generations = generations_of(status, job.size, schema)
    return GenerationResult(
        job_id=job.job_id, job_status=status.job_status, generations=generations
    )


def _submit(
    pool: SlotPool, request: GenerateRequest, settings: Settings
) -> tuple[GenerationJob, Future[JobStatus]]:
    """POST ``request`` under a slot of ``pool``, then hand the slot to a watcher that
    polls the job to its end; return the job and the watcher's outcome."""
    with job_client(settings, request.model_id) as client:
        lease = pool.acquire()
        job = _post(client, pool, lease, request)  # gives the slot back if the POST fails
    return job, pool.watch(lease, job.job_id, lambda: _poll_to_end(job, settings))


def adopt_slots_of_killed_runs(engine: Engine, settings: Settings) -> int:
    """Adopt the fair-use leases a killed process left on jobs of ``engine``'s ledger; return
    how many.

    A lease is adopted when its holder is a process of this machine that is gone
    (:func:`~studio_flows.holders.holder_is_gone`): a watcher polls the jobs recorded on it
    to their end, waits out any POST on it whose outcome is unknown (as long as such a job
    could run, :func:`~studio_flows.jobs.earlier_orphan_wait_s`), then gives the slot back,
    to this process's next job first. So a rerun after a SIGKILL starts as the killed run's
    jobs end, not a minute later when their leases expire. A holder that may still run
    (alive, or on another machine) keeps its lease.

    Example:
        >>> adopt_slots_of_killed_runs(engine_for(database.get_url()), settings)  # doctest: +SKIP
        3
    """
    try:
        leases = _leases_of_gone_holders(engine)
    except Exception as err:  # they expire on the server, as they would have
        logger.warning("could not read the leases in the ledger (%s)", err)
        return 0
    pool, adopted = _pool(settings), 0
    for lease_id, (holder, records) in leases.items():
        try:
            if not claim_lease(engine, lease_id, holder):
                continue  # another rerun adopted it first
            lease = pool.adopt(uuid.UUID(lease_id))
        except Exception as err:  # it expires on the server, as it would have
            logger.warning("could not adopt fair-use lease %s (%s)", lease_id, err)
            continue
        if lease is not None:  # None: it expired already
            outlive = functools.partial(_outlive, engine, records, settings)
            pool.watch(lease, f"lease {lease_id}", outlive)
            adopted += 1
    if adopted:
        logger.info("adopted %d fair-use slot(s) of a killed run until its jobs end", adopted)
    return adopted


def _leases_of_gone_holders(engine: Engine) -> dict[str, tuple[str, list[ShardRecord]]]:
    """The leases of open ledger rows whose holder is gone: their holder and rows."""
    by_lease: dict[str, list[ShardRecord]] = {}
    for record in open_shards(engine):
        if record.lease_id is not None and record.lease_holder is not None:
            by_lease.setdefault(record.lease_id, []).append(record)
    return {
        lease_id: (holder, records)
        for lease_id, records in by_lease.items()
        if (holder := records[0].lease_holder) is not None and holder_is_gone(holder)
    }


def _outlive(engine: Engine, records: list[ShardRecord], settings: Settings) -> None:
    """Return once every job the ``records`` of one lease may have running has ended: the
    recorded ones polled to their end (one runs on the lease, the others ended), the POSTs
    of unknown outcome waited out."""
    for record in records:
        if record.job_id is not None:
            with contextlib.suppress(Exception):  # logged; its end is all the slot waits for
                _poll_to_end(_recorded(record), settings)
    unknown = [record for record in records if record.job_id is None]
    if unknown:
        with job_client(settings, unknown[0].model_id) as client:
            time.sleep(max(earlier_orphan_wait_s(client, engine, r) for r in unknown))


def _recorded(record: ShardRecord) -> GenerationJob:
    assert record.job_id is not None
    return GenerationJob(
        job_id=record.job_id,
        size=record.row_count,
        model_id=record.model_id,
        lease_id=record.lease_id,
        submitted_at=record.submitted_at or datetime.now(UTC),
    )


def _poll_to_end(job: GenerationJob, settings: Settings) -> JobStatus:
    """The watcher's poll: ``job`` until terminal, at most the job deadline and
    ``slot_watch_limit_s`` after its POST (then its slot goes back, its end unknown)."""
    bound_s = settings.job_deadline_s + settings.slot_watch_limit_s
    with job_client(settings, job.model_id) as client:
        try:
            return _poll(client, job, bound_s)
        except JobFailedError:
            raise
        except Exception as err:
            logger.warning("job %s: end unknown (%s); its fair-use slot goes back", job.job_id, err)
            raise


def _poll(client: ModelStudioClient, job: GenerationJob, deadline_s: float) -> JobStatus:
    """Poll ``job`` until terminal, ``deadline_s`` after its POST at the latest."""
    return client.wait_for_job(
        job.job_id,
        deadline_s=deadline_s,
        total_tasks=job.size,
        submitted_at=time.monotonic() - _age_s(job),  # the poller dates jobs monotonically
    )


def _outcome(watcher: Future[JobStatus], job: GenerationJob, deadline_s: float) -> JobStatus:
    """The watcher's terminal status of ``job``, waited for until ``deadline_s`` after its
    POST; the caller's stop ends the wait (the watcher keeps the slot)."""
    end = time.monotonic() + deadline_s - _age_s(job)
    while not watcher.done():
        remaining = end - time.monotonic()
        if remaining <= 0:
            raise JobDeadlineExceededError(f"job {job.job_id} still running", job_id=job.job_id)
        futures.wait([watcher], timeout=min(remaining, STOP_CHECK_S))
        interrupts.check()
    return watcher.result()


def _age_s(job: GenerationJob) -> float:
    return max((datetime.now(UTC) - job.submitted_at).total_seconds(), 0.0)


def _post(
    client: ModelStudioClient, pool: SlotPool, lease: Lease, request: GenerateRequest
) -> GenerationJob:
    """POST ``request`` under ``lease``; give the slot back if no job came of it.

    A POST whose outcome is unknown may have created a job that runs now: its slot is
    kept for as long as such a job could run (:func:`orphan_wait_s`), then given back.
    """
    submitted_at = datetime.now(UTC)
    try:
        created = client.create_job(request)
    except AmbiguousSubmissionError:
        try:
            interrupts.sleep(orphan_wait_s(client, len(request.messages)))
        finally:
            pool.release(lease)
        raise
    except BaseException:
        pool.release(lease)
        raise
    return GenerationJob(
        job_id=created.job_id,
        size=len(request.messages),
        model_id=request.model_id,
        lease_id=lease.lease_id,
        submitted_at=submitted_at,
    )


def _failed(job: GenerationJob, job_status: str) -> JobFailedError:
    kind = (
        GenerationJobCancelled if job_status.upper() in CANCELLED_STATUSES else GenerationJobFailed
    )
    return kind(
        f"Generation job {job.job_id} ended {job_status}: none of its {job.size} "
        "conversation(s) is answered",
        job_id=job.job_id,
        job_status=job_status,
    )


def _settings(credentials: ModelStudioCredentials | None) -> Settings:
    settings = load_settings()
    return settings if credentials is None else credentials.apply_to(settings)


def _pool(settings: Settings, *, ensure: bool = False) -> SlotPool:
    if ensure:  # a slot is about to be taken: the limit must exist (never overwritten)
        ensure_limit_once(settings.concurrency_limit, settings.concurrency_limit_name, api_url())
    return settings_pool(settings)


def _log_result(result: GenerationResult) -> None:
    answered = sum(g.ok for g in result.generations)
    get_run_logger().info(
        "job %s %s: %d/%d answered",
        result.job_id,
        result.job_status,
        answered,
        len(result.generations),
    )


__all__ = [
    "await_generation",
    "export_training_set",
    "generate",
    "read_results",
    "submit_generation_job",
    "wait_for_generation_job",
]
