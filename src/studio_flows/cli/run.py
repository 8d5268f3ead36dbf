"""`studio-flows generate` and `studio-flows demo`: a run on a checked or local Prefect API,
stopped cleanly by a signal, with its summary."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from studio_flows import interrupts
from studio_flows.cli.app import (
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
    from studio_flows.options import GenerateOptions
    from studio_flows.summary import RunSummary


def _print_summary(summary: RunSummary) -> None:
    table = Table(title=f"{summary.dataset} → {summary.model_id}", show_header=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for row in summary.table():
        table.add_row(str(row["metric"]), str(row["value"]))
    console.print(table)
    for title, items in (("bad rows skipped", summary.bad_rows), ("errors", summary.errors)):
        if items:
            console.print(f"[yellow]{title}:[/]")
            for item in items:
                console.print(f"  {item}", highlight=False, soft_wrap=True)


def _run_flow(options: GenerateOptions, show_progress: bool) -> RunSummary:
    """Run the flow on a checked or local Prefect API, stopping cleanly on a signal."""
    from studio_flows.preflight import check_run_inputs

    # Bad input is reported before Prefect is even imported (about a second, not fifteen).
    check_run_inputs(options)

    from studio_flows.cli.run_control import exit_code_for, run_until_signal
    from studio_flows.errors import RunInterrupted

    def run() -> RunSummary:
        # Imported and started inside the run, under its signal handlers: a Ctrl-C while
        # Prefect loads or its local server starts ends as cleanly as one mid-run.
        from studio_flows.cli.local_server import prefect_api
        from studio_flows.cli.progress import progress_display
        from studio_flows.flows.generate import generate_dataset

        display = progress_display(console, enabled=show_progress)
        with prefect_api(notify=_notice) as api_url, _slot_notices(), display:
            interrupts.check()
            with _prefect_stopped_answering(api_url):
                return generate_dataset(options)

    try:
        return run_until_signal(run, on_stop=_stopping, on_force_exit=_exiting_now)
    except RunInterrupted as err:
        summary = err.summary
        reason = summary.interrupted_by if summary is not None else interrupts.stop_reason()
        line = (
            summary.stopped_line()
            if summary is not None
            else f"interrupted by {reason} before any job was submitted; nothing to resume"
        )
        err_console.print(line, highlight=False, soft_wrap=True)
        raise typer.Exit(exit_code_for(reason)) from None


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
    from studio_flows.tasks.slots import release_all_slots

    _notice(
        f"{signal_name}: stopping (no new jobs; jobs in flight stay recorded). "
        "Press Ctrl-C again to exit at once."
    )
    release_all_slots()


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


@app.command()
def generate(
    dataset: Annotated[Path, typer.Argument(help="JSONL, CSV or Parquet file")],
    model_id: Annotated[str, typer.Option("--model-id", help="Model Studio model id")],
    database_url: Annotated[str | None, typer.Option(help="SQLAlchemy URL")] = None,
    shard_size: Annotated[int | None, typer.Option(help="Conversations per job (1-100)")] = None,
    temperature: Annotated[float, typer.Option(min=0.0, max=2.0)] = 0.7,
    max_tokens: Annotated[int, typer.Option(min=1)] = 512,
    system_prompt: Annotated[str | None, typer.Option(help="Prepended to every row")] = None,
    on_bad_rows: Annotated[str, typer.Option(help="fail | skip")] = "fail",
    ambiguous_policy: Annotated[str, typer.Option(help="resubmit | stop")] = "resubmit",
    prompt_column: str = "prompt",
    messages_column: str = "messages",
    id_column: Annotated[str | None, typer.Option(help="Column holding a row id")] = None,
    credentials_block: Annotated[str | None, typer.Option(help="Credentials block name")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar")] = True,
) -> None:
    """Generate an answer for every row of DATASET and write them to the database."""
    from pydantic import ValidationError

    from studio_flows.options import GenerateOptions
    from studio_flows.settings import describe_validation_error

    with _clear_errors():
        try:
            options = GenerateOptions(
                dataset_path=str(dataset),
                model_id=model_id,
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
                credentials_block=credentials_block,
            )
        except ValidationError as err:
            raise ConfigurationError(
                describe_validation_error(err, flags=_option_flags("generate"))
            ) from None
        summary = _run_flow(options, show_progress=progress)
    _print_summary(summary)
    if not summary.all_completed:
        raise typer.Exit(1)


@app.command()
def demo(
    database_url: Annotated[str | None, typer.Option(help="SQLAlchemy URL")] = None,
    shard_size: Annotated[int, typer.Option(help="Conversations per job")] = 10,
) -> None:
    """Run the generation flow offline: a local emulator, the examples, a SQLite file."""
    from studio_flows.emulator import EmulatorConfig, EmulatorServer
    from studio_flows.options import GenerateOptions

    dataset = EXAMPLES / "prompts.jsonl"
    config = EmulatorConfig(job_latency_s=1.0, task_latency_s=0.02, tokens=[DEMO_TOKEN])
    with EmulatorServer(config) as server, _clear_errors():
        os.environ.update(
            MODEL_STUDIO_TOKEN=server.token,
            MODEL_STUDIO_ORGANIZATION_ID="demo-organization",
            MODEL_STUDIO_BASE_URL=server.base_url,
        )
        console.print(f"Emulator at {server.base_url}; dataset {dataset.name}")
        options = GenerateOptions(
            dataset_path=str(dataset),
            model_id="demo-model",
            database_url=database_url,
            shard_size=shard_size,
        )
        summary = _run_flow(options, show_progress=True)
        stats = server.stats()
    _print_summary(summary)
    console.print(
        f"Emulator: {stats['jobs_created']} jobs created, "
        f"at most {stats['max_active_jobs']} active at once."
    )
    _print_samples(database_url, dataset, options.model_id)
    if not summary.all_completed:
        raise typer.Exit(1)


def _print_samples(database_url: str | None, dataset: Path, model_id: str, limit: int = 3) -> None:
    """The dataset's first rows and their answers: the same rows on every run."""
    import itertools

    from studio_flows.datasets import iter_good_rows
    from studio_flows.settings import load_settings
    from studio_flows.storage import make_engine, results_of_rows

    engine = make_engine(database_url or load_settings().database_url)
    try:
        table = Table(title=f"A few rows of generation_results ({engine.url.database})")
        table.add_column("prompt", overflow="fold")
        table.add_column("result", overflow="fold")
        first_rows = itertools.islice(iter_good_rows(dataset), limit)
        for row, found in results_of_rows(engine, first_rows, model_id=model_id):
            answer = found[0]["result"] or found[0]["error"] if found else "(not run)"
            table.add_row(row.messages[-1].content, str(answer))
        console.print(table)
    finally:
        engine.dispose()
