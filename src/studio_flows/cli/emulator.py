"""`studio-flows emulator`: the local Model Studio stand-in as a server."""

from __future__ import annotations

from typing import Annotated

import typer

from studio_flows.cli.app import DEMO_TOKEN, _clear_errors, _option_flags, app, console
from studio_flows.errors import ConfigurationError


@app.command()
def emulator(
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8000,
    token: Annotated[str, typer.Option(help="Bearer token the emulator accepts")] = DEMO_TOKEN,
    job_latency_s: Annotated[float, typer.Option(help="Seconds every job takes")] = 0.2,
    task_latency_s: Annotated[float, typer.Option(help="Extra seconds per conversation")] = 0.0,
    job_latency_jitter: Annotated[
        float, typer.Option(help="Sigma of a lognormal factor on each job's time (mean kept)")
    ] = 0.0,
    uneven_tasks: Annotated[
        bool, typer.Option(help="Tasks end at random points inside the job, not evenly")
    ] = False,
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
    empty_result_rate: Annotated[
        float, typer.Option(help="Share of tasks listed completed with no result")
    ] = 0.0,
    duplicate_index_rate: Annotated[
        float, typer.Option(help="Share of jobs listing a task_index twice, differently")
    ] = 0.0,
    shifted_index_rate: Annotated[
        float, typer.Option(help="Share of jobs whose task_index counts from 1")
    ] = 0.0,
    post_response_delay_s: Annotated[
        float, typer.Option(help="Seconds a POST that created a job waits before it answers")
    ] = 0.0,
    style: Annotated[
        str,
        typer.Option(help="How a running job looks: reference, quiet, queued or lowercase"),
    ] = "reference",
    running_statuses: Annotated[
        list[str] | None,
        typer.Option(
            "--running-status",
            help="A status between CREATED and the end (repeat; '' for none; default: the style's)",
        ),
    ] = None,
    lowercase_statuses: Annotated[
        bool | None, typer.Option(help="Every job status in lower case (default: the style's)")
    ] = None,
    partial_results: Annotated[
        bool | None,
        typer.Option(help="Finished tasks listed while the job runs (default: the style's)"),
    ] = None,
    progress_count: Annotated[
        bool | None,
        typer.Option(help="completed_tasks counts while the job runs (default: the style's)"),
    ] = None,
    fair_use_limit: Annotated[int, typer.Option(help="Active jobs allowed per token")] = 3,
    retry_after_s: Annotated[float, typer.Option(help="Retry-After sent with every 429")] = 1.0,
    echo_authorization_in_errors: Annotated[
        bool, typer.Option(help="Error details quote the request's Authorization header")
    ] = False,
    json_answers: Annotated[
        bool, typer.Option(help="Answers are JSON, shaped by the prompt's words (see README)")
    ] = False,
    seed: Annotated[int | None, typer.Option(help="Seed of the fault generator")] = None,
    known_models: Annotated[
        list[str] | None,
        typer.Option("--known-model", help="A model id it serves (repeat; default: any)"),
    ] = None,
) -> None:
    """Run the Model Studio emulator as a server (for scripts and manual tries)."""
    # Every option but where to listen is a knob of the same name.
    knobs = {k: v for k, v in locals().items() if k not in ("host", "port", "token")}
    knobs["known_models"] = known_models or None
    # Not given: the style's; --running-status '' alone: none at all.
    knobs["running_statuses"] = (
        [name for name in running_statuses if name] if running_statuses else None
    )
    from pydantic import ValidationError

    from studio_flows.emulator import EmulatorConfig, serve
    from studio_flows.settings import describe_validation_error

    with _clear_errors():
        try:
            config = EmulatorConfig(tokens=[token], **knobs)
        except ValidationError as err:
            flags = {**_option_flags("emulator"), "tokens": "--token"}
            raise ConfigurationError(describe_validation_error(err, flags=flags)) from None
        root = f"http://{host}:{port}"

        def announce() -> None:
            console.print(f"MODEL_STUDIO_BASE_URL={root}{config.prefix}")
            console.print(f"MODEL_STUDIO_TOKEN={token}")
            console.print("MODEL_STUDIO_ORGANIZATION_ID=my-org  # any id works")
            console.print(
                f"stats: {root}/_emulator/stats, job times: {root}/_emulator/jobs  (Ctrl-C stops)"
            )

        serve(config, host=host, port=port, on_listening=announce)
    console.print("emulator stopped")
