"""One pass over a dataset file (read, validate, de-duplicate), and the functions built on it."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from studio_flows.datasets.dedup import _DEDUP_BATCH, DedupVerdict, _FileStamp, _SeenKeys
from studio_flows.datasets.options import (
    DatasetFormat,
    DatasetOptions,
    DatasetReport,
    OnBadRows,
    PathLike,
    detect_format,
)
from studio_flows.datasets.readers import READERS
from studio_flows.datasets.validation import RowBuilder, _show
from studio_flows.errors import DatasetError
from studio_flows.rows import BadRow, GenerationParams, Row, Shard

# Bad rows kept in a report / named in a "fail" error: enough to act on, never the file.
_REPORT_BAD_ROWS = 20
_ERROR_BAD_ROWS = 10


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
        >>> from studio_flows.models import Message
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
        self._builder = RowBuilder(self.file, options, messages_as_text=self.format != "jsonl")

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
        records = READERS[self.format](self.path, self.options)
        build = self._builder.build
        for record in records:
            if type(record) is tuple:
                yield build(*record)
            else:
                yield record  # type: ignore[misc]

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
