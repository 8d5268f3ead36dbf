"""A training export gives its lines in the dataset's order, however the rows were written.

Lanes record and finish their jobs in any order, and a row that failed is resent in a later
job of a later run: neither the write order nor the order jobs were recorded in is the
dataset's. Results are written by the runs' own writer (``complete_shard``), on SQLite and
PostgreSQL, and exported by the library.
"""

from __future__ import annotations

import json
from pathlib import Path

from studio_flows.datasets import DatasetOptions, iter_good_rows, iter_shards
from studio_flows.rows import GenerationParams, ResultRecord, Row
from studio_flows.statuses import RowStatus
from studio_flows.storage import complete_shard, make_engine
from studio_flows.training import export_training

PARAMS = GenerationParams("m")
DATASET = "questions.jsonl"


def _rows(path: Path, count: int) -> list[Row]:
    lines = (json.dumps({"id": f"q{i}", "prompt": f"question {i}"}) for i in range(count))
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return list(iter_good_rows(path, DatasetOptions(id_column="id")))


def _write(database_url: str, rows: list[Row], *, failing: frozenset[str] = frozenset()) -> None:
    """Complete ``rows`` in shards of 3, the last shard recorded and written first."""
    engine = make_engine(database_url)
    shards = list(iter_shards(rows, dataset=DATASET, params=PARAMS, shard_size=3))
    for shard in reversed(shards):
        records = [
            ResultRecord(
                row.identity(PARAMS),
                index,
                row.messages,
                RowStatus.FAILED if row.row_key in failing else RowStatus.COMPLETED,
                f"answer to {row.row_key}",
                "task failed" if row.row_key in failing else None,
            )
            for index, row in enumerate(shard.rows)
        ]
        complete_shard(
            engine, shard, job_id=shard.shard_key, job_status="FINISHED", records=records,
            flow_run_id=None,
        )  # fmt: skip
    engine.dispose()


def _exported_keys(path: Path) -> list[str]:
    keys = []
    for line in path.read_text(encoding="utf-8").splitlines():
        user = json.loads(line)["messages"][0]["content"]
        keys.append("q" + user.removeprefix("question "))
    return keys


def test_training_lines_follow_the_dataset_not_the_write_order(
    database_url: str, tmp_path: Path
) -> None:
    rows = _rows(tmp_path / DATASET, 10)
    _write(database_url, rows, failing=frozenset({"q1", "q4"}))
    _write(database_url, [r for r in rows if r.row_key in ("q1", "q4")])  # the rerun
    engine = make_engine(database_url)
    train, held = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"

    manifest = export_training(engine, DATASET, "m", train, eval_output=held, eval_fraction=0.3)
    engine.dispose()

    everything = [f"q{i}" for i in range(10)]
    train_keys, held_keys = _exported_keys(train), _exported_keys(held)
    assert train_keys == [key for key in everything if key in train_keys]
    assert held_keys == [key for key in everything if key in held_keys]
    assert sorted(train_keys + held_keys) == sorted(everything) and held_keys
    assert manifest.files["train"].rows == len(train_keys)
