"""Reading back what runs wrote: streamed, filtered, counted."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from studio_flows.storage.engine import _reading
from studio_flows.storage.schema import RESULT_STATUSES, generation_results


def _result_filters(
    dataset: str | None, model_id: str | None, status: str | None, flow_run_id: str | None
) -> list[sa.ColumnElement[bool]]:
    table = generation_results
    wanted = {
        "dataset": dataset,
        "model_id": model_id,
        "status": status,
        "flow_run_id": flow_run_id,
    }
    return [table.c[name] == value for name, value in wanted.items() if value is not None]


def iter_results(
    engine: Engine,
    *,
    dataset: str | None = None,
    model_id: str | None = None,
    status: str | None = None,
    flow_run_id: str | None = None,
    batch_size: int = 1000,
) -> Iterator[dict[str, Any]]:
    """Stream result rows (as dicts of every column) matching the filters, in write order.

    Rows are fetched ``batch_size`` at a time through a server-side cursor, so memory stays
    bounded for any table size. The connection is held until the iterator is exhausted or
    closed.

    Example:
        >>> from studio_flows.storage import make_engine
        >>> engine = make_engine("sqlite://")
        >>> list(iter_results(engine, dataset="examples/prompts.jsonl", status="completed"))
        []
    """
    query = (
        sa.select(generation_results)
        .where(*_result_filters(dataset, model_id, status, flow_run_id))
        .order_by(generation_results.c.id)
    )
    with _reading(engine) as conn:
        streamed = conn.execution_options(stream_results=True, yield_per=batch_size)
        for row in streamed.execute(query):
            yield dict(row._mapping)


def count_results(
    engine: Engine,
    *,
    dataset: str | None = None,
    model_id: str | None = None,
    flow_run_id: str | None = None,
) -> dict[str, int]:
    """Number of result rows by status (``completed`` and ``failed`` always present).

    Example:
        >>> from studio_flows.storage import make_engine
        >>> count_results(make_engine("sqlite://"), dataset="examples/prompts.jsonl")
        {'completed': 0, 'failed': 0}
    """
    table = generation_results
    query = (
        sa.select(table.c.status, sa.func.count())
        .where(*_result_filters(dataset, model_id, None, flow_run_id))
        .group_by(table.c.status)
    )
    counts: dict[str, int] = {str(status): 0 for status in RESULT_STATUSES}
    with _reading(engine) as conn:
        counts.update({status: int(n) for status, n in conn.execute(query)})
    return counts
