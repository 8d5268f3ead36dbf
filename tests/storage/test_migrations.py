"""Schema versions through Alembic, on SQLite and the real PostgreSQL server.

Databases written before Alembic (schema 1 and 2, tests/fixtures/old_schemas.py) are
upgraded in place on first use without losing a row; the setting that turns automatic
upgrades off; newer databases refused; concurrent starters on an old database.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from studio_flows import storage
from studio_flows.errors import ConfigurationError
from studio_flows.rows import RowIdentity
from studio_flows.storage import (
    completed_identities,
    count_results,
    iter_results,
    make_engine,
    upgrade_database,
    upsert_results,
)
from studio_flows.storage.migrations import VERSION_TABLE
from tests.fixtures.databases import make_engines_at_once
from tests.fixtures.old_schemas import IDENTITY, create_old_database, old_result_row

OLD_COLUMNS = [c for c in old_result_row(0) if c != "created_at"]


def _old_rows(n: int) -> list[dict[str, Any]]:
    return [old_result_row(i, status="completed" if i % 3 else "failed") for i in range(n)]


def _versions(url: str) -> tuple[list[int], list[str]]:
    """(studio_flows_schema's versions, Alembic's revision) of the database at ``url``."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            versions = conn.execute(sa.select(storage.schema_version.c.version)).scalars()
            legacy = sorted(versions.all())
            tables = sa.inspect(conn).get_table_names()
            revisions = (
                conn.exec_driver_sql(f"SELECT version_num FROM {VERSION_TABLE}").scalars().all()
                if VERSION_TABLE in tables
                else []
            )
    finally:
        engine.dispose()
    return legacy, list(revisions)


@pytest.mark.parametrize("version", [1, 2, 3])
def test_a_database_written_before_alembic_is_upgraded_in_place(
    database_url: str, version: int
) -> None:
    old_rows = _old_rows(2500)  # more than one batch of the identity-key fill
    create_old_database(database_url, version, old_rows)

    engine = make_engine(database_url)
    try:
        stored = {row["row_key"]: row for row in iter_results(engine)}
        assert len(stored) == len(old_rows)
        for old in old_rows:
            row = stored[old["row_key"]]
            assert {c: row[c] for c in OLD_COLUMNS} == {c: old[c] for c in OLD_COLUMNS}
            assert row["created_at"] == old["created_at"]
            assert row["identity_key"] == RowIdentity(*(old[n] for n in IDENTITY)).key
            assert row["metadata"] is None
            assert row["parsed"] is None
        identities = [RowIdentity(*(r[n] for n in IDENTITY)) for r in old_rows]
        assert completed_identities(engine, identities) == {
            identity for i, identity in enumerate(identities) if i % 3
        }
        # The upgraded table takes kept columns, and still never undoes a completed answer.
        again = {**old_result_row(0, status="completed"), "metadata": {"id": 7}, "parsed": [1]}
        with engine.begin() as conn:
            upsert_results(conn, [again, old_result_row(1, status="failed")])
        by_key = {row["row_key"]: row for row in iter_results(engine)}
        assert by_key["row-0"]["metadata"] == {"id": 7}
        assert by_key["row-0"]["parsed"] == [1]
        assert by_key["row-1"]["status"] == "completed"
        failed = sum(1 for row in old_rows if row["status"] == "failed")
        assert count_results(engine) == {"completed": 2500 - failed + 1, "failed": failed - 1}
        assert len(storage.get_shards(engine, ["s" * 32])) == 1
    finally:
        engine.dispose()
    assert _versions(database_url) == (list(range(version, 6)), ["0005"])
    make_engine(database_url).dispose()  # a second start finds schema 5: nothing to do
    assert _versions(database_url) == (list(range(version, 6)), ["0005"])


def _not_the_version_table(name: str | None, kind: str, _parent: Any) -> bool:
    return not (kind == "table" and name == VERSION_TABLE)


def _schema_differences(url: str) -> list[Any]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "include_name": _not_the_version_table}
            )
            return list(compare_metadata(context, storage.metadata))
    finally:
        engine.dispose()


@pytest.mark.parametrize("version", [1, 2, 3])
def test_an_upgraded_database_has_the_declared_schema(database_url: str, version: int) -> None:
    """Upgraded = created new, but for what SQLite cannot alter in place (revision 0002)."""
    create_old_database(database_url, version, _old_rows(3))
    make_engine(database_url).dispose()
    found = _schema_differences(database_url)
    if database_url.startswith("sqlite") and version == 1:
        kinds = sorted(str(diff[0][0] if isinstance(diff, list) else diff[0]) for diff in found)
        assert kinds == ["modify_nullable", "remove_constraint"]  # identity_key, the wide unique
    else:
        assert found == []


def test_a_new_database_has_the_declared_schema(database_url: str) -> None:
    make_engine(database_url).dispose()
    assert _schema_differences(database_url) == []
    assert _versions(database_url) == ([storage.SCHEMA_VERSION], ["0005"])


def test_a_revision_newer_than_the_code_is_refused(database_url: str) -> None:
    make_engine(database_url).dispose()
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE {VERSION_TABLE} SET version_num = '0006'")
    engine.dispose()
    with pytest.raises(ConfigurationError, match=r"version 6, newer than this studio-flows"):
        make_engine(database_url)


def test_an_alembic_table_of_another_project_is_left_alone(database_url: str) -> None:
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        conn.exec_driver_sql("INSERT INTO alembic_version VALUES ('ae1027a6acf')")
    engine.dispose()
    make_engine(database_url).dispose()
    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT * FROM alembic_version").all() == [("ae1027a6acf",)]
    engine.dispose()


def test_with_auto_upgrade_off_an_old_database_is_one_sentence_and_untouched(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_old_database(database_url, 2, _old_rows(3))
    monkeypatch.setenv("MODEL_STUDIO_DATABASE_AUTO_UPGRADE", "false")
    with pytest.raises(ConfigurationError) as caught:
        make_engine(database_url)
    message = str(caught.value)
    assert "is at schema 2, this studio-flows needs schema 5" in message
    assert "run `studio-flows db upgrade`" in message
    password = sa.make_url(database_url).password
    assert password is None or password not in message
    assert _versions(database_url) == ([2], [])

    upgraded = upgrade_database(database_url)
    assert (upgraded.before, upgraded.after) == (2, 5)
    assert str(upgraded).startswith("upgraded ") and str(upgraded).endswith(" from schema 2 to 5")
    make_engine(database_url).dispose()  # up to date: the setting no longer matters
    assert str(upgrade_database(database_url)).endswith("is already at schema 5")


def test_with_auto_upgrade_off_a_new_database_is_not_created(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODEL_STUDIO_DATABASE_AUTO_UPGRADE", "false")
    with pytest.raises(ConfigurationError, match="has no studio-flows tables"):
        make_engine(database_url)
    engine = sa.create_engine(database_url)
    assert "generation_results" not in sa.inspect(engine).get_table_names()
    engine.dispose()
    assert str(upgrade_database(database_url)).startswith("created schema 5 in ")


def test_concurrent_processes_upgrade_an_old_database_once(database_url: str) -> None:
    create_old_database(database_url, 1, _old_rows(300))
    assert make_engines_at_once(database_url) == [0, 0, 0, 0]
    assert _versions(database_url) == ([1, 2, 3, 4, 5], ["0005"])
    engine = make_engine(database_url)
    try:
        assert sum(count_results(engine).values()) == 300
        columns = {c["name"] for c in sa.inspect(engine).get_columns("generation_results")}
        assert {"metadata", "parsed"} <= columns
    finally:
        engine.dispose()


def test_the_shipped_revisions_end_at_the_declared_schema_version() -> None:
    from alembic.script import ScriptDirectory

    from studio_flows.storage.migrations import _SCRIPTS

    script = ScriptDirectory(str(_SCRIPTS))
    assert script.get_heads() == [f"{storage.SCHEMA_VERSION:04d}"]
    assert [r.revision for r in script.walk_revisions()] == ["0005", "0004", "0003", "0002", "0001"]
