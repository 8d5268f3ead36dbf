"""`studio-flows export-training`: a fine-tuning file of generated rows, a stable split.

Through the installed CLI against the emulator's JSON answers, with a response schema: the
lines are byte for byte the stored conversations and answers of the completed rows, in the
dataset's order; the split is the same on a second export and no row moves after 20 rows
are added and generated; the manifest counts what each file holds; with no completed row
the export is one sentence, exit 2, and writes nothing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from studio_flows.emulator import EmulatorServer
from studio_flows.rows import canonical_json
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
    "type": "object",
    "required": ["answer", "score"],
    "properties": {"answer": {"type": "string"}, "score": {"type": "integer"}},
}
FRACTION = 0.25


def prompt(i: int) -> str:
    # Every seventh answer has a score that is not an integer: those rows never export.
    return f"{'invalid ' if i % 7 == 3 else ''}question {i} — café?"


def write_dataset(path: Path, count: int) -> None:
    lines = (json.dumps({"id": f"q{i}", "prompt": prompt(i)}) for i in range(count))
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def held_out(row_key: str) -> bool:
    """The split as the issue fixes it: sha256 of the row key alone, as a fraction."""
    return int(hashlib.sha256(row_key.encode()).hexdigest()[:16], 16) / 2**64 < FRACTION


def stored_lines(database_url: str) -> dict[str, bytes]:
    """Each completed row's expected training line, by row key, from the stored row."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT row_key, messages, result FROM generation_results "
                    "WHERE status = 'completed' AND model_id = :model"
                ),
                {"model": MODEL},
            ).all()
    finally:
        engine.dispose()
    lines = {}
    for row_key, messages, result in rows:
        turns = json.loads(messages) if isinstance(messages, str) else messages
        line = {"messages": [*turns, {"role": "assistant", "content": result}]}
        lines[row_key] = (json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8")
    return lines


def export(tmp_path: Path, env: dict[str, str], database_url: str, name: str) -> Any:
    assert STUDIO_FLOWS is not None
    result = run_cli(
        [
            STUDIO_FLOWS,
            "export-training",
            "--dataset",
            "questions.jsonl",
            "--model-id",
            MODEL,
            "--output",
            str(tmp_path / f"{name}-train.jsonl"),
            "--eval-output",
            str(tmp_path / f"{name}-eval.jsonl"),
            "--eval-fraction",
            str(FRACTION),
            "--database-url",
            database_url,
        ],
        env,
        tmp_path,
    )
    assert result.returncode == 0, result
    train = (tmp_path / f"{name}-train.jsonl").read_bytes()
    held = (tmp_path / f"{name}-eval.jsonl").read_bytes()
    manifest = json.loads((tmp_path / f"{name}-train.jsonl.manifest.json").read_text())
    return train, held, manifest


def test_the_training_export_is_the_stored_rows_split_stably_as_rows_are_added(
    emulator: EmulatorServer, prefect_server: str, tmp_path: Path
) -> None:
    dataset = tmp_path / "questions.jsonl"
    write_dataset(dataset, 40)
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA), encoding="utf-8")
    database_url = f"sqlite:///{tmp_path / 'results.db'}"
    env = cli_env(emulator, tmp_path / "prefect", api_url=prefect_server)
    args = generate_args(
        # Six jobs through three lanes: the order jobs are recorded in is not the file's.
        dataset, database_url, "--id-column", "id", "--shard-size", "7",
        "--response-schema", str(tmp_path / "schema.json"),
    )  # fmt: skip
    emulator.configure(tokens=[SECRET_TOKEN], json_answers=True)
    first = run_cli(args, env, tmp_path)
    assert summary_value(first.stdout, "invalid answers") == 6, first

    train, held, manifest = export(tmp_path, env, database_url, "first")

    expected = stored_lines(database_url)
    valid = [f"q{i}" for i in range(40) if i % 7 != 3]
    assert sorted(expected) == sorted(valid)
    assert train == b"".join(expected[key] for key in valid if not held_out(key))
    assert held == b"".join(expected[key] for key in valid if held_out(key))
    assert 0 < held.count(b"\n") < train.count(b"\n")
    first_line = json.loads(train.splitlines()[0])
    assert [turn["role"] for turn in first_line["messages"]] == ["system", "user", "assistant"]
    assert "JSON Schema" in first_line["messages"][0]["content"]
    assert manifest["dataset"] == "questions.jsonl" and manifest["model_id"] == MODEL
    assert manifest["files"]["train"]["rows"] == train.count(b"\n")
    assert manifest["files"]["eval"]["rows"] == held.count(b"\n")
    assert manifest["eval_fraction"] == FRACTION
    schema_hash = hashlib.sha256(canonical_json(SCHEMA).encode()).hexdigest()
    assert manifest["schema_hashes"] == [schema_hash]
    assert manifest["template_hashes"] == [None] and len(manifest["params_hashes"]) == 1
    assert len(manifest["flow_run_ids"]) == 1 and manifest["studio_flows_version"]

    assert export(tmp_path, env, database_url, "second")[:2] == (train, held)

    write_dataset(dataset, 60)
    before = emulator.stats()["conversations"]
    grown = run_cli(args, env, tmp_path)
    assert summary_value(grown.stdout, "answers submitted") == 20 + 6, grown
    assert emulator.stats()["conversations"] - before == 26

    new_train, new_held, new_manifest = export(tmp_path, env, database_url, "third")

    # No row moved: the old files are the start of the new ones, the added rows follow.
    assert new_train.startswith(train) and new_held.startswith(held)
    expected = stored_lines(database_url)
    added = [f"q{i}" for i in range(40, 60) if i % 7 != 3]
    assert new_train[len(train) :] == b"".join(expected[k] for k in added if not held_out(k))
    assert new_held[len(held) :] == b"".join(expected[k] for k in added if held_out(k))
    counts = {name: f["rows"] for name, f in new_manifest["files"].items()}
    assert counts == {"train": new_train.count(b"\n"), "eval": new_held.count(b"\n")}
    assert sum(counts.values()) == len(valid) + len(added)
    assert len(new_manifest["flow_run_ids"]) == 2


def test_no_completed_rows_is_one_sentence_exit_2_and_nothing_written(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    assert STUDIO_FLOWS is not None
    database_url = f"sqlite:///{tmp_path / 'results.db'}"
    make_engine(database_url).dispose()  # an empty results database
    env = cli_env(emulator, tmp_path / "prefect")
    output = tmp_path / "train.jsonl"

    result = run_cli(
        [
            STUDIO_FLOWS,
            "export-training",
            "--dataset",
            "questions.jsonl",
            "--model-id",
            MODEL,
            "--output",
            str(output),
            "--eval-output",
            str(tmp_path / "eval.jsonl"),
            "--database-url",
            database_url,
        ],
        env,
        tmp_path,
    )

    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no completed rows of dataset 'questions.jsonl'" in lines[0]
    assert not [p.name for p in tmp_path.iterdir() if "json" in p.name]


def _store_completed(database_url: str, path: Path, count: int) -> None:
    """``count`` completed rows of ``questions.jsonl``, written as a run writes them."""
    from studio_flows.datasets import DatasetOptions, iter_good_rows, iter_shards
    from studio_flows.rows import GenerationParams, ResultRecord
    from studio_flows.statuses import RowStatus
    from studio_flows.storage import complete_shard

    write_dataset(path, count)
    params = GenerationParams(MODEL)
    rows = iter_good_rows(path, DatasetOptions(id_column="id"))
    engine = make_engine(database_url)
    for shard in iter_shards(rows, dataset=path.name, params=params, shard_size=10):
        records = [
            ResultRecord(row.identity(params), i, row.messages, RowStatus.COMPLETED, "ok", None)
            for i, row in enumerate(shard.rows)
        ]
        complete_shard(
            engine, shard, job_id=shard.shard_key, job_status="FINISHED", records=records,
            flow_run_id=None,
        )  # fmt: skip
    engine.dispose()


def test_an_output_that_cannot_be_written_is_one_sentence_and_leaves_no_manifest(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    assert STUDIO_FLOWS is not None
    database_url = f"sqlite:///{tmp_path / 'results.db'}"
    _store_completed(database_url, tmp_path / "questions.jsonl", 20)
    (tmp_path / "train.jsonl").mkdir()  # a directory: the training file cannot replace it
    args = [
        STUDIO_FLOWS, "export-training", "--dataset", "questions.jsonl", "--model-id", MODEL,
        "--output", str(tmp_path / "train.jsonl"), "--eval-output", str(tmp_path / "e.jsonl"),
        "--database-url", database_url,
    ]  # fmt: skip

    result = run_cli(args, cli_env(emulator, tmp_path / "prefect"), tmp_path)

    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write" in lines[0] and "train.jsonl" in lines[0], lines
    written = sorted(p.name for p in tmp_path.iterdir() if p.is_file() and "json" in p.name)
    assert written == ["questions.jsonl"], written  # no manifest, no eval file, no temp file


def test_an_eval_file_at_the_manifests_path_is_one_sentence_and_nothing_written(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    assert STUDIO_FLOWS is not None
    database_url = f"sqlite:///{tmp_path / 'results.db'}"
    _store_completed(database_url, tmp_path / "questions.jsonl", 20)
    env = cli_env(emulator, tmp_path / "prefect")
    export = [
        STUDIO_FLOWS, "export-training", "--dataset", "questions.jsonl", "--model-id", MODEL,
        "--database-url", database_url,
    ]  # fmt: skip
    manifest = tmp_path / "train.jsonl.manifest.json"
    train = str(tmp_path / "train.jsonl")

    clash = run_cli([*export, "--output", train, "--eval-output", str(manifest)], env, tmp_path)
    nowhere = run_cli([*export, "--output", str(tmp_path / "no" / "t.jsonl")], env, tmp_path)

    for result in (clash, nowhere):
        assert result.returncode == 2 and result.stdout == "", result
        assert len(result.stderr.strip().splitlines()) == 1, result
    assert "--eval-output is the manifest of --output" in clash.stderr
    assert f"cannot write {tmp_path / 'no' / 't.jsonl'}: no such directory" in nowhere.stderr
    written = sorted(p.name for p in tmp_path.iterdir() if p.is_file() and "json" in p.name)
    assert written == ["questions.jsonl"], written
