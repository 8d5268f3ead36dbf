"""`studio-flows export-training`: a dataset's answers as a chat-format fine-tuning file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from studio_flows.cli.app import DATABASE_URL_DEFAULT, _clear_errors, app, console


@app.command("export-training")
def export_training_command(
    dataset: Annotated[str, typer.Option(help="Dataset name (the file name a run stored)")],
    model_id: Annotated[str, typer.Option(help="Model whose answers are the assistant turns")],
    output: Annotated[Path, typer.Option(help="The training JSONL file")],
    eval_output: Annotated[
        Path | None, typer.Option(help="A JSONL file for the held-out rows")
    ] = None,
    eval_fraction: Annotated[
        float | None,
        typer.Option(help="Share of rows held out, by a hash of the row key", show_default="0.1"),
    ] = None,
    database_url: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL", show_default=DATABASE_URL_DEFAULT)
    ] = None,
) -> None:
    """Write one {"messages": [...]} line per completed row of --dataset answered by
    --model-id, in the dataset's order, split by a stable hash of the row key; and a
    manifest OUTPUT.manifest.json naming what the rows were generated with."""
    from studio_flows.files import check_database_exists
    from studio_flows.settings import load_settings
    from studio_flows.storage import make_engine
    from studio_flows.training import export_training

    with _clear_errors():
        url = database_url or load_settings().database_url
        check_database_exists(url)
        engine = make_engine(url)
        try:
            manifest = export_training(
                engine,
                dataset,
                model_id,
                output,
                eval_output=eval_output,
                eval_fraction=eval_fraction,
            )
        finally:
            engine.dispose()
    written = ", ".join(f"{f.rows} rows to {f.path}" for f in manifest.files.values())
    console.print(
        f"wrote {written}; manifest {output}.manifest.json", highlight=False, soft_wrap=True
    )
