"""The generation flow: a dataset in, every answer in a SQL table, three jobs in flight.

1. Validate the dataset (streamed); under ``fail`` a bad row stops the run here.
2. Make sure the ``model-studio`` concurrency limit exists.
3. Plan lazily: skip rows already completed, re-attach recorded jobs.
4. Run one lane per slot of the limit. A lane holds its fair-use slot across consecutive
   jobs (see :mod:`studio_flows.tasks.fair_use`), so the next shard starts the moment one ends.
5. Persist each job as it ends; report a summary, a table, markdown and progress.

Example:
    >>> generate_dataset(GenerateOptions(dataset_path="examples/prompts.jsonl", model_id="m"))
    ... # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.runtime import flow_run
from prefect.utilities.annotations import opaque
from sqlalchemy.engine import Engine
from studio_flows.tasks.database import results_database
from studio_flows.tasks.datasets import validate_dataset_task
from studio_flows.tasks.fair_use import (
    POLL_S,
    Lease,
    SlotPool,
    ensure_concurrency_limit,
    settings_pool,
)
from studio_flows.tasks.generation import adopt_slots_of_killed_runs
from studio_flows.tasks.jobs import FATAL_ERRORS, engine_for, run_generation_jobs
from studio_flows.tasks.preflight import check_model_studio_access

from studio_flows import interrupts
from studio_flows.blocks import (
    ModelStudioCredentials,
    ResultsDatabase,
    credentials_object,
    resolve_settings,
)
from studio_flows.client import ClientStats
from studio_flows.datasets import DatasetReport, DatasetSource, iter_good_rows, iter_shards
from studio_flows.errors import FairUseError, RunInterrupted
from studio_flows.evaluation import Comparison, compare_models, side_by_side_markdown
from studio_flows.interrupts import RunControl
from studio_flows.jobs import JobReport, WorkItem
from studio_flows.judging import (
    JudgeCounts,
    JudgeItem,
    JudgeSpec,
    judge_items,
    judge_shards,
)
from studio_flows.judging import verdicts as _verdicts
from studio_flows.options import GenerateOptions
from studio_flows.planning import Planner, SharedIterator, for_each_model
from studio_flows.scores import judge_report, latest_scores
from studio_flows.settings import Settings
from studio_flows.storage import read_scores, upsert_scores
from studio_flows.summary import JudgingSummary, RunSummary, RunTally

# How long a lane that holds its slot waits for the others before starting alone, while
# the server still grants slots (once it refuses one, another run holds the rest).
LANE_START_WAIT_S = 10.0
# A task run carries consecutive jobs of its lane until it has lasted this long (see
# jobs_of_one_task_run).
TASK_RUN_TARGET_S = 1.0
# A lane that gave its slot back for a turn asks again after twice the longest interval
# between a refused pool's asks, so a waiting run gets the slot first, and a slot nobody
# waits for idles no longer than that.
TURN_PAUSE_S = 2 * POLL_S

ProgressListener = Callable[[int, int, RunTally, int], None]
# Who watches the runs started in this context (the command line's progress display).
_progress_listener: contextvars.ContextVar[ProgressListener | None] = contextvars.ContextVar(
    "studio_flows_progress_listener", default=None
)


@contextlib.contextmanager
def reporting_progress(listener: ProgressListener) -> Iterator[None]:
    """Call ``listener(rows_done, rows_total, tally, jobs_in_flight)`` as jobs end, for the
    flow runs started inside this block.

    Example:
        >>> with reporting_progress(lambda done, total, tally, flying: print(done, total)):
        ...     generate_dataset(options)  # doctest: +SKIP
    """
    token = _progress_listener.set(listener)
    try:
        yield
    finally:
        _progress_listener.reset(token)


@dataclass
class _Progress:
    """Progress of the run: a Prefect progress artifact, plus in-process listeners."""

    total: int
    tally: RunTally
    # Rows a past run answered, as planning finds them: a rerun's bar starts where it was.
    already_done: Callable[[], int] = lambda: 0
    artifact_id: object | None = None
    in_flight: int = 0
    _last_artifact_update: float = 0.0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._listener = _progress_listener.get()
        self.artifact_id = create_progress_artifact(
            progress=0.0, key="generation-progress", description="Rows done of this run"
        )

    @property
    def rows_done(self) -> int:
        """Rows with an answer: this run's, and those past runs left."""
        return min(self.tally.rows_done + self.already_done(), self.total)

    def job_started(self) -> None:
        with self._lock:
            self.in_flight += 1
            self._notify()

    def job_ended(self) -> None:
        with self._lock:
            self.in_flight -= 1
            self._notify()
        now = time.monotonic()
        # One artifact update a second is plenty for a human and spares the API.
        if now - self._last_artifact_update >= 1.0:
            self._last_artifact_update = now
            self._update_artifact()

    def finish(self) -> None:
        self._update_artifact()

    def _update_artifact(self) -> None:
        if self.artifact_id is not None and self.total:
            done = self.rows_done
            update_progress_artifact(self.artifact_id, progress=100.0 * done / self.total)  # type: ignore[arg-type]

    def _notify(self) -> None:
        # Called under the lock: lanes report one at a time, so the count never goes back.
        if self._listener is not None:
            self._listener(self.rows_done, self.total, self.tally, self.in_flight)


@dataclass
class _Lane:
    """What every lane shares: the work, the counters and where to write."""

    work: SharedIterator
    tally: RunTally
    progress: _Progress
    stats: ClientStats
    stop: threading.Event
    control: RunControl
    settings: Settings
    database: ResultsDatabase
    credentials: ModelStudioCredentials | None
    options: GenerateOptions
    flow_run_id: str | None
    start: _LaneStart = field(default_factory=lambda: _LaneStart(lanes=1))

    def run(self) -> None:
        """Hold a fair-use slot and run jobs until the work is done, a stop or a fatal error."""
        pool = settings_pool(self.settings)
        # Take the slot before the first job and wait (briefly) for the other lanes to
        # take theirs, so the first jobs start together.
        try:
            lease = pool.acquire(self.control)
        except BaseException:
            self.start.give_up()  # the other lanes need not wait for this one
            raise
        try:
            self.start.wait_for_others(pool, self.stop, self.control)
            for first in self.work:
                if self.stop.is_set() or self.control.stop_requested():
                    return
                lease = self._take_turn(pool, lease)
                self._run_task(jobs_of_one_task_run(first, self.work, self.stop), lease)
        finally:
            pool.release(lease)

    def _take_turn(self, pool: SlotPool, lease: Lease) -> Lease:
        """Every ``slot_turn_s``, give the slot back and ask again: other runs get a turn."""
        if time.monotonic() - lease.since < pool.turn_s:
            return lease
        pool.release(lease)
        self.control.sleep(TURN_PAUSE_S)  # a waiting run asks first (see TURN_PAUSE_S)
        return pool.acquire(self.control)

    def _run_task(self, items: Iterator[WorkItem], lease: Lease) -> None:
        try:
            # opaque(): Prefect resolves the parameter without walking into it (its default
            # walk, visit_collection, over a 100-row shard cost ~15 ms per task call, bench/).
            # Each job: submit or re-attach, wait, persist in one transaction.
            run_generation_jobs(  # type: ignore[call-overload]
                opaque(self._started(items, lease)),
                database=self.database,
                on_report=opaque(self._job_done),
                policy=self.options.ambiguous_policy,
                stats=self.stats,
                credentials=self.credentials,
                flow_run_id=self.flow_run_id,
                slot=opaque(lease),
            )
        except (*FATAL_ERRORS, FairUseError):  # a lost slot stops the run's new work too
            self.stop.set()
            raise

    def _started(self, items: Iterator[WorkItem], lease: Lease) -> Iterator[WorkItem]:
        for item in items:
            lease.check()  # strict: no new job on a slot the server no longer counts
            self.tally.started(item.shard.params.model_id)
            self.progress.job_started()
            yield item

    def _job_done(self, report: JobReport) -> None:
        self.tally.record(report)
        self.progress.job_ended()


@dataclass
class _LaneStart:
    """The lanes of one run start their first jobs together, unless the limit is full.

    Why together: while one lane's task runs keep the Prefect API busy, the others' slot
    requests took seconds (bench/NOTES.md). Why not always: once the server refuses a
    slot, another run holds the rest, and a lane that waits for it leaves its own slot idle.
    """

    lanes: int
    refusals_before: int = 0
    holding: int = 0
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def give_up(self) -> None:
        """A lane got no slot: nobody waits for it."""
        with self._cond:
            self.lanes -= 1
            self._cond.notify_all()

    def wait_for_others(self, pool: SlotPool, stop: threading.Event, control: RunControl) -> None:
        """This lane holds its slot: wait until every lane does, the limit is full, or
        ``LANE_START_WAIT_S`` passed."""
        deadline = time.monotonic() + LANE_START_WAIT_S
        with self._cond:
            self.holding += 1
            self._cond.notify_all()
            while self.holding < self.lanes and pool.refusals == self.refusals_before:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or stop.is_set() or control.stop_requested():
                    return
                # Refusals are counted by the pool's fetcher thread, which does not notify.
                self._cond.wait(timeout=min(remaining, 0.05))


def jobs_of_one_task_run(
    first: WorkItem,
    work: Iterator[WorkItem],
    stop: threading.Event,
    *,
    target_s: float = TASK_RUN_TARGET_S,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[WorkItem]:
    """``first``, then the lane's next jobs while the task run is under ``target_s``.

    A task run costs this process ~10 ms and the Prefect API one more run to ingest:
    nothing next to jobs of seconds, most of the time for jobs of milliseconds (the API
    capped a run of 10,000 such jobs near 19 a second, bench/RESULTS.md). So a task run
    carries consecutive jobs until it has lasted ``target_s``; a job of a second or more
    has a task run of its own. Work is still pulled one job at a time, as the lane becomes
    free, so the lanes stay balanced to the last job.
    """
    started = clock()
    yield first
    while clock() - started < target_s and not stop.is_set():
        item = next(work, None)
        if item is None:
            return
        yield item


def _run_lanes(lane: _Lane, count: int) -> None:
    """Run ``count`` lanes in threads of this flow run; re-raise the first lane error.

    Anything that ends the wait early (Prefect's cancellation signal in a deployment, the
    timeout of an enclosing flow run) stops this run's lanes and gives this run's slots back
    before it goes on; other runs of the process keep theirs.
    """
    if not lane.work.has_work():
        return  # a rerun with nothing to submit takes no slot, nor keeps another run from one
    # A killed run's slots come back as its jobs end, not a lease's minute later.
    adopt_slots_of_killed_runs(engine_for(lane.database.get_url()), lane.settings)
    refusals = settings_pool(lane.settings).refusals
    lane.start = _LaneStart(lanes=count, refusals_before=refusals)
    pool = ThreadPoolExecutor(max_workers=count, thread_name_prefix="lane")
    # Each thread runs in a copy of this context, so task calls belong to the flow run (and
    # see its RunControl, which the lane also carries).
    futures = [pool.submit(contextvars.copy_context().run, lane.run) for _ in range(count)]
    try:
        wait(futures)
    except BaseException as err:
        lane.control.request_stop(type(err).__name__)
        lane.stop.set()
        lane.control.release_all()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    errors = [f.exception() for f in futures if f.exception() is not None]
    interrupted = [e for e in errors if isinstance(e, RunInterrupted)]
    if len(interrupted) < len(errors):
        raise next(e for e in errors if not isinstance(e, RunInterrupted))  # type: ignore[misc]
    if interrupted:
        raise interrupted[0]


@flow(name="generate-dataset", description="Batch generation with IONOS AI Model Studio")
def generate_dataset(
    options: GenerateOptions,
    database: ResultsDatabase | None = None,
    credentials: ModelStudioCredentials | None = None,
) -> RunSummary:
    """Generate an answer for every row of a dataset and keep each one in SQL.

    ``database`` and ``credentials`` are Blocks (a deployment's form offers the saved
    ones); without them the results database is ``options.database_url``,
    ``options.database_block`` or ``MODEL_STUDIO_DATABASE_URL``, and the token comes from
    ``options.credentials_block`` or the environment. Prefect writes a Block parameter's
    secrets as ``**********`` and ``options.database_url`` with its password masked, so no
    password or token reaches the flow run's parameters (and a deployment run, which
    only has its parameters, needs the block or the variable for a password).

    Example:
        >>> summary = generate_dataset(
        ...     GenerateOptions(dataset_path="examples/prompts.jsonl", model_id="my-model"),
        ...     database=ResultsDatabase.load("results"),
        ... )  # doctest: +SKIP
        >>> summary.completed  # doctest: +SKIP
        40
    """
    return run_generation(options, database=database, credentials=credentials)


def run_generation(
    options: GenerateOptions,
    source: DatasetSource | None = None,
    *,
    database: ResultsDatabase | None = None,
    credentials: ModelStudioCredentials | None = None,
) -> RunSummary:
    """The body of :func:`generate_dataset`, in the calling flow run: ``source`` is read
    instead of the file or query of ``options`` when given (rows in memory).

    The run has a :class:`RunControl` of its own (inside the command line's, when that
    started it): its timeout or cancellation stops its own waits and gives back its own
    slots, and nothing of another run of the process.

    Example:
        >>> run_generation(options, MemorySource([{"prompt": "Hi"}]))  # doctest: +SKIP
        RunSummary(dataset='rows', ...)
    """
    with interrupts.running() as control:
        return _run_generation(options, source, database, credentials, control)


def _run_generation(
    options: GenerateOptions,
    source: DatasetSource | None,
    database: ResultsDatabase | None,
    credentials: ModelStudioCredentials | None,
    control: RunControl,
) -> RunSummary:
    started = time.monotonic()
    # Blocks from here on: the tasks' parameters never hold the token or the password.
    credentials = credentials_object(credentials, options.credentials_block)
    settings = resolve_settings(credentials)
    settings.require_credentials()
    database = results_database(database, options.database_url, options.database_block, settings)
    report = validate_dataset_task(options, source, database)
    assert report.source is not None  # every validation pass names what it read
    dataset = report.source.dataset
    check_model_studio_access(credentials)
    limit = ensure_concurrency_limit(settings.concurrency_limit, settings.concurrency_limit_name)

    models = options.models
    params = options.generation_params()
    # The source the validation read (a query's snapshot), judged as it judged it.
    rows = iter_good_rows(report.source, options.dataset_options(), verdict=report.verdict)
    shards = iter_shards(
        rows,
        dataset=dataset,
        params=params[0],
        shard_size=options.shard_size or settings.shard_size,
    )
    planner = Planner(engine_for(database.get_url()))
    tally = RunTally()
    lane = _Lane(
        work=SharedIterator(planner.plan(for_each_model(shards, params))),
        tally=tally,
        progress=_Progress(
            total=report.rows * len(models),
            tally=tally,
            already_done=lambda: planner.counts.already_done,
        ),
        stats=ClientStats(),
        stop=threading.Event(),
        control=control,
        settings=settings,
        database=database,
        credentials=credentials,
        options=options,
        flow_run_id=str(flow_run.id) if flow_run.id else None,
    )
    judges = _Judges.of(options, report, lane, params[0].params_hash)
    interrupted: RunInterrupted | None = None
    try:
        _run_lanes(lane, limit)
        if judges is not None:
            # After the answers, through the same lanes and slots: judge rows are paid work.
            _run_lanes(judges.lane(options.shard_size or settings.shard_size), limit)
    except RunInterrupted as err:
        interrupted = err
    except BaseException:
        # Prefect's cancellation (a TerminationSignal) or another stop: the run ends
        # Cancelled with the summary so far, as a signal to the command line does.
        lane.progress.finish()
        _report(_summary(options, report, planner, tally, lane, started, stopped=True))
        raise
    lane.progress.finish()
    summary = _summary(options, report, planner, tally, lane, started, stopped=bool(interrupted))
    if interrupted is None and (len(options.models) > 1 or options.expected_column):
        _compare(options, report, summary, planner.engine, params[0].params_hash)
    if judges is not None:
        summary.judging = judges.summary(record=interrupted is None)
    _report(summary)
    if interrupted is not None:
        interrupted.summary = summary
        raise interrupted
    return summary


@dataclass
class _Judges:
    """The judge pass of a run: its rows (derived from the stored answers), its lanes'
    counters, and the verdicts copied into ``generation_scores`` afterwards."""

    spec: JudgeSpec
    options: GenerateOptions
    report: DatasetReport
    answers: _Lane
    params_hash: str
    planner: Planner
    tally: RunTally = field(default_factory=RunTally)
    counts: JudgeCounts = field(default_factory=JudgeCounts)

    @classmethod
    def of(
        cls, options: GenerateOptions, report: DatasetReport, answers: _Lane, params_hash: str
    ) -> _Judges | None:
        spec = options.judge
        if spec is None:
            return None
        planner = Planner(engine_for(answers.database.get_url()))
        return cls(spec, options, report, answers, params_hash, planner)

    @property
    def dataset(self) -> str:
        assert self.report.source is not None
        return self.report.source.dataset

    def items(self, counts: JudgeCounts | None = None) -> Iterator[JudgeItem]:
        """Every completed answer of the source's rows, with its judge row (a second pass
        over the source: bounded memory, the answers read back a chunk at a time)."""
        assert self.report.source is not None
        reading = self.options.dataset_options()
        rows = iter_good_rows(self.report.source, reading, verdict=self.report.verdict)
        return judge_items(
            self.planner.engine,
            rows,
            self.options.models,
            params_hash=self.params_hash,
            dataset=self.dataset,
            spec=self.spec,
            expected_column=self.options.expected_column,
            counts=counts,
        )

    def lane(self, shard_size: int) -> _Lane:
        """The answers' lane, its work the judge rows still without a verdict."""
        shards = judge_shards(
            self.items(self.counts), self.spec, dataset=self.dataset, shard_size=shard_size
        )
        work = SharedIterator(self.planner.plan(shards))
        return dataclasses.replace(self.answers, work=work, tally=self.tally)

    def summary(self, *, record: bool) -> JudgingSummary:
        """This pass's counts; with ``record``, the verdicts copied into the scores table
        first (every judge row of the source, so a verdict a killed run left is copied now)."""
        engine = self.planner.engine
        if record:
            flow_run_id = self.answers.flow_run_id
            upsert_scores(
                engine, _verdicts(engine, self.items(), self.spec, flow_run_id=flow_run_id)
            )
        models = self.options.models
        reports = []
        for judge in self.spec.models:
            found = read_scores(
                engine,
                dataset=self.dataset,
                models=models,
                judge_model=judge,
                template_hash=self.spec.template_hash,
            )
            reports.append(
                judge_report(judge, self.spec.template_hash, models, latest_scores(found))
            )
        judges = len(self.spec.models)
        return JudgingSummary(
            judges=list(self.spec.models),
            template_hash=self.spec.template_hash,
            answers=self.counts.answers,
            already_done=self.planner.counts.already_done,
            rows_submitted=self.planner.counts.rows_planned,
            completed=self.tally.completed,
            failed=self.tally.failed + self.counts.not_rendered * judges,
            unfinished=self.tally.unfinished,
            jobs=self.tally.jobs,
            reports=reports,
        )


def _summary(
    options: GenerateOptions,
    report: DatasetReport,
    planner: Planner,
    tally: RunTally,
    lane: _Lane,
    started: float,
    *,
    stopped: bool,
) -> RunSummary:
    """The run's summary from its counters (so far, for a run that was stopped)."""
    assert report.source is not None  # every validation pass names what it read
    return RunSummary(
        dataset=report.source.dataset,
        model_id=", ".join(options.models),
        rows_in_dataset=report.rows,
        bad_rows_skipped=report.bad_count,
        duplicates=report.duplicates,
        already_done=planner.counts.already_done,
        rows_submitted=planner.counts.rows_planned,
        completed=tally.completed,
        failed=tally.failed,
        invalid_answers=tally.invalid,
        unfinished=tally.unfinished,
        jobs=tally.jobs,
        reattached=tally.reattached,
        # A past run's POST whose outcome stayed unknown counts when its shard is resubmitted.
        ambiguous_resubmitted=tally.ambiguous_resubmitted,
        rate_limited_429=lane.stats.rate_limited,
        requests=lane.stats.requests,
        wall_time_s=round(time.monotonic() - started, 2),
        bad_rows=[str(bad) for bad in report.bad_rows],
        errors=tally.errors,
        interrupted_by=lane.control.stop_reason if stopped else None,
        models=tally.model_summaries(
            options.models, planner.counts.already_done_by_model, planner.counts.planned_by_model
        ),
    )


def _compare(
    options: GenerateOptions,
    report: DatasetReport,
    summary: RunSummary,
    engine: Engine,
    params_hash: str,
) -> None:
    """Read back the models' answers: samples side by side and, if asked, their scores."""
    assert report.source is not None
    reading = options.dataset_options()
    # A second pass over the source, not a read-back of the rows stored under its name: a
    # completed row keeps the name (and kept columns) of whichever file or run paid for it,
    # and stored rows know shard order, not the source's, so only the source gives every
    # row's expected value, in order, in bounded memory (without --expected-column the pass
    # stops after its first chunk, see compare_models).
    rows = iter_good_rows(report.source, reading, verdict=report.verdict)
    comparison = compare_models(
        engine, rows, options.models, params_hash=params_hash, expected=options.expected_column
    )
    _score(summary, comparison)
    create_markdown_artifact(
        key="generation-comparison",
        markdown="# First rows, one answer per model\n\n"
        + side_by_side_markdown(comparison.samples, options.models, kept=reading.keep_columns),
    )


def _score(summary: RunSummary, comparison: Comparison) -> None:
    if comparison.scores is None:
        return
    for model in summary.models:
        score = comparison.scores[model.model_id]
        model.scored_rows = score.scored_rows
        model.exact_match = score.exact_match
        model.contains = score.contains
    summary.exact_match_pairs = comparison.scores.mcnemar()


def _report(summary: RunSummary) -> None:
    create_table_artifact(
        key="generation-summary", table=summary.table(), description="Run summary"
    )
    create_table_artifact(
        key="generation-models", table=summary.models_table(), description="Run summary by model"
    )
    create_markdown_artifact(key="generation-report", markdown=summary.markdown())
    if summary.judging is not None:
        create_markdown_artifact(
            key="generation-scores",
            markdown="# Scores\n\n"
            + "\n".join(report.markdown() for report in summary.judging.reports),
            description="Judged scores by model, with paired tests",
        )
    get_run_logger().info(
        "%d completed, %d failed, %d unfinished in %d jobs (%.1f s)",
        summary.completed,
        summary.failed,
        summary.unfinished,
        summary.jobs,
        summary.wall_time_s,
    )
