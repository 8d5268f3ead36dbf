"""``generation_scores``: one verdict per (answer, judge, template), never undone."""

from __future__ import annotations

from typing import Any

from studio_flows.storage import make_engine, read_scores, upsert_scores


def _verdict(answer: str, **fields: Any) -> dict[str, Any]:
    return {
        "dataset": "d",
        "row_key": f"row-{answer}",
        "model_id": "tuned",
        "answer_key": answer * 32,
        "judge_model": "judge",
        "template_hash": "t" * 64,
        **fields,
    }


def test_a_failed_verdict_is_replaced_and_a_completed_one_is_kept(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        upsert_scores(
            engine,
            [
                _verdict("a", status="failed", error="no JSON value found"),
                _verdict("b", status="completed", score=4.0, reason="good"),
            ],
        )
        written = upsert_scores(
            engine,
            [
                _verdict("a", status="completed", score=2.0, reason="weak"),
                _verdict("b", status="failed", error="late and stale"),
                _verdict("b", status="completed", score=1.0, judge_model="other"),
            ],
        )

        found = {(s["answer_key"][0], s["judge_model"]): s for s in read_scores(engine)}
        assert written == 2
        assert len(found) == 3
        assert (found["a", "judge"]["status"], found["a", "judge"]["score"]) == ("completed", 2.0)
        assert found["a", "judge"]["error"] is None
        assert (found["b", "judge"]["score"], found["b", "judge"]["reason"]) == (4.0, "good")
        assert found["b", "other"]["score"] == 1.0
        assert [s["model_id"] for s in read_scores(engine, models=["base"])] == []
    finally:
        engine.dispose()
