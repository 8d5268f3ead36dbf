"""Sources other than files: a SQL query (SQLite and the real PostgreSQL), rows in memory,
and templates over columns, through the same validation and de-duplication as a file."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa

from studio_flows.datasets import (
    DatasetOptions,
    MemorySource,
    SqlSource,
    iter_good_rows,
    read_rows,
    sql_dataset_name,
    validate_dataset,
)
from studio_flows.errors import DatasetError
from studio_flows.rows import BadRow, Row

TEMPLATE = DatasetOptions(id_column="id", template="Answer in one word: {{ question }}")


def make_faq(url: str, rows: list[tuple[int, str | None]]) -> None:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE IF NOT EXISTS faq (id INTEGER PRIMARY KEY, question TEXT)"
        )
        connection.execute(
            sa.text("INSERT INTO faq (id, question) VALUES (:id, :question)"),
            [{"id": i, "question": q} for i, q in rows],
        )
    engine.dispose()


def test_a_query_is_read_as_rows_numbered_by_position_in_the_result(database_url: str) -> None:
    make_faq(database_url, [(1, "Sky colour?"), (2, None), (3, "Grass colour?")])
    source = SqlSource("SELECT id, question FROM faq ORDER BY id", database_url, "faq")

    items = list(read_rows(source, TEMPLATE))

    assert [item.row_key for item in items if isinstance(item, Row)] == ["1", "3"]
    assert [str(item) for item in items if isinstance(item, BadRow)] == [
        "faq:2: template: 'question' is undefined"
    ]
    first = next(item for item in items if isinstance(item, Row))
    assert first.messages[-1].content == "Answer in one word: Sky colour?"


def test_a_query_is_read_once_the_rows_sent_are_the_rows_validated(database_url: str) -> None:
    make_faq(database_url, [(1, "A?"), (2, "B?"), (3, "A?")])
    source = SqlSource("SELECT question AS prompt FROM faq ORDER BY id", database_url)
    report = validate_dataset(source)
    make_faq(database_url, [(4, "new after validation?")])  # a nightly insert mid-run

    sent = [row.messages[-1].content for row in iter_good_rows(source, verdict=report.verdict)]

    assert (report.rows, report.duplicates) == (2, 1)
    assert sent == ["A?", "B?"]
    assert report.verdict is not None and report.verdict.holds_for(source)
    assert SqlSource(source.query, database_url).stamp() is None  # a new read proves nothing


def test_a_failing_query_is_one_sentence_with_the_password_redacted(postgres_url: str) -> None:
    url = sa.make_url(postgres_url)
    source = SqlSource("SELECT question FROM no_such_table", postgres_url)
    with pytest.raises(DatasetError) as caught:
        validate_dataset(source)
    message = str(caught.value)
    assert message.startswith(f"{sql_dataset_name(source.query)}: the query failed on ")
    assert 'relation "no_such_table" does not exist' in message
    assert "\n" not in message
    assert url.password and str(url.password) not in message

    wrong = url.set(password="wrong-password-7f3c").render_as_string(hide_password=False)
    with pytest.raises(DatasetError) as refused:
        validate_dataset(SqlSource("SELECT 1 AS prompt", wrong))
    assert "wrong-password-7f3c" not in str(refused.value)
    assert "***" in str(refused.value)


def test_sql_text_with_colons_and_percent_signs_is_sent_as_written(database_url: str) -> None:
    make_faq(database_url, [(1, "at 10:30 :x 50%?")])
    query = "SELECT question AS prompt FROM faq WHERE question LIKE '%:x 50%'"
    rows = list(iter_good_rows(SqlSource(query, database_url)))
    assert [r.messages[-1].content for r in rows] == ["at 10:30 :x 50%?"]


def test_the_default_name_of_a_query_ignores_spacing_only() -> None:
    assert sql_dataset_name("SELECT id FROM faq") == sql_dataset_name(" SELECT id\n  FROM faq;")
    assert sql_dataset_name("SELECT id FROM faq") != sql_dataset_name("SELECT id FROM faq2")


@pytest.mark.parametrize("shape", ["list", "arrow", "pandas"])
def test_rows_in_memory_are_read_like_a_file(shape: str, tmp_path: Path) -> None:
    records = [
        {"id": 1, "question": "A?"},
        {"id": 2, "question": "B?"},
        {"id": 1, "question": "A?"},
    ]
    rows: object = records
    if shape == "arrow":
        rows = pa.Table.from_pylist(records)
    elif shape == "pandas":
        pandas = pytest.importorskip("pandas")
        rows = pandas.DataFrame(records)
    file = tmp_path / "same.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in records))

    in_memory = validate_dataset(MemorySource(rows), TEMPLATE)
    from_file = validate_dataset(file, TEMPLATE)

    assert (in_memory.rows, in_memory.duplicates) == (2, 1)
    assert [(r.row_key, r.prompt_hash) for r in iter_good_rows(MemorySource(rows), TEMPLATE)] == [
        (r.row_key, r.prompt_hash) for r in iter_good_rows(file, TEMPLATE)
    ]
    assert from_file.rows == in_memory.rows


def test_a_template_over_csv_and_a_system_template(tmp_path: Path) -> None:
    path = tmp_path / "faq.csv"
    path.write_text("id,question,topic\n1,Sky colour?,weather\n2,,weather\n")
    options = DatasetOptions(
        id_column="id", template="Q: {{ question }}", system_template="You know {{ topic }}."
    )
    items = list(read_rows(path, options))
    row = items[0]
    assert isinstance(row, Row)
    assert [(m.role, m.content) for m in row.messages] == [
        ("system", "You know weather."),
        ("user", "Q: Sky colour?"),
    ]
    assert str(items[1]) == f"{path}:3: template: 'question' is undefined"


def test_a_template_syntax_error_is_one_sentence() -> None:
    with pytest.raises(DatasetError, match=r"^--template: unexpected '}' \(line 2\)$"):
        validate_dataset(MemorySource([{"q": "x"}]), DatasetOptions(template="Q:\n{{ q }"))


def test_the_sandbox_refuses_unsafe_attribute_access_as_a_bad_row() -> None:
    options = DatasetOptions(template="{{ q.__class__.__mro__ }}")
    (bad,) = read_rows(MemorySource([{"q": "x"}]), options)
    assert isinstance(bad, BadRow) and bad.reason.startswith("template: "), bad
