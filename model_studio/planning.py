"""Turn a dataset's shards into work, skipping what is already paid for.

For each shard of the dataset (produced lazily, so memory stays bounded):

* rows whose identity already has a completed result are dropped (re-runs are incremental);
* the remaining rows form the shard to run; its key is a hash of their identities, so the
  same remaining rows give the same key in every run;
* if the ledger holds that key as ``submitted`` with a job_id, the job is re-attached;
  ``pending`` or ``ambiguous`` means a POST whose outcome is unknown: it is resubmitted
  and counted; ``finished``/``failed`` with rows still missing means they failed: retried.

Example:
    >>> planner = Planner(engine)  # doctest: +SKIP
    >>> for work in planner.plan(shards): ...  # doctest: +SKIP
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine

from model_studio.jobs import WorkItem
from model_studio.rows import Shard
from model_studio.storage import completed_identities, get_shard


@dataclass
class PlanCounts:
    """What planning found, for the run summary."""

    already_done: int = 0
    rows_planned: int = 0
    # Shards a past run left pending or ambiguous (POST outcome unknown): resubmitted now.
    unknown_outcome: int = 0


@dataclass
class Planner:
    """Lazily plans work items (wrap :meth:`plan` in :class:`SharedIterator` for lanes)."""

    engine: Engine
    counts: PlanCounts = field(default_factory=PlanCounts)

    def plan(self, shards: Iterable[Shard]) -> Iterator[WorkItem]:
        """Yield the work still to do for ``shards``, in dataset order."""
        for shard in shards:
            work = self._plan_one(shard)
            if work is not None:
                yield work

    def _plan_one(self, shard: Shard) -> WorkItem | None:
        done = completed_identities(self.engine, shard.identities)
        remaining = tuple(row for row in shard.rows if row.identity(shard.params) not in done)
        self.counts.already_done += len(shard.rows) - len(remaining)
        if not remaining:
            return None
        todo = (
            shard
            if len(remaining) == len(shard.rows)
            else Shard(dataset=shard.dataset, params=shard.params, rows=remaining)
        )
        self.counts.rows_planned += len(remaining)
        record = get_shard(self.engine, todo.shard_key)
        if record is not None and record.status == "submitted" and record.job_id:
            return WorkItem(todo, job_id=record.job_id)
        if record is not None and record.status in ("pending", "ambiguous"):
            self.counts.unknown_outcome += 1
        return WorkItem(todo)


class SharedIterator(Iterator[WorkItem]):
    """An iterator that several threads may pull from; each item goes to exactly one."""

    def __init__(self, items: Iterator[WorkItem]) -> None:
        self._items = items
        self._lock = threading.Lock()

    def __next__(self) -> WorkItem:
        with self._lock:
            return next(self._items)
