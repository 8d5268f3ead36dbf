"""`studio-flows results`: what runs wrote, by dataset name or by the source's own rows."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from studio_flows.cli.app import DATABASE_URL_DEFAULT, _clear_errors, app, console, err_console
from studio_flows.cli.run import _notice
from studio_flows.errors import ConfigurationError

if TYPE_CHECKING:  # imported where used: Prefect loads slowly, and only runs need it
    from studio_flows.rows import BadRow


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
    database_url: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL", show_default=DATABASE_URL_DEFAULT)
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help="Dataset name (the file name a run stored them under)")
    ] = None,
    model_id: Annotated[str | None, typer.Option(help="Model id")] = None,
    status: Annotated[str | None, typer.Option(help="completed | failed")] = None,
    output_format: Annotated[
        str, typer.Option("--format", help="table | jsonl | csv | parquet")
    ] = "table",
    output: Annotated[Path | None, typer.Option(help="Write to this file")] = None,
    limit: Annotated[
        int | None, typer.Option(help="At most this many rows", show_default="all")
    ] = None,
    wide: Annotated[
        bool, typer.Option("--wide", help="One line per row, an answer column per model")
    ] = False,
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
    from studio_flows.cli.export import Selection, export_results
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
        if wide and status is not None:
            raise ConfigurationError("--wide shows every status side by side; leave out --status")
        selection = Selection(
            dataset=dataset,
            model_id=model_id,
            status=status,
            source=source,
            wide=wide,
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
