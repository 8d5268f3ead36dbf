"""The ``studio-flows`` command line: demo, generate, results, emulator, serve.

Exit codes: 0 every row completed, 1 some rows failed (listed), 2 bad input or
configuration (one paragraph, no traceback).
"""

from __future__ import annotations

from studio_flows.deployments.quiet import quiet_environment

quiet_environment()

import logging  # noqa: E402 - the environment must be quiet before Prefect is imported
import os  # noqa: E402
import sys  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Annotated, Literal, NoReturn  # noqa: E402

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from studio_flows.errors import ConfigurationError, StudioFlowsError  # noqa: E402
from studio_flows.resources import examples_dir  # noqa: E402

if TYPE_CHECKING:  # imported where used: Prefect loads slowly, and only runs need it
    from studio_flows.options import GenerateOptions
    from studio_flows.rows import BadRow
    from studio_flows.summary import RunSummary

app = typer.Typer(
    name="studio-flows",
    help="Batch text generation with IONOS AI Model Studio, every answer kept in SQL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Plain click help: Rich's boxed layout cut option names at 80 columns and showed <str>.
    rich_markup_mode=None,
    context_settings={"max_content_width": 100},
)
console = Console()
err_console = Console(stderr=True)

EXAMPLES = examples_dir()  # inside the installed wheel, or the clone's examples/
DEMO_TOKEN = "studio-flows-demo-token"


@contextmanager
def _clear_errors() -> Iterator[None]:
    """Turn the errors a user can fix into one paragraph and exit code 2.

    Example:
        >>> with _clear_errors():  # doctest: +SKIP
        ...     raise ConfigurationError("Set MODEL_STUDIO_TOKEN")
        error: Set MODEL_STUDIO_TOKEN
    """
    try:
        yield
    except StudioFlowsError as err:  # bad input, configuration, or a request the API refused
        _fail(str(err))


def _fail(message: str) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2) from None


def _option_flags(command: str) -> dict[str, str]:
    """``command``'s options by parameter name: ``{"shard_size": "--shard-size"}``."""
    group = typer.main.get_group(app)
    return {
        param.name: param.opts[0]
        for param in group.commands[command].params
        if param.name and param.opts and param.opts[0].startswith("--")
    }


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

    from studio_flows.deployments.local_server import prefect_api
    from studio_flows.deployments.progress import progress_display
    from studio_flows.deployments.run_control import exit_code_for, run_until_signal
    from studio_flows.flows.generate import generate_dataset

    from studio_flows.errors import RunInterrupted

    def run() -> RunSummary:
        with progress_display(console, enabled=show_progress):
            return generate_dataset(options)

    with prefect_api(notify=_notice), _slot_notices():
        try:
            return run_until_signal(run, on_stop=_stopping, on_force_exit=_exiting_now)
        except RunInterrupted as err:
            summary = err.summary
            line = summary.stopped_line() if summary is not None else f"interrupted: {err}"
            err_console.print(line, highlight=False, soft_wrap=True)
            raise typer.Exit(exit_code_for(summary.interrupted_by if summary else None)) from None


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


@app.command()
def results(
    source: Annotated[
        Path | None,
        typer.Argument(
            metavar="SOURCE",
            help="A dataset file: the results of its rows, in its order, with a line column",
            show_default=False,
        ),
    ] = None,
    database_url: Annotated[str | None, typer.Option(help="SQLAlchemy URL")] = None,
    dataset: Annotated[
        str | None, typer.Option(help="Dataset name (the file name a run stored them under)")
    ] = None,
    model_id: Annotated[str | None, typer.Option(help="Model id")] = None,
    status: Annotated[str | None, typer.Option(help="completed | failed")] = None,
    output_format: Annotated[
        str, typer.Option("--format", help="table | jsonl | csv | parquet")
    ] = "table",
    output: Annotated[Path | None, typer.Option(help="Write to this file")] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many rows")] = None,
    prompt_column: Annotated[str | None, typer.Option(help="With SOURCE: as for generate")] = None,
    messages_column: Annotated[
        str | None, typer.Option(help="With SOURCE: as for generate")
    ] = None,
    id_column: Annotated[str | None, typer.Option(help="With SOURCE: as for generate")] = None,
    system_prompt: Annotated[str | None, typer.Option(help="With SOURCE: as for generate")] = None,
) -> None:
    """Read back what runs wrote, streamed.

    With SOURCE (read with the same options as generate), each good row of that file, in
    its order, with its line number and the results of its conversation, whichever file
    name or run produced them; a row never run is shown with an empty status ("not run")
    unless --status is given. Without SOURCE, the results stored under --dataset (or all),
    by shard and task index.
    """
    from studio_flows.deployments.export import Selection, export_results

    from studio_flows.datasets import DatasetOptions

    reading = {
        "prompt_column": prompt_column,
        "messages_column": messages_column,
        "id_column": id_column,
        "system_prompt": system_prompt,
    }
    bad_rows: list[BadRow] = []
    with _clear_errors():
        fmt = _results_format(output_format)
        _check_results_selection(source, dataset, status, reading)
        selection = Selection(
            dataset=dataset,
            model_id=model_id,
            status=status,
            source=source,
            source_options=DatasetOptions(
                prompt_column=prompt_column or DatasetOptions.prompt_column,
                messages_column=messages_column or DatasetOptions.messages_column,
                id_column=id_column,
                system_prompt=system_prompt,
            ),
        )
        count = export_results(
            console,
            database_url=database_url,
            selection=selection,
            output_format=fmt,
            output=output,
            limit=limit,
            on_bad_row=bad_rows.append,
        )
    if output is not None:
        err_console.print(f"wrote {count} rows to {output}", highlight=False, soft_wrap=True)
    _results_notes(source, dataset, count, bad_rows)


def _results_format(output_format: str) -> Literal["table", "jsonl", "csv", "parquet"]:
    if output_format not in ("table", "jsonl", "csv", "parquet"):
        raise ConfigurationError(
            f"--format must be table, jsonl, csv or parquet, not {output_format!r}"
        )
    return output_format  # type: ignore[return-value]


def _check_results_selection(
    source: Path | None, dataset: str | None, status: str | None, reading: dict[str, str | None]
) -> None:
    """Refuse options of ``results`` that contradict each other, before reading anything."""
    if source is not None and dataset is not None:
        raise ConfigurationError(
            "give SOURCE or --dataset, not both: SOURCE finds its rows' results whatever "
            "dataset name stored them"
        )
    given = [f"--{name.replace('_', '-')}" for name, value in reading.items() if value]
    if source is None and given:
        raise ConfigurationError(f"{', '.join(given)} reads a SOURCE file; name one")
    if status is not None and status not in ("completed", "failed"):
        raise ConfigurationError(f"--status must be completed or failed, not {status!r}")


def _results_notes(
    source: Path | None, dataset: str | None, count: int, bad_rows: list[BadRow]
) -> None:
    """Say what an export left out, so that no row goes missing without a word."""
    if bad_rows:
        _notice(
            f"{len(bad_rows)} bad rows of {source} left out (never sent, so no result); "
            f"the first: {bad_rows[0]}"
        )
    if dataset is not None and count == 0:
        _notice(
            f"no results stored under the dataset name {dataset!r}; if its rows first ran "
            "from another file, name the file instead: studio-flows results PATH"
        )


@app.command()
def emulator(
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8000,
    token: Annotated[str, typer.Option(help="Bearer token the emulator accepts")] = DEMO_TOKEN,
    job_latency_s: Annotated[float, typer.Option(help="Seconds every job takes")] = 0.2,
    task_latency_s: Annotated[float, typer.Option(help="Extra seconds per conversation")] = 0.0,
    error_5xx_rate: Annotated[
        float, typer.Option(help="Share of API requests answered 500/502/503/504")
    ] = 0.0,
    rate_429: Annotated[float, typer.Option(help="Share of API requests answered 429")] = 0.0,
    drop_connection_rate: Annotated[
        float, typer.Option(help="Share of API requests closed without a response")
    ] = 0.0,
    lost_post_response_rate: Annotated[
        float, typer.Option(help="Share of created jobs whose POST response is dropped")
    ] = 0.0,
    failed_job_rate: Annotated[float, typer.Option(help="Share of jobs that end FAILED")] = 0.0,
    task_failure_rate: Annotated[float, typer.Option(help="Share of tasks that end failed")] = 0.0,
    not_found_window_s: Annotated[
        float, typer.Option(help="Seconds after creation during which a GET of the job is 404")
    ] = 0.0,
    shuffle_results: Annotated[
        bool, typer.Option(help="List results in a seeded random order")
    ] = False,
    fair_use_limit: Annotated[int, typer.Option(help="Active jobs allowed per token")] = 3,
    retry_after_s: Annotated[float, typer.Option(help="Retry-After sent with every 429")] = 1.0,
    seed: Annotated[int | None, typer.Option(help="Seed of the fault generator")] = None,
    known_models: Annotated[
        list[str] | None,
        typer.Option("--known-model", help="A model id it serves (repeat; default: any)"),
    ] = None,
) -> None:
    """Run the Model Studio emulator as a server (for scripts and manual tries)."""
    from pydantic import ValidationError

    from studio_flows.emulator import EmulatorConfig, serve
    from studio_flows.settings import describe_validation_error

    with _clear_errors():
        try:
            config = EmulatorConfig(
                tokens=[token],
                job_latency_s=job_latency_s,
                task_latency_s=task_latency_s,
                error_5xx_rate=error_5xx_rate,
                rate_429=rate_429,
                drop_connection_rate=drop_connection_rate,
                lost_post_response_rate=lost_post_response_rate,
                failed_job_rate=failed_job_rate,
                task_failure_rate=task_failure_rate,
                not_found_window_s=not_found_window_s,
                shuffle_results=shuffle_results,
                fair_use_limit=fair_use_limit,
                retry_after_s=retry_after_s,
                seed=seed,
                known_models=known_models or None,
            )
        except ValidationError as err:
            flags = {**_option_flags("emulator"), "tokens": "--token"}
            raise ConfigurationError(describe_validation_error(err, flags=flags)) from None
        root = f"http://{host}:{port}"

        def announce() -> None:
            console.print(f"MODEL_STUDIO_BASE_URL={root}{config.prefix}")
            console.print(f"MODEL_STUDIO_TOKEN={token}")
            console.print("MODEL_STUDIO_ORGANIZATION_ID=<any>")
            console.print(f"stats: {root}/_emulator/stats  (Ctrl-C stops)")

        serve(config, host=host, port=port, on_listening=announce)
    console.print("emulator stopped")


@app.command("serve")
def serve_command(
    limit: Annotated[int | None, typer.Option(help="At most this many flow runs at once")] = None,
    nightly_dataset: Annotated[
        str | None,
        typer.Option(
            metavar="PATH", help="Dataset of the nightly run, as this process sees it; turns it on"
        ),
    ] = None,
) -> None:
    """Serve the nightly and ad-hoc deployments from this process (no work pool needed).

    The nightly schedule stays off unless --nightly-dataset names its dataset.
    """
    from studio_flows.deployments.serve import serve

    serve(limit=limit, nightly_dataset=nightly_dataset)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
