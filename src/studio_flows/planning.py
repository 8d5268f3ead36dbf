"""Turn a dataset's shards into work, skipping what is already paid for.

For each shard of the dataset (produced lazily, so memory stays bounded):

* rows whose identity already has a completed result are dropped (re-runs are incremental);
* the remaining rows form the shard to run; its key is a hash of their identities, so the
  same remaining rows give the same key in every run;
* if the ledger holds that key as ``submitted`` with a job_id, the job is re-attached;
  ``pending`` or ``ambiguous`` means a POST whose outcome is unknown: the work carries that
  ledger row, and the job runner follows the ambiguous policy for it (see
  :func:`studio_flows.jobs.run_shard`); ``finished``/``failed`` with rows still missing
  means they failed: retried.

Example:
    >>> planner = Planner(engine)  # doctest: +SKIP
    >>> for work in planner.plan(shards): ...  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine

from studio_flows.jobs import WorkItem
from studio_flows.rows import GenerationParams, RowIdentity, Shard
from studio_flows.statuses import ShardStatus
from studio_flows.storage import ShardRecord, completed_identities, get_shards

# Shards are planned in groups of about this many rows: one lookup of completed rows and one
# of the ledger per group. Two queries per shard were a fifth of the CPU a row costs at
# latency 0 (bench/RESULTS.md); a group of 1,000 rows is read in about 10 ms.
PLAN_GROUP_ROWS = 1000


@dataclass
class PlanCounts:
    """What planning found, for the run summary."""

    already_done: int = 0
    rows_planned: int = 0
    # Shards a past run left pending or ambiguous (POST outcome unknown), as found.
    unknown_outcome: int = 0
    # The same two counts by model id (an evaluation run plans several models).
    already_done_by_model: Counter[str] = field(default_factory=Counter)
    planned_by_model: Counter[str] = field(default_factory=Counter)


@dataclass
class Planner:
    """Lazily plans work items (wrap :meth:`plan` in :class:`SharedIterator` for lanes)."""

    engine: Engine
    counts: PlanCounts = field(default_factory=PlanCounts)

    def plan(self, shards: Iterable[Shard]) -> Iterator[WorkItem]:
        """Yield the work still to do for ``shards``, in dataset order."""
        for group in _groups(shards, PLAN_GROUP_ROWS):
            yield from self._plan_group(group)

    def _plan_group(self, group: list[Shard]) -> list[WorkItem]:
        done = completed_identities(
            self.engine, [identity for shard in group for identity in shard.identities]
        )
        todo = [s for s in (self._remaining(shard, done) for shard in group) if s is not None]
        ledger = get_shards(self.engine, [shard.shard_key for shard in todo])
        return [self._work(shard, ledger.get(shard.shard_key)) for shard in todo]

    def _remaining(self, shard: Shard, done: set[RowIdentity]) -> Shard | None:
        """``shard`` without its rows already completed (None if nothing is left)."""
        remaining = tuple(row for row in shard.rows if row.identity(shard.params) not in done)
        model = shard.params.model_id
        self.counts.already_done += len(shard.rows) - len(remaining)
        self.counts.already_done_by_model[model] += len(shard.rows) - len(remaining)
        if not remaining:
            return None
        self.counts.rows_planned += len(remaining)
        self.counts.planned_by_model[model] += len(remaining)
        if len(remaining) == len(shard.rows):
            return shard
        return Shard(dataset=shard.dataset, params=shard.params, rows=remaining)

    def _work(self, shard: Shard, record: ShardRecord | None) -> WorkItem:
        if record is not None and record.status == ShardStatus.SUBMITTED and record.job_id:
            return WorkItem(shard, job_id=record.job_id)
        if record is not None and record.status in (ShardStatus.PENDING, ShardStatus.AMBIGUOUS):
            self.counts.unknown_outcome += 1
            return WorkItem(shard, unknown_outcome=record)
        return WorkItem(shard)


def for_each_model(shards: Iterable[Shard], params: Sequence[GenerationParams]) -> Iterator[Shard]:
    """Each shard once per model, the models' shards of the same rows one after another.

    Interleaved so that no model waits for another to finish: the lanes take the models'
    jobs in turn, and every model's answers grow together (an interrupted evaluation run
    leaves every model about as far along).

    Example:
        >>> from studio_flows.models import Message
        >>> from studio_flows.rows import Row
        >>> rows = (Row.from_messages([Message(role="user", content="Hi")], line=1),)
        >>> shards = [Shard("d", GenerationParams("a"), rows)] * 2
        >>> models = [GenerationParams("a"), GenerationParams("b")]
        >>> [s.params.model_id for s in for_each_model(shards, models)]
        ['a', 'b', 'a', 'b']
    """
    for shard in shards:
        for each in params:
            yield shard if each == shard.params else dataclasses.replace(shard, params=each)


def _groups(shards: Iterable[Shard], rows: int) -> Iterator[list[Shard]]:
    """Consecutive shards, lazily, in lists of about ``rows`` rows (at least one shard)."""
    group: list[Shard] = []
    size = 0
    for shard in shards:
        group.append(shard)
        size += len(shard.rows)
        if size >= rows:
            yield group
            group, size = [], 0
    if group:
        yield group


class SharedIterator(Iterator[WorkItem]):
    """An iterator that several threads may pull from; each item goes to exactly one."""

    def __init__(self, items: Iterator[WorkItem]) -> None:
        self._items = items
        self._lock = threading.Lock()
        self._peeked: list[WorkItem] = []

    def __next__(self) -> WorkItem:
        with self._lock:
            return self._peeked.pop() if self._peeked else next(self._items)

    def has_work(self) -> bool:
        """True if an item is left (planned now and kept for the next ``next``).

        Example:
            >>> SharedIterator(iter([])).has_work()
            False
        """
        with self._lock:
            if not self._peeked:
                item = next(self._items, None)
                if item is None:
                    return False
                self._peeked.append(item)
            return True
