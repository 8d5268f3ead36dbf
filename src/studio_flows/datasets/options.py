"""What a dataset is read as (its format, columns, system prompt, templates), and what a
pass found."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from studio_flows.errors import DatasetError
from studio_flows.rows import BadRow

if TYPE_CHECKING:
    from studio_flows.datasets.dedup import DedupVerdict
    from studio_flows.datasets.sources import DatasetSource
    from studio_flows.structured import ResponseSchema

DatasetFormat = Literal["jsonl", "csv", "parquet"]
OnBadRows = Literal["fail", "skip"]
PathLike: TypeAlias = str | os.PathLike[str]

_SUFFIXES: dict[str, DatasetFormat] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
# A record as the format readers hand it over: (line, messages, prompt, id, columns, kept);
# None = absent; columns maps the names a template uses to their values (None: no template),
# kept the --keep-columns values by name (None when no column is kept).
_Record: TypeAlias = tuple[int, Any, Any, Any, Any, dict[str, Any] | None]


@dataclass(frozen=True)
class DatasetOptions:
    """How to read a dataset: its format (default: from the suffix) and column names.

    ``template`` (Jinja2) renders a row's columns into its user message instead of reading
    ``prompt`` or ``messages``; ``system_template`` renders its system message.
    ``keep_columns`` are input columns carried, as JSON values, into each row's
    ``metadata`` (stored beside its answer, never part of its identity).
    ``response_schema`` is shown to the model: appended to the system message (one is
    made if the conversation has none), unless a template places ``{{ response_schema }}``.

    Example:
        >>> DatasetOptions(id_column="id", system_prompt="Answer briefly.").prompt_column
        'prompt'
    """

    format: DatasetFormat | None = None
    prompt_column: str = "prompt"
    messages_column: str = "messages"
    id_column: str | None = None
    system_prompt: str | None = None
    template: str | None = None
    system_template: str | None = None
    keep_columns: tuple[str, ...] = ()
    response_schema: ResponseSchema | None = None


@dataclass
class DatasetReport:
    """What one validation pass found: good unique rows, bad rows, exact duplicates.

    Example:
        >>> DatasetReport(path=Path("p.jsonl"), rows=40).bad_count
        0
    """

    # The file, or the label of another source (a query's dataset name, "rows").
    path: Path | str
    rows: int = 0
    bad_count: int = 0
    bad_rows: list[BadRow] = field(default_factory=list)
    duplicates: int = 0
    # What de-duplication decided, for the next pass over the same file (None if the file
    # changed while it was read).
    verdict: DedupVerdict | None = field(default=None, repr=False)
    # What was read, for the next pass (a query's rows are a snapshot: read it, not the query).
    source: DatasetSource | None = field(default=None, repr=False, compare=False)


def detect_format(path: PathLike) -> DatasetFormat:
    """The dataset format named by the file's suffix.

    Example:
        >>> detect_format("data/prompts.ndjson")
        'jsonl'
    """
    suffix = Path(path).suffix.lower()
    try:
        return _SUFFIXES[suffix]
    except KeyError:
        # The command line has no format option: the suffix is the one way to say it.
        found = f"the suffix {suffix!r}" if suffix else "a name without a suffix"
        raise DatasetError(
            f"{os.fspath(path)}: cannot tell the dataset format from {found}; "
            f"give the file one of the suffixes {_suffix_list()}"
        ) from None


def _suffix_list() -> str:
    """The suffixes a dataset file may have, grouped by format: ``.jsonl or .ndjson (JSON
    lines), .csv (CSV), .parquet or .pq (Parquet)``."""
    names = {"jsonl": "JSON lines", "csv": "CSV", "parquet": "Parquet"}
    groups = [
        " or ".join(s for s, f in _SUFFIXES.items() if f == fmt) + f" ({name})"
        for fmt, name in names.items()
    ]
    return ", ".join(groups)


def dataset_name(path: PathLike) -> str:
    """The name stored in the results' ``dataset`` column: the file name.

    Example:
        >>> dataset_name("/data/in/prompts.jsonl")
        'prompts.jsonl'
    """
    return Path(path).name
