"""Storage on SQLite and on the real PostgreSQL server: tables, upserts, the job ledger.

Every test taking ``engine`` or ``database_url`` runs on both backends (see
tests/fixtures/databases.py); there is no PostgreSQL mock anywhere.
"""

from __future__ import annotations

import math
import multiprocessing
import random
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mssql, mysql
from sqlalchemy.engine import Engine

from studio_flows import storage
from studio_flows.errors import ConfigurationError
from studio_flows.rows import RowIdentity, Shard
from studio_flows.storage import (
    complete_shard,
    completed_identities,
    count_results,
    generation_jobs,
    generation_results,
    get_shard,
    get_shards,
    iter_results,
    make_engine,
    open_shards,
    record_ambiguous,
    record_job_submitted,
    record_shard_intent,
    upsert_results,
    upsert_statement,
)
from tests.fixtures.databases import make_engines_at_once
from tests.fixtures.storage_rows import counting_selects, make_records, make_shard


def result_row(i: int, *, status: str = "completed", result: str | None = None) -> dict[str, Any]:
    """A raw generation_results record, as upsert_results takes it."""
    return {
        "row_key": f"row-{i}",
        "prompt_hash": f"{i:064x}",
        "model_id": "model-a",
        "params_hash": "0" * 64,
        "dataset": "raw.jsonl",
        "shard_key": "s" * 32,
        "job_id": "job-1",
        "task_index": i % 100,
        "messages": [{"role": "user", "content": f"q{i}"}],
        "result": (result or f"answer {i}") if status == "completed" else None,
        "status": status,
        "error": None if status == "completed" else "boom",
        "temperature": 0.2,
        "max_tokens": 32,
        "flow_run_id": None,
        "completed_at": None,
    }


def all_results(engine: Engine) -> list[dict[str, Any]]:
    return list(iter_results(engine))


def write(engine: Engine, records: list[dict[str, Any]]) -> int:
    with engine.begin() as conn:
        return upsert_results(conn, records)


# --------------------------------------------------------------------------- engine & schema


@pytest.mark.postgres
def test_postgres_server_is_really_used(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    try:
        with engine.connect() as conn:
            version = conn.execute(sa.text("SELECT version()")).scalar_one()
        assert "PostgreSQL" in version
        assert engine.dialect.driver == "psycopg"
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_bare_postgresql_url_uses_psycopg3(postgres_url: str) -> None:
    bare = postgres_url.replace("postgresql+psycopg://", "postgresql://", 1)
    engine = make_engine(bare)
    try:
        assert engine.dialect.driver == "psycopg"
    finally:
        engine.dispose()


def test_sqlite_engine_uses_wal_busy_timeout_and_foreign_keys(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()


def test_schema_creation_is_idempotent(database_url: str) -> None:
    first = make_engine(database_url)
    write(first, [result_row(1)])
    first.dispose()
    second = make_engine(database_url)
    try:
        tables = set(sa.inspect(second).get_table_names())
        assert {"generation_results", "generation_jobs", "studio_flows_schema"} <= tables
        with second.connect() as conn:
            versions = conn.execute(sa.select(storage.schema_version.c.version)).scalars().all()
        assert versions == [storage.SCHEMA_VERSION]
        assert count_results(second) == {"completed": 1, "failed": 0}
    finally:
        second.dispose()


def test_newer_schema_version_is_refused(engine: Engine, database_url: str) -> None:
    with engine.begin() as conn:
        conn.execute(storage.schema_version.insert().values(version=storage.SCHEMA_VERSION + 1))
    with pytest.raises(ConfigurationError, match="newer than this studio-flows"):
        make_engine(database_url)


def test_concurrent_processes_create_the_schema_once(database_url: str) -> None:
    assert make_engines_at_once(database_url) == [0, 0, 0, 0]
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            versions = conn.execute(sa.select(storage.schema_version.c.version)).scalars().all()
        assert versions == [storage.SCHEMA_VERSION]
    finally:
        engine.dispose()


def test_unparseable_url_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="not a SQLAlchemy URL") as caught:
        make_engine("user:hunter2@nowhere")
    assert "hunter2" not in str(caught.value)


def test_unknown_driver_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="Cannot use database") as caught:
        make_engine("nosuchdb://user:hunter2@localhost/db")
    assert "hunter2" not in str(caught.value)


def test_unreachable_server_is_a_configuration_error_without_password() -> None:
    # Port 1 on loopback: nothing listens there, so the connection is refused at once.
    with pytest.raises(ConfigurationError, match=r"Cannot open database postgresql") as caught:
        make_engine("postgresql://studio:hunter2@127.0.0.1:1/studio")
    assert "hunter2" not in str(caught.value)
    assert "***" in str(caught.value)


@pytest.mark.postgres
def test_wrong_password_is_a_configuration_error_without_password(postgres_url: str) -> None:
    wrong = sa.make_url(postgres_url).set(password="not-the-password-x9")
    with pytest.raises(ConfigurationError, match="Cannot open database") as caught:
        make_engine(wrong.render_as_string(hide_password=False))
    assert "not-the-password-x9" not in str(caught.value)


def test_unwritable_sqlite_path_is_a_configuration_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigurationError, match="Cannot open database sqlite"):
        make_engine(f"sqlite:///{blocker / 'studio_flows.db'}")


# --------------------------------------------------------------------------- upsert


def test_upsert_is_idempotent(engine: Engine) -> None:
    rows = [result_row(i) for i in range(50)] + [result_row(50, status="failed")]
    assert write(engine, rows) == 51
    before = all_results(engine)
    assert write(engine, rows) == 51
    after = all_results(engine)
    assert len(after) == 51
    assert after == before
    first = before[0]
    assert first["messages"] == [{"role": "user", "content": "q0"}]
    assert isinstance(first["created_at"], datetime)
    assert first["created_at"].tzinfo is not None


def test_batch_with_repeated_identity_is_deduplicated(engine: Engine) -> None:
    batch = [
        result_row(1, result="first"),
        result_row(1, result="second"),  # same identity twice: the last completed wins
        result_row(2, result="kept"),
        result_row(2, status="failed"),  # a failure never beats a completed answer
        result_row(3, status="failed"),
        result_row(3, result="late success"),
    ]
    assert write(engine, batch) == 3
    by_key = {row["row_key"]: row for row in all_results(engine)}
    assert by_key["row-1"]["result"] == "second"
    assert (by_key["row-2"]["status"], by_key["row-2"]["result"]) == ("completed", "kept")
    assert (by_key["row-3"]["status"], by_key["row-3"]["result"]) == ("completed", "late success")


def test_completed_result_is_never_downgraded(engine: Engine) -> None:
    write(engine, [result_row(1, result="paid for")])
    write(engine, [result_row(1, status="failed")])
    (row,) = all_results(engine)
    assert (row["status"], row["result"], row["error"]) == ("completed", "paid for", None)


def test_failed_result_is_upgraded_to_completed(engine: Engine) -> None:
    write(engine, [result_row(1, status="failed")])
    write(engine, [result_row(1, result="second try")])
    (row,) = all_results(engine)
    assert (row["status"], row["result"], row["error"]) == ("completed", "second try", None)


def test_failed_result_is_replaced_by_a_later_failure(engine: Engine) -> None:
    write(engine, [result_row(1, status="failed")])
    newer = result_row(1, status="failed") | {"error": "newer failure"}
    write(engine, [newer])
    (row,) = all_results(engine)
    assert row["error"] == "newer failure"


def test_large_batch_is_written_completely(engine: Engine) -> None:
    # More rows than one executemany batch and, at 17 columns a row, far more values than
    # SQLite's 32766-variable limit if they were sent as one statement.
    assert write(engine, [result_row(i) for i in range(2500)]) == 2500
    assert count_results(engine) == {"completed": 2500, "failed": 0}


def _upsert_worker(url: str, seed: int, barrier: Any) -> None:
    rows = [result_row(i, result=f"answer {i} from {seed}") for i in range(2000)]
    random.Random(seed).shuffle(rows)
    engine = make_engine(url)
    try:
        barrier.wait(timeout=60)
        for start in range(0, len(rows), 100):
            write(engine, rows[start : start + 100])
    finally:
        engine.dispose()


def test_concurrent_processes_upserting_the_same_rows(database_url: str) -> None:
    make_engine(database_url).dispose()  # schema first: this test is about the rows
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    workers = [
        ctx.Process(target=_upsert_worker, args=(database_url, seed, barrier)) for seed in (1, 2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=240)
    assert [worker.exitcode for worker in workers] == [0, 0]
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            total, distinct = conn.execute(
                sa.select(
                    sa.func.count(),
                    sa.func.count(sa.distinct(generation_results.c.row_key)),
                )
            ).one()
        assert (total, distinct) == (2000, 2000)
        assert {row["result"].split(" from ")[0] for row in all_results(engine)} == {
            f"answer {i}" for i in range(2000)
        }
    finally:
        engine.dispose()


def test_mysql_statement_compiles_with_conditional_update() -> None:
    dialect = mysql.dialect()
    sql = str(upsert_statement(dialect).compile(dialect=dialect))
    assert sql.startswith("INSERT INTO generation_results")
    assert "ON DUPLICATE KEY UPDATE" in sql
    update = sql.split("ON DUPLICATE KEY UPDATE", 1)[1]
    # Every column keeps its old value when a completed row meets a non-completed one ...
    assert (
        "result = IF(generation_results.status = 'completed' AND VALUES(status) != 'completed', "
        "generation_results.result, VALUES(result))" in update
    )
    # ... and status is assigned last: MySQL evaluates assignments left to right.
    assert update.rstrip().endswith("generation_results.status, VALUES(status))")
    assert update.count(" = IF(") == len(storage.upserts._UPDATED_COLUMNS)
    for identity_column in storage.IDENTITY_COLUMNS:
        assert f"{identity_column} = " not in update
    assert "created_at = " not in update


def test_postgresql_and_sqlite_statements_are_conditional() -> None:
    from sqlalchemy.dialects import postgresql, sqlite

    for dialect in (postgresql.dialect(), sqlite.dialect()):
        sql = str(upsert_statement(dialect).compile(dialect=dialect))
        assert "ON CONFLICT (row_key, identity_key) DO UPDATE" in sql
        assert (
            "WHERE generation_results.status != 'completed' OR excluded.status = 'completed'" in sql
        )


def test_unsupported_dialect_is_named() -> None:
    with pytest.raises(NotImplementedError, match="'mssql'"):
        upsert_statement(mssql.dialect())


# --------------------------------------------------------------------------- ledger


@pytest.fixture(params=["upsert", "update-then-insert"])
def intent_statement(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Intents through the one-statement upsert, then through the portable path of other
    dialects (MySQL/MariaDB), on each backend."""
    if request.param == "update-then-insert":
        monkeypatch.setattr(storage.ledger, "_INTENT_UPSERTS", {})
    return str(request.param)


@pytest.mark.usefixtures("intent_statement")
def test_ledger_intent_submitted_complete(engine: Engine) -> None:
    shard = make_shard(3)
    record = record_shard_intent(engine, shard)
    assert (record.status, record.attempts, record.job_id) == ("pending", 1, None)
    assert record.row_keys == tuple(row.row_key for row in shard.rows)
    assert (record.row_count, record.dataset, record.model_id) == (3, "data.jsonl", "model-a")

    record_job_submitted(engine, shard.shard_key, "job-1")
    submitted = get_shard(engine, shard.shard_key)
    assert submitted is not None
    assert (submitted.status, submitted.job_id) == ("submitted", "job-1")
    assert [s.shard_key for s in open_shards(engine)] == [shard.shard_key]

    complete_shard(
        engine,
        shard,
        job_id="job-1",
        job_status="FINISHED",
        records=make_records(shard),
        flow_run_id="run-1",
    )
    done = get_shard(engine, shard.shard_key)
    assert done is not None
    assert (done.status, done.job_id, done.error) == ("finished", "job-1", None)
    assert open_shards(engine) == []
    rows = all_results(engine)
    assert [(r["task_index"], r["result"]) for r in rows] == [(i, f"answer {i}") for i in range(3)]
    first = rows[0]
    assert (first["dataset"], first["shard_key"], first["job_id"]) == (
        "data.jsonl",
        shard.shard_key,
        "job-1",
    )
    assert (first["temperature"], first["max_tokens"], first["flow_run_id"]) == (0.2, 32, "run-1")
    assert first["messages"] == [{"role": "user", "content": "question 0"}]
    assert first["completed_at"] is not None and first["completed_at"].tzinfo is not None


@pytest.mark.usefixtures("intent_statement")
def test_ledger_ambiguous_then_new_intent_counts_attempts(engine: Engine) -> None:
    shard = make_shard(2)
    record_shard_intent(engine, shard)
    record_ambiguous(engine, shard.shard_key, "read timeout")
    ambiguous = get_shard(engine, shard.shard_key)
    assert ambiguous is not None
    assert (ambiguous.status, ambiguous.ambiguous_count, ambiguous.error) == (
        "ambiguous",
        1,
        "read timeout",
    )
    assert [s.status for s in open_shards(engine)] == ["ambiguous"]

    again = record_shard_intent(engine, shard)
    assert (again.status, again.attempts, again.ambiguous_count) == ("pending", 2, 1)
    assert (again.job_id, again.error) == (None, None)

    record_job_submitted(engine, shard.shard_key, "job-2")
    resubmitted = get_shard(engine, shard.shard_key)
    assert resubmitted is not None
    assert (resubmitted.status, resubmitted.job_id, resubmitted.attempts) == (
        "submitted",
        "job-2",
        2,
    )


def test_open_shards_lists_pending_submitted_and_ambiguous_only(engine: Engine) -> None:
    pending, submitted, ambiguous, finished, failed = (
        make_shard(2, start=10 * i, dataset="a.jsonl" if i < 4 else "b.jsonl") for i in range(5)
    )
    for shard in (pending, submitted, ambiguous, finished, failed):
        record_shard_intent(engine, shard)
    record_job_submitted(engine, submitted.shard_key, "job-s")
    record_ambiguous(engine, ambiguous.shard_key, "HTTP 502")
    complete_shard(
        engine, finished, job_id="job-f", job_status="FINISHED", records=[], flow_run_id=None
    )
    complete_shard(
        engine, failed, job_id="job-x", job_status="failed", records=[], flow_run_id=None
    )
    assert [s.shard_key for s in open_shards(engine)] == [
        pending.shard_key,
        submitted.shard_key,
        ambiguous.shard_key,
    ]
    assert open_shards(engine, dataset="b.jsonl") == []
    assert len(open_shards(engine, dataset="a.jsonl")) == 3
    failed_record = get_shard(engine, failed.shard_key)
    assert failed_record is not None
    assert failed_record.status == "failed"
    assert failed_record.error == "job job-x ended failed"


def test_ledger_updates_need_an_intent(engine: Engine) -> None:
    with pytest.raises(LookupError, match="no intent"):
        record_job_submitted(engine, "f" * 32, "job-1")
    with pytest.raises(LookupError, match="no intent"):
        record_ambiguous(engine, "f" * 32, "read timeout")


def test_complete_shard_without_intent_creates_a_closed_ledger_row(engine: Engine) -> None:
    shard = make_shard(2)
    complete_shard(
        engine,
        shard,
        job_id="job-1",
        job_status="FINISHED",
        records=make_records(shard),
        flow_run_id=None,
    )
    record = get_shard(engine, shard.shard_key)
    assert record is not None
    assert (record.status, record.row_count, record.job_id) == ("finished", 2, "job-1")


def test_complete_shard_is_atomic(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    shard = make_shard(5)
    record_shard_intent(engine, shard)
    record_job_submitted(engine, shard.shard_key, "job-1")
    # An earlier failed answer for row 0: the rolled-back upsert must not have replaced it.
    complete_shard(
        engine,
        make_shard(1),
        job_id="job-0",
        job_status="FINISHED",
        records=make_records(make_shard(1), status="failed"),
        flow_run_id=None,
    )
    before = all_results(engine)

    real_upsert = storage.ledger._execute_upsert

    def upsert_then_crash(conn: object, upsert: object) -> None:
        real_upsert(conn, upsert)  # type: ignore[arg-type]
        raise RuntimeError("crash between the two writes")

    monkeypatch.setattr(storage.ledger, "_execute_upsert", upsert_then_crash)
    with pytest.raises(RuntimeError, match="crash between"):
        complete_shard(
            engine,
            shard,
            job_id="job-1",
            job_status="FINISHED",
            records=make_records(shard),
            flow_run_id="run-1",
        )
    assert all_results(engine) == before
    monkeypatch.undo()
    record = get_shard(engine, shard.shard_key)
    assert record is not None
    assert (record.status, record.job_id) == ("submitted", "job-1")

    # The same call without the crash writes both: the hook really sat between them.
    complete_shard(
        engine,
        shard,
        job_id="job-1",
        job_status="FINISHED",
        records=make_records(shard),
        flow_run_id="run-1",
    )
    assert count_results(engine) == {"completed": 5, "failed": 0}
    done = get_shard(engine, shard.shard_key)
    assert done is not None and done.status == "finished"


def test_complete_shard_never_downgrades_earlier_answers(engine: Engine) -> None:
    shard = make_shard(3)
    complete_shard(
        engine,
        shard,
        job_id="job-1",
        job_status="FINISHED",
        records=make_records(shard),
        flow_run_id=None,
    )
    complete_shard(
        engine,
        shard,
        job_id="job-2",
        job_status="FINISHED",
        records=make_records(shard, status="failed", tag=" again"),
        flow_run_id=None,
    )
    rows = all_results(engine)
    assert {(r["status"], r["job_id"]) for r in rows} == {("completed", "job-1")}
    assert all(r["completed_at"] is not None for r in rows)


# --------------------------------------------------------------------------- lookups


def test_completed_identities_uses_batched_queries(engine: Engine) -> None:
    rows = [result_row(i, status="completed" if i % 2 == 0 else "failed") for i in range(2000)]
    write(engine, rows)
    identities = [
        RowIdentity(r["row_key"], r["prompt_hash"], r["model_id"], r["params_hash"]) for r in rows
    ]
    # Same row key and prompt, other parameters: not the same paid work.
    other_params = [identity._replace(params_hash="1" * 64) for identity in identities[:10]]

    with counting_selects(engine) as statements:
        found = completed_identities(engine, identities + other_params)

    assert found == {identity for i, identity in enumerate(identities) if i % 2 == 0}
    assert 1 <= len(statements) <= math.ceil(2010 / storage.LOOKUP_CHUNK)
    assert completed_identities(engine, []) == set()


def test_get_shards_reads_many_ledger_rows_in_batched_queries(engine: Engine) -> None:
    shards = [make_shard(2, start=10 * i) for i in range(6)]
    for shard in shards[:4]:
        record_shard_intent(engine, shard)
    record_job_submitted(engine, shards[1].shard_key, "job-1")
    keys = [shard.shard_key for shard in shards] + ["f" * 32] * 600

    with counting_selects(engine) as statements:
        found = get_shards(engine, keys)

    assert set(found) == {shard.shard_key for shard in shards[:4]}
    assert found[shards[1].shard_key] == get_shard(engine, shards[1].shard_key)
    assert found[shards[1].shard_key].job_id == "job-1"
    assert len(statements) == 1  # 606 keys, 7 distinct: one chunk
    assert get_shards(engine, []) == {}


def test_sqlite_checkpoints_keep_the_wal_small_under_many_writes(sqlite_url: str) -> None:
    """Checkpoints run after write transactions, outside the write lock (SQLite's own, in a
    commit, held the other writers for its fsync); they must still bound the WAL file."""
    engine = make_engine(sqlite_url)
    try:
        for i in range(120):
            shard = make_shard(100, start=100 * i)
            record_shard_intent(engine, shard)
            complete_shard(
                engine,
                shard,
                job_id=f"j{i}",
                job_status="FINISHED",
                records=make_records(shard),
                flow_run_id=None,
            )
        wal = Path(engine.url.database or "").with_name(
            Path(engine.url.database or "").name + "-wal"
        )
        # Without them: SQLite's backstop at 20,000 pages, an 80 MB WAL by now.
        assert wal.stat().st_size < 16 * 2**20
        assert count_results(engine) == {"completed": 12_000, "failed": 0}
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- read-back


def test_iter_results_streams_with_filters(engine: Engine) -> None:
    write(engine, [result_row(i) | {"dataset": "a.jsonl"} for i in range(30)])
    write(engine, [result_row(100 + i, status="failed") | {"dataset": "a.jsonl"} for i in range(5)])
    write(
        engine,
        [result_row(200 + i) | {"dataset": "b.jsonl", "flow_run_id": "r2"} for i in range(8)],
    )

    options: list[dict[str, Any]] = []

    def before(_conn: Any, _cursor: Any, statement: str, _p: Any, context: Any, _m: Any) -> None:
        if "FROM generation_results" in statement:
            options.append(dict(context.execution_options))

    sa.event.listen(engine, "before_cursor_execute", before)
    try:
        streamed = iter_results(engine, dataset="a.jsonl", status="completed", batch_size=7)
        first = next(streamed)  # lazily: nothing is fetched before the first row is asked for
        rest = list(streamed)
    finally:
        sa.event.remove(engine, "before_cursor_execute", before)
    # Write order; within one batch that is identity order (see upsert_results).
    assert [first["row_key"]] + [r["row_key"] for r in rest] == sorted(
        f"row-{i}" for i in range(30)
    )
    assert options and options[0]["stream_results"] is True
    assert options[0]["yield_per"] == 7

    assert [r["row_key"] for r in iter_results(engine, status="failed")] == [
        f"row-{100 + i}" for i in range(5)
    ]
    assert len(list(iter_results(engine, flow_run_id="r2"))) == 8
    assert list(iter_results(engine, model_id="other-model")) == []
    assert count_results(engine, dataset="a.jsonl") == {"completed": 30, "failed": 5}
    assert count_results(engine, flow_run_id="r2") == {"completed": 8, "failed": 0}
    assert count_results(engine) == {"completed": 38, "failed": 5}


def test_tables_declare_their_indexes() -> None:
    results = {tuple(c.name for c in index.columns) for index in generation_results.indexes}
    assert ("dataset", "model_id", "status") in results
    jobs = {tuple(c.name for c in index.columns) for index in generation_jobs.indexes}
    assert ("status", "dataset") in jobs


def test_reading_results_out_does_not_hold_up_a_run_writing_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`studio-flows results` streams while a run persists: a reader takes no write lock.

    SQLite in WAL mode lets readers and one writer work at once, unless the reader's
    transaction began IMMEDIATE (as writes do); then the writer would wait the busy timeout.
    """
    monkeypatch.setattr(storage.engine, "_SQLITE_BUSY_TIMEOUT_MS", 200)
    engine = make_engine(f"sqlite:///{tmp_path / 'r.db'}")

    def persist(shard: Shard) -> None:
        records = make_records(shard)
        complete_shard(
            engine, shard, job_id="j", job_status="FINISHED", records=records, flow_run_id=None
        )

    try:
        persist(make_shard(3))
        reader = iter_results(engine)
        next(reader)  # the read transaction is open
        persist(make_shard(3, start=3))
        rest = list(reader)
    finally:
        engine.dispose()
    assert len(rest) >= 2
