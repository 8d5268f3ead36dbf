"""Dataset sources: JSONL, CSV and Parquet files, SQL queries and rows in memory, streamed
into rows, bad rows and shards (see :mod:`studio_flows.datasets.sources`).

A dataset row is either ``messages`` (a conversation: a list of ``{role, content}``; in CSV
a JSON string, in Parquet a list of structs or a JSON string) or ``prompt`` (a string that
becomes one user message), plus an optional id column. Files are read one record at a time
(JSONL line by line, CSV through :mod:`csv`, Parquet by record batches), so memory stays
bounded whatever the file size.

Decisions:

- A malformed record becomes a :class:`~studio_flows.rows.BadRow` ``(file, line, reason)``;
  a problem with the whole file (missing, a directory, corrupt Parquet, a missing column)
  raises :class:`~studio_flows.errors.DatasetError`. Nothing else is ever raised.
- An empty file (0 bytes) is a dataset of zero rows in every format, and so is a CSV with
  only a header: an upstream filter that left nothing should make a scheduled run a no-op,
  not a crash. Blank lines in JSONL and CSV are skipped.
- ``system_prompt`` is prepended as a system message, unless the conversation already starts
  with one: the row's own system message is more specific and wins.
- A conversation must end with a user message: a trailing assistant turn usually means a
  fine-tuning file with the answer already in it, and generating would pay for nothing.
- A row giving both ``prompt`` and ``messages`` is bad (we never guess which one was meant).
  Keys of a message other than ``role`` and ``content`` are bad (the API forbids them);
  other columns of a row are ignored.
- Ids may be strings or integers (``7`` and ``"7"`` are the same key, so a JSONL and a CSV
  of the same data give the same identities); anything else is a bad row.
- Duplicates: the same row key with the same conversation is dropped and counted; the same
  key with a different conversation is a bad row (the first occurrence is kept). The keys
  seen so far live in a private, temporary on-disk SQLite database (:class:`_SeenKeys`),
  not in a Python set: its page cache is capped, so memory stays bounded at a million rows,
  at the price of a few microseconds per row (bench/NOTES.md).
  The validation pass keeps its verdict, one bit per line (:class:`DedupVerdict`); the
  sending pass reuses it instead of de-duplicating again, unless the source changed between
  (a query is read once into a snapshot, so its verdict holds).
- A ``template`` renders the columns it names into the user message (Jinja2, sandboxed,
  undefined names are errors: a bad row ``source:line: template: 'x' is undefined``).

Example:
    >>> from pathlib import Path
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "p.jsonl").write_text('{"prompt": "Hi"}\\n{"prompt": ""}\\n')
    >>> [getattr(item, "reason", "ok") for item in read_rows(folder / "p.jsonl")]
    ['ok', "'prompt' is empty"]
"""

from __future__ import annotations

from studio_flows.datasets.dedup import DedupVerdict
from studio_flows.datasets.options import (
    DatasetFormat,
    DatasetOptions,
    DatasetReport,
    OnBadRows,
    PathLike,
    dataset_name,
    detect_format,
)
from studio_flows.datasets.scan import (
    handing_over,
    iter_good_rows,
    iter_shards,
    read_rows,
    validate_dataset,
    validate_dataset_once,
)
from studio_flows.datasets.sources import (
    DatasetSource,
    FileSource,
    MemorySource,
    SqlSource,
    as_source,
    sql_dataset_name,
)

__all__ = [
    "DatasetFormat",
    "DatasetOptions",
    "DatasetReport",
    "DatasetSource",
    "DedupVerdict",
    "FileSource",
    "MemorySource",
    "OnBadRows",
    "PathLike",
    "SqlSource",
    "as_source",
    "dataset_name",
    "detect_format",
    "handing_over",
    "iter_good_rows",
    "iter_shards",
    "read_rows",
    "sql_dataset_name",
    "validate_dataset",
    "validate_dataset_once",
]
