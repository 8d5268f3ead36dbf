"""The statuses studio-flows writes: a result row's and a shard's (its job's) in the ledger.

They are ``StrEnum`` members, so they are stored and compared as the plain strings the
tables hold (``"completed"``, ``"submitted"``, ...). The service's own job statuses
(``CREATED``, ``FINISHED``, ...) are the API's, in :mod:`studio_flows.models`.

Example:
    >>> RowStatus.COMPLETED == "completed"
    True
    >>> ShardStatus.SUBMITTED in OPEN_SHARD_STATUSES
    True
"""

from __future__ import annotations

from enum import StrEnum


class RowStatus(StrEnum):
    """A row of ``generation_results``: answered, or not (the error says why)."""

    COMPLETED = "completed"
    FAILED = "failed"


class ShardStatus(StrEnum):
    """A shard of ``generation_jobs``, from intent to its job's end."""

    PENDING = "pending"  # intent written, POST not (yet) answered
    SUBMITTED = "submitted"  # job_id recorded: a restart re-attaches to it
    AMBIGUOUS = "ambiguous"  # the POST's outcome is unknown
    FINISHED = "finished"
    FAILED = "failed"


OPEN_SHARD_STATUSES = frozenset({ShardStatus.PENDING, ShardStatus.SUBMITTED, ShardStatus.AMBIGUOUS})
