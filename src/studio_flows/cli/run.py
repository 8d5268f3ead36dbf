"""`studio-flows generate` and `studio-flows demo`: a run on a checked or local Prefect API,
stopped cleanly by a signal, with its summary."""

from __future__ import annotations

import importlib
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from studio_flows import interrupts
from studio_flows.cli.app import (
    DATABASE_URL_DEFAULT,
    DEMO_TOKEN,
    EXAMPLES,
    _clear_errors,
    _option_flags,
    app,
    console,
    err_console,
)
from studio_flows.errors import ConfigurationError

if TYPE_CHECKING:  # imported where used: Prefect loads slowly, and only runs need it
    from studio_flows.datasets import DatasetReport
    from studio_flows.options import GenerateOptions
    from studio_flows.summary import RunSummary


def _print_summary(summary: RunSummary) -> None:
    table = Table(title=f"{summary.dataset} → {summary.model_id}", show_header=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for row in summary.table():
        table.add_row(str(row["metric"]), str(row["value"]))
    console.print(table)
    if len(summary.models) > 1 or any(m.exact_match is not None for m in summary.models):
        _print_models(summary)
    for pair in summary.exact_match_pairs:
        console.print(pair.sentence(), highlight=False, soft_wrap=True)
    if summary.judging is not None:
        _print_scores(summary)
    for title, items in (("bad rows skipped", summary.bad_rows), ("errors", summary.errors)):
        if items:
            console.print(f"[yellow]{title}:[/]")
            for item in items:
                console.print(f"  {item}", highlight=False, soft_wrap=True)


def _print_models(summary: RunSummary) -> None:
    rows = summary.models_table()
    table = Table(title="by model")
    for name in rows[0]:
        if name == "model":
            # Folded, never cut: at 80 columns "meta-…" would name every Llama alike.
            table.add_column(name, overflow="fold")
        else:
            table.add_column(name, justify="right")
    for row in rows:
        table.add_row(*(str(value) for value in row.values()))
    console.print(table)


def _print_scores(summary: RunSummary) -> None:
    """Each judge's table (every stored score of the dataset's rows) and the sentences."""
    assert summary.judging is not None
    for report in summary.judging.reports:
        rows = report.table()
        if not rows:
            console.print(f"judge {report.judge_model}: no scores yet")
            continue
        table = Table(title=f"scores by {report.judge_model} (all runs)")
        for name in rows[0]:
            table.add_column(name, justify="left" if name in ("judge", "model") else "right")
        for row in rows:
            table.add_row(*(str(value) for value in row.values()))
        console.print(table)
    for sentence in summary.judging.sentences():
        console.print(sentence, highlight=False, soft_wrap=True)


def _run_flow(options: GenerateOptions, show_progress: bool) -> RunSummary:
    """Run the flow on a checked or local Prefect API, stopping cleanly on a signal."""
    from studio_flows.datasets import handing_over
    from studio_flows.preflight import check_run_inputs

    # Bad input is reported before Prefect is even imported (about a second, not fifteen).
    started = time.monotonic()
    report = check_run_inputs(options)
    done = _all_stored(options, report, started)
    if done is not None:
        return done

    from studio_flows.cli.run_control import exit_code_for, run_until_signal
    from studio_flows.errors import RunInterrupted

    def run() -> RunSummary:
        # Imported and started inside the run, under its signal handlers: a Ctrl-C while
        # Prefect loads or its local server starts ends as cleanly as one mid-run.
        from studio_flows.cli.local_server import prefect_api
        from studio_flows.cli.progress import progress_display

        display = progress_display(console, enabled=show_progress)
        # The flow sends the rows validated here (a query is not read a second time).
        handed = (
            handing_over(report, options.dataset_options(), options.on_bad_rows)
            if report is not None
            else nullcontext()
        )
        with prefect_api(notify=_notice, while_starting=_load_flow) as api_url:
            from studio_flows.flows.generate import generate_dataset

            with _slot_notices(), display, handed:
                interrupts.check()
                with _prefect_stopped_answering(api_url):
                    return generate_dataset(options)

    control = interrupts.RunControl()  # the command's run: what its signals stop
    try:
        return run_until_signal(run, control=control, on_stop=_stopping, on_force_exit=_exiting_now)
    except RunInterrupted as err:
        summary = err.summary
        reason = summary.interrupted_by if summary is not None else control.stop_reason
        line = (
            summary.stopped_line()
            if summary is not None
            else f"interrupted by {reason} before any job was submitted; nothing to resume"
        )
        err_console.print(line, highlight=False, soft_wrap=True)
        raise typer.Exit(exit_code_for(reason)) from None


# What a flow run imports on its way (Prefect loads its engines at the first call): about
# a second, spent while a local server starts instead of after it (bench/NOTES.md, item 31).
FLOW_MODULES = ("studio_flows.flows.generate", "prefect.flow_engine", "prefect.task_engine")


def _load_flow() -> None:
    for module in FLOW_MODULES:
        importlib.import_module(module)


def _all_stored(
    options: GenerateOptions, report: DatasetReport | None, started: float
) -> RunSummary | None:
    """The summary of a rerun whose answers are all stored, found without Prefect; None
    when there is work (or the run compares or judges models: their tables are a flow
    run's).

    Such a rerun pays nothing and needs no slot, so it starts no flow run and no server:
    it reads the dataset and the database as a dry run does (a second, where a flow run
    costs several).
    """
    if report is None or options.database_block is not None:
        return None  # what lives in a block needs the Prefect API
    if len(options.models) > 1 or options.judge is not None or options.expected_column:
        return None
    from studio_flows.dry_run import already_stored
    from studio_flows.settings import load_settings
    from studio_flows.summary import ModelSummary, RunSummary

    settings = load_settings()
    database_url = options.database_url or settings.database_url
    shard_size = options.shard_size or settings.shard_size
    done = already_stored(options, report, database_url, shard_size=shard_size)
    if done is None:
        return None
    _notice("every answer is stored already: nothing to submit, no Prefect flow run started")
    assert report.source is not None  # every validation pass names what it read
    model_id = options.models[0]
    return RunSummary(
        dataset=report.source.dataset,
        model_id=model_id,
        rows_in_dataset=report.rows,
        bad_rows_skipped=report.bad_count,
        duplicates=report.duplicates,
        already_done=done,
        wall_time_s=round(time.monotonic() - started, 2),
        bad_rows=[str(bad) for bad in report.bad_rows],
        models=[ModelSummary(model_id=model_id, already_done=done)],
    )


@contextmanager
def _prefect_stopped_answering(api_url: str) -> Iterator[None]:
    """Turn the Prefect API failing under a running flow into one sentence (exit 2).

    Our Model Studio client wraps every transport error of its own, so an httpx error
    that reaches here is Prefect's engine failing to record a state after its retries.
    """
    import httpx
    from prefect.settings import get_current_settings

    from studio_flows.errors import PrefectUnavailableError

    # Prefect's log and event workers print "--- Error logging to API ---" for every batch
    # a hung server does not take; the sentence below says it once (stdlib's switch).
    logging.raiseExceptions = False
    try:
        yield
    except httpx.TransportError as err:
        settings = get_current_settings()
        tries = settings.client.max_retries + 1
        raise PrefectUnavailableError(
            f"The Prefect API at {api_url} stopped answering during the run "
            f"({type(err).__name__} after {tries} {'try' if tries == 1 else 'tries'} of "
            f"PREFECT_API_REQUEST_TIMEOUT={settings.api.request_timeout:g} s); jobs already "
            "submitted are recorded and the next run re-attaches to them."
        ) from None


def _notice(message: str) -> None:
    err_console.print(f"[yellow]{message}[/]", highlight=False, soft_wrap=True)


def _stopping(signal_name: str) -> None:
    _notice(
        f"{signal_name}: stopping (no new jobs; jobs in flight stay recorded). "
        "Press Ctrl-C again to exit at once."
    )


def _exiting_now(signal_name: str) -> None:
    err_console.print(
        f"{signal_name}: exiting now; jobs in flight are recorded and the next run "
        "re-attaches to them.",
        highlight=False,
    )


class _NoticeHandler(logging.Handler):
    """Show the fair-use pool's warnings (waiting for a slot) on the terminal."""

    def emit(self, record: logging.LogRecord) -> None:
        _notice(record.getMessage())


@contextmanager
def _slot_notices() -> Iterator[None]:
    slot_logger = logging.getLogger("studio_flows.slots")
    handler = _NoticeHandler(level=logging.WARNING)
    slot_logger.addHandler(handler)
    try:
        yield
    finally:
        slot_logger.removeHandler(handler)


def _dry_run(options: GenerateOptions) -> None:
    """Read, validate and plan; print what a run would pay for; submit nothing."""
    from studio_flows.dry_run import plan_run
    from studio_flows.preflight import check_run_inputs
    from studio_flows.settings import load_settings

    settings = load_settings()
    report = check_run_inputs(options, require_credentials=False)
    database_url = options.database_url or settings.database_url
    if report is None or options.database_block is not None:
        # A URL lives in a block: that needs the Prefect API (and only then).
        from studio_flows.cli.local_server import prefect_api
        from studio_flows.datasets import validate_dataset_once
        from studio_flows.tasks.database import resolve_database_url
        from studio_flows.tasks.datasets import source_of

        with prefect_api(notify=_notice):
            database_url = resolve_database_url(
                options.database_url, options.database_block, settings
            )
            if report is None:
                report = validate_dataset_once(
                    source_of(options), options.dataset_options(), options.on_bad_rows
                )
    plan = plan_run(
        options, report, database_url, shard_size=options.shard_size or settings.shard_size
    )
    table = Table(title=f"dry run: {plan.dataset} → {plan.model_id}", show_header=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for label, value in plan.table():
        table.add_row(label, str(value))
    console.print(table)
    if report.bad_rows:
        console.print("[yellow]bad rows that would be skipped:[/]")
        for bad in report.bad_rows:
            console.print(f"  {bad}", highlight=False, soft_wrap=True)
    console.print("Dry run: nothing was submitted.")


@app.command()
def generate(
    model_id: Annotated[
        list[str],
        typer.Option("--model-id", help="Model Studio model id; repeat it to compare models"),
    ],
    dataset: Annotated[
        Path | None,
        typer.Argument(help="JSONL, CSV or Parquet file (or give --sql)", show_default=False),
    ] = None,
    sql: Annotated[str | None, typer.Option(help="A SQL query whose rows are the dataset")] = None,
    source_url: Annotated[
        str | None,
        typer.Option(help="SQLAlchemy URL --sql runs on", show_default="the results database"),
    ] = None,
    source_block: Annotated[
        str | None, typer.Option(help="SqlAlchemyConnector block --sql runs on")
    ] = None,
    dataset_name: Annotated[
        str | None,
        typer.Option(
            help="Name the results are stored under",
            show_default="the file name; sql:<hash> for --sql",
        ),
    ] = None,
    template: Annotated[
        str | None, typer.Option(help="Jinja2 user message, e.g. 'Answer: {{ question }}'")
    ] = None,
    system_template: Annotated[
        str | None, typer.Option(help="Jinja2 system message over the row's columns")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Read, validate and plan; print; submit nothing")
    ] = False,
    database_url: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL", show_default=DATABASE_URL_DEFAULT)
    ] = None,
    shard_size: Annotated[
        int | None,
        typer.Option(
            help="Conversations per job (1-100)", show_default="MODEL_STUDIO_SHARD_SIZE, else 50"
        ),
    ] = None,
    temperature: Annotated[
        float, typer.Option(min=0.0, max=2.0, help="Sampling temperature")
    ] = 0.7,
    max_tokens: Annotated[int, typer.Option(min=1, help="Longest answer, in tokens")] = 512,
    system_prompt: Annotated[str | None, typer.Option(help="Prepended to every row")] = None,
    on_bad_rows: Annotated[
        str, typer.Option(metavar="fail|skip", help="Stop before any job, or skip bad rows")
    ] = "fail",
    ambiguous_policy: Annotated[
        str,
        typer.Option(
            metavar="resubmit|stop", help="A POST of an earlier run whose outcome is unknown"
        ),
    ] = "resubmit",
    prompt_column: Annotated[str, typer.Option(help="Column holding a row's prompt")] = "prompt",
    messages_column: Annotated[
        str, typer.Option(help="Column holding a row's conversation (JSON)")
    ] = "messages",
    id_column: Annotated[
        str | None,
        typer.Option(help="Column holding a row id", show_default="a hash of the conversation"),
    ] = None,
    keep_columns: Annotated[
        str | None,
        typer.Option(
            metavar="A,B", help="Input columns stored beside each answer and exported with it"
        ),
    ] = None,
    expected_column: Annotated[
        str | None, typer.Option(help="Kept column with the expected answer: score the models")
    ] = None,
    response_schema: Annotated[
        Path | None,
        typer.Option(
            metavar="SCHEMA.json",
            help="JSON Schema (2020-12) each answer's JSON must match; shown to the model",
        ),
    ] = None,
    judge_model: Annotated[
        list[str] | None,
        typer.Option(
            "--judge-model", help="A judge model scores every answer (1-5); repeat for several"
        ),
    ] = None,
    judge_template: Annotated[
        str | None,
        typer.Option(
            help="Jinja2 judge prompt over the row's columns, answer, expected and model_id"
        ),
    ] = None,
    credentials_block: Annotated[
        str | None,
        typer.Option(help="Credentials block name", show_default="MODEL_STUDIO_TOKEN etc."),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar")] = True,
) -> None:
    """Generate an answer for every row of DATASET (or of --sql) and write them to the database."""
    from studio_flows.structured import ResponseSchema

    with _clear_errors():
        if (dataset is None) == (sql is None):
            raise ConfigurationError("give a dataset file or --sql QUERY (one of the two)")
        schema = None if response_schema is None else ResponseSchema.from_file(response_schema)
        options = _options(
            "generate",
            dataset_path=str(dataset) if dataset is not None else None,
            sql=sql,
            source_url=source_url,
            source_block=source_block,
            dataset_name=dataset_name,
            template=template,
            system_template=system_template,
            model_ids=model_id,
            expected_column=expected_column,
            database_url=database_url,
            shard_size=shard_size,
            temperature=temperature,
            max_tokens=max_tokens,
            system_prompt=system_prompt,
            on_bad_rows=on_bad_rows,
            ambiguous_policy=ambiguous_policy,
            prompt_column=prompt_column,
            messages_column=messages_column,
            id_column=id_column,
            keep_columns=_column_list(keep_columns),
            credentials_block=credentials_block,
            response_schema=None if schema is None else schema.schema,
            judge_models=judge_model or [],
            judge_template=judge_template,
        )
        if options.judge is not None:
            _ = options.judge.template  # a syntax error: one sentence before any work
        if dry_run:
            _dry_run(options)
            return
        summary = _run_flow(options, show_progress=progress)
    _print_summary(summary)
    if not summary.all_completed:
        raise typer.Exit(1)


def _options(command: str, **fields: object) -> GenerateOptions:
    """The run's options; a bad one is one sentence naming the flag ``command`` took it by."""
    from pydantic import ValidationError

    from studio_flows.options import GenerateOptions
    from studio_flows.settings import describe_validation_error

    try:
        return GenerateOptions(**fields)
    except ValidationError as err:
        raise ConfigurationError(
            describe_validation_error(err, flags=_option_flags(command))
        ) from None


def _column_list(names: str | None) -> list[str]:
    """``--keep-columns id,expected`` as a list (blanks around a name dropped)."""
    return [] if names is None else [name.strip() for name in names.split(",")]


@app.command()
def demo(
    database_url: Annotated[
        str | None,
        typer.Option(
            help="SQLAlchemy URL", show_default="$PREFECT_HOME/studio-flows/demo.db, its own"
        ),
    ] = None,
    shard_size: Annotated[int, typer.Option(help="Conversations per job")] = 10,
) -> None:
    """Run the generation flow offline: a local emulator, the examples, a SQLite file of its
    own (never MODEL_STUDIO_DATABASE_URL: demo rows stay out of your results)."""
    from studio_flows.emulator import EmulatorConfig, EmulatorServer

    dataset = EXAMPLES / "prompts.jsonl"
    with _clear_errors():
        options = _options(
            "demo",
            dataset_path=str(dataset),
            model_id="demo-model",
            database_url=database_url or _demo_database_url(),
            shard_size=shard_size,
        )
    assert options.database_url is not None  # given, or the demo's own
    config = EmulatorConfig(job_latency_s=1.0, task_latency_s=0.02, tokens=[DEMO_TOKEN])
    with EmulatorServer(config) as server, _clear_errors():
        os.environ.update(
            MODEL_STUDIO_TOKEN=server.token,
            MODEL_STUDIO_ORGANIZATION_ID="demo-organization",
            MODEL_STUDIO_BASE_URL=server.base_url,
        )
        console.print(
            f"Emulator at {server.base_url}; dataset {dataset.name}; results in "
            f"{options.database_url}",
            highlight=False,
            soft_wrap=True,
        )
        summary = _run_flow(options, show_progress=True)
        stats = server.stats()
    _print_summary(summary)
    console.print(
        f"Emulator: {stats['jobs_created']} jobs created, "
        f"at most {stats['max_active_jobs']} active at once."
    )
    _print_samples(options.database_url, dataset, options.models[0])
    console.print(
        f"Read them back: studio-flows results --database-url {options.database_url}",
        highlight=False,
        soft_wrap=True,
    )
    if not summary.all_completed:
        raise typer.Exit(1)


def _demo_database_url() -> str:
    """The demo's own SQLite file, beside the local Prefect server's files: never the
    user's results database, so a first real export holds no demo rows."""
    from studio_flows.cli.local_server import prefect_home

    folder = prefect_home() / "studio-flows"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'demo.db'}"


def _print_samples(database_url: str, dataset: Path, model_id: str, limit: int = 3) -> None:
    """The dataset's first rows and their answers: the same rows on every run."""
    import itertools

    from studio_flows.datasets import iter_good_rows
    from studio_flows.storage import make_engine, results_of_rows

    engine = make_engine(database_url)
    try:
        name = Path(engine.url.database or engine.url.render_as_string()).name
        table = Table(title=f"A few rows of generation_results ({name})")
        table.add_column("prompt", overflow="fold")
        table.add_column("result", overflow="fold")
        first_rows = itertools.islice(iter_good_rows(dataset), limit)
        for row, found in results_of_rows(engine, first_rows, model_id=model_id):
            answer = found[0]["result"] or found[0]["error"] if found else "(not run)"
            table.add_row(row.messages[-1].content, str(answer))
        console.print(table)
    finally:
        engine.dispose()
