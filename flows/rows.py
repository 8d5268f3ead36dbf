"""``generate_rows``: the generation flow over rows held in memory, answers returned in order.

The rows (a list of dicts, a ``pyarrow.Table``, a pandas DataFrame) are read in place as a
:class:`~studio_flows.datasets.MemorySource` by the engine a dataset file goes through
(:func:`~studio_flows.flows.generate.run_generation`), so the validation, the templates, the
shards, the fair-use lanes and the exactly-once ledger are the same. With a ``database``
(a ``ResultsDatabase`` block), a ``database_url`` without a password or a
``database_block`` the answers are kept there under the dataset name ``rows``, and a rerun
pays only for rows without one; without, they live in a private folder for the run only.

Example:
    >>> answers = generate_rows(
    ...     [{"prompt": "What is Prefect?"}, {"prompt": "What is SQL?"}], "my-model"
    ... )  # doctest: +SKIP
    >>> [a.text for a in answers]  # doctest: +SKIP
    ['...', '...']
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from prefect import flow
from pydantic import BaseModel
from studio_flows.flows.generate import run_generation
from studio_flows.tasks.database import results_database
from studio_flows.tasks.jobs import engine_for

from studio_flows.blocks import ModelStudioCredentials, ResultsDatabase
from studio_flows.datasets import DatasetSource, MemorySource, read_rows
from studio_flows.errors import ConfigurationError
from studio_flows.generation import Generation
from studio_flows.options import GenerateOptions
from studio_flows.redaction import url_password
from studio_flows.rows import Row
from studio_flows.settings import load_settings
from studio_flows.statuses import RowStatus
from studio_flows.storage import results_of_rows


@flow(name="generate-rows", description="Batch generation over rows held in memory")
def generate_rows(
    rows: Any,
    model_id: str,
    *,
    temperature: float = 0.7,
    max_tokens: int = 512,
    shard_size: int | None = None,
    system_prompt: str | None = None,
    prompt_column: str = "prompt",
    messages_column: str = "messages",
    id_column: str | None = None,
    template: str | None = None,
    system_template: str | None = None,
    keep_columns: list[str] | None = None,
    database: ResultsDatabase | None = None,
    database_url: str | None = None,
    database_block: str | None = None,
    credentials: ModelStudioCredentials | None = None,
    credentials_block: str | None = None,
    response_schema: dict[str, Any] | type[BaseModel] | None = None,
) -> list[Generation]:
    """Answer every row; return one :class:`Generation` per row, in the rows' order.

    ``task_index`` of each answer is the row's position. A row holds ``prompt`` or
    ``messages`` (the column names are settable), or the columns ``template`` renders, and
    may hold an id column. Bad rows stop the run before any job, as for a file.
    ``keep_columns`` are stored beside each answer in the database (``read_results``
    returns them as columns); a row lacking one is bad.

    A database with a password is a ``database`` block (``ResultsDatabase(url=...)``, saved
    or not) and credentials a ``credentials`` block: Prefect writes their secrets into the
    flow run's parameters as ``**********``. ``database_url`` is a plain parameter, written
    as given: a URL with a password there is refused.

    ``response_schema`` (a JSON Schema dict, or a pydantic model class that then validates
    the answers) is shown to the model; an answer whose first JSON value matches it is
    completed with the value in ``parsed``, any other is failed with the reason, and a
    rerun pays again for those rows only.

    Example:
        >>> import pyarrow as pa
        >>> table = pa.table({"prompt": ["Hello?", "Goodbye?"]})
        >>> [a.status for a in generate_rows(table, "my-model")]  # doctest: +SKIP
        ['completed', 'completed']
    """
    if url_password(database_url) is not None:
        raise ConfigurationError(
            "generate_rows(database_url=...) holds a password, and a flow's parameters are "
            "stored as given: pass database=ResultsDatabase(url=...) instead."
        )
    model_class = response_schema if isinstance(response_schema, type) else None
    source = MemorySource(rows)
    with tempfile.TemporaryDirectory(prefix="studio-flows-rows-") as folder:
        if database is None and database_url is None and database_block is None:
            database_url = f"sqlite:///{Path(folder) / 'results.db'}"
        options = GenerateOptions.model_validate(
            dict(
                model_id=model_id,
                temperature=temperature,
                max_tokens=max_tokens,
                shard_size=shard_size,
                system_prompt=system_prompt,
                prompt_column=prompt_column,
                messages_column=messages_column,
                id_column=id_column,
                keep_columns=keep_columns or [],
                template=template,
                system_template=system_template,
                database_url=database_url,
                database_block=database_block,
                credentials_block=credentials_block,
                response_schema=None if model_class is not None else response_schema,
            ),
            context={"rows_in_memory": True},
        )
        if model_class is not None:
            options = options.with_response_model(model_class)
        resolved = results_database(database, database_url, database_block, load_settings())
        run_generation(options, source, database=resolved, credentials=credentials)
        return _answers(resolved.get_url(), options, source)


def _answers(
    database_url: str, options: GenerateOptions, source: DatasetSource
) -> list[Generation]:
    """Each row's stored answer for these parameters, in the rows' order."""
    model = options.models[0]  # generate_rows takes one model
    params = options.generation_params()[0]
    # Every row, duplicates included: each position gets its answer.
    rows = (r for r in read_rows(source, options.dataset_options(), dedup=False))
    good = (row for row in rows if isinstance(row, Row))
    found = results_of_rows(engine_for(database_url), good, model_id=model)
    return [
        _generation(index, stored, params.params_hash) for index, (_, stored) in enumerate(found)
    ]


def _generation(index: int, stored: list[dict[str, Any]], params_hash: str) -> Generation:
    for result in stored:
        if result["params_hash"] == params_hash:
            completed = result["status"] == RowStatus.COMPLETED
            return Generation(
                task_index=index,
                status="completed" if completed else "failed",
                text=result["result"],
                error=None if completed else result["error"],
                parsed=result.get("parsed") if completed else None,
            )
    return Generation(task_index=index, status="failed", error="not answered in this run")
