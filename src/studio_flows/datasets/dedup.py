"""De-duplication: the passes that drop exact duplicates and refuse conflicting ids, the
seen-keys store they check rows against, and the verdict a pass leaves for the next pass
over the same unchanged source."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from studio_flows.datasets.validation import _show
from studio_flows.rows import BadRow, Row

if TYPE_CHECKING:
    from studio_flows.datasets.sources import DatasetSource

# Rows are parsed into a buffer of this many, then checked against the seen-keys store in
# one statement: per-statement overhead dominates SQLite at small batches, and the buffer
# (a few MB of rows) is the only memory that scales with it.
_DEDUP_BATCH = 2048
# The seen-keys store's page cache (KiB). Beyond it SQLite spills pages to its temp file
# (the OS keeps them cached). A larger cache made the run's peak memory grow with the file
# for a slightly faster pass (bench/NOTES.md).
_DEDUP_CACHE_KIB = 4 * 1024


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
    a different conversation), valid for the source as it was read.

    De-duplicating costs more than reading and building the row itself; a pass that reuses
    the verdict skips it (see :func:`~studio_flows.datasets.iter_good_rows`).
    """

    def __init__(self, stamp: Hashable) -> None:
        # What proves the source unchanged (a file's stamp, a query snapshot's file stamp).
        self.stamp = stamp
        self.duplicates = _LineBits()
        self.conflicts = _LineBits()

    def holds_for(self, source: DatasetSource) -> bool:
        """True while the source is the one this verdict was made on."""
        try:
            stamp = source.stamp()
        except OSError:
            return False
        return stamp is not None and stamp == self.stamp


class Deduplication:
    """One pass's de-duplication of ``file``'s rows; ``duplicates`` counts those dropped."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.duplicates = 0

    def deduplicated(
        self, items: Iterator[Row | BadRow], verdict: DedupVerdict
    ) -> Iterator[Row | BadRow]:
        """Look every row up in a seen-keys store; record what was decided in ``verdict``."""
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

    def judged(
        self, items: Iterator[Row | BadRow], verdict: DedupVerdict
    ) -> Iterator[Row | BadRow]:
        """The rows as an earlier pass over this same source judged them: no lookups."""
        duplicates, conflicts = verdict.duplicates, verdict.conflicts
        for item in items:
            if type(item) is Row:
                if item.line in duplicates:
                    self.duplicates += 1
                    continue
                if item.line in conflicts:
                    item = BadRow(
                        self.file,
                        item.line,
                        f"duplicate id {_show(item.row_key)} with different content "
                        "(an earlier line has it)",
                    )
            yield item

    def _check_batch(
        self, buffer: list[Row | BadRow], store: _SeenKeys, verdict: DedupVerdict
    ) -> list[Row | BadRow]:
        """Drop exact duplicates and mark conflicting ids, judged against first occurrences.

        Every occurrence is compared with the first one in the whole source (from the store,
        or the first in this batch), so the verdict does not depend on where batches split.
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
                out[index] = BadRow(
                    self.file,
                    row.line,
                    f"duplicate id {_show(row.row_key)} with different content "
                    f"(first seen on line {first_line})",
                )
            elif row.line != first_line:
                verdict.duplicates.add(row.line)
                out[index] = None
                self.duplicates += 1
        return [item for item in out if item is not None]


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
