"""A response schema from the library: a pydantic model class on ``generate_rows`` and a
JSON Schema dict on the ``generate`` task, against the emulator's JSON answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow
from pydantic import BaseModel

from studio_flows import export_training_set, generate, generate_rows, read_results
from studio_flows.emulator import EmulatorServer


class Verdict(BaseModel):
    answer: str
    score: int


PROMPTS = ["what is two?", "fenced: what is three?", "invalid: what is five?", "no json: six?"]
INVALID = "answer does not match the response schema: "


def value_of(prompt: str) -> dict[str, object]:
    return {"answer": f"rows-model answers: {prompt}", "score": len(prompt) % 10}


def test_a_pydantic_model_checks_the_answers_of_generate_rows(
    flow_env: EmulatorServer, tmp_path: Path
) -> None:
    flow_env.configure(json_answers=True)
    database_url = f"sqlite:///{tmp_path / 'rows.db'}"
    rows = [{"prompt": prompt} for prompt in PROMPTS]

    answers = generate_rows(rows, "rows-model", response_schema=Verdict, database_url=database_url)

    assert [a.status for a in answers] == ["completed", "completed", "failed", "failed"]
    assert [a.parsed for a in answers[:2]] == [value_of(p) for p in PROMPTS[:2]]
    # pydantic names the failing field its own way; the reason is pydantic's (strict: a
    # string is no integer, whatever it holds).
    assert answers[2].error == INVALID + "score: Input should be a valid integer"
    assert answers[3].error == INVALID + "no JSON value found"
    assert answers[3].text == f"rows-model answers: {PROMPTS[3]}"  # the raw answer, kept

    jobs = flow_env.stats()["jobs_created"]
    again = generate_rows(rows, "rows-model", response_schema=Verdict, database_url=database_url)

    assert again == answers
    assert flow_env.stats()["conversations"] == len(PROMPTS) + 2  # the invalid two, again
    assert flow_env.stats()["jobs_created"] == jobs + 1
    # The same schema as a dict is the same paid work: only the invalid two go again.
    generate_rows(
        rows, "rows-model", response_schema=Verdict.model_json_schema(), database_url=database_url
    )
    assert flow_env.stats()["conversations"] == len(PROMPTS) + 4
    table = read_results(database_url=database_url)
    assert table.num_rows == len(PROMPTS)  # one answer per (row, model)
    prompts = [turns[-1]["content"] for turns in table.column("messages").to_pylist()]
    by_prompt = dict(zip(prompts, table.column("parsed").to_pylist(), strict=True))
    assert by_prompt == {
        p: json.dumps(value_of(p)) if i < 2 else None for i, p in enumerate(PROMPTS)
    }


def test_the_generate_task_checks_answers_against_a_json_schema(
    flow_env: EmulatorServer,
) -> None:
    flow_env.configure(json_answers=True)
    schema = Verdict.model_json_schema()

    @flow
    def answer() -> list[object]:
        return generate(PROMPTS, "rows-model", response_schema=schema)

    generations = answer()

    assert [g.status for g in generations] == ["completed", "completed", "failed", "failed"]
    assert generations[0].parsed == value_of(PROMPTS[0])
    assert generations[2].error == INVALID + "$.score: 'high' is not of type 'integer'"
    assert generations[2].text is not None and '"high"' in generations[2].text


def test_export_training_set_from_a_flow_writes_the_valid_rows_and_a_manifest(
    flow_env: EmulatorServer, tmp_path: Path
) -> None:
    flow_env.configure(json_answers=True)
    database_url = f"sqlite:///{tmp_path / 'rows.db'}"
    rows = [{"id": f"r{i}", "prompt": f"{'invalid ' if i == 2 else ''}q{i}?"} for i in range(12)]
    output = tmp_path / "train.jsonl"

    @flow
    def generate_and_export() -> Any:
        generate_rows(
            rows, "rows-model", id_column="id", response_schema=Verdict, database_url=database_url
        )
        return export_training_set(
            "rows", "rows-model", output, eval_output=tmp_path / "eval.jsonl",
            eval_fraction=0.5, database_url=database_url,
        )  # fmt: skip

    manifest = generate_and_export()

    train = output.read_text(encoding="utf-8").splitlines()
    held = (tmp_path / "eval.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(train) + len(held) == 11  # r2's answer did not match: not a training row
    assert {name: f.rows for name, f in manifest.files.items()} == {
        "train": len(train),
        "eval": len(held),
    }
    assert json.loads((tmp_path / "train.jsonl.manifest.json").read_text()) == json.loads(
        manifest.model_dump_json()
    )
    line = json.loads(train[0])
    assert list(line) == ["messages"] and line["messages"][-1]["role"] == "assistant"
