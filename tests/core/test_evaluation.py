"""Comparing models: wide records, scores against expected answers, the side-by-side view.

The scores are checked against a small dataset counted by hand.
"""

from __future__ import annotations

import pytest

from studio_flows.evaluation import (
    Answers,
    Scores,
    compare_models,
    normalise,
    side_by_side_markdown,
    wide_records,
    wide_results,
)
from studio_flows.models import Message
from studio_flows.options import GenerateOptions
from studio_flows.planning import for_each_model
from studio_flows.rows import GenerationParams, ResultRecord, Row, Shard
from studio_flows.storage import complete_shard, make_engine


def _answers(expected: str | None, **by_model: str | None) -> Answers:
    results = {
        model: {"status": "completed", "result": text}
        if text is not None
        else {"status": "failed", "error": "task failed"}
        for model, text in by_model.items()
    }
    return Answers("k", "q", {"expected": expected}, results)


# Counted by hand: base matches exactly on rows 1 and 4 (after normalising), contains the
# expected answer on rows 1, 2 and 4; tuned matches exactly on 1 and 2, contains on 1, 2, 3;
# row 5 has no expected value and is not scored; tuned failed row 4 (a miss).
HAND_COUNTED = [
    _answers("Paris", base="paris.", tuned="Paris"),
    _answers("Blue whale", base="The blue whale!", tuned="blue   WHALE"),
    _answers("1969", base="It was 1970", tuned="Apollo 11 landed in 1969."),
    _answers("H2O", base="h2o", tuned=None),
    _answers(None, base="anything", tuned="anything"),
]


def test_scores_match_a_hand_counted_dataset() -> None:
    scores = Scores.of(HAND_COUNTED, ["base", "tuned"], expected="expected")
    assert scores["base"].scored_rows == scores["tuned"].scored_rows == 4
    assert (scores["base"].exact, scores["base"].contained) == (2, 3)
    assert (scores["tuned"].exact, scores["tuned"].contained) == (2, 3)
    assert scores["base"].exact_match == pytest.approx(0.5)
    assert scores["tuned"].contains == pytest.approx(0.75)


def test_a_model_with_no_answer_for_a_row_misses_it() -> None:
    scores = Scores.of([_answers("yes", a="yes")], ["a", "never-ran"], expected="expected")
    assert scores["a"].exact_match == 1.0
    assert scores["never-ran"].scored_rows == 1
    assert scores["never-ran"].exact_match == 0.0


def test_normalise_folds_case_drops_punctuation_and_collapses_spaces() -> None:
    assert normalise("  Hello,\n  WORLD!! ") == "hello world"
    assert normalise("Ça va?") == "ça va"


def test_wide_records_keep_every_row_and_leave_missing_answers_empty() -> None:
    rows = [
        _answers("x", a="1", b="2"),
        Answers("k2", "q2", None, {"a": {"status": "completed", "result": "3"}}),
    ]
    records = wide_records(rows, ["a", "b"], kept=["expected"])
    assert [r["answer:a"] for r in records] == ["1", "3"]
    assert [r["answer:b"] for r in records] == ["2", None]
    assert [r["status:b"] for r in records] == ["completed", None]
    assert [r["expected"] for r in records] == ["x", None]


def test_side_by_side_escapes_pipes_and_shows_failures() -> None:
    text = side_by_side_markdown([_answers(None, a="x | y", b=None)], ["a", "b"], kept=[])
    assert "x \\| y" in text
    assert "(failed: task failed)" in text


def test_options_take_one_model_or_several_each_once() -> None:
    both = GenerateOptions(dataset_path="p.jsonl", model_id="a", model_ids=["b", "a"])
    assert both.models == ["a", "b"]
    with pytest.raises(ValueError, match="name a model"):
        GenerateOptions(dataset_path="p.jsonl")


def _row(text: str, line: int) -> Row:
    return Row.from_messages([Message(role="user", content=text)], line=line)


def _store(database_url: str, shard: Shard, answers: list[str]) -> None:
    engine = make_engine(database_url)
    records = [
        ResultRecord(row.identity(shard.params), i, row.messages, "completed", answer, None)  # type: ignore[arg-type]
        for i, (row, answer) in enumerate(zip(shard.rows, answers, strict=True))
    ]
    complete_shard(
        engine, shard, job_id=shard.shard_key, job_status="FINISHED", records=records,
        flow_run_id=None,
    )  # fmt: skip
    engine.dispose()


def test_stored_answers_read_back_by_conversation_and_by_source_rows(database_url: str) -> None:
    url = database_url
    rows = (_row("one", 1), _row("two", 2))
    params = [GenerationParams("a"), GenerationParams("b")]
    shards = list(for_each_model([Shard("d", params[0], rows)], params))
    _store(url, shards[1], ["b1", "b2"])  # written first: order is by first write
    _store(url, Shard("d", params[0], rows[:1]), ["a1"])
    engine = make_engine(url)

    columns, records = wide_results(engine, dataset="d")
    assert columns == ["row_key", "prompt", "answer:a", "status:a", "answer:b", "status:b"]
    listed = list(records)
    assert [(r["prompt"], r["answer:a"], r["answer:b"]) for r in listed] == [
        ("one", "a1", "b1"),
        ("two", None, "b2"),
    ]
    comparison = compare_models(engine, list(rows), ["a", "b"], params_hash=params[0].params_hash)
    assert [s.answer("a") for s in comparison.samples] == ["a1", None]
    assert [s.answer("b") for s in comparison.samples] == ["b1", "b2"]
    engine.dispose()
