"""One pass over a dataset source (read, validate, de-duplicate), and the functions built on
it. Every function takes a file path or a :class:`~studio_flows.datasets.sources.DatasetSource`
(a SQL query, rows in memory)."""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from studio_flows.datasets.dedup import Deduplication, DedupVerdict
from studio_flows.datasets.options import DatasetOptions, DatasetReport, OnBadRows, PathLike
from studio_flows.datasets.sources import DatasetSource, FileSource, as_source
from studio_flows.datasets.validation import RowBuilder
from studio_flows.errors import DatasetError
from studio_flows.rows import BadRow, GenerationParams, Row, Shard

# Bad rows kept in a report / named in a "fail" error: enough to act on, never the file.
_REPORT_BAD_ROWS = 20
_ERROR_BAD_ROWS = 10


def read_rows(
    path: PathLike | DatasetSource, options: DatasetOptions | None = None, *, dedup: bool = True
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
    return iter(_scan(path, options, dedup=dedup))


def iter_good_rows(
    path: PathLike | DatasetSource,
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
    scan = _scan(path, options, dedup=dedup)
    if dedup and verdict is not None and verdict.holds_for(scan.source):
        scan.reuse(verdict)
    for item in scan:
        if type(item) is Row:
            yield item
        elif on_bad_row is not None:
            on_bad_row(item)  # type: ignore[arg-type]


def validate_dataset(
    path: PathLike | DatasetSource,
    options: DatasetOptions | None = None,
    on_bad_rows: OnBadRows = "fail",
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
    scan = _scan(path, options, dedup=True)
    source = scan.source
    label: Path | str = source.path if isinstance(source, FileSource) else source.label
    report = DatasetReport(path=label, source=source)
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
        raise DatasetError(f"{source.label}: no rows")
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


def _scan(
    source: PathLike | DatasetSource, options: DatasetOptions | None, *, dedup: bool
) -> _Scan:
    options = options or DatasetOptions()
    return _Scan(as_source(source, options), options, dedup=dedup)


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
    """One pass over one source; ``duplicates`` counts the exact duplicates dropped."""

    def __init__(self, source: DatasetSource, options: DatasetOptions, *, dedup: bool) -> None:
        self.source = source
        self.file = source.label
        self.options = options
        self.dedup = dedup
        self._dedup = Deduplication(self.file)
        # After a de-duplicating pass over an unchanged source: its verdict (see DedupVerdict).
        self.verdict: DedupVerdict | None = None
        self._reused: DedupVerdict | None = None
        if options.id_column is not None and options.id_column in (
            options.prompt_column,
            options.messages_column,
        ):
            raise DatasetError(
                f"{self.file}: the id column {options.id_column!r} cannot also be the "
                "prompt or messages column"
            )
        source.check()
        self._builder = RowBuilder(self.file, options, messages_as_text=source.messages_as_text)

    @property
    def duplicates(self) -> int:
        return self._dedup.duplicates

    def reuse(self, verdict: DedupVerdict) -> None:
        """De-duplicate by ``verdict``'s lines instead of looking keys up (same source only)."""
        self._reused = verdict

    def __iter__(self) -> Iterator[Row | BadRow]:
        try:
            if self._reused is not None:
                yield from self._dedup.judged(self._rows(), self._reused)
            elif self.dedup:
                rows = self._rows()
                stamp = self.source.stamp()
                first = next(rows, None)
                if stamp is None:
                    stamp = self.source.stamp()  # a query's snapshot exists from its first row
                verdict = DedupVerdict(stamp)
                if first is not None:
                    yield from self._dedup.deduplicated(itertools.chain((first,), rows), verdict)
                if stamp is not None and self.source.stamp() == stamp:
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

    def _rows(self) -> Iterator[Row | BadRow]:
        records = self.source.records(self.options, self._builder.template_columns)
        build = self._builder.build
        for record in records:
            if type(record) is tuple:
                yield build(*record)
            else:
                yield record  # type: ignore[misc]


_last_validation: list[tuple[tuple[object, ...], DatasetReport]] = []
# Reports a caller validated and hands to the flow it runs next (see handing_over).
_handed_over: dict[tuple[object, ...], DatasetReport] = {}


def validate_dataset_once(
    path: PathLike | DatasetSource,
    options: DatasetOptions | None = None,
    on_bad_rows: OnBadRows = "fail",
) -> DatasetReport:
    """:func:`validate_dataset`, remembered for the same unchanged file and options.

    The command line validates before it starts a Prefect server (errors in about a
    second), and the flow validates again in its own task: the second pass is free. A
    source nothing proves unchanged (a query) is read again, unless the caller handed its
    report over (:func:`handing_over`).

    Example:
        >>> validate_dataset_once("examples/prompts.jsonl").rows  # doctest: +SKIP
        40
    """
    source = as_source(path, options or DatasetOptions())
    handed = _handed_over.get((source.key(), options, on_bad_rows))
    if handed is not None:
        return handed
    try:
        stamp = source.stamp()
    except OSError:
        return validate_dataset(source, options, on_bad_rows)  # let it report the missing file
    if stamp is None:
        return validate_dataset(source, options, on_bad_rows)
    key: tuple[object, ...] = (source.key(), stamp, options, on_bad_rows)
    for seen, report in _last_validation:
        if seen == key:
            return report
    report = validate_dataset(source, options, on_bad_rows)
    _last_validation[:] = [(key, report)]
    return report


@contextlib.contextmanager
def handing_over(
    report: DatasetReport, options: DatasetOptions | None, on_bad_rows: OnBadRows
) -> Iterator[None]:
    """Inside this block, :func:`validate_dataset_once` of the same source and options
    answers ``report``: a query's snapshot, validated before the run, is what it sends.

    Example:
        >>> with handing_over(report, options, "fail"):  # doctest: +SKIP
        ...     generate_dataset(run_options)
    """
    if report.source is None:
        yield
        return
    key = (report.source.key(), options, on_bad_rows)
    _handed_over[key] = report
    try:
        yield
    finally:
        _handed_over.pop(key, None)
