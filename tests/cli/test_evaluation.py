"""Evaluation runs through the command line: several ``--model-id`` over one dataset.

The emulator's answers name the model (``<model> answers: <last user message>``), so every
stored answer shows which model wrote it and for which row.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from studio_flows.emulator import EmulatorServer
from studio_flows.resources import examples_dir
from tests.fixtures.cli_runs import (
    SECRET_TOKEN,
    STUDIO_FLOWS,
    CliResult,
    cli_env,
    results_table,
    run_cli,
    summary_value,
)

MODELS = ("base", "tuned")
ROWS = 40


def _generate(
    dataset: Path,
    database_url: str,
    models: tuple[str, ...],
    env: dict[str, str],
    cwd: Path,
    *extra: str,
) -> CliResult:
    assert STUDIO_FLOWS is not None
    args = [STUDIO_FLOWS, "generate", str(dataset), "--database-url", database_url]
    for model in models:
        args += ["--model-id", model]
    return run_cli([*args, "--shard-size", "10", "--no-progress", *extra], env, cwd)


def _ledger_models(database_url: str) -> list[str]:
    import sqlalchemy as sa

    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        query = sa.text("SELECT model_id FROM generation_jobs ORDER BY id")
        models = [str(model) for model in conn.execute(query).scalars()]
    engine.dispose()
    return models


def _answers_by_model(database_url: str) -> dict[tuple[str, str], str]:
    """(row_key, model) → answer; fails if a pair was stored twice."""
    stored = results_table(database_url)
    pairs = [(str(r["row_key"]), str(r["model_id"])) for r in stored]
    assert len(pairs) == len(set(pairs)), "a (row, model) pair has two results"
    assert {r["status"] for r in stored} == {"completed"}
    return {(str(r["row_key"]), str(r["model_id"])): str(r["result"]) for r in stored}


@pytest.mark.slow
def test_two_then_three_models_pay_each_row_once_per_model_and_export_wide(
    emulator: EmulatorServer, prefect_server: str, tmp_path: Path
) -> None:
    emulator.configure(tokens=[SECRET_TOKEN], job_latency_s=0.3)
    dataset = tmp_path / "prompts.jsonl"
    shutil.copy(examples_dir() / "prompts.jsonl", dataset)
    database_url = f"sqlite:///{tmp_path}/results.db"
    env = cli_env(emulator, tmp_path / "prefect", api_url=prefect_server)

    first = _generate(dataset, database_url, MODELS, env, tmp_path)
    assert first.returncode == 0, first
    stats = emulator.stats()
    assert stats["jobs_created"] == 8  # 4 shards of 10 rows, once per model
    assert stats["max_active_jobs"] <= 3
    assert summary_value(first.stdout, "completed") == 2 * ROWS
    answers = _answers_by_model(database_url)
    assert len(answers) == 2 * ROWS
    assert {model for _, model in answers} == set(MODELS)
    # The models' jobs are interleaved: neither waits for the other to finish.
    assert set(_ledger_models(database_url)[:3]) == set(MODELS)
    for line in ("base", "tuned"):
        assert line in first.stdout  # the per-model table names each model

    again = _generate(dataset, database_url, (*MODELS, "tuned-2"), env, tmp_path)
    assert again.returncode == 0, again
    assert emulator.stats()["jobs_created"] == 8 + 4  # only the new model's jobs
    assert emulator.stats()["max_active_jobs"] <= 3
    assert summary_value(again.stdout, "already done") == 2 * ROWS
    answers_after = _answers_by_model(database_url)
    assert len(answers_after) == 3 * ROWS
    assert {k: v for k, v in answers_after.items() if k[1] in MODELS} == answers

    _check_wide_exports(tmp_path, database_url, env, ("base", "tuned", "tuned-2"))


def _check_wide_exports(
    folder: Path, database_url: str, env: dict[str, str], models: tuple[str, ...]
) -> None:
    assert STUDIO_FLOWS is not None
    export = [STUDIO_FLOWS, "results", "--dataset", "prompts.jsonl", "--wide"]
    export += ["--database-url", database_url]
    read: dict[str, list[dict[str, object]]] = {}
    for fmt in ("jsonl", "csv", "parquet"):
        out = folder / f"wide.{fmt}"
        done = run_cli([*export, "--format", fmt, "--output", str(out)], env, folder)
        assert done.returncode == 0, done
        assert done.stderr.strip() == f"wrote {ROWS} rows to {out}"
        if fmt == "jsonl":
            read[fmt] = [json.loads(line) for line in out.read_text("utf-8").splitlines()]
        elif fmt == "csv":
            read[fmt] = list(csv.DictReader(out.open(encoding="utf-8", newline="")))
        else:
            read[fmt] = pq.read_table(out).to_pylist()
    for fmt, records in read.items():
        assert len(records) == ROWS, fmt
        assert len({r["row_key"] for r in records}) == ROWS, fmt
        for record in records:
            for model in models:
                assert record[f"answer:{model}"] == f"{model} answers: {record['prompt']}", fmt
                assert record[f"status:{model}"] == "completed", fmt


@pytest.mark.slow
def test_wide_export_by_source_shows_a_model_without_an_answer_as_empty(
    emulator: EmulatorServer, prefect_server: str, tmp_path: Path
) -> None:
    emulator.configure(tokens=[SECRET_TOKEN])
    small = tmp_path / "small.jsonl"
    small.write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(3)), "utf-8")
    bigger = tmp_path / "bigger.jsonl"
    bigger.write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(4)), "utf-8")
    database_url = f"sqlite:///{tmp_path}/results.db"
    env = cli_env(emulator, tmp_path / "prefect", api_url=prefect_server)
    assert _generate(small, database_url, ("a", "b"), env, tmp_path).returncode == 0
    assert _generate(bigger, database_url, ("a",), env, tmp_path).returncode == 0

    assert STUDIO_FLOWS is not None
    done = run_cli(
        [STUDIO_FLOWS, "results", str(bigger), "--wide", "--format", "jsonl",
         "--database-url", database_url], env, tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["line"] for r in records] == [1, 2, 3, 4]
    assert [r["answer:a"] for r in records] == [f"a answers: q{i}" for i in range(4)]
    assert [r["answer:b"] for r in records] == [
        "b answers: q0",
        "b answers: q1",
        "b answers: q2",
        None,
    ]
    assert records[3]["status:b"] is None


# Counted by hand against the emulator's answers (``<model> answers: <question>``):
# row 1: both contain "paris"; row 2: neither says "4"; row 3: only tuned contains "tuned";
# row 4: base's answer is exactly the expected one; row 5 has no expected answer (not scored).
SCORED = [
    ("q1", "Is Paris in France?", "Paris"),
    ("q2", "What is 2+2?", "4"),
    ("q3", "Who answers?", "tuned"),
    ("q4", "Who?", "base answers: who"),
    ("q5", "Skip me", None),  # kept as given: JSON null
]


@pytest.mark.slow
def test_scores_against_the_expected_column_match_a_hand_count(
    emulator: EmulatorServer, prefect_server: str, tmp_path: Path
) -> None:
    emulator.configure(tokens=[SECRET_TOKEN])
    dataset = tmp_path / "eval.jsonl"
    lines = [json.dumps({"id": i, "question": q, "expected": e}) for i, q, e in SCORED]
    dataset.write_text("\n".join(lines) + "\n", encoding="utf-8")
    database_url = f"sqlite:///{tmp_path}/results.db"
    env = cli_env(emulator, tmp_path / "prefect", api_url=prefect_server, COLUMNS="200")
    extra = ("--id-column", "id", "--template", "{{ question }}", "--expected-column", "expected")

    done = _generate(dataset, database_url, MODELS, env, tmp_path, *extra)

    assert done.returncode == 0, done
    rows = {line.split("│")[1].strip(): line for line in done.stdout.splitlines() if "│" in line}
    assert re.search(r"│\s*25\.0 %\s*│\s*50\.0 %\s*│$", rows["base"]), done.stdout
    assert re.search(r"│\s*0\.0 %\s*│\s*50\.0 %\s*│$", rows["tuned"]), done.stdout
    # Exact match paired: only base is right on q4, both are wrong on q1-q3 (McNemar, 0 of 1).
    mcnemar = "tuned wins 0, ties 3, loses 1 against base on exact match (p = 1.0000)"
    assert mcnemar in done.stdout, done.stdout
    assert STUDIO_FLOWS is not None
    export = run_cli(
        [STUDIO_FLOWS, "results", "--dataset", "eval.jsonl", "--wide", "--format", "jsonl",
         "--database-url", database_url], env, tmp_path,
    )  # fmt: skip
    records = [json.loads(line) for line in export.stdout.splitlines()]
    assert [(r["row_key"], r["prompt"], r["expected"]) for r in records] == SCORED
    assert records[3]["answer:base"] == "base answers: Who?"
