"""One reader per format: each streams a file's records as ``(line, messages, prompt, id,
columns, kept)`` (None where absent; ``columns`` maps the names a template uses to their
values, None when no template is set; ``kept`` the ``keep_columns`` values, None when none
are kept) or a bad row; validating a record into a row is not theirs.

A kept column missing from a CSV header or a Parquet schema is a DatasetError (the whole
file lacks it); a JSONL row without it is a bad row (each object has its own keys). Kept
values are JSON values: JSONL's as parsed, CSV's as text (an empty cell is null),
Parquet's converted (timestamps and dates to ISO 8601 text, decimals to text, NaN to null).

An id column (``id_column``) missing from a CSV header or a Parquet schema is a DatasetError
at once; in JSONL (and a query's rows, read as JSONL) it is one when no object of the file
has that key (:class:`IdColumnCheck`), rather than a "missing id" bad row per line.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson

from studio_flows.datasets.options import DatasetFormat, DatasetOptions, _Record
from studio_flows.errors import DatasetError
from studio_flows.rows import BadRow

_UTF8_BOM = b"\xef\xbb\xbf"
_PARQUET_BATCH = 4096


def jsonl_records(
    path: Path, options: DatasetOptions, columns: tuple[str, ...] = (), label: str | None = None
) -> Iterator[_Record | BadRow]:
    file = label or os.fspath(path)
    with_columns = bool(columns)
    prompt_column = options.prompt_column
    messages_column = options.messages_column
    id_column = options.id_column
    keep = options.keep_columns
    loads = orjson.loads
    id_check = IdColumnCheck(file, id_column)
    with open(path, "rb") as handle:
        for line, raw in enumerate(handle, 1):
            if line == 1 and raw.startswith(_UTF8_BOM):
                raw = raw[len(_UTF8_BOM) :]
            try:
                obj = loads(raw)
            except orjson.JSONDecodeError as err:
                # Only on the error path: a blank line is not a record, just spacing.
                if not raw.strip():
                    continue
                yield BadRow(file, line, _json_error_reason(raw, err))
                continue
            if type(obj) is not dict:
                yield BadRow(file, line, f"expected a JSON object, got {_json_type(obj)}")
                continue
            id_check.saw(obj)
            kept = None
            if keep:
                missing = [name for name in keep if name not in obj]
                if missing:
                    yield BadRow(file, line, no_kept_column(missing[0]))
                    continue
                kept = {name: obj[name] for name in keep}
            yield (
                line,
                obj.get(messages_column),
                obj.get(prompt_column),
                obj.get(id_column) if id_column is not None else None,
                obj if with_columns else None,
                kept,
            )
    id_check.finish()


class IdColumnCheck:
    """Whether any record of a source without a header has the id column; if none has it,
    the column is missing from the source, one error instead of a bad row per record.

    Example:
        >>> check = IdColumnCheck("p.jsonl", "ID")
        >>> check.saw({"id": "q1", "prompt": "Hi"})
        >>> check.finish()
        Traceback (most recent call last):
        studio_flows.errors.DatasetError: p.jsonl: no id column 'ID' in any row (columns: id, \
prompt)
    """

    _SHOWN = 20  # column names listed in the error, at most

    def __init__(self, label: str, id_column: str | None) -> None:
        self.label = label
        self.id_column = id_column
        self.found = id_column is None  # nothing to look for
        self.columns: dict[str, None] = {}  # every key seen, in order (an ordered set)

    def saw(self, record: Mapping[str, Any]) -> None:
        """Note one record's keys (cheap once the id column was found)."""
        if self.found:
            return
        if self.id_column in record:
            self.found = True
            self.columns.clear()
        elif len(self.columns) < self._SHOWN + 1:
            self.columns.update(dict.fromkeys(map(str, record)))

    def finish(self) -> None:
        """Raise :class:`DatasetError` if records were seen and none had the id column."""
        if self.found or not self.columns:
            return  # found, or no record at all (the bad rows say why)
        names = list(self.columns)
        shown = ", ".join(names[: self._SHOWN]) + (", …" if len(names) > self._SHOWN else "")
        raise DatasetError(
            f"{self.label}: no id column {self.id_column!r} in any row (columns: {shown})"
        )


def csv_records(
    path: Path, options: DatasetOptions, columns: tuple[str, ...] = ()
) -> Iterator[_Record | BadRow]:
    # surrogateescape: an undecodable byte spoils its record only (a bad row), not the
    # whole file; utf-8-sig drops the BOM spreadsheet programs write.
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
        # strict: a stray quote is an error we report, not a field silently merged.
        reader = csv.reader(handle, strict=True)
        header: list[str] | None = None
        while header is None:
            try:
                header = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                raise DatasetError(f"{os.fspath(path)}:1: unreadable CSV header ({err})") from err
            if not header:
                header = None  # leading blank lines
        header = [name.strip() for name in header]
        m_index, p_index, id_index = _columns(path, options, header)
        wanted = [(name, header.index(name)) for name in columns if name in header]
        kept_at = [(name, _kept_position(path, name, header)) for name in options.keep_columns]
        width = len(header)
        while True:
            # The record starts on the line after the last one the reader consumed;
            # this stays right when quoted fields span several lines.
            line = reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                yield BadRow(os.fspath(path), line, f"malformed CSV record: {err}")
                continue
            if not cells:
                continue
            if len(cells) != width:
                yield BadRow(
                    os.fspath(path),
                    line,
                    f"the record has {len(cells)} fields, the header has {width}",
                )
                continue
            # A CSV cell cannot say null: an empty cell means the value is absent.
            yield (
                line,
                (cells[m_index] or None) if m_index is not None else None,
                (cells[p_index] or None) if p_index is not None else None,
                (cells[id_index] or None) if id_index is not None else None,
                {name: cells[i] or None for name, i in wanted} if columns else None,
                {name: cells[i] or None for name, i in kept_at} if kept_at else None,
            )


def parquet_records(
    path: Path, options: DatasetOptions, columns: tuple[str, ...] = ()
) -> Iterator[_Record | BadRow]:
    import pyarrow.parquet as pq  # imported here: JSONL and CSV users need no pyarrow

    try:
        parquet = pq.ParquetFile(path)
        names = list(parquet.schema_arrow.names)
    except Exception as err:
        raise DatasetError(f"{os.fspath(path)}: not a readable Parquet file ({err})") from err
    m_index, p_index, id_index = _columns(path, options, names)
    keep = options.keep_columns
    for name in keep:
        _kept_position(path, name, names)
    wanted = [names[i] for i in (m_index, p_index, id_index) if i is not None]
    extra = [name for name in columns if name in names]
    wanted += [name for name in extra if name not in wanted]
    wanted += [name for name in keep if name not in wanted]
    row = 0
    try:
        for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH, columns=wanted):
            size = batch.num_rows
            absent = [None] * size
            messages = _column(batch, names, m_index, absent)
            prompts = _column(batch, names, p_index, absent)
            ids = _column(batch, names, id_index, absent)
            values = {name: batch.column(name).to_pylist() for name in extra}
            kept = _kept_rows(batch, keep) if keep else absent
            for j in range(size):
                cells = {name: value[j] for name, value in values.items()} if columns else None
                yield (row + j + 1, messages[j], prompts[j], ids[j], cells, kept[j])
            row += size
    except DatasetError:
        raise
    except Exception as err:
        raise DatasetError(
            f"{os.fspath(path)}: unreadable Parquet data after row {row} ({err})"
        ) from err


def _columns(
    path: Path, options: DatasetOptions, names: list[str]
) -> tuple[int | None, int | None, int | None]:
    """Positions of the messages, prompt and id columns; a missing one is fatal."""

    def position(name: str) -> int | None:
        found = [i for i, candidate in enumerate(names) if candidate == name]
        if len(found) > 1:
            raise DatasetError(f"{os.fspath(path)}: the column {name!r} appears {len(found)} times")
        return found[0] if found else None

    m_index = position(options.messages_column)
    p_index = position(options.prompt_column)
    # With a template the conversation comes from the columns it names, not these two.
    if m_index is None and p_index is None and options.template is None:
        raise DatasetError(
            f"{os.fspath(path)}: neither a {options.prompt_column!r} nor a "
            f"{options.messages_column!r} column (columns: {', '.join(names) or 'none'})"
        )
    id_index = None
    if options.id_column is not None:
        id_index = position(options.id_column)
        if id_index is None:
            raise DatasetError(
                f"{os.fspath(path)}: no id column {options.id_column!r} "
                f"(columns: {', '.join(names)})"
            )
    return m_index, p_index, id_index


def no_kept_column(name: str) -> str:
    return f"no column {name!r} to keep (--keep-columns)"


def _kept_position(path: Path, name: str, names: list[str]) -> int:
    """Where the kept column ``name`` is in a header or schema; missing is fatal."""
    found = [i for i, candidate in enumerate(names) if candidate == name]
    if not found:
        raise DatasetError(
            f"{os.fspath(path)}: {no_kept_column(name)}; its columns are "
            f"{', '.join(names) or 'none'}"
        )
    if len(found) > 1:
        raise DatasetError(f"{os.fspath(path)}: the column {name!r} appears {len(found)} times")
    return found[0]


def _kept_rows(batch: Any, keep: tuple[str, ...]) -> list[dict[str, Any]]:
    """The kept columns of a Parquet record batch, one dict of JSON values per row."""
    columns = [_json_values(batch.column(name).to_pylist()) for name in keep]
    return [dict(zip(keep, values, strict=True)) for values in zip(*columns, strict=True)]


def _json_values(values: list[Any]) -> list[Any]:
    """``values`` as JSON would read them back (orjson writes NaN as null, dates as ISO)."""
    return orjson.loads(orjson.dumps(values, default=_json_default))  # type: ignore[no-any-return]


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)  # Decimal, timedelta and the like: their text


READERS: dict[
    DatasetFormat, Callable[[Path, DatasetOptions, tuple[str, ...]], Iterator[_Record | BadRow]]
] = {
    "jsonl": jsonl_records,
    "csv": csv_records,
    "parquet": parquet_records,
}


def _column(batch: Any, names: list[str], index: int | None, absent: list[None]) -> list[Any]:
    """One Parquet column of a record batch as Python values (or all None if not asked)."""
    if index is None:
        return absent
    return batch.column(names[index]).to_pylist()  # type: ignore[no-any-return]


def _json_error_reason(raw: bytes, err: orjson.JSONDecodeError) -> str:
    """Why a line is not JSON, telling undecodable bytes apart from bad syntax."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"not valid UTF-8 (byte 0x{raw[bad.start]:02x} at column {bad.start + 1})"
    return f"invalid JSON: {_single_line(str(err))}"


def _single_line(text: str) -> str:
    return " ".join(text.split())


def _json_type(value: object) -> str:
    """The JSON name of a parsed value's type, for messages users understand."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
