"""`studio-flows scores`: the judges' scores of a dataset's answers, run after run."""

from __future__ import annotations

import csv
import json
from typing import Annotated, Any

import typer
from rich.table import Table

from studio_flows.cli.app import _clear_errors, app, console
from studio_flows.errors import ConfigurationError

_FORMATS = ("table", "csv", "jsonl")


@app.command()
def scores(
    dataset: Annotated[str, typer.Option(help="Dataset name (as `results --dataset` takes it)")],
    database_url: Annotated[str | None, typer.Option(help="SQLAlchemy URL")] = None,
    model_id: Annotated[
        list[str] | None, typer.Option("--model-id", help="Only these models (repeatable)")
    ] = None,
    judge_model: Annotated[str | None, typer.Option(help="Only this judge's verdicts")] = None,
    output_format: Annotated[str, typer.Option("--format", help="table | csv | jsonl")] = "table",
    verdicts: Annotated[
        bool, typer.Option("--verdicts", help="One line per verdict instead of per run")
    ] = False,
) -> None:
    """Every run's judged scores of DATASET per model, oldest first: when, which flow run,
    judge and template, rows scored, mean score and failed verdicts."""
    from studio_flows.scores import score_history
    from studio_flows.settings import load_settings
    from studio_flows.storage import make_engine, read_scores

    with _clear_errors():
        if output_format not in _FORMATS:
            raise ConfigurationError(f"--format must be table, csv or jsonl, not {output_format!r}")
        engine = make_engine(database_url or load_settings().database_url)
        try:
            found = read_scores(engine, dataset=dataset, models=model_id, judge_model=judge_model)
            lines = [_plain(v) for v in found] if verdicts else score_history(found)
        finally:
            engine.dispose()
        if not lines:
            raise ConfigurationError(
                f"no scores stored for the dataset {dataset!r}: run generate with --judge-model"
            )
    _print(lines, output_format)


def _plain(verdict: dict[str, Any]) -> dict[str, Any]:
    """A verdict as printed: its time in ISO 8601, the ids it is stored under left out."""
    shown = {k: v for k, v in verdict.items() if k not in ("id", "answer_id")}
    shown["scored_at"] = verdict["scored_at"].isoformat(timespec="seconds")
    return shown


def _print(lines: list[dict[str, Any]], output_format: str) -> None:
    if output_format == "jsonl":
        for line in lines:
            console.out(json.dumps(line, ensure_ascii=False), highlight=False)
        return
    if output_format == "csv":
        writer = csv.DictWriter(console.file, fieldnames=list(lines[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(lines)
        return
    table = Table()
    for name in lines[0]:
        table.add_column(name, overflow="fold")
    for line in lines:
        table.add_row(*("" if value is None else str(value) for value in line.values()))
    console.print(table)
