"""Dataset readers: JSONL, CSV and Parquet files streamed into rows, bad rows and shards.

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
  sending pass reuses it instead of de-duplicating again, unless the file changed between.

Example:
    >>> from pathlib import Path
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "p.jsonl").write_text('{"prompt": "Hi"}\\n{"prompt": ""}\\n')
    >>> [getattr(item, "reason", "ok") for item in read_rows(folder / "p.jsonl")]
    ['ok', "'prompt' is empty"]
"""

from __future__ import annotations

import csv
import hashlib
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias

import orjson
from pydantic import ValidationError

from studio_flows.errors import DatasetError
from studio_flows.models import Message
from studio_flows.rows import MAX_ROW_KEY_LENGTH, BadRow, GenerationParams, Row, Shard

__all__ = [
    "DatasetFormat",
    "DatasetOptions",
    "DatasetReport",
    "dataset_name",
    "detect_format",
    "iter_good_rows",
    "iter_shards",
    "read_rows",
    "validate_dataset",
]

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
_ROLES = frozenset({"system", "user", "assistant"})
_MESSAGE_KEYS = frozenset({"role", "content"})
_UTF8_BOM = b"\xef\xbb\xbf"

# Rows are parsed into a buffer of this many, then checked against the seen-keys store in
# one statement: per-statement overhead dominates SQLite at small batches, and the buffer
# (a few MB of rows) is the only memory that scales with it.
_DEDUP_BATCH = 2048
# The seen-keys store's page cache (KiB). Beyond it SQLite spills pages to its temp file
# (the OS keeps them cached). A larger cache made the run's peak memory grow with the file
# for a slightly faster pass (bench/NOTES.md).
_DEDUP_CACHE_KIB = 4 * 1024
_PARQUET_BATCH = 4096
# Bad rows kept in a report / named in a "fail" error: enough to act on, never the file.
_REPORT_BAD_ROWS = 20
_ERROR_BAD_ROWS = 10

# A record as the format readers hand it over: (line, messages, prompt, id); None = absent.
_Record: TypeAlias = tuple[int, Any, Any, Any]


@dataclass(frozen=True)
class DatasetOptions:
    """How to read a dataset: its format (default: from the suffix) and column names.

    Example:
        >>> DatasetOptions(id_column="id", system_prompt="Answer briefly.").prompt_column
        'prompt'
    """

    format: DatasetFormat | None = None
    prompt_column: str = "prompt"
    messages_column: str = "messages"
    id_column: str | None = None
    system_prompt: str | None = None


@dataclass
class DatasetReport:
    """What one validation pass found: good unique rows, bad rows, exact duplicates.

    Example:
        >>> DatasetReport(path=Path("p.jsonl"), rows=40).bad_count
        0
    """

    path: Path
    rows: int = 0
    bad_count: int = 0
    bad_rows: list[BadRow] = field(default_factory=list)
    duplicates: int = 0
    # What de-duplication decided, for the next pass over the same file (None if the file
    # changed while it was read).
    verdict: DedupVerdict | None = field(default=None, repr=False)


@dataclass(frozen=True)
class _FileStamp:
    """What tells that a file is unchanged: its inode, size and modification time."""

    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> _FileStamp:
        info = path.stat()
        return cls(info.st_ino, info.st_size, info.st_mtime_ns)


class _LineBits:
    """A set of line numbers, one bit per line up to the largest: 125 kB per million lines."""

    def __init__(self) -> None:
        self._bits = bytearray()

    def add(self, line: int) -> None:
        byte = line >> 3
        if byte >= len(self._bits):
            self._bits.extend(bytes(byte + 1 - len(self._bits) + 4096))
        self._bits[byte] |= 1 << (line & 7)

    def __contains__(self, line: int) -> bool:
        byte = line >> 3
        return byte < len(self._bits) and bool(self._bits[byte] >> (line & 7) & 1)


class DedupVerdict:
    """The lines a de-duplicating pass dropped (exact duplicates) or refused (an id seen with
    a different conversation), valid for the file as it was read.

    De-duplicating costs more than reading and building the row itself; a pass that reuses
    the verdict skips it (see :func:`iter_good_rows`).
    """

    def __init__(self, stamp: _FileStamp) -> None:
        self.stamp = stamp
        self.duplicates = _LineBits()
        self.conflicts = _LineBits()

    def holds_for(self, path: Path) -> bool:
        """True while the file is the one this verdict was made on."""
        try:
            return _FileStamp.of(path) == self.stamp
        except OSError:
            return False


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
        raise DatasetError(
            f"{os.fspath(path)}: cannot tell the dataset format from the suffix {suffix!r}; "
            "use .jsonl/.ndjson, .csv or .parquet/.pq, or set the format explicitly"
        ) from None


def dataset_name(path: PathLike) -> str:
    """The name stored in the results' ``dataset`` column: the file name.

    Example:
        >>> dataset_name("/data/in/prompts.jsonl")
        'prompts.jsonl'
    """
    return Path(path).name


def read_rows(
    path: PathLike, options: DatasetOptions | None = None, *, dedup: bool = True
) -> Iterator[Row | BadRow]:
    """Stream a dataset as rows and bad rows, in file order.

    With ``dedup`` (the default), exact duplicates are dropped (see :func:`validate_dataset`
    for their count) and an id seen before with a different conversation is a bad row.
    ``dedup=False`` keeps no index: every parsed row is yielded, duplicates included.

    Raises :class:`DatasetError` at once for an unknown format or a path that is not a
    readable file, and while iterating for problems of the whole file (corrupt Parquet,
    a missing column).

    Example:
        >>> import tempfile
        >>> file = Path(tempfile.mkdtemp()) / "p.jsonl"
        >>> _ = file.write_text('{"id": 1, "prompt": "Hi"}\\n')
        >>> [row.row_key for row in read_rows(file, DatasetOptions(id_column="id"))]
        ['1']
    """
    return iter(_Scan(path, options or DatasetOptions(), dedup=dedup))


def iter_good_rows(
    path: PathLike,
    options: DatasetOptions | None = None,
    dedup: bool = True,
    *,
    on_bad_row: Callable[[BadRow], object] | None = None,
    verdict: DedupVerdict | None = None,
) -> Iterator[Row]:
    """The rows to send: bad rows and exact duplicates left out.

    Meant for the pass after :func:`validate_dataset` decided what to do with bad rows;
    ``on_bad_row`` is called with each bad row met (to log it), so none vanishes unseen.
    Given that pass's ``report.verdict``, duplicates are left out by line without being
    looked up again, as long as the file has not changed since (else it de-duplicates).

    Example:
        >>> import tempfile
        >>> file = Path(tempfile.mkdtemp()) / "p.jsonl"
        >>> _ = file.write_text('{"prompt": "Hi"}\\n{"prompt": "Hi"}\\n{"prompt": 3}\\n')
        >>> [row.line for row in iter_good_rows(file)]
        [1]
        >>> report = validate_dataset(file, on_bad_rows="skip")
        >>> [row.line for row in iter_good_rows(file, verdict=report.verdict)]
        [1]
    """
    scan = _Scan(path, options or DatasetOptions(), dedup=dedup)
    if dedup and verdict is not None and verdict.holds_for(scan.path):
        scan.reuse(verdict)
    for item in scan:
        if type(item) is Row:
            yield item
        elif on_bad_row is not None:
            on_bad_row(item)  # type: ignore[arg-type]


def validate_dataset(
    path: PathLike, options: DatasetOptions | None = None, on_bad_rows: OnBadRows = "fail"
) -> DatasetReport:
    """Read the whole file once; count good, bad and duplicate rows.

    With ``on_bad_rows="fail"`` any bad row raises one :class:`DatasetError` listing the
    first ones as ``file:line: reason`` and the total; with ``"skip"`` the report says so.
    A file with no row at all (empty, blank lines only, a CSV header only) is an error too.

    Example:
        >>> import tempfile
        >>> file = Path(tempfile.mkdtemp()) / "p.jsonl"
        >>> _ = file.write_text('{"prompt": "Hi"}\\n{"prompt": "Hi"}\\n[]\\n')
        >>> report = validate_dataset(file, on_bad_rows="skip")
        >>> (report.rows, report.duplicates, report.bad_count)
        (1, 1, 1)
    """
    scan = _Scan(path, options or DatasetOptions(), dedup=True)
    report = DatasetReport(path=Path(path))
    for item in scan:
        if type(item) is Row:
            report.rows += 1
        else:
            report.bad_count += 1
            if len(report.bad_rows) < _REPORT_BAD_ROWS:
                report.bad_rows.append(item)  # type: ignore[arg-type]
    report.duplicates = scan.duplicates
    report.verdict = scan.verdict
    if on_bad_rows == "fail" and report.bad_count:
        raise DatasetError(_bad_rows_message(report))
    if not report.rows and not report.bad_count:
        # An empty, blank or header-only file is a mistake far more often than a no-op.
        raise DatasetError(f"{os.fspath(path)}: no rows")
    return report


def iter_shards(
    rows: Iterable[Row], *, dataset: str, params: GenerationParams, shard_size: int
) -> Iterator[Shard]:
    """Cut consecutive rows into shards of ``shard_size`` (the last may be shorter), lazily.

    Example:
        >>> rows = [Row.from_messages([Message(role="user", content=c)], line=1) for c in "abc"]
        >>> params = GenerationParams(model_id="m")
        >>> [len(s.rows) for s in iter_shards(rows, dataset="d", params=params, shard_size=2)]
        [2, 1]
    """
    if shard_size < 1:
        raise DatasetError(f"shard_size must be at least 1, got {shard_size}")
    batch: list[Row] = []
    for row in rows:
        batch.append(row)
        if len(batch) == shard_size:
            yield Shard(dataset=dataset, params=params, rows=tuple(batch))
            batch = []
    if batch:
        yield Shard(dataset=dataset, params=params, rows=tuple(batch))


def _bad_rows_message(report: DatasetReport) -> str:
    """One readable paragraph: the count, what to do, then the first bad rows."""
    shown = report.bad_rows[:_ERROR_BAD_ROWS]
    listing = "; ".join(str(bad) for bad in shown)
    more = report.bad_count - len(shown)
    tail = f"; …and {more} more" if more else ""
    noun = "row" if report.bad_count == 1 else "rows"
    return (
        f"{os.fspath(report.path)} has {report.bad_count} bad {noun} "
        f"(fix them, or skip them with --on-bad-rows=skip): {listing}{tail}."
    )


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


def _show(value: object, limit: int = 40) -> str:
    """A short, single-line repr of user data for a reason."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _has_surrogates(text: str) -> bool:
    """True when ``text`` holds undecodable bytes (surrogateescape) or lone surrogates."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


class _SeenKeys:
    """The keys seen so far, in a private temporary SQLite database (deleted on close).

    Why not a set: a million keys cost ~150 MB in Python objects and grow with the file;
    SQLite keeps at most ``_DEDUP_CACHE_KIB`` of pages in memory and spills the rest to its
    temporary file. Keys are 16-byte BLAKE2b digests of the row key (a collision, ~1e-26 at
    a million rows, is negligible); the value is the first half of the prompt hash and the
    line of the first occurrence, to name it in a conflict.
    """

    def __init__(self) -> None:
        # "" = a private on-disk temporary database, removed when the connection closes.
        self._db = sqlite3.connect("", isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute(f"PRAGMA cache_size=-{_DEDUP_CACHE_KIB}")
        self._db.execute(
            "CREATE TABLE seen (k BLOB PRIMARY KEY, v BLOB NOT NULL, line INTEGER NOT NULL)"
            " WITHOUT ROWID"
        )
        variables = self._db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        self._chunk = max(1, min(_DEDUP_BATCH, variables // 3))
        self._sql: dict[int, str] = {}

    def close(self) -> None:
        self._db.close()

    def claim(self, batch: dict[bytes, tuple[bytes, int]]) -> dict[bytes, tuple[bytes, int]]:
        """Record unseen keys; return, for every key of ``batch``, its first ``(v, line)``."""
        first = dict(batch)
        items = list(batch.items())
        for start in range(0, len(items), self._chunk):
            chunk = items[start : start + self._chunk]
            params = [x for k, (v, line) in chunk for x in (k, v, line)]
            before = self._db.total_changes
            # One multi-row statement: measured ~20 % faster than executemany. OR IGNORE
            # keeps the first occurrence; the change count tells whether any key was known.
            self._db.execute(self._insert_sql(len(chunk)), params)
            if self._db.total_changes - before != len(chunk):
                # Some keys were seen before: read back every key's first occurrence
                # (for the ones just inserted, that is this batch's own).
                first.update(self._lookup([k for k, _ in chunk]))
        return first

    def _insert_sql(self, rows: int) -> str:
        if rows not in self._sql:
            values = ",".join(["(?,?,?)"] * rows)
            self._sql[rows] = f"INSERT OR IGNORE INTO seen (k, v, line) VALUES {values}"
        return self._sql[rows]

    def _lookup(self, keys: list[bytes]) -> dict[bytes, tuple[bytes, int]]:
        if not keys:
            return {}
        placeholders = ",".join(["?"] * len(keys))
        cursor = self._db.execute(f"SELECT k, v, line FROM seen WHERE k IN ({placeholders})", keys)
        return {k: (v, line) for k, v, line in cursor}


class _Scan:
    """One pass over one file; ``duplicates`` counts the exact duplicates dropped."""

    def __init__(self, path: PathLike, options: DatasetOptions, *, dedup: bool) -> None:
        self.path = Path(path)
        self.file = os.fspath(path)
        self.options = options
        self.dedup = dedup
        self.duplicates = 0
        # After a de-duplicating pass over an unchanged file: its verdict (see DedupVerdict).
        self.verdict: DedupVerdict | None = None
        self._reused: DedupVerdict | None = None
        self.format: DatasetFormat = options.format or detect_format(path)
        if self.format not in ("jsonl", "csv", "parquet"):
            raise DatasetError(f"{self.file}: unknown dataset format {self.format!r}")
        if options.id_column is not None and options.id_column in (
            options.prompt_column,
            options.messages_column,
        ):
            raise DatasetError(
                f"{self.file}: the id column {options.id_column!r} cannot also be the "
                "prompt or messages column"
            )
        if not self.path.exists():
            raise DatasetError(f"{self.file}: no such dataset file")
        if self.path.is_dir():
            raise DatasetError(f"{self.file}: is a directory, not a dataset file")
        system = options.system_prompt
        self._system = Message(role="system", content=system) if system else None
        # CSV cells are text, so messages arrive as JSON; Parquet may hold either shape.
        self._messages_as_text = self.format != "jsonl"

    def reuse(self, verdict: DedupVerdict) -> None:
        """De-duplicate by ``verdict``'s lines instead of looking keys up (same file only)."""
        self._reused = verdict

    def __iter__(self) -> Iterator[Row | BadRow]:
        try:
            if self._reused is not None:
                yield from self._judged(self._rows(), self._reused)
            elif self.dedup:
                stamp = _FileStamp.of(self.path)
                verdict = DedupVerdict(stamp)
                yield from self._deduplicated(self._rows(), verdict)
                if _FileStamp.of(self.path) == stamp:
                    self.verdict = verdict
            else:
                yield from self._rows()
        except DatasetError:
            raise
        except Exception as err:
            # The promise of this module: a caller handles DatasetError and nothing else.
            raise DatasetError(
                f"{self.file}: cannot read the dataset ({type(err).__name__}: {err})"
            ) from err

    def _bad(self, line: int, reason: str) -> BadRow:
        return BadRow(self.file, line, reason)

    def _rows(self) -> Iterator[Row | BadRow]:
        if self.path.stat().st_size == 0:
            return
        records: Iterator[_Record | BadRow]
        if self.format == "jsonl":
            records = self._jsonl_records()
        elif self.format == "csv":
            records = self._csv_records()
        else:
            records = self._parquet_records()
        build = self._build
        for record in records:
            if type(record) is tuple:
                yield build(*record)
            else:
                yield record  # type: ignore[misc]

    # -- formats -------------------------------------------------------------------------

    def _jsonl_records(self) -> Iterator[_Record | BadRow]:
        prompt_column = self.options.prompt_column
        messages_column = self.options.messages_column
        id_column = self.options.id_column
        loads = orjson.loads
        with open(self.path, "rb") as handle:
            for line, raw in enumerate(handle, 1):
                if line == 1 and raw.startswith(_UTF8_BOM):
                    raw = raw[len(_UTF8_BOM) :]
                try:
                    obj = loads(raw)
                except orjson.JSONDecodeError as err:
                    # Only on the error path: a blank line is not a record, just spacing.
                    if not raw.strip():
                        continue
                    yield self._bad(line, _json_error_reason(raw, err))
                    continue
                if type(obj) is not dict:
                    yield self._bad(line, f"expected a JSON object, got {_json_type(obj)}")
                    continue
                yield (
                    line,
                    obj.get(messages_column),
                    obj.get(prompt_column),
                    obj.get(id_column) if id_column is not None else None,
                )

    def _csv_records(self) -> Iterator[_Record | BadRow]:
        # surrogateescape: an undecodable byte spoils its record only (a bad row), not the
        # whole file; utf-8-sig drops the BOM spreadsheet programs write.
        with open(self.path, encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
            # strict: a stray quote is an error we report, not a field silently merged.
            reader = csv.reader(handle, strict=True)
            header: list[str] | None = None
            while header is None:
                try:
                    header = next(reader)
                except StopIteration:
                    return
                except csv.Error as err:
                    raise DatasetError(f"{self.file}:1: unreadable CSV header ({err})") from err
                if not header:
                    header = None  # leading blank lines
            header = [name.strip() for name in header]
            m_index, p_index, id_index = self._columns(header)
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
                    yield self._bad(line, f"malformed CSV record: {err}")
                    continue
                if not cells:
                    continue
                if len(cells) != width:
                    yield self._bad(
                        line, f"the record has {len(cells)} fields, the header has {width}"
                    )
                    continue
                # A CSV cell cannot say null: an empty cell means the value is absent.
                yield (
                    line,
                    (cells[m_index] or None) if m_index is not None else None,
                    (cells[p_index] or None) if p_index is not None else None,
                    (cells[id_index] or None) if id_index is not None else None,
                )

    def _parquet_records(self) -> Iterator[_Record | BadRow]:
        import pyarrow.parquet as pq  # imported here: JSONL and CSV users need no pyarrow

        try:
            parquet = pq.ParquetFile(self.path)
            names = list(parquet.schema_arrow.names)
        except Exception as err:
            raise DatasetError(f"{self.file}: not a readable Parquet file ({err})") from err
        m_index, p_index, id_index = self._columns(names)
        wanted = [names[i] for i in (m_index, p_index, id_index) if i is not None]
        row = 0
        try:
            for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH, columns=wanted):
                size = batch.num_rows
                absent = [None] * size
                messages = _column(batch, names, m_index, absent)
                prompts = _column(batch, names, p_index, absent)
                ids = _column(batch, names, id_index, absent)
                for j in range(size):
                    yield (row + j + 1, messages[j], prompts[j], ids[j])
                row += size
        except DatasetError:
            raise
        except Exception as err:
            raise DatasetError(
                f"{self.file}: unreadable Parquet data after row {row} ({err})"
            ) from err

    def _columns(self, names: list[str]) -> tuple[int | None, int | None, int | None]:
        """Positions of the messages, prompt and id columns; a missing one is fatal."""
        options = self.options

        def position(name: str) -> int | None:
            found = [i for i, candidate in enumerate(names) if candidate == name]
            if len(found) > 1:
                raise DatasetError(f"{self.file}: the column {name!r} appears {len(found)} times")
            return found[0] if found else None

        m_index = position(options.messages_column)
        p_index = position(options.prompt_column)
        if m_index is None and p_index is None:
            raise DatasetError(
                f"{self.file}: neither a {options.prompt_column!r} nor a "
                f"{options.messages_column!r} column (columns: {', '.join(names) or 'none'})"
            )
        id_index = None
        if options.id_column is not None:
            id_index = position(options.id_column)
            if id_index is None:
                raise DatasetError(
                    f"{self.file}: no id column {options.id_column!r} (columns: {', '.join(names)})"
                )
        return m_index, p_index, id_index

    # -- one row ---------------------------------------------------------------------------

    def _build(self, line: int, messages: Any, prompt: Any, key: Any) -> Row | BadRow:
        """Validate one record's values and build its row; the hot path, kept flat."""
        options = self.options
        try:
            conversation: list[Message]
            if messages is not None:
                if prompt is not None:
                    return self._bad(
                        line,
                        f"both {options.prompt_column!r} and {options.messages_column!r} "
                        "are set; give one",
                    )
                if self._messages_as_text and type(messages) is str:
                    try:
                        messages = orjson.loads(messages)
                    except orjson.JSONDecodeError as err:
                        return self._bad(
                            line,
                            f"{options.messages_column!r} is not valid JSON: "
                            + _json_error_reason(messages.encode("utf-8", "surrogateescape"), err),
                        )
                parsed = _conversation(messages, options.messages_column)
                if type(parsed) is str:
                    return self._bad(line, parsed)
                conversation = parsed  # type: ignore[assignment]
            elif prompt is not None:
                if type(prompt) is not str:
                    return self._bad(
                        line,
                        f"{options.prompt_column!r} must be a string, got {_json_type(prompt)}",
                    )
                if not prompt or prompt.isspace():
                    return self._bad(line, f"{options.prompt_column!r} is empty")
                conversation = [Message(role="user", content=prompt)]
            else:
                return self._bad(
                    line,
                    f"no {options.prompt_column!r} and no {options.messages_column!r}: "
                    "a row needs one of them",
                )
            if self._system is not None and conversation[0].role != "system":
                conversation.insert(0, self._system)
            last = conversation[-1].role
            if last != "user":
                return self._bad(
                    line, f"the last message is from {last!r}; a conversation must end with 'user'"
                )
            row_key: str | None = None
            if options.id_column is not None:
                if type(key) is int:
                    row_key = str(key)
                elif key is None:
                    return self._bad(line, f"missing id: no value in {options.id_column!r}")
                elif type(key) is not str:
                    return self._bad(
                        line,
                        f"id {options.id_column!r} must be a string or an integer, "
                        f"got {_json_type(key)}",
                    )
                elif not key or key.isspace():
                    return self._bad(line, f"missing id: {options.id_column!r} is empty")
                elif len(key) > MAX_ROW_KEY_LENGTH:
                    return self._bad(
                        line, f"id is {len(key)} characters long; at most {MAX_ROW_KEY_LENGTH}"
                    )
                else:
                    if not key.isascii():
                        key.encode("utf-8")  # undecodable bytes raise, caught below
                    row_key = key
            return Row.from_messages(conversation, line=line, row_key=row_key)
        except (ValidationError, UnicodeError) as err:
            # Our own checks come first; this is the net for text pydantic refuses, chiefly
            # undecodable bytes (lone surrogates) from a non-UTF-8 CSV.
            if any(
                isinstance(value, str) and _has_surrogates(value)
                for value in (messages, prompt, key)
            ) or "unicode" in str(err):
                return self._bad(line, "the text is not valid UTF-8")
            return self._bad(line, f"invalid row: {_single_line(str(err))}")

    # -- duplicates ----------------------------------------------------------------------------

    def _deduplicated(
        self, items: Iterator[Row | BadRow], verdict: DedupVerdict
    ) -> Iterator[Row | BadRow]:
        store = _SeenKeys()
        try:
            buffer: list[Row | BadRow] = []
            for item in items:
                buffer.append(item)
                if len(buffer) >= _DEDUP_BATCH:
                    yield from self._check_batch(buffer, store, verdict)
                    buffer = []
            if buffer:
                yield from self._check_batch(buffer, store, verdict)
        finally:
            store.close()

    def _judged(
        self, items: Iterator[Row | BadRow], verdict: DedupVerdict
    ) -> Iterator[Row | BadRow]:
        """The rows as an earlier pass over this same file judged them: no lookups."""
        duplicates, conflicts = verdict.duplicates, verdict.conflicts
        for item in items:
            if type(item) is Row:
                if item.line in duplicates:
                    self.duplicates += 1
                    continue
                if item.line in conflicts:
                    item = self._bad(
                        item.line,
                        f"duplicate id {_show(item.row_key)} with different content "
                        "(an earlier line has it)",
                    )
            yield item

    def _check_batch(
        self, buffer: list[Row | BadRow], store: _SeenKeys, verdict: DedupVerdict
    ) -> list[Row | BadRow]:
        """Drop exact duplicates and mark conflicting ids, judged against first occurrences.

        Every occurrence is compared with the first one in the whole file (from the store, or
        the first in this batch), so the verdict does not depend on where batches split.
        """
        blake2b = hashlib.blake2b
        keyed: list[tuple[int, bytes, bytes]] = []
        first_in_batch: dict[bytes, tuple[bytes, int]] = {}
        for index, item in enumerate(buffer):
            if type(item) is Row:
                k = blake2b(item.row_key.encode("utf-8"), digest_size=16).digest()
                v = bytes.fromhex(item.prompt_hash[:32])
                keyed.append((index, k, v))
                first_in_batch.setdefault(k, (v, item.line))
        if not keyed:
            return buffer
        first = store.claim(first_in_batch)
        out: list[Row | BadRow | None] = list(buffer)
        for index, k, v in keyed:
            row: Row = buffer[index]  # type: ignore[assignment]
            first_v, first_line = first[k]
            if v != first_v:
                verdict.conflicts.add(row.line)
                out[index] = self._bad(
                    row.line,
                    f"duplicate id {_show(row.row_key)} with different content "
                    f"(first seen on line {first_line})",
                )
            elif row.line != first_line:
                verdict.duplicates.add(row.line)
                out[index] = None
                self.duplicates += 1
        return [item for item in out if item is not None]


def _column(batch: Any, names: list[str], index: int | None, absent: list[None]) -> list[Any]:
    """One Parquet column of a record batch as Python values (or all None if not asked)."""
    if index is None:
        return absent
    return batch.column(names[index]).to_pylist()  # type: ignore[no-any-return]


def _conversation(value: Any, column: str) -> list[Message] | str:
    """The messages of a row, or the reason they are not a valid conversation."""
    if type(value) is not list:
        return f"{column!r} must be an array of {{role, content}} objects, got {_json_type(value)}"
    if not value:
        return f"{column!r} is empty"
    conversation: list[Message] = []
    for i, item in enumerate(value):
        where = f"{column}[{i}]"
        if type(item) is not dict:
            return f"{where} must be an object with 'role' and 'content', got {_json_type(item)}"
        if len(item) != 2 or item.keys() != _MESSAGE_KEYS:
            extra = sorted(str(k) for k in item.keys() - _MESSAGE_KEYS)
            if extra:
                return f"{where} has unexpected keys {', '.join(map(repr, extra))}"
        role = item.get("role")
        content = item.get("content")
        if role is None:
            return f"{where} has no 'role'"
        if content is None:
            return f"{where} has no 'content'"
        if type(role) is not str or role not in _ROLES:
            return f"{where} has role {_show(role)}; expected 'system', 'user' or 'assistant'"
        if type(content) is not str:
            return f"{where} content must be a string, got {_json_type(content)}"
        if not content or content.isspace():
            return f"{where} content is empty"
        conversation.append(Message(role=role, content=content))
    return conversation


def _json_error_reason(raw: bytes, err: orjson.JSONDecodeError) -> str:
    """Why a line is not JSON, telling undecodable bytes apart from bad syntax."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"not valid UTF-8 (byte 0x{raw[bad.start]:02x} at column {bad.start + 1})"
    return f"invalid JSON: {_single_line(str(err))}"


def _single_line(text: str) -> str:
    return " ".join(text.split())


_last_validation: list[tuple[tuple[object, ...], DatasetReport]] = []


def validate_dataset_once(
    path: PathLike, options: DatasetOptions | None = None, on_bad_rows: OnBadRows = "fail"
) -> DatasetReport:
    """:func:`validate_dataset`, remembered for the same unchanged file and options.

    The command line validates before it starts a Prefect server (errors in about a
    second), and the flow validates again in its own task: the second pass is free.

    Example:
        >>> validate_dataset_once("examples/prompts.jsonl").rows  # doctest: +SKIP
        40
    """
    file = Path(path).resolve()
    try:
        key: tuple[object, ...] = (file, _FileStamp.of(file), options, on_bad_rows)
    except OSError:
        return validate_dataset(path, options, on_bad_rows)  # let it report the missing file
    for seen, report in _last_validation:
        if seen == key:
            return report
    report = validate_dataset(path, options, on_bad_rows)
    _last_validation[:] = [(key, report)]
    return report
