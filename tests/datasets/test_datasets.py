"""Dataset readers: formats, bad rows with their line numbers, identities, shards, memory."""

from __future__ import annotations

import csv
import itertools
import json
import os
import re
import runpy
import subprocess
import sys
import textwrap
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from studio_flows import datasets
from studio_flows.datasets import (
    DatasetOptions,
    DatasetReport,
    dataset_name,
    detect_format,
    iter_good_rows,
    iter_shards,
    read_rows,
    validate_dataset,
)
from studio_flows.errors import DatasetError
from studio_flows.models import Message
from studio_flows.rows import (
    BadRow,
    GenerationParams,
    Row,
    RowIdentity,
    canonical_json,
    messages_payload,
    prompt_hash,
    sha256_hex,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BY_ID = DatasetOptions(id_column="id")
PARAMS = GenerationParams(model_id="meta-llama/Llama-3.3-70B-Instruct", temperature=0.7)

# Conversations with the characters that break naive writers: quotes, commas, newlines,
# non-ASCII text, and an integer-looking id.
CONVERSATIONS: list[dict[str, Any]] = [
    {"id": "a", "prompt": 'Say "hello", then stop.'},
    {"id": "b", "prompt": "Line one\nline two, with a comma"},
    {"id": "7", "prompt": "Grüß Gott — ¿qué tal? 你好"},
    {
        "id": "d",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!\nHow can I help?"},
            {"role": "user", "content": "Tell me a joke."},
        ],
    },
]


# -- writers for temporary datasets -------------------------------------------------------


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def write_csv(path: Path, rows: list[dict[str, Any]], header: list[str] | None = None) -> Path:
    header = header or ["id", "prompt", "messages"]
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            cells = []
            for column in header:
                value = row.get(column)
                if isinstance(value, list):
                    value = json.dumps(value, ensure_ascii=False)
                cells.append("" if value is None else value)
            writer.writerow(cells)
    return path


def write_parquet(path: Path, rows: list[dict[str, Any]], **kwargs: Any) -> Path:
    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    schema = pa.schema(
        [("id", pa.string()), ("prompt", pa.string()), ("messages", pa.list_(message))]
    )
    table = pa.Table.from_pylist(
        [{k: r.get(k) for k in ("id", "prompt", "messages")} for r in rows], schema=schema
    )
    pq.write_table(table, path, **kwargs)
    return path


def conversation(row: Row) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in row.messages]


def rows_of(path: Path, options: DatasetOptions = BY_ID) -> list[Row]:
    items = list(read_rows(path, options))
    assert all(isinstance(item, Row) for item in items), items
    return items  # type: ignore[return-value]


PLAIN = DatasetOptions()


def bad_rows(path: Path, options: DatasetOptions = PLAIN) -> list[BadRow]:
    return [item for item in read_rows(path, options) if isinstance(item, BadRow)]


# -- formats ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.jsonl", "jsonl"),
        ("a.NDJSON", "jsonl"),
        ("dir/a.csv", "csv"),
        ("a.parquet", "parquet"),
        ("a.pq", "parquet"),
    ],
)
def test_detect_format_by_suffix(name: str, expected: str) -> None:
    assert detect_format(name) == expected


def test_detect_format_unknown_suffix_names_the_file() -> None:
    with pytest.raises(DatasetError, match=r"data/prompts\.txt.*'\.txt'"):
        detect_format("data/prompts.txt")


def test_explicit_format_overrides_the_suffix(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "prompts.txt", [{"prompt": "Hi"}])
    rows = rows_of(path, DatasetOptions(format="jsonl"))
    assert [conversation(r) for r in rows] == [[("user", "Hi")]]


def test_dataset_name_is_the_file_name() -> None:
    assert dataset_name(Path("/data/in/prompts.csv")) == "prompts.csv"


def test_examples_hold_the_same_forty_conversations_in_every_format() -> None:
    by_format = {fmt: rows_of(EXAMPLES / f"prompts.{fmt}") for fmt in ("jsonl", "csv", "parquet")}
    jsonl = by_format["jsonl"]
    assert len(jsonl) == 40
    for rows in by_format.values():
        assert [r.identity(PARAMS) for r in rows] == [r.identity(PARAMS) for r in jsonl]
        assert [conversation(r) for r in rows] == [conversation(r) for r in jsonl]
    roles = [[m.role for m in r.messages] for r in jsonl]
    assert sum(rs[0] == "system" for rs in roles) >= 4
    assert sum("assistant" in rs for rs in roles) >= 6
    assert sum(rs == ["user"] for rs in roles) >= 25
    assert len({r.row_key for r in jsonl}) == 40


def test_make_examples_regenerates_the_committed_files(tmp_path: Path) -> None:
    script = runpy.run_path(str(EXAMPLES / "make_examples.py"))
    script["main"](tmp_path)
    for fmt in ("jsonl", "csv", "parquet"):
        fresh = [r.identity(PARAMS) for r in rows_of(tmp_path / f"prompts.{fmt}")]
        committed = [r.identity(PARAMS) for r in rows_of(EXAMPLES / f"prompts.{fmt}")]
        assert fresh == committed, fmt


def test_each_format_round_trips_the_same_conversations(tmp_path: Path) -> None:
    paths = [
        write_jsonl(tmp_path / "c.jsonl", CONVERSATIONS),
        write_csv(tmp_path / "c.csv", CONVERSATIONS),
        write_parquet(tmp_path / "c.parquet", CONVERSATIONS),
    ]
    results = [rows_of(path) for path in paths]
    expected = [
        [("user", r["prompt"])]
        if "prompt" in r
        else [(m["role"], m["content"]) for m in r["messages"]]
        for r in CONVERSATIONS
    ]
    for rows in results:
        assert [conversation(r) for r in rows] == expected
        assert [r.row_key for r in rows] == ["a", "b", "7", "d"]
        assert [r.identity(PARAMS) for r in rows] == [r.identity(PARAMS) for r in results[0]]


def test_integer_ids_equal_their_string_form(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "ids.jsonl", [{"id": 7, "prompt": "Hi"}])
    assert [r.row_key for r in rows_of(path)] == ["7"]


def test_parquet_messages_may_be_json_text_and_ids_integers(tmp_path: Path) -> None:
    table = pa.table(
        {"id": [1, 2], "messages": [json.dumps([{"role": "user", "content": "Hi"}]), None]}
    )
    pq.write_table(table, tmp_path / "t.parquet")
    items = list(read_rows(tmp_path / "t.parquet", BY_ID))
    assert isinstance(items[0], Row) and items[0].row_key == "1"
    bad = items[1]
    assert isinstance(bad, BadRow) and (bad.file, bad.line) == (str(tmp_path / "t.parquet"), 2)
    assert "no 'prompt' and no 'messages'" in bad.reason


def test_default_key_is_the_conversation_hash(tmp_path: Path) -> None:
    (row,) = rows_of(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Hi"}]), DatasetOptions())
    assert row.row_key == row.prompt_hash


def test_custom_column_names(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"key": "k1", "question": "Why?"}])
    options = DatasetOptions(prompt_column="question", id_column="key")
    (row,) = rows_of(path, options)
    assert (row.row_key, conversation(row)) == ("k1", [("user", "Why?")])


# -- identities are stable ------------------------------------------------------------------


def test_prompt_hash_is_the_hash_of_the_canonical_json_for_every_code_point() -> None:
    """prompt_hash takes a fast path (orjson); its bytes must be canonical_json's exactly."""
    characters = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    for start in range(0, len(characters), 4096):
        content = "".join(characters[start : start + 4096])
        messages = [Message(role="user", content=content), Message(role="assistant", content='"\\')]
        payload = canonical_json(messages_payload(messages))
        assert prompt_hash(messages) == sha256_hex(payload), f"from U+{ord(content[0]):04X}"


def test_identity_golden_values(tmp_path: Path) -> None:
    """Computed once; a change in canonicalisation or hashing must fail this test."""
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "geo-1", "prompt": "What is the capital?"}])
    (row,) = rows_of(path)
    params = GenerationParams(model_id="m", temperature=0.7, max_tokens=512)
    assert row.identity(params) == RowIdentity(
        "geo-1",
        "13dbd5dc4d495393fe506199ad9aed3e6e77b449430383ba71d2084a4a64ed8a",
        "m",
        "750840bae40e3f1d53184926d2f4b2b4a2717185f0f97588b64afc751999df94",
    )
    (shard,) = iter_shards([row], dataset="p.jsonl", params=params, shard_size=10)
    assert shard.shard_key == "1e3f6f0ab95aa923176bca65a2eff9ac"


def test_system_prompt_is_prepended_unless_the_row_has_one(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt": "Hi"},
            {"messages": [{"role": "system", "content": "Own."}, {"role": "user", "content": "Q"}]},
        ],
    )
    rows = rows_of(path, DatasetOptions(system_prompt="Be kind."))
    assert conversation(rows[0]) == [("system", "Be kind."), ("user", "Hi")]
    assert conversation(rows[1]) == [("system", "Own."), ("user", "Q")]
    # The system prompt is part of the content, so it changes the identity.
    (plain,) = rows_of(write_jsonl(tmp_path / "q.jsonl", [{"prompt": "Hi"}]), DatasetOptions())
    assert plain.prompt_hash != rows[0].prompt_hash


# -- bad rows -------------------------------------------------------------------------------

GOOD = '{"id": "ok", "prompt": "Fine"}'
BAD_JSONL_LINES: list[tuple[str, str]] = [
    ('{"id": "x", "prompt": "unterminated', "invalid JSON"),
    ('["a list"]', "expected a JSON object, got array"),
    ('"just a string"', "expected a JSON object, got string"),
    ('{"id": "x"}', "no 'prompt' and no 'messages'"),
    ('{"id": "x", "prompt": null}', "no 'prompt' and no 'messages'"),
    ('{"id": "x", "prompt": ""}', "'prompt' is empty"),
    ('{"id": "x", "prompt": "   "}', "'prompt' is empty"),
    ('{"id": "x", "prompt": 42}', "'prompt' must be a string, got number"),
    ('{"id": "x", "messages": []}', "'messages' is empty"),
    ('{"id": "x", "messages": "Hi"}', "'messages' must be an array"),
    ('{"id": "x", "messages": {"role": "user"}}', "'messages' must be an array"),
    ('{"id": "x", "messages": ["Hi"]}', "messages[0] must be an object"),
    ('{"id": "x", "messages": [{"role": "bot", "content": "Hi"}]}', "messages[0] has role 'bot'"),
    ('{"id": "x", "messages": [{"role": ["u"], "content": "Hi"}]}', "messages[0] has role ['u']"),
    ('{"id": "x", "messages": [{"content": "Hi"}]}', "messages[0] has no 'role'"),
    ('{"id": "x", "messages": [{"role": "user"}]}', "messages[0] has no 'content'"),
    ('{"id": "x", "messages": [{"role": "user", "content": 3}]}', "content must be a string"),
    ('{"id": "x", "messages": [{"role": "user", "content": ""}]}', "messages[0] content is empty"),
    (
        '{"id": "x", "messages": [{"role": "user", "content": "Hi", "name": "n"}]}',
        "messages[0] has unexpected keys 'name'",
    ),
    (
        '{"id": "x", "messages": [{"role": "user", "content": "Q"},'
        ' {"role": "assistant", "content": "A"}]}',
        "the last message is from 'assistant'",
    ),
    (
        '{"id": "x", "prompt": "Hi", "messages": [{"role": "user", "content": "Hi"}]}',
        "both 'prompt' and 'messages' are set",
    ),
    ('{"prompt": "Hi"}', "missing id: no value in 'id'"),
    ('{"id": "", "prompt": "Hi"}', "missing id: 'id' is empty"),
    ('{"id": true, "prompt": "Hi"}', "must be a string or an integer, got boolean"),
    ('{"id": 1.5, "prompt": "Hi"}', "must be a string or an integer, got number"),
]


@pytest.mark.parametrize(("line", "reason"), BAD_JSONL_LINES)
def test_each_bad_jsonl_row_has_its_reason_and_line(tmp_path: Path, line: str, reason: str) -> None:
    # A blank line before it: line numbers are physical lines, blanks included.
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{GOOD}\n\n{line}\n{GOOD.replace('ok', 'ok2')}\n", encoding="utf-8")
    items = list(read_rows(path, BY_ID))
    assert [type(i).__name__ for i in items] == ["Row", "BadRow", "Row"]
    bad = items[1]
    assert isinstance(bad, BadRow)
    assert (bad.file, bad.line) == (str(path), 3)
    assert reason in bad.reason
    assert "\n" not in bad.reason


def test_non_utf8_jsonl_line_is_a_bad_row(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n{"prompt": "ok too"}\n')
    (bad,) = bad_rows(path)
    assert (bad.line, bad.reason) == (2, "not valid UTF-8 (byte 0xe9 at column 16)")


def test_jsonl_with_bom_and_crlf_line_endings(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "a"}\r\n{"prompt": "b"}\r\n')
    assert [conversation(r)[0][1] for r in rows_of(path, DatasetOptions())] == ["a", "b"]


def test_csv_line_numbers_survive_quoted_newlines(tmp_path: Path) -> None:
    path = tmp_path / "multi.csv"
    path.write_text(
        "id,prompt,messages\n"  # line 1
        'a,"first\nsecond\nthird",\n'  # lines 2-4
        "b,,\n"  # line 5: no prompt, no messages
        'c,"x\ny",' + '"[{""role"": ""bot"", ""content"": ""Hi""}]"\n'  # lines 6-7, both set
        'd,,"[{""role"": ""bot"", ""content"": ""Hi""}]"\n'  # line 8: wrong role
        "e,,not json\n"  # line 9
        "f,ok\n"  # line 10: too few fields
        '"g"x,ok,\n'  # line 11: stray quote
        'h,,"[{""role"": ""user"",\n""content"": 5}]"\n'  # lines 12-13
        ",fine,\n"  # line 14: missing id
        "\n"  # line 15: blank
        "j,last,\n",  # line 16
        encoding="utf-8",
    )
    items = list(read_rows(path, BY_ID))
    found = [(i.line, i.reason if isinstance(i, BadRow) else "ok") for i in items]
    assert [line for line, _ in found] == [2, 5, 6, 8, 9, 10, 11, 12, 14, 16]
    reasons = dict(found)
    assert reasons[2] == reasons[16] == "ok"
    assert "no 'prompt' and no 'messages'" in reasons[5]
    assert "both 'prompt' and 'messages' are set" in reasons[6]
    assert "messages[0] has role 'bot'" in reasons[8]
    assert "'messages' is not valid JSON" in reasons[9]
    assert reasons[10] == "the record has 2 fields, the header has 3"
    assert "malformed CSV record" in reasons[11]
    assert "content must be a string, got number" in reasons[12]
    assert "missing id" in reasons[14]
    assert conversation(items[0]) == [("user", "first\nsecond\nthird")]  # type: ignore[arg-type]


def test_csv_unterminated_quote_is_a_bad_row_at_its_start(tmp_path: Path) -> None:
    path = tmp_path / "open.csv"
    path.write_text('prompt\nok\n"never closed\nmore\n', encoding="utf-8")
    items = list(read_rows(path))
    assert isinstance(items[0], Row)
    assert isinstance(items[1], BadRow) and items[1].line == 3
    assert "malformed CSV record" in items[1].reason


def test_non_utf8_csv_record_is_a_bad_row(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"id,prompt\na,ok\nb,caf\xe9\nc,\xef\xbb\xbfstill ok\n")
    items = list(read_rows(path, BY_ID))
    assert [(i.line, getattr(i, "reason", "ok")) for i in items] == [
        (2, "ok"),
        (3, "the text is not valid UTF-8"),
        (4, "ok"),
    ]


def test_non_utf8_csv_id_is_a_bad_row(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"id,prompt\nb\xe9,hello\n")
    assert [b.reason for b in bad_rows(path, BY_ID)] == ["the text is not valid UTF-8"]


def test_parquet_bad_rows_carry_their_row_numbers(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = [{"id": f"r{i}", "prompt": f"Q{i}"} for i in range(1, 5001)]
    rows[2] = {"id": "r3", "prompt": ""}
    rows[4999] = {"id": "r5000", "messages": [{"role": "assistant", "content": "A"}]}
    # Small row groups and more rows than one record batch: numbers must carry across both.
    path = write_parquet(tmp_path / "p.parquet", rows, row_group_size=700)
    bad = bad_rows(path, BY_ID)
    assert [(b.line, b.reason) for b in bad] == [
        (3, "'prompt' is empty"),
        (5000, "the last message is from 'assistant'; a conversation must end with 'user'"),
    ]
    good = [r for r in read_rows(path, BY_ID) if isinstance(r, Row)]
    assert len(good) == 4998 and good[-1].line == 4999 and good[-1].row_key == "r4999"


# -- whole-file problems ---------------------------------------------------------------------


def test_missing_file_is_a_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"nope\.jsonl: no such dataset file"):
        read_rows(tmp_path / "nope.jsonl")


def test_directory_is_a_dataset_error(tmp_path: Path) -> None:
    folder = tmp_path / "dir.csv"
    folder.mkdir()
    with pytest.raises(DatasetError, match=r"dir\.csv: is a directory"):
        read_rows(folder)


@pytest.mark.parametrize("suffix", ["jsonl", "csv", "parquet"])
def test_empty_file_has_zero_rows_and_does_not_validate(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"empty.{suffix}"
    path.write_bytes(b"")
    assert list(read_rows(path)) == []
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(path))}: no rows$"):
        validate_dataset(path)


@pytest.mark.parametrize(
    ("name", "content"),
    [("blank.jsonl", b"\n  \n\n"), ("header.csv", b"id,prompt\n"), ("blank.csv", b"\n\n")],
)
def test_a_file_of_blank_lines_or_only_a_header_does_not_validate(
    tmp_path: Path, name: str, content: bytes
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(path))}: no rows$"):
        validate_dataset(path, on_bad_rows="skip")


def test_a_parquet_file_without_rows_does_not_validate(tmp_path: Path) -> None:
    path = tmp_path / "none.parquet"
    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), path)
    with pytest.raises(DatasetError, match=r"none\.parquet: no rows$"):
        validate_dataset(path)


def test_csv_with_only_a_header_has_zero_rows(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "h.csv", [])
    assert list(read_rows(path, BY_ID)) == []


def test_corrupt_parquet_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not really parquet")
    with pytest.raises(DatasetError, match=r"broken\.parquet: not a readable Parquet file"):
        list(read_rows(path))


def test_truncated_parquet_names_the_file(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "t.parquet", CONVERSATIONS)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] + data[-200:])
    with pytest.raises(DatasetError, match=r"t\.parquet"):
        list(read_rows(path, BY_ID))


@pytest.mark.parametrize(
    ("writer", "header"),
    [("csv", ["id", "text"]), ("parquet", None)],
)
def test_missing_prompt_and_messages_columns(
    tmp_path: Path, writer: str, header: list[str] | None
) -> None:
    if writer == "csv":
        path = write_csv(tmp_path / "cols.csv", [{"id": "a", "text": "Hi"}], header=header)
    else:
        path = tmp_path / "cols.parquet"
        pq.write_table(pa.table({"id": ["a"], "text": ["Hi"]}), path)
    with pytest.raises(DatasetError, match=r"cols\.\w+: neither a 'prompt' nor a 'messages'"):
        list(read_rows(path, BY_ID))


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_missing_id_column_names_it(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"noid.{suffix}"
    if suffix == "csv":
        write_csv(path, [{"prompt": "Hi"}], header=["prompt"])
    else:
        pq.write_table(pa.table({"prompt": ["Hi"]}), path)
    with pytest.raises(DatasetError, match=rf"noid\.{suffix}: no id column 'key'"):
        list(read_rows(path, DatasetOptions(id_column="key")))


def test_id_column_cannot_be_the_prompt_column(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Hi"}])
    with pytest.raises(DatasetError, match="cannot also be the prompt"):
        read_rows(path, DatasetOptions(id_column="prompt"))


# -- duplicates ---------------------------------------------------------------------------------


def test_exact_duplicates_are_dropped_and_counted(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [{"prompt": "A"}, {"prompt": "B"}, {"prompt": "A"}, {"prompt": "A"}],
    )
    report = validate_dataset(path)
    assert (report.rows, report.duplicates, report.bad_count) == (2, 2, 0)
    assert [r.line for r in iter_good_rows(path)] == [1, 2]
    assert [r.line for r in iter_good_rows(path, dedup=False)] == [1, 2, 3, 4]


def test_same_content_under_different_ids_is_not_a_duplicate(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": 1, "prompt": "A"}, {"id": 2, "prompt": "A"}])
    assert [r.row_key for r in iter_good_rows(path, BY_ID)] == ["1", "2"]


def test_conflicting_ids_are_bad_rows_naming_the_first(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"id": "x", "prompt": "A"},
            {"id": "x", "prompt": "B"},
            {"id": "x", "prompt": "A"},
            {"id": "x", "prompt": "B"},
        ],
    )
    report = validate_dataset(path, BY_ID, on_bad_rows="skip")
    assert (report.rows, report.duplicates, report.bad_count) == (1, 1, 2)
    assert [str(b) for b in report.bad_rows] == [
        f"{path}:2: duplicate id 'x' with different content (first seen on line 1)",
        f"{path}:4: duplicate id 'x' with different content (first seen on line 1)",
    ]


def test_duplicate_verdicts_do_not_depend_on_batch_boundaries(tmp_path: Path) -> None:
    batch = datasets.dedup._DEDUP_BATCH
    rows: list[dict[str, Any]] = [{"id": f"r{i}", "prompt": f"Q{i}"} for i in range(3 * batch)]
    rows[batch + 5] = {"id": "r1", "prompt": "Q1"}  # exact duplicate, next batch
    rows[batch + 6] = {"id": "r2", "prompt": "other"}  # conflict with line 3
    rows[batch + 7] = {"id": "r2", "prompt": "other"}  # the same conflict again, same batch
    rows[2 * batch + 1] = {"id": "r2", "prompt": "other"}  # and again, a later batch
    path = write_jsonl(tmp_path / "big.jsonl", rows)
    report = validate_dataset(path, BY_ID, on_bad_rows="skip")
    assert report.duplicates == 1
    assert [b.line for b in report.bad_rows] == [batch + 7, batch + 8, 2 * batch + 2]
    assert all("first seen on line 3" in b.reason for b in report.bad_rows)
    assert report.rows == 3 * batch - 4


def _no_seen_keys_store(*args: object) -> None:
    raise AssertionError("the seen-keys store was opened: the pass looked keys up again")


def test_a_validated_file_is_not_deduplicated_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = datasets.dedup._DEDUP_BATCH
    rows: list[dict[str, Any]] = [{"id": f"r{i}", "prompt": f"Q{i}"} for i in range(2 * batch)]
    rows[batch + 5] = {"id": "r1", "prompt": "Q1"}  # exact duplicate of line 2
    rows[batch + 6] = {"id": "r2", "prompt": "other"}  # conflict with line 3
    path = write_jsonl(tmp_path / "big.jsonl", rows)
    report = validate_dataset(path, BY_ID, on_bad_rows="skip")
    looked_up: list[BadRow] = []
    expected = [r.line for r in iter_good_rows(path, BY_ID, on_bad_row=looked_up.append)]

    monkeypatch.setattr(datasets.dedup, "_SeenKeys", _no_seen_keys_store)
    judged: list[BadRow] = []
    lines = [
        r.line
        for r in iter_good_rows(path, BY_ID, on_bad_row=judged.append, verdict=report.verdict)
    ]
    assert lines == expected and len(lines) == report.rows
    assert [b.line for b in judged] == [b.line for b in looked_up] == [batch + 7]
    assert judged[0].reason.startswith("duplicate id 'r2' with different content")


def test_a_verdict_is_not_used_once_the_file_changed(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "A"}, {"prompt": "B"}, {"prompt": "A"}])
    report = validate_dataset(path)
    # Now line 1 is new and the duplicate of "A" is on line 4: an old verdict would drop
    # line 3 ("B") and send "A" twice.
    write_jsonl(path, [{"prompt": "C"}, {"prompt": "A"}, {"prompt": "B"}, {"prompt": "A"}])
    rows = list(iter_good_rows(path, verdict=report.verdict))
    assert [r.line for r in rows] == [1, 2, 3]


def test_a_file_changed_while_validated_leaves_no_verdict(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "A"}, {"prompt": "B"}])
    scan = datasets.scan._scan(path, DatasetOptions(), dedup=True)
    items = iter(scan)
    next(items)
    with path.open("a") as handle:
        handle.write('{"prompt": "A"}\n')
    list(items)
    assert scan.verdict is None


# -- validate: fail or skip ----------------------------------------------------------------------


def test_validate_fail_raises_one_readable_error(tmp_path: Path) -> None:
    lines = [GOOD] + ["[]"] * 14 + ['{"prompt": ""}']
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DatasetError) as caught:
        validate_dataset(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path} has 15 bad rows")
    assert f"{path}:2: expected a JSON object, got array" in message
    assert f"{path}:11: expected" in message and f"{path}:12:" not in message
    assert message.endswith("…and 5 more.")


def test_validate_skip_reports_counts_and_the_first_bad_rows(tmp_path: Path) -> None:
    lines = [GOOD] + ["[]"] * 25 + [GOOD]
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    report = validate_dataset(path, on_bad_rows="skip")
    assert isinstance(report, DatasetReport)
    assert (report.rows, report.bad_count, report.duplicates) == (1, 25, 1)
    assert [b.line for b in report.bad_rows] == list(range(2, 22))


def test_validate_passes_a_clean_file() -> None:
    report = validate_dataset(EXAMPLES / "prompts.jsonl", BY_ID)
    assert (report.rows, report.bad_count, report.duplicates) == (40, 0, 0)


def test_iter_good_rows_hands_bad_rows_to_a_callback(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [GOOD, "[]"])
    seen: list[BadRow] = []
    assert len(list(iter_good_rows(path, BY_ID, on_bad_row=seen.append))) == 1
    assert [b.line for b in seen] == [2]


# -- shards ---------------------------------------------------------------------------------------


def test_shards_are_consecutive_sized_and_deterministic() -> None:
    rows = rows_of(EXAMPLES / "prompts.jsonl")
    first = list(iter_shards(rows, dataset="prompts.jsonl", params=PARAMS, shard_size=16))
    again = list(iter_shards(rows, dataset="prompts.jsonl", params=PARAMS, shard_size=16))
    assert [len(s.rows) for s in first] == [16, 16, 8]
    assert [r for s in first for r in s.rows] == rows
    assert [s.shard_key for s in first] == [s.shard_key for s in again]
    assert len({s.shard_key for s in first}) == 3
    other = GenerationParams(model_id=PARAMS.model_id, temperature=0.2)
    changed = list(iter_shards(rows, dataset="prompts.jsonl", params=other, shard_size=16))
    assert not {s.shard_key for s in changed} & {s.shard_key for s in first}


def test_shards_are_cut_lazily() -> None:
    def endless() -> Iterator[Row]:
        for i in itertools.count():
            yield Row.from_messages([Message(role="user", content=f"q{i}")], line=i + 1)

    shards = iter_shards(endless(), dataset="d", params=PARAMS, shard_size=3)
    assert [r.line for r in next(shards).rows] == [1, 2, 3]


def test_shard_size_must_be_positive() -> None:
    with pytest.raises(DatasetError, match="shard_size"):
        list(iter_shards([], dataset="d", params=PARAMS, shard_size=0))


# -- nothing but DatasetError ---------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)
message_like = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["user", "assistant", "system", "bot", ""]) | json_values,
        "content": st.text(max_size=10) | json_values,
        "name": st.text(max_size=3),
    },
)
row_like = st.fixed_dictionaries(
    {},
    optional={
        "id": st.integers() | st.text(max_size=4) | json_values,
        "prompt": st.text(max_size=10) | json_values,
        "messages": st.lists(message_like, max_size=3) | json_values,
    },
)


def _line_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value.replace(b"\n", b" ")
    if isinstance(value, str):
        return value.replace("\n", " ").encode("utf-8", "surrogatepass")
    text = json.dumps(value, ensure_ascii=False)
    return text.encode("utf-8", "surrogatepass")


jsonl_lines = st.one_of(
    st.binary(max_size=30),
    st.text(max_size=30),
    row_like,
    # Partial JSON: a valid object cut anywhere.
    st.tuples(row_like, st.integers(min_value=0, max_value=40)).map(
        lambda pair: json.dumps(pair[0])[: pair[1]]
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(jsonl_lines, max_size=8), use_id=st.booleans(), system=st.booleans())
def test_generated_jsonl_never_raises_anything_but_dataset_error(
    tmp_path_factory: pytest.TempPathFactory, lines: list[Any], use_id: bool, system: bool
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "fuzz.jsonl"
    path.write_bytes(b"\n".join(_line_bytes(line) for line in lines))
    options = DatasetOptions(
        id_column="id" if use_id else None, system_prompt="S" if system else None
    )
    try:
        report = validate_dataset(path, options, on_bad_rows="skip")
        items = list(read_rows(path, options))
    except DatasetError:
        return
    assert all(isinstance(i, Row | BadRow) for i in items)
    assert report.rows + report.bad_count == len(items)
    physical = len(path.read_bytes().split(b"\n")) if lines else 0
    assert all(1 <= i.line <= physical for i in items)
    for item in items:
        if isinstance(item, BadRow):
            assert item.reason and "\n" not in item.reason
        else:
            assert item.messages[-1].role == "user"


# -- memory stays bounded -----------------------------------------------------------------------


def write_big_jsonl(path: Path, count: int) -> Path:
    with path.open("wb") as handle:
        for i in range(count):
            row = {"id": f"row-{i}", "prompt": f"Question {i}: what is {i} times {i + 7}?"}
            handle.write(orjson.dumps(row) + b"\n")
    return path


def traced_peak(path: Path) -> int:
    tracemalloc.start()
    try:
        report = validate_dataset(path, BY_ID)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.bad_count == 0 and report.duplicates == 0
    return peak


def test_peak_memory_does_not_grow_with_rows(tmp_path: Path) -> None:
    small = traced_peak(write_big_jsonl(tmp_path / "small.jsonl", 5_000))
    large = traced_peak(write_big_jsonl(tmp_path / "large.jsonl", 50_000))
    assert large < 1.5 * small, (small, large)


MEASURE = textwrap.dedent(
    """
    import resource, sys, time, tracemalloc
    from studio_flows.datasets import DatasetOptions, validate_dataset
    tracemalloc.start()
    start = time.perf_counter()
    report = validate_dataset(sys.argv[1], DatasetOptions(id_column="id"))
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(report.rows, peak, rss_kib, elapsed)
    """
)


@pytest.mark.slow
def test_a_million_rows_in_bounded_memory(tmp_path: Path) -> None:
    """100 k vs 1 M rows, each in a fresh process: traced peak and peak RSS stay flat."""
    results = {}
    for count in (100_000, 1_000_000):
        path = write_big_jsonl(tmp_path / f"{count}.jsonl", count)
        out = subprocess.run(
            [sys.executable, "-c", MEASURE, str(path)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "TMPDIR": str(tmp_path)},
        ).stdout.split()
        rows, peak, rss_kib = int(out[0]), int(out[1]), int(out[2])
        assert rows == count
        results[count] = (peak, rss_kib)
    (small_peak, small_rss), (large_peak, large_rss) = results[100_000], results[1_000_000]
    assert large_peak < 1.5 * small_peak, results
    # RSS also counts SQLite's page cache, capped at _DEDUP_CACHE_KIB: allow that, no more.
    assert large_rss < small_rss + datasets.dedup._DEDUP_CACHE_KIB + 16 * 1024, results


def test_an_id_too_long_to_store_is_a_bad_row(tmp_path: Path) -> None:
    path = tmp_path / "long.jsonl"
    path.write_text(
        json.dumps({"id": "x" * 256, "prompt": "a"})
        + "\n"
        + json.dumps({"id": "ok", "prompt": "b"})
    )
    items = list(read_rows(path, DatasetOptions(id_column="id")))
    assert isinstance(items[0], BadRow) and items[0].line == 1
    assert "256 characters long; at most 255" in items[0].reason
    assert isinstance(items[1], Row) and items[1].row_key == "ok"
