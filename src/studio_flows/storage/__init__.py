"""Result and job tables, the dialect-aware upsert and the job ledger (SQLAlchemy 2 Core).

Two tables hold everything a run must not lose (never pay twice for a row, never lose one):

- ``generation_results``: one row per row identity ``(row_key, prompt_hash, model_id,
  params_hash)``, written by :func:`upsert_results`, which never turns a ``completed`` result
  back into a failed one. The table is unique on ``(row_key, identity_key)``, where
  ``identity_key`` is a 128-bit digest of the identity
  (:attr:`~studio_flows.rows.RowIdentity.key`), not on the four wide columns (schema 2).
  Row keys are content hashes by default, so each row of a shard lands on a random page of
  that index and a commit writes every such page out: a narrower index dirties fewer bytes.
  Leading with ``row_key`` keeps the rows of a shard with sequential ids on a few pages,
  which a digest alone would scatter (the figures are in bench/NOTES.md).
- ``generation_jobs``: the ledger, one row per shard: ``pending`` (intent written before the
  POST), ``submitted`` (job id known), ``ambiguous`` (the POST's outcome is unknown), then
  ``finished`` or ``failed``. :func:`complete_shard` writes a shard's results and closes its
  ledger row in one transaction.

Every ledger function takes an :class:`~sqlalchemy.engine.Engine` and runs one transaction.
Engines are made where they are used (:func:`make_engine`), never passed between Prefect tasks.

Example:
    >>> engine = make_engine("sqlite://")
    >>> count_results(engine)
    {'completed': 0, 'failed': 0}
"""

from __future__ import annotations

from studio_flows.storage.engine import make_engine
from studio_flows.storage.ledger import (
    ShardRecord,
    claim_lease,
    complete_shard,
    completed_identities,
    get_shard,
    get_shards,
    open_shards,
    recent_job_seconds,
    record_ambiguous,
    record_job_submitted,
    record_rejected,
    record_shard_intent,
)
from studio_flows.storage.migrations import SchemaUpgrade, ensure_schema, upgrade_database
from studio_flows.storage.readback import (
    count_results,
    iter_latest_by_row,
    iter_metadata,
    iter_results,
    latest_per_model,
    results_of_rows,
    stored_model_ids,
)
from studio_flows.storage.schema import (
    IDENTITY_COLUMNS,
    LOOKUP_CHUNK,
    SCHEMA_VERSION,
    generation_jobs,
    generation_results,
    generation_scores,
    metadata,
    schema_version,
    utcnow,
)
from studio_flows.storage.scores import read_scores, upsert_scores
from studio_flows.storage.upserts import upsert_results, upsert_statement

__all__ = [
    "IDENTITY_COLUMNS",
    "LOOKUP_CHUNK",
    "SCHEMA_VERSION",
    "SchemaUpgrade",
    "ShardRecord",
    "claim_lease",
    "complete_shard",
    "completed_identities",
    "count_results",
    "ensure_schema",
    "generation_jobs",
    "generation_results",
    "generation_scores",
    "get_shard",
    "get_shards",
    "iter_latest_by_row",
    "iter_metadata",
    "iter_results",
    "latest_per_model",
    "make_engine",
    "metadata",
    "open_shards",
    "read_scores",
    "recent_job_seconds",
    "record_ambiguous",
    "record_job_submitted",
    "record_rejected",
    "record_shard_intent",
    "results_of_rows",
    "schema_version",
    "stored_model_ids",
    "upgrade_database",
    "upsert_results",
    "upsert_scores",
    "upsert_statement",
    "utcnow",
]
