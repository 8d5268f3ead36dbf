"""Where rows come from: a file, a SQL query, or rows held in memory, behind one interface.

A :class:`DatasetSource` streams records (what a format reader yields) and says what proves
its rows unchanged between two passes (:meth:`DatasetSource.stamp`), so the validation,
de-duplication and planning are the same for all of them:

- :class:`FileSource`: a JSONL, CSV or Parquet file; its stamp is the file's inode, size and
  modification time.
- :class:`SqlSource`: a query on any SQLAlchemy URL, streamed with a server-side cursor in a
  read-only transaction; a text that is not one query is refused before it runs
  (:mod:`studio_flows.datasets.queries`).
  Reading a query twice may give other rows (a nightly table grows), so the first pass
  writes what the query returned to a private JSONL snapshot and every pass reads that:
  the rows sent are the rows validated, and the snapshot's stamp makes the de-duplication
  verdict of the first pass safe to reuse. Row numbers are positions in the result (1-based).
- :class:`MemorySource`: a list of dicts, a ``pyarrow.Table`` or a pandas DataFrame; the
  flow never changes them, so their stamp is the source object itself.

Example:
    >>> source = MemorySource([{"prompt": "Hi"}, {"prompt": "Bye"}])
    >>> [record[2] for record in source.records(DatasetOptions(), ())]
    ['Hi', 'Bye']
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sized
from pathlib import Path
from typing import Any

import orjson

from studio_flows.datasets.dedup import _FileStamp
from studio_flows.datasets.options import (
    DatasetFormat,
    DatasetOptions,
    PathLike,
    _Record,
    detect_format,
)
from studio_flows.datasets.queries import read_only, single_query
from studio_flows.datasets.readers import (
    READERS,
    IdColumnCheck,
    jsonl_records,
    no_kept_column,
)
from studio_flows.errors import DatasetError
from studio_flows.rows import BadRow

# Rows fetched from the server-side cursor at a time: memory stays flat whatever the result.
SQL_FETCH_ROWS = 2000
_SNAPSHOT_OPTIONS = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS


class DatasetSource(ABC):
    """Records of a dataset, however they are stored.

    ``label`` names the source in bad rows (``label:line: reason``); ``dataset`` is the name
    its results are stored under (``studio-flows results --dataset``).
    """

    label: str
    dataset: str
    # CSV cells and SQL text hold a conversation as JSON text; JSONL holds the list itself.
    messages_as_text: bool = True

    def check(self) -> None:  # noqa: B027 (most sources have nothing to check early)
        """Raise :class:`DatasetError` now if the source cannot be read at all."""

    @abstractmethod
    def records(
        self, options: DatasetOptions, columns: tuple[str, ...]
    ) -> Iterator[_Record | BadRow]:
        """Stream the records, with ``columns`` (read by a template) handed over too."""

    @abstractmethod
    def key(self) -> Hashable:
        """What names this source, whatever its content (for remembering a validation)."""

    def stamp(self) -> Hashable | None:
        """What proves the rows unchanged since the last pass; None when nothing can."""
        return None


class FileSource(DatasetSource):
    """A JSONL, CSV or Parquet file (format from the suffix unless given)."""

    def __init__(self, path: PathLike, format: DatasetFormat | None = None) -> None:
        self.path = Path(path)
        self.label = os.fspath(path)
        self.dataset = self.path.name
        self.format: DatasetFormat = format or detect_format(path)
        if self.format not in READERS:
            raise DatasetError(f"{self.label}: unknown dataset format {self.format!r}")
        self.messages_as_text = self.format != "jsonl"

    def check(self) -> None:
        if not self.path.exists():
            raise DatasetError(f"{self.label}: no such dataset file")
        if self.path.is_dir():
            raise DatasetError(f"{self.label}: is a directory, not a dataset file")

    def records(
        self, options: DatasetOptions, columns: tuple[str, ...]
    ) -> Iterator[_Record | BadRow]:
        if self.path.stat().st_size == 0:
            return iter(())
        return READERS[self.format](self.path, options, columns)

    def key(self) -> Hashable:
        return ("file", self.path.resolve())

    def stamp(self) -> Hashable | None:
        return _FileStamp.of(self.path)


def normalise_query(query: str) -> str:
    """The query with its whitespace collapsed and no trailing semicolon.

    Example:
        >>> normalise_query("SELECT id,  question\\n FROM faq ;")
        'SELECT id, question FROM faq'
    """
    return " ".join(query.split()).rstrip(";").rstrip()


def sql_dataset_name(query: str) -> str:
    """The stable default dataset name of a query: ``sql:`` and a hash of its normal form.

    Example:
        >>> sql_dataset_name("SELECT id, question FROM faq")
        'sql:5d48c16a5ceb'
        >>> sql_dataset_name("SELECT id,   question\\nFROM faq;")
        'sql:5d48c16a5ceb'
    """
    return "sql:" + hashlib.sha256(normalise_query(query).encode("utf-8")).hexdigest()[:12]


class SqlSource(DatasetSource):
    """The rows of a query on ``url``, read once into a private snapshot (see the module)."""

    def __init__(self, query: str, url: str, dataset: str | None = None) -> None:
        self.statement = single_query(query)  # what runs: refused here unless one query
        self.query = query
        self.url = url
        self.dataset = self.label = dataset or sql_dataset_name(query)
        self._folder: tempfile.TemporaryDirectory[str] | None = None
        self._snapshot: Path | None = None

    def records(
        self, options: DatasetOptions, columns: tuple[str, ...]
    ) -> Iterator[_Record | BadRow]:
        if self._snapshot is None:
            self._snapshot = self._take_snapshot()
        return jsonl_records(self._snapshot, options, columns, label=self.label)

    def key(self) -> Hashable:
        return ("sql", normalise_query(self.query), self.url, self.dataset)

    def stamp(self) -> Hashable | None:
        return None if self._snapshot is None else ("sql", _FileStamp.of(self._snapshot))

    def close(self) -> None:
        """Delete the snapshot (also done when the source is garbage collected)."""
        if self._folder is not None:
            self._folder.cleanup()
        self._folder = self._snapshot = None

    def _take_snapshot(self) -> Path:
        import sqlalchemy as sa
        from sqlalchemy.pool import NullPool

        from studio_flows.storage.engine import _normalise_url

        self._folder = tempfile.TemporaryDirectory(prefix="studio-flows-sql-")
        path = Path(self._folder.name) / "rows.jsonl"
        url = _normalise_url(self.url)
        engine = sa.create_engine(url, poolclass=NullPool)
        # Colons escaped: a query is the user's SQL, not a template of bind parameters.
        statement = sa.text(self.statement.replace(":", "\\:"))
        dumps = orjson.dumps
        try:
            with engine.connect() as connection, read_only(connection), path.open("wb") as out:
                result = connection.execute(
                    statement,
                    execution_options={"stream_results": True, "yield_per": SQL_FETCH_ROWS},
                )
                if not result.returns_rows:
                    raise DatasetError(f"{self.label}: the query returns no rows (not a SELECT?)")
                names = list(result.keys())
                for partition in result.partitions(SQL_FETCH_ROWS):
                    # str() for what JSON cannot hold (dates, decimals): the text a template
                    # shows, identical in every pass since every pass reads this file.
                    out.write(
                        b"".join(
                            dumps(
                                dict(zip(names, row, strict=True)),
                                default=str,
                                option=_SNAPSHOT_OPTIONS,
                            )
                            for row in partition
                        )
                    )
        except sa.exc.SQLAlchemyError as err:
            raise DatasetError(self._query_error(err, url)) from None
        finally:
            engine.dispose()
        return path

    def _query_error(self, err: Exception, url: Any) -> str:
        """One sentence: which database, and the driver's first line, password redacted."""
        detail = str(getattr(err, "orig", None) or err).strip().splitlines()
        reason = detail[0] if detail else type(err).__name__
        if url.password:
            reason = reason.replace(str(url.password), "***")
        shown = url.render_as_string(hide_password=True)
        return f"{self.label}: the query failed on {shown}: {reason}"


class MemorySource(DatasetSource):
    """Rows held in memory: a list (or any iterable) of dicts, a ``pyarrow.Table``, a pandas
    DataFrame. Row numbers are 1-based positions."""

    def __init__(self, rows: Any, dataset: str = "rows") -> None:
        self.label = self.dataset = dataset
        if not _is_table(rows) and not isinstance(rows, Sized):
            rows = list(rows)  # a generator can be read once; both passes need the rows
        self.rows = rows

    def records(
        self, options: DatasetOptions, columns: tuple[str, ...]
    ) -> Iterator[_Record | BadRow]:
        messages_column, prompt_column = options.messages_column, options.prompt_column
        id_column, keep = options.id_column, options.keep_columns
        id_check = IdColumnCheck(self.label, id_column)
        for line, row in enumerate(_mappings(self.rows), 1):
            id_check.saw(row)
            missing = [name for name in keep if name not in row]
            if missing:
                yield BadRow(self.label, line, no_kept_column(missing[0]))
                continue
            yield (
                line,
                _plain(row.get(messages_column)),
                _plain(row.get(prompt_column)),
                _plain(row.get(id_column)) if id_column is not None else None,
                {name: _plain(row.get(name)) for name in columns} if columns else None,
                {name: _plain(row[name]) for name in keep} if keep else None,
            )
        id_check.finish()

    def key(self) -> Hashable:
        return ("rows", id(self))

    def stamp(self) -> Hashable | None:
        return ("rows", id(self))


def as_source(source: DatasetSource | PathLike, options: DatasetOptions) -> DatasetSource:
    """``source`` itself, or the file it names."""
    if isinstance(source, DatasetSource):
        return source
    return FileSource(source, options.format)


def _is_table(rows: Any) -> bool:
    return hasattr(rows, "to_batches") or (hasattr(rows, "to_dict") and hasattr(rows, "columns"))


def _mappings(rows: Any) -> Iterator[Mapping[str, Any]]:
    """Dicts of any of the accepted row containers, without copying the whole table."""
    if hasattr(rows, "to_batches"):  # a pyarrow.Table
        for batch in rows.to_batches():
            yield from batch.to_pylist()
        return
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):  # a pandas DataFrame
        yield from rows.to_dict(orient="records")
        return
    if isinstance(rows, Iterable) and not isinstance(rows, str | bytes | Mapping):
        for index, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise DatasetError(f"row {index + 1}: a dict is needed, not {type(row).__name__}")
            yield row
        return
    raise DatasetError(
        f"rows must be a list of dicts, a pyarrow.Table or a pandas DataFrame, not "
        f"{type(rows).__name__}"
    )


def _plain(value: Any) -> Any:
    """A NumPy scalar (pandas cells) as the Python value it holds; anything else as is."""
    if value is None or type(value) in (str, int, bool, list, dict):
        return value
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "shape", None) == ():
        value = item()
    if isinstance(value, float) and value != value:
        return None  # pandas' NaN for a missing cell
    return value
