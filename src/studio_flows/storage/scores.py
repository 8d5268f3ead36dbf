"""Judges' verdicts: written once per (answer, judge, template), read back by dataset.

A verdict row names the answer it judges by its identity (``answer_key``, the answer's
:attr:`~studio_flows.rows.RowIdentity.key`, with its dataset, row key and model), the judge
model and the judge template's hash. :func:`upsert_scores` writes a batch in one
transaction and never turns a ``completed`` verdict back into a failed one.

Example:
    >>> from studio_flows.storage import make_engine
    >>> engine = make_engine("sqlite://")
    >>> upsert_scores(engine, [{"dataset": "d", "row_key": "r", "model_id": "m",
    ...     "answer_key": "a" * 32, "judge_model": "j", "template_hash": "t",
    ...     "score": 4.0, "reason": "fine", "status": "completed"}])
    1
    >>> [(s["model_id"], s["score"]) for s in read_scores(engine, dataset="d")]
    [('m', 4.0)]
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from studio_flows.storage.engine import _reading, _writing
from studio_flows.storage.schema import COMPLETED, LOOKUP_CHUNK, generation_scores, utcnow

_KEY = ("answer_key", "judge_model", "template_hash")
_FIELDS = (
    "dataset",
    "row_key",
    "model_id",
    "answer_key",
    "answer_id",
    "judge_model",
    "template_hash",
    "score",
    "reason",
    "status",
    "error",
    "flow_run_id",
)


def upsert_scores(engine: Engine, records: Iterable[Mapping[str, Any]]) -> int:
    """Write verdicts (one per answer, judge and template); return how many were written.

    A verdict already stored ``completed`` is kept (a judge row, once completed, is never
    sent again, so a later failed verdict for it can only be stale); any other is replaced.
    Portable: a delete and an insert in one transaction, one batch per
    :data:`~studio_flows.storage.schema.LOOKUP_CHUNK` verdicts.
    """
    written = 0
    iterator = iter(records)
    while batch := list(itertools.islice(iterator, LOOKUP_CHUNK)):
        written += _upsert_batch(engine, batch)
    return written


def _upsert_batch(engine: Engine, batch: Sequence[Mapping[str, Any]]) -> int:
    table = generation_scores
    with _writing(engine) as conn:
        done = _completed_keys(conn, batch)
        fresh = {_key(r): r for r in batch if _key(r) not in done}
        for (judge, template), keys in _by_judge(fresh).items():
            conn.execute(
                table.delete().where(
                    table.c.judge_model == judge,
                    table.c.template_hash == template,
                    table.c.answer_key.in_(keys),
                )
            )
        now = utcnow()
        rows = [{**{f: r.get(f) for f in _FIELDS}, "scored_at": now} for r in fresh.values()]
        if rows:
            conn.execute(table.insert(), rows)
    return len(rows)


def _key(record: Mapping[str, Any]) -> tuple[str, str, str]:
    return (record["answer_key"], record["judge_model"], record["template_hash"])


def _by_judge(records: Mapping[tuple[str, str, str], Any]) -> dict[tuple[str, str], list[str]]:
    grouped: dict[tuple[str, str], list[str]] = {}
    for answer, judge, template in records:
        grouped.setdefault((judge, template), []).append(answer)
    return grouped


def _completed_keys(
    conn: sa.Connection, batch: Sequence[Mapping[str, Any]]
) -> set[tuple[str, ...]]:
    table = generation_scores
    query = sa.select(*(table.c[name] for name in _KEY)).where(
        table.c.answer_key.in_(sorted({r["answer_key"] for r in batch})),
        table.c.status == COMPLETED,
    )
    return {tuple(row) for row in conn.execute(query)}


def read_scores(
    engine: Engine,
    *,
    dataset: str | None = None,
    models: Sequence[str] | None = None,
    judge_model: str | None = None,
    template_hash: str | None = None,
    status: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Stored verdicts, oldest first (by time, then write order), filtered as asked."""
    table = generation_scores
    wanted = {
        "dataset": dataset,
        "judge_model": judge_model,
        "template_hash": template_hash,
        "status": status,
    }
    filters = [table.c[name] == value for name, value in wanted.items() if value is not None]
    if models is not None:
        filters.append(table.c.model_id.in_(list(models)))
    query = sa.select(table).where(*filters).order_by(table.c.scored_at, table.c.id)
    with _reading(engine) as conn:
        for row in conn.execute(query):
            yield dict(row._mapping)


__all__ = ["read_scores", "upsert_scores"]
