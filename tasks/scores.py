"""Reading judged scores back from a Prefect flow: every verdict, or the history per run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from studio_flows.tasks.jobs import engine_for

from studio_flows.blocks import ResultsDatabase
from studio_flows.scores import score_history
from studio_flows.settings import load_settings
from studio_flows.storage import read_scores as stored_scores


@task(name="read-scores", cache_policy=NO_CACHE)
def read_scores(
    dataset: str,
    *,
    models: Sequence[str] | None = None,
    judge_model: str | None = None,
    per_run: bool = False,
    database: ResultsDatabase | None = None,
    database_url: str | None = None,
) -> list[dict[str, Any]]:
    """The judges' verdicts on ``dataset``'s answers, oldest first; with ``per_run``, one
    line per (flow run, judge, template, model) with rows scored, mean and failed verdicts
    (the history ``studio-flows scores`` prints). The database is found as for
    :func:`~studio_flows.tasks.generation.read_results`.

    Example:
        >>> history = read_scores("eval.jsonl", per_run=True)  # doctest: +SKIP
        >>> [(line["model"], line["mean"]) for line in history]  # doctest: +SKIP
        [('base', 2.75), ('tuned', 3.5)]
    """
    url = database.get_url() if database is not None else database_url
    engine = engine_for(url or load_settings().database_url)
    verdicts = stored_scores(engine, dataset=dataset, models=models, judge_model=judge_model)
    return score_history(verdicts) if per_run else list(verdicts)


__all__ = ["read_scores"]
