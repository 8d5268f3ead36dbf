"""The statistics of judged scores, against examples computed by hand."""

from __future__ import annotations

import pytest

from studio_flows.scores import judge_report, latest_scores, mcnemar, mean_score, paired

BASE = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0, "e": 3.0, "f": 5.0}
TUNED = {"a": 5.0, "b": 5.0, "c": 5.0, "d": 3.0, "e": 3.0, "f": 5.0}


def test_the_paired_test_matches_the_exact_wilcoxon_p_value_computed_by_hand() -> None:
    # Differences tuned - base: +4, +3, +2, -1, 0, 0. The ties are dropped; the ranks of
    # |d| are 4, 3, 2, 1 and the negative one has rank 1, so W- = 1. Of the 2^4 = 16 sign
    # patterns, two have W- <= 1 (W- = 0 and W- = 1): two-sided p = 2 * 2/16 = 0.25.
    result = paired("base", "tuned", BASE, TUNED)

    assert (result.wins, result.ties, result.losses, result.rows) == (3, 2, 1, 6)
    assert result.p_value == pytest.approx(0.25)
    assert result.sentence() == "tuned wins 3, ties 2, loses 1 against base (p = 0.2500)"


def test_ten_wins_of_distinct_sizes_have_p_two_in_1024() -> None:
    base = {str(i): 0.0 for i in range(10)}
    better = {str(i): float(i + 1) for i in range(10)}

    result = paired("base", "tuned", base, better)

    assert result.p_value == pytest.approx(2 / 1024)
    assert result.sentence() == "tuned wins 10, ties 0, loses 0 against base (p = 0.0020)"


def test_only_ties_is_p_one_and_rows_scored_by_one_model_only_are_not_paired() -> None:
    result = paired("base", "same", {"a": 3.0, "b": 4.0}, {"a": 3.0, "b": 4.0, "c": 1.0})

    assert (result.wins, result.ties, result.losses, result.rows) == (0, 2, 0, 2)
    assert result.p_value == 1.0


def test_mcnemar_on_exact_match_is_the_exact_binomial_p_value_computed_by_hand() -> None:
    # 9 rows only tuned gets right, 2 only base: under no difference each of the 11 is a fair
    # coin. Two-sided exact p = 2 * P(X <= 2), X ~ Bin(11, 1/2) = 2 * (1 + 11 + 55) / 2^11
    # = 134 / 2048 = 0.0654296875. The 5 rows both get right or both wrong do not count.
    result = mcnemar("base", "tuned", wins=9, ties=5, losses=2)

    assert (result.wins, result.ties, result.losses, result.rows) == (9, 5, 2, 16)
    assert result.p_value == pytest.approx(134 / 2048)
    assert result.sentence() == (
        "tuned wins 9, ties 5, loses 2 against base on exact match (p = 0.0654)"
    )


def test_mcnemar_without_rows_where_the_models_differ_is_p_one() -> None:
    assert mcnemar("base", "same", wins=0, ties=4, losses=0).p_value == 1.0


def test_the_report_artifact_shows_mcnemar_below_the_exact_match_shares() -> None:
    from studio_flows.summary import ModelSummary, RunSummary

    summary = RunSummary(
        dataset="eval.jsonl",
        model_id="base, tuned",
        models=[
            ModelSummary(model_id="base", scored_rows=16, exact_match=0.25),
            ModelSummary(model_id="tuned", scored_rows=16, exact_match=0.6875),
        ],
        exact_match_pairs=[mcnemar("base", "tuned", wins=9, ties=5, losses=2)],
    )

    by_model = summary.markdown().split("## By model")[1]
    assert by_model.index("68.8 %") < by_model.index(
        "- tuned wins 9, ties 5, loses 2 against base on exact match (p = 0.0654)"
    )
    assert "Paired test on exact match: exact McNemar" in by_model


def test_the_mean_has_a_95_percent_bootstrap_interval_around_it() -> None:
    mean = mean_score("base", list(BASE.values()))

    assert (mean.rows, mean.mean) == (6, 3.0)
    assert 1.0 <= mean.low < 3.0 < mean.high <= 5.0
    assert mean_score("base", list(BASE.values())) == mean  # seeded: the same every time
    assert mean.cell().startswith("3.00 [")


def test_a_report_pairs_every_later_model_with_the_first_from_the_latest_verdicts() -> None:
    records = [
        {"model_id": m, "row_key": k, "score": s, "status": "completed"}
        for m, scores in (("base", BASE), ("tuned", TUNED))
        for k, s in scores.items()
    ]
    records.insert(0, {"model_id": "base", "row_key": "a", "score": 5.0, "status": "completed"})
    records.append({"model_id": "tuned", "row_key": "z", "score": None, "status": "failed"})

    report = judge_report("judge", "t", ["base", "tuned"], latest_scores(records))

    assert [(m.model_id, m.rows) for m in report.means] == [("base", 6), ("tuned", 6)]
    assert report.paired[0].sentence() == (
        "tuned wins 3, ties 2, loses 1 against base (p = 0.2500)"
    )
    assert [row["mean [95% CI]"][:4] for row in report.table()] == ["3.00", "4.33"]
