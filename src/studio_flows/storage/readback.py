"""Reading back what runs wrote: streamed, filtered, counted."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from studio_flows.rows import Row
from studio_flows.storage.engine import _reading
from studio_flows.storage.schema import (
    COMPLETED,
    LOOKUP_CHUNK,
    RESULT_STATUSES,
    generation_jobs,
    generation_results,
)


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


ResultOrder = Literal["written", "shard"]


def _ordered(query: sa.Select[Any], order: ResultOrder) -> sa.Select[Any]:
    """``query`` in write order, or by its shard's ledger row then task index."""
    results = generation_results
    if order == "written":
        return query.order_by(results.c.id)
    ledger = generation_jobs
    joined = results.outerjoin(ledger, ledger.c.shard_key == results.c.shard_key)
    # A result written without a ledger row (upsert_results alone) sorts after the rest.
    return query.select_from(joined).order_by(
        ledger.c.id.is_(None), ledger.c.id, results.c.task_index, results.c.id
    )


def iter_results(
    engine: Engine,
    *,
    dataset: str | None = None,
    model_id: str | None = None,
    status: str | None = None,
    flow_run_id: str | None = None,
    batch_size: int = 1000,
    order: ResultOrder = "written",
    latest: bool = False,
) -> Iterator[dict[str, Any]]:
    """Stream result rows (as dicts of every column) matching the filters.

    ``latest``: one result per (row, model) (:func:`latest_result_ids`), as exports and
    ``read_results`` give them, not every stored identity.

    ``order="written"`` is write order (within one written batch, identity order: not the
    dataset's). ``order="shard"`` is by the shard's ledger row (the order runs took the
    shards in, close to the dataset's) then task index: a fixed order per database, however
    the jobs' finishing times interleaved the writes.
    Rows are fetched ``batch_size`` at a time through a server-side cursor, so memory stays
    bounded for any table size. The connection is held until the iterator is exhausted or
    closed.

    Example:
        >>> from studio_flows.storage import make_engine
        >>> engine = make_engine("sqlite://")
        >>> list(iter_results(engine, dataset="examples/prompts.jsonl", status="completed"))
        []
    """
    filters = _result_filters(dataset, model_id, status, flow_run_id)
    query = sa.select(generation_results).where(*filters)
    if latest:
        # Ranked before the status filter: a row whose newest answer completed is not
        # listed as failed for the answer an older schema or template got.
        ranked = _result_filters(dataset, model_id, None, flow_run_id)
        query = query.where(generation_results.c.id.in_(latest_result_ids(ranked)))
    query = _ordered(query, order)
    with _reading(engine) as conn:
        streamed = conn.execution_options(stream_results=True, yield_per=batch_size)
        for row in streamed.execute(query):
            yield dict(row._mapping)


def latest_result_ids(filters: Sequence[sa.ColumnElement[bool]] = ()) -> sa.Select[Any]:
    """The id of one result per (row_key, model_id) among those ``filters`` select: the
    latest completed one, else (none completed) the latest written.

    A row sent again after its template or response schema changed has a second stored
    answer (another identity); what a user reads back is the newest answer that counts.

    Example:
        >>> from studio_flows.storage import make_engine
        >>> with make_engine("sqlite://").connect() as conn:
        ...     conn.execute(latest_result_ids()).all()
        []
    """
    table = generation_results
    rank = (
        sa.func.row_number()
        .over(
            partition_by=(table.c.row_key, table.c.model_id),
            order_by=(
                sa.case((table.c.status == COMPLETED, 0), else_=1),
                table.c.completed_at.desc(),
                table.c.id.desc(),
            ),
        )
        .label("rank")
    )
    ranked = sa.select(table.c.id, rank).where(*filters).subquery()
    return sa.select(ranked.c.id).where(ranked.c.rank == 1)


def _latest_first(result: dict[str, Any]) -> tuple[bool, float, int]:
    """Sort key of :func:`latest_per_model`: completed first, then newest."""
    completed_at = result.get("completed_at")
    return (
        result.get("status") != COMPLETED,
        -completed_at.timestamp() if completed_at is not None else 0.0,
        -int(result.get("id") or 0),
    )


def latest_per_model(results: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One of ``results`` per model, chosen as :func:`latest_result_ids` does (the latest
    completed, else the latest written), in model id order.

    Example:
        >>> old = {"id": 1, "model_id": "m", "status": "completed", "completed_at": None}
        >>> new = {"id": 2, "model_id": "m", "status": "failed", "completed_at": None}
        >>> [r["id"] for r in latest_per_model([old, new])]
        [1]
    """
    chosen: dict[str, dict[str, Any]] = {}
    for result in sorted(results, key=_latest_first):
        chosen.setdefault(result["model_id"], result)
    return [chosen[model] for model in sorted(chosen)]


def iter_metadata(
    engine: Engine,
    *,
    dataset: str | None = None,
    model_id: str | None = None,
    status: str | None = None,
    batch_size: int = 5000,
) -> Iterator[dict[str, Any]]:
    """The kept input columns (``metadata``) of the matching results that have any, streamed.

    An export reads them first, to know its columns before it writes a header.

    Example:
        >>> from studio_flows.storage import make_engine
        >>> list(iter_metadata(make_engine("sqlite://")))
        []
    """
    table = generation_results
    query = sa.select(table.c.metadata).where(
        table.c.metadata.is_not(None), *_result_filters(dataset, model_id, status, None)
    )
    with _reading(engine) as conn:
        streamed = conn.execution_options(stream_results=True, yield_per=batch_size)
        yield from streamed.execute(query).scalars()


def iter_latest_by_row(
    engine: Engine, *, dataset: str | None = None, batch_size: int = 1000
) -> Iterator[list[dict[str, Any]]]:
    """The latest result of each model (:func:`latest_result_ids`) for each stored row, one
    list per ``row_key``: an evaluation run's answers to one row, side by side.

    A row sent again after its template or response schema changed is one row still, with
    its newest answer that counts. Rows come in the order of their first stored result's
    shard and task index (as ``order="shard"`` of :func:`iter_results`), their results by
    model id. Streamed like :func:`iter_results`, so memory holds one row at a time.

    Example:
        >>> from studio_flows.storage import make_engine
        >>> list(iter_latest_by_row(make_engine("sqlite://"), dataset="d"))
        []
    """
    with _reading(engine) as conn:
        streamed = conn.execution_options(stream_results=True, yield_per=batch_size)
        rows = (dict(row._mapping) for row in streamed.execute(_latest_by_row(dataset)))
        for _, group in itertools.groupby(rows, key=lambda r: r["row_key"]):
            yield list(group)


def _latest_by_row(dataset: str | None) -> sa.Select[Any]:
    results, ledger = generation_results, generation_jobs
    where = _result_filters(dataset, None, None, None)
    firsts = (
        sa.select(results.c.row_key, sa.func.min(results.c.id).label("id"))
        .where(*where)
        .group_by(results.c.row_key)
        .subquery()
    )
    first = results.alias("first_result")
    joined = (
        results.join(firsts, results.c.row_key == firsts.c.row_key)
        .join(first, first.c.id == firsts.c.id)
        .outerjoin(ledger, ledger.c.shard_key == first.c.shard_key)
    )
    # A row whose first result has no ledger row (upsert_results alone) sorts last.
    order = (ledger.c.id.is_(None), ledger.c.id, first.c.task_index, firsts.c.id)
    return (
        sa.select(results)
        .select_from(joined)
        .where(*where, results.c.id.in_(latest_result_ids(where)))
        .order_by(*order, results.c.model_id, results.c.id)
    )


_SELECT_BY_ROW_KEYS: Final = (
    sa.select(generation_results)
    .where(generation_results.c.row_key.in_(sa.bindparam("row_keys", expanding=True)))
    .order_by(generation_results.c.model_id, generation_results.c.id)
)


def results_of_rows(
    engine: Engine,
    rows: Iterable[Row],
    *,
    model_id: str | None = None,
    status: str | None = None,
) -> Iterator[tuple[Row, list[dict[str, Any]]]]:
    """Each of ``rows`` in its order, with the stored results of its conversation.

    A result belongs to a row when its ``row_key`` and ``prompt_hash`` are the row's,
    whatever dataset name or run wrote it; a row sent with several models or parameters
    has one result each (by model id, then write order); a row never run has none. One
    query per :data:`LOOKUP_CHUNK` rows, by row key (the unique index leads with it).

    Example:
        >>> from studio_flows.models import Message
        >>> from studio_flows.storage import make_engine
        >>> row = Row.from_messages([Message(role="user", content="Hi")], line=1)
        >>> [(r.line, found) for r, found in results_of_rows(make_engine("sqlite://"), [row])]
        [(1, [])]
    """
    iterator = iter(rows)
    while batch := list(itertools.islice(iterator, LOOKUP_CHUNK)):
        stored = _stored_results(engine, batch, model_id, status)
        for row in batch:
            yield row, stored.get((row.row_key, row.prompt_hash), [])


def _stored_results(
    engine: Engine, batch: Sequence[Row], model_id: str | None, status: str | None
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The results of ``batch``'s row keys, by ``(row_key, prompt_hash)``."""
    query = _SELECT_BY_ROW_KEYS.where(*_result_filters(None, model_id, status, None))
    found: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with _reading(engine) as conn:
        for result in conn.execute(query, {"row_keys": sorted({row.row_key for row in batch})}):
            found.setdefault((result.row_key, result.prompt_hash), []).append(dict(result._mapping))
    return found


def stored_model_ids(engine: Engine, *, dataset: str | None = None) -> list[str]:
    """The model ids with stored results (of ``dataset``), sorted.

    Example:
        >>> from studio_flows.storage import make_engine
        >>> stored_model_ids(make_engine("sqlite://"))
        []
    """
    column = generation_results.c.model_id
    query = sa.select(column).where(*_result_filters(dataset, None, None, None)).distinct()
    with _reading(engine) as conn:
        return sorted(str(model) for model in conn.execute(query).scalars())


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
