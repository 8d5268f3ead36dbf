"""`studio-flows generate --response-schema`: answers checked against a JSON Schema.

Through the installed CLI against the emulator's JSON answers (``json_answers``: the words
of a prompt choose the answer's shape: plain JSON, a fenced block, an object in prose, a
score that is not an integer, no JSON at all). A valid answer completes its row with its
value in ``parsed``; an invalid one fails it with the reason and keeps the raw text; the
rerun pays for the invalid rows alone; a changed schema is new paid work.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from studio_flows.emulator import EmulatorServer
from studio_flows.storage import make_engine
from tests.fixtures.cli_runs import (
    MODEL,
    SECRET_TOKEN,
    STUDIO_FLOWS,
    cli_env,
    generate_args,
    run_cli,
    summary_value,
)

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["answer", "score"],
    "properties": {"answer": {"type": "string"}, "score": {"type": "integer"}},
}
# id -> prompt; the emulator's answer to each is shaped by its words.
PROMPTS = {
    "plain": "what is two?",
    "fenced": "fenced: what is three?",
    "bare": "bare: what is four?",
    "invalid": "invalid: what is five?",
    "none": "no json: what is six?",
}
INVALID = "answer does not match the response schema: "


def write_dataset(path: Path, prompts: dict[str, str]) -> Path:
    lines = (json.dumps({"id": key, "prompt": prompt}) for key, prompt in prompts.items())
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def write_schema(path: Path, schema: dict[str, Any]) -> Path:
    path.write_text(json.dumps(schema), encoding="utf-8")
    return path


def value_of(prompt: str) -> dict[str, Any]:
    """The JSON value the emulator's answer to ``prompt`` holds (when it holds a valid one)."""
    return {"answer": f"{MODEL} answers: {prompt}", "score": len(prompt) % 10}


def stored(database_url: str) -> dict[str, dict[str, Any]]:
    """Each stored result by row key (one per row here), with ``parsed`` and ``messages``."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT row_key, params_hash, status, result, error, parsed, messages "
                    "FROM generation_results ORDER BY id"
                )
            )
            found = [dict(row._mapping) for row in rows]
    finally:
        engine.dispose()
    for row in found:
        for name in ("parsed", "messages"):
            if isinstance(row[name], str):
                row[name] = json.loads(row[name])
    return {str(row["row_key"]): row for row in found}


def test_answers_are_checked_and_a_rerun_pays_for_the_invalid_rows_alone(
    emulator: EmulatorServer, prefect_server: str, tmp_path: Path
) -> None:
    dataset = write_dataset(tmp_path / "questions.jsonl", PROMPTS)
    schema = write_schema(tmp_path / "schema.json", SCHEMA)
    database_url = f"sqlite:///{tmp_path / 'results.db'}"
    env = cli_env(emulator, tmp_path / "prefect", api_url=prefect_server)
    args = generate_args(
        dataset, database_url, "--id-column", "id", "--response-schema", str(schema),
        "--system-prompt", "Be brief.",
    )  # fmt: skip
    emulator.configure(tokens=[SECRET_TOKEN], json_answers=True)

    first = run_cli(args, env, tmp_path)

    assert first.returncode == 1, first
    assert summary_value(first.stdout, "completed") == 3, first
    assert summary_value(first.stdout, "failed") == 2, first
    assert summary_value(first.stdout, "invalid answers") == 2, first
    rows = stored(database_url)
    for key in ("plain", "fenced", "bare"):
        row = rows[key]
        assert (row["status"], row["error"]) == ("completed", None), row
        assert row["parsed"] == value_of(PROMPTS[key]), row
        assert json.dumps(value_of(PROMPTS[key])) in str(row["result"])  # the raw answer
    assert "```json\n" in str(rows["fenced"]["result"])
    assert rows["invalid"]["status"] == "failed"
    assert rows["invalid"]["error"] == INVALID + "$.score: 'high' is not of type 'integer'"
    assert rows["invalid"]["result"] == json.dumps(
        {**value_of(PROMPTS["invalid"]), "score": "high"}
    )
    assert rows["none"]["error"] == INVALID + "no JSON value found"
    assert rows["none"]["result"] == f"{MODEL} answers: {PROMPTS['none']}"
    assert all(row["parsed"] is None for key, row in rows.items() if key in ("invalid", "none"))
    # The schema was shown to the model: after the system prompt, in the system message.
    system = rows["plain"]["messages"][0]
    assert system["role"] == "system" and system["content"].startswith("Be brief.\n\n")
    assert json.dumps(SCHEMA, indent=2, sort_keys=True) in system["content"]

    before = emulator.stats()["conversations"]
    rerun = run_cli(args, env, tmp_path)

    assert rerun.returncode == 1, rerun
    assert summary_value(rerun.stdout, "answers submitted") == 2, rerun
    assert summary_value(rerun.stdout, "already done") == 3, rerun
    assert emulator.stats()["conversations"] - before == 2

    write_schema(schema, {**SCHEMA, "title": "an answer"})
    before = emulator.stats()["conversations"]
    again = run_cli(args, env, tmp_path)

    assert summary_value(again.stdout, "answers submitted") == len(PROMPTS), again
    assert emulator.stats()["conversations"] - before == len(PROMPTS)
    engine = make_engine(database_url)
    with engine.connect() as conn:
        hashes = conn.execute(sa.text("SELECT DISTINCT params_hash FROM generation_results"))
        assert len(hashes.all()) == 2  # each row is stored under both schemas
    engine.dispose()
    assert_exports_hold_the_latest_answers(tmp_path, database_url, env)


def assert_exports_hold_the_latest_answers(
    tmp_path: Path, database_url: str, env: dict[str, str]
) -> None:
    """`results` in each format: one line per row (the answer under the changed schema),
    ``parsed`` an object in JSONL and JSON text in CSV and Parquet."""
    assert STUDIO_FLOWS is not None
    exported: dict[str, list[dict[str, Any]]] = {}
    for fmt in ("jsonl", "csv", "parquet"):
        output = tmp_path / f"out.{fmt}"
        args = [STUDIO_FLOWS, "results", "--dataset", "questions.jsonl", "--format", fmt]
        result = run_cli(
            [*args, "--output", str(output), "--database-url", database_url], env, tmp_path
        )
        assert result.returncode == 0, result
        if fmt == "jsonl":
            lines = output.read_text(encoding="utf-8").splitlines()
            exported[fmt] = [json.loads(line) for line in lines]
        elif fmt == "csv":
            with output.open(encoding="utf-8", newline="") as stream:
                exported[fmt] = list(csv.DictReader(stream))
        else:
            exported[fmt] = pq.read_table(output).to_pylist()
    table = run_cli(
        [STUDIO_FLOWS, "results", "--dataset", "questions.jsonl", "--database-url", database_url],
        {**env, "COLUMNS": "400"},
        tmp_path,
    )
    assert "schema: no JSON value found" in table.stdout, table  # why, not the raw answer
    for fmt, rows in exported.items():
        assert sorted(str(row["row_key"]) for row in rows) == sorted(PROMPTS), fmt
        for row in rows:
            key = str(row["row_key"])
            system = row["messages"] if fmt != "csv" else json.loads(row["messages"])
            assert '"title": "an answer"' in system[0]["content"], (fmt, row)  # the latest
            valid = key in ("plain", "fenced", "bare")
            want = value_of(PROMPTS[key]) if valid else None
            if fmt == "jsonl":
                assert row["parsed"] == want, row
            elif fmt == "csv":
                assert row["parsed"] == (json.dumps(want) if valid else ""), row
            else:
                assert row["parsed"] == (json.dumps(want) if valid else None), row


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "schema.json: no such file"),
        ("{not json", "schema.json: not JSON"),
        (json.dumps({"type": "nonsense"}), "schema.json: schema is not valid JSON Schema:"),
        (json.dumps({"minLength": -1}), "schema.json: schema is not valid JSON Schema:"),
    ],
)
def test_a_schema_that_cannot_be_used_is_one_sentence_before_anything_is_paid(
    emulator: EmulatorServer, tmp_path: Path, content: str | None, reason: str
) -> None:
    dataset = write_dataset(tmp_path / "questions.jsonl", PROMPTS)
    if content is not None:
        (tmp_path / "schema.json").write_text(content, encoding="utf-8")
    database_url = f"sqlite:///{tmp_path / 'results.db'}"
    env = cli_env(emulator, tmp_path / "prefect")
    emulator.configure(tokens=[SECRET_TOKEN])

    result = run_cli(
        generate_args(dataset, database_url, "--response-schema", str(tmp_path / "schema.json")),
        env,
        tmp_path,
    )

    assert result.returncode == 2, result
    assert result.stdout == "", result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and reason in lines[0] and "--response-schema" in lines[0], result
    assert "Traceback" not in result.stderr
    assert emulator.stats()["jobs_created"] == 0
    assert not (tmp_path / "results.db").exists()
