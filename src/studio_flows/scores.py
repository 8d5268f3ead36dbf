"""What judges' scores say: each model's mean, and whether one model beats another.

For one judge and template, over every stored verdict of a dataset's rows:

- each model's mean score with a 95 % bootstrap interval (:func:`scipy.stats.bootstrap`,
  percentile method, 9,999 resamples, a fixed seed so a report reads the same twice) and the
  number of rows scored;
- for each model after the first, paired against the first on the rows both were scored on:
  wins, ties and losses, and a Wilcoxon signed-rank test (:func:`scipy.stats.wilcoxon`) of the
  score differences. Tied rows are dropped before the test (Wilcoxon's own treatment of
  zero differences); scipy computes the exact p-value for up to 50 rows without tied
  differences, a normal approximation otherwise. When every row is a tie there is nothing
  to test: p is 1;
- on exact match against an expected column (:func:`mcnemar`): the rows where one model is
  right and the other wrong, and an exact McNemar test.

Example:
    >>> pair = paired("base", "tuned", {"a": 1, "b": 2, "c": 3}, {"a": 2, "b": 2, "c": 5})
    >>> pair.sentence()
    'tuned wins 2, ties 1, loses 0 against base (p = 0.5000)'
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, Field

CONFIDENCE = 0.95
RESAMPLES = 9999
SEED = 20261130
TEST_NAME = "Wilcoxon signed-rank (ties dropped)"
MCNEMAR_NAME = "exact McNemar (two-sided binomial test, p = 0.5, on the rows where they differ)"


class ModelMean(BaseModel):
    """One model's mean score and its 95 % bootstrap interval."""

    model_id: str
    rows: int
    mean: float
    low: float
    high: float

    def cell(self) -> str:
        """``3.40 [2.90, 3.85]``: two decimals, as the summary shows it.

        Example:
            >>> ModelMean(model_id="m", rows=2, mean=3.5, low=3, high=4).cell()
            '3.50 [3.00, 4.00]'
        """
        return f"{self.mean:.2f} [{self.low:.2f}, {self.high:.2f}]"


class PairedResult(BaseModel):
    """A model against the first one, on the rows both were scored on."""

    model_id: str
    baseline: str
    rows: int
    wins: int
    ties: int
    losses: int
    p_value: float
    test: str = TEST_NAME
    measure: str = Field(default="", description="what is compared, if not a judge's score")

    def sentence(self) -> str:
        """``tuned wins 18, ties 4, loses 2 against base (p = 0.0004)``, with the measure
        after the baseline if there is one (``against base on exact match (p = 0.0654)``)."""
        shown = "p < 0.0001" if self.p_value < 0.0001 else f"p = {self.p_value:.4f}"
        on = f" on {self.measure}" if self.measure else ""
        return (
            f"{self.model_id} wins {self.wins}, ties {self.ties}, loses {self.losses} "
            f"against {self.baseline}{on} ({shown})"
        )


class JudgeReport(BaseModel):
    """Every model's scores from one judge and template, and the paired comparisons."""

    judge_model: str
    template_hash: str
    means: list[ModelMean]
    paired: list[PairedResult]

    def table(self) -> list[dict[str, str | int]]:
        """One row per model: rows scored, mean [95 % interval], and against the first."""
        against = {pair.model_id: pair for pair in self.paired}
        rows: list[dict[str, str | int]] = []
        for mean in self.means:
            pair = against.get(mean.model_id)
            rows.append(
                {
                    "judge": self.judge_model,
                    "model": mean.model_id,
                    "rows scored": mean.rows,
                    "mean [95% CI]": mean.cell(),
                    "wins/ties/losses": f"{pair.wins}/{pair.ties}/{pair.losses}" if pair else "",
                    "p": f"{pair.p_value:.4f}" if pair else "",
                }
            )
        return rows

    def markdown(self) -> str:
        """The table and the sentences, in markdown (the ``generation-scores`` artifact)."""
        table = self.table()
        if not table:
            return f"Judge {self.judge_model}: no scores yet.\n"
        header = list(table[0])
        lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        lines += ["| " + " | ".join(str(row[name]) for name in header) + " |" for row in table]
        lines += ["", *(f"- {pair.sentence()}" for pair in self.paired)]
        if self.paired:
            lines.append(f"\nPaired test: {TEST_NAME}.")
        return f"## Judge {self.judge_model}\n\n" + "\n".join(lines) + "\n"


def mean_score(model_id: str, scores: Sequence[float]) -> ModelMean:
    """``scores``' mean and 95 % percentile bootstrap interval (one distinct value: the
    interval is that value; scipy has nothing to resample).

    Example:
        >>> mean_score("m", [4, 4]).cell()
        '4.00 [4.00, 4.00]'
    """
    import numpy as np
    from scipy import stats

    values = np.asarray(scores, dtype=float)
    mean = float(values.mean())
    if len(set(values.tolist())) < 2:
        return ModelMean(model_id=model_id, rows=len(values), mean=mean, low=mean, high=mean)
    result = stats.bootstrap(
        (values,),
        np.mean,
        confidence_level=CONFIDENCE,
        n_resamples=RESAMPLES,
        method="percentile",
        rng=np.random.default_rng(SEED),
    )
    low, high = result.confidence_interval
    return ModelMean(
        model_id=model_id, rows=len(values), mean=mean, low=float(low), high=float(high)
    )


def paired(
    baseline: str, model_id: str, base: Mapping[str, float], other: Mapping[str, float]
) -> PairedResult:
    """``model_id`` against ``baseline`` on the rows (keys) both have a score for."""
    from scipy import stats

    shared = sorted(base.keys() & other.keys())
    differences = [other[row] - base[row] for row in shared]
    wins = sum(1 for d in differences if d > 0)
    losses = sum(1 for d in differences if d < 0)
    untied = [d for d in differences if d != 0]
    p_value = 1.0
    if untied:
        p_value = float(stats.wilcoxon(untied, alternative="two-sided").pvalue)
    return PairedResult(
        model_id=model_id,
        baseline=baseline,
        rows=len(shared),
        wins=wins,
        ties=len(differences) - wins - losses,
        losses=losses,
        p_value=p_value,
    )


def mcnemar(baseline: str, model_id: str, *, wins: int, ties: int, losses: int) -> PairedResult:
    """``model_id`` against ``baseline`` on exact match, with an exact McNemar test.

    ``wins`` counts the rows ``model_id`` gets right and ``baseline`` wrong, ``losses`` the
    reverse, ``ties`` the rows both get right or both wrong. With no difference between the
    models each row where they differ is a fair coin, so the exact McNemar p-value is that
    of :func:`scipy.stats.binomtest` of ``wins`` in ``wins + losses`` trials, p = 0.5,
    two-sided. With no such rows there is nothing to test: p is 1.

    Example:
        >>> mcnemar("base", "tuned", wins=9, ties=5, losses=2).sentence()
        'tuned wins 9, ties 5, loses 2 against base on exact match (p = 0.0654)'
    """
    from scipy import stats

    differ = wins + losses
    p_value = float(stats.binomtest(wins, differ, p=0.5).pvalue) if differ else 1.0
    return PairedResult(
        model_id=model_id,
        baseline=baseline,
        rows=differ + ties,
        wins=wins,
        ties=ties,
        losses=losses,
        p_value=p_value,
        test=MCNEMAR_NAME,
        measure="exact match",
    )


def judge_report(
    judge_model: str,
    template_hash: str,
    models: Sequence[str],
    by_model: Mapping[str, Mapping[str, float]],
) -> JudgeReport:
    """Means for each of ``models`` with scores, and each later model paired with the first.

    Example:
        >>> report = judge_report("j", "t", ["a", "b"], {"a": {"r": 2.0}, "b": {"r": 3.0}})
        >>> [m.cell() for m in report.means], report.paired[0].sentence()
        (['2.00 [2.00, 2.00]', '3.00 [3.00, 3.00]'], 'b wins 1, ties 0, loses 0 against a (p = 1.0000)')
    """  # noqa: E501
    means = [
        mean_score(model, list(by_model[model].values())) for model in models if by_model.get(model)
    ]
    pairs = []
    if len(models) > 1 and by_model.get(models[0]):
        first = models[0]
        for model in models[1:]:
            if by_model.get(model):
                pairs.append(paired(first, model, by_model[first], by_model[model]))
    return JudgeReport(
        judge_model=judge_model, template_hash=template_hash, means=means, paired=pairs
    )


def latest_scores(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Completed verdicts (oldest first) as ``{model: {row_key: score}}``, the latest
    verdict of a row winning (a row answered under other parameters has one of its own).

    Example:
        >>> latest_scores([{"model_id": "m", "row_key": "r", "score": 2.0, "status": "completed"},
        ...                {"model_id": "m", "row_key": "r", "score": 4.0, "status": "completed"}])
        {'m': {'r': 4.0}}
    """
    found: dict[str, dict[str, float]] = {}
    for record in records:
        if record["status"] == "completed" and record["score"] is not None:
            found.setdefault(record["model_id"], {})[record["row_key"]] = float(record["score"])
    return found


def score_history(verdicts: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Verdicts (oldest first) summed up per run: one line per (flow run, judge, template,
    model), in the order the runs first scored, with rows scored, mean and failed verdicts.

    Example:
        >>> from datetime import datetime, UTC
        >>> at = datetime(2026, 12, 1, tzinfo=UTC)
        >>> line = score_history([{"flow_run_id": "r1", "judge_model": "j", "template_hash":
        ...     "ab" * 32, "model_id": "m", "status": "completed", "score": 4.0, "scored_at": at}])
        >>> line[0]["mean"], line[0]["rows scored"], line[0]["template"]
        (4.0, 1, 'abababababab')
    """
    lines: dict[tuple[Any, ...], dict[str, Any]] = {}
    sums: dict[tuple[Any, ...], float] = {}
    for verdict in verdicts:
        key = (
            verdict["flow_run_id"],
            verdict["judge_model"],
            verdict["template_hash"],
            verdict["model_id"],
        )
        line = lines.setdefault(
            key,
            {
                "scored at": verdict["scored_at"].isoformat(timespec="seconds"),
                "flow run": verdict["flow_run_id"] or "",
                "judge": verdict["judge_model"],
                "template": str(verdict["template_hash"])[:12],
                "model": verdict["model_id"],
                "rows scored": 0,
                "mean": None,
                "failed": 0,
            },
        )
        if verdict["status"] == "completed" and verdict["score"] is not None:
            line["rows scored"] += 1
            sums[key] = sums.get(key, 0.0) + float(verdict["score"])
            line["mean"] = round(sums[key] / line["rows scored"], 2)
        else:
            line["failed"] += 1
    return list(lines.values())


__all__ = [
    "JudgeReport",
    "ModelMean",
    "PairedResult",
    "judge_report",
    "latest_scores",
    "mcnemar",
    "mean_score",
    "paired",
    "score_history",
]
