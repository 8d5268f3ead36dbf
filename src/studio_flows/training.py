"""A fine-tuning dataset from generated rows: chat-format JSONL, a stable split, a manifest.

One line per completed row of a dataset and model (the latest completed answer per row):
``{"messages": [<the conversation as sent>, {"role": "assistant", "content": <answer>}]}``
(with a response schema, only rows whose answer matched it are completed). Lines come in
the dataset's order (each answer's line in the dataset, stored when it was sent). With an
eval file, a row goes there when the sha256 of its row key, read as a fraction, is below
the eval fraction: the row key alone decides, so a row is in the same file on every
export, for every model and dataset, and rows added and generated later never move the
others. A manifest ``<output>.manifest.json`` says what was exported and from what. Every
file is written beside its target and renamed onto it once all are written (the manifest
last); with no completed row nothing is written.

Example:
    >>> eval_share("q1") < 1.0
    True
    >>> manifest = export_training(engine, "questions.jsonl", "m", Path("train.jsonl"))
    ... # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlalchemy.engine import Engine

from studio_flows.errors import ConfigurationError
from studio_flows.files import replacing
from studio_flows.storage.engine import _reading
from studio_flows.storage.readback import latest_result_ids
from studio_flows.storage.schema import COMPLETED, generation_jobs, generation_results

DEFAULT_EVAL_FRACTION = 0.1
MANIFEST_SUFFIX = ".manifest.json"


class TrainingFile(BaseModel):
    """One written file of a training export and its line count."""

    path: str
    rows: int


class TrainingManifest(BaseModel):
    """What a training export wrote, and what the rows were generated with."""

    dataset: str
    model_id: str
    params_hashes: list[str] = Field(description="temperature, max_tokens (and schema)")
    template_hashes: list[str | None] = Field(description="None: rows without a template")
    schema_hashes: list[str | None] = Field(description="None: rows without a schema")
    eval_fraction: float | None = None
    split: str = "eval when int(sha256(row_key)[:16], 16) / 2**64 < eval_fraction"
    files: dict[str, TrainingFile]
    flow_run_ids: list[str]
    studio_flows_version: str


def eval_share(row_key: str) -> float:
    """Where ``row_key`` falls in [0, 1): the first 64 bits of its sha256 as a fraction.

    Example:
        >>> round(eval_share("q1"), 6)
        0.778777
    """
    return int(hashlib.sha256(row_key.encode("utf-8")).hexdigest()[:16], 16) / 2**64


def training_line(messages: list[dict[str, str]], answer: str) -> str:
    """One line of the training file (no newline).

    Example:
        >>> training_line([{"role": "user", "content": "Hi"}], "Hello")
        '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}'
    """  # noqa: E501
    turns = [*messages, {"role": "assistant", "content": answer}]
    return json.dumps({"messages": turns}, ensure_ascii=False)


@dataclass
class _Seen:
    """What the exported rows were made with, for the manifest."""

    params: set[str]
    templates: set[str | None]
    schemas: set[str | None]
    runs: set[str]

    def add(self, row: dict[str, Any]) -> None:
        self.params.add(row["params_hash"])
        self.templates.add(row["template_hash"])
        self.schemas.add(row["schema_hash"])
        if row["flow_run_id"]:
            self.runs.add(row["flow_run_id"])


def export_training(
    engine: Engine,
    dataset: str,
    model_id: str,
    output: Path,
    *,
    eval_output: Path | None = None,
    eval_fraction: float | None = None,
) -> TrainingManifest:
    """Write the training (and eval) file and the manifest; return the manifest.

    Raises :class:`ConfigurationError` (one sentence, nothing written) for a fraction
    outside [0, 1], an eval fraction without an eval file, the same path twice (the eval
    file at the manifest's path too), a missing directory, or a dataset and model without
    a completed row.
    """
    fraction = _check_outputs(output, eval_output, eval_fraction)
    if not _has_completed(engine, dataset, model_id):
        raise ConfigurationError(
            f"no completed rows of dataset {dataset!r} with model {model_id!r} in "
            f"{engine.url.render_as_string(hide_password=True)}: nothing written"
        )
    from studio_flows import __version__

    seen = _Seen(set(), set(), set(), set())
    counts = {"train": 0, "eval": 0}
    manifest_path = output.with_name(output.name + MANIFEST_SUFFIX)
    with ExitStack() as stack:
        # Renamed in the reverse order of entering: the training file first, the manifest
        # last; a file that cannot be renamed removes those not renamed yet (no manifest of
        # files that are not there).
        manifest_temp = stack.enter_context(replacing(manifest_path))
        evaluation = stack.enter_context(_written(eval_output)) if eval_output else None
        train = stack.enter_context(_written(output))
        for row in iter_training_rows(engine, dataset, model_id):
            seen.add(row)
            to_eval = evaluation is not None and eval_share(row["row_key"]) < fraction
            stream = evaluation if to_eval and evaluation is not None else train
            stream.write(training_line(row["messages"], row["result"]) + "\n")
            counts["eval" if to_eval else "train"] += 1
        files = {"train": TrainingFile(path=str(output), rows=counts["train"])}
        if eval_output is not None:
            files["eval"] = TrainingFile(path=str(eval_output), rows=counts["eval"])
        manifest = TrainingManifest(
            dataset=dataset,
            model_id=model_id,
            params_hashes=sorted(seen.params),
            template_hashes=_sorted(seen.templates),
            schema_hashes=_sorted(seen.schemas),
            eval_fraction=fraction if eval_output is not None else None,
            files=files,
            flow_run_ids=sorted(seen.runs),
            studio_flows_version=__version__,
        )
        manifest_temp.write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return manifest


@contextmanager
def _written(target: Path) -> Iterator[TextIO]:
    """A text stream to a temporary file beside ``target``, renamed onto it at the end."""
    with replacing(target) as temp, temp.open("x", encoding="utf-8", newline="") as stream:
        yield stream


def _sorted(values: set[str | None]) -> list[str | None]:
    return sorted(values, key=lambda value: (value is not None, value or ""))


def _check_outputs(output: Path, eval_output: Path | None, fraction: float | None) -> float:
    if fraction is not None and eval_output is None:
        raise ConfigurationError("--eval-fraction splits rows into --eval-output: give it too")
    if fraction is None:
        fraction = DEFAULT_EVAL_FRACTION
    if not 0.0 <= fraction <= 1.0:
        raise ConfigurationError(f"--eval-fraction {fraction:g} is not between 0 and 1")
    if eval_output is not None and eval_output.resolve() == output.resolve():
        raise ConfigurationError(
            "--eval-output is --output: give the eval rows a file of their own"
        )
    manifest = output.with_name(output.name + MANIFEST_SUFFIX)
    if eval_output is not None and eval_output.resolve() == manifest.resolve():
        raise ConfigurationError(
            f"--eval-output is the manifest of --output ({manifest}): give the eval rows "
            "a file of their own"
        )
    for target in (output, eval_output):
        # Said of the file asked for before anything is written (not of the manifest).
        if target is not None and not target.parent.is_dir():
            raise ConfigurationError(f"cannot write {target}: no such directory {target.parent}")
    return fraction


def _has_completed(engine: Engine, dataset: str, model_id: str) -> bool:
    table = generation_results
    query = (
        sa.select(table.c.id)
        .where(
            table.c.dataset == dataset,
            table.c.model_id == model_id,
            table.c.status == COMPLETED,
        )
        .limit(1)
    )
    with _reading(engine) as conn:
        return conn.execute(query).first() is not None


def iter_training_rows(
    engine: Engine, dataset: str, model_id: str, *, batch_size: int = 1000
) -> Iterator[dict[str, Any]]:
    """The latest completed result of each row of ``dataset`` for ``model_id``, streamed,
    in the dataset's order: by the row's line in the dataset when that answer was sent.

    Rows written before schema 5 have no stored line: they follow, in the order they were
    first sent (their first result's shard, then task index).

    Example:
        >>> from studio_flows.storage import make_engine
        >>> list(iter_training_rows(make_engine("sqlite://"), "d", "m"))
        []
    """
    results, ledger = generation_results, generation_jobs
    filters = (
        results.c.dataset == dataset,
        results.c.model_id == model_id,
        results.c.status == COMPLETED,
    )
    # Each row's first stored result (any status, any model) places a row without a line.
    firsts = (
        sa.select(results.c.row_key, sa.func.min(results.c.id).label("id"))
        .where(results.c.dataset == dataset)
        .group_by(results.c.row_key)
        .subquery()
    )
    first = results.alias("first_result")
    joined = (
        results.join(firsts, firsts.c.row_key == results.c.row_key)
        .join(first, first.c.id == firsts.c.id)
        .outerjoin(ledger, ledger.c.shard_key == first.c.shard_key)
    )
    query = (
        sa.select(results)
        .select_from(joined)
        .where(*filters, results.c.id.in_(latest_result_ids(filters)))
        .order_by(
            results.c.line.is_(None),
            results.c.line,
            ledger.c.id.is_(None),
            ledger.c.id,
            first.c.task_index,
            first.c.id,
        )
    )
    with _reading(engine) as conn:
        streamed = conn.execution_options(stream_results=True, yield_per=batch_size)
        for row in streamed.execute(query):
            yield dict(row._mapping)


__all__ = [
    "DEFAULT_EVAL_FRACTION",
    "MANIFEST_SUFFIX",
    "TrainingFile",
    "TrainingManifest",
    "eval_share",
    "export_training",
    "iter_training_rows",
    "training_line",
]
