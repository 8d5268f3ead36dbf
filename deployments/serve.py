"""Serve the deployments of ``prefect.yaml`` from one machine, without a work pool or worker.

``prefect.serve`` registers the deployments with the Prefect API this process points at
(``PREFECT_API_URL``, or a Cloud login) and runs their flow runs as subprocesses of this
process until it is stopped. Use it for one machine; use ``prefect deploy --all`` and a
``process`` worker when several machines share the work (see docs/schedules.md).

The two deployments mirror ``prefect.yaml`` (tests/test_deployments.py checks that they
agree): the nightly cron generation and the ad-hoc one. As there, no secret is passed:
credentials come from this process's environment or a block named in the parameters.

Example:
    >>> from deployments.serve import serve
    >>> serve(limit=2)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from prefect import serve as prefect_serve
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

from flows.generate import generate_dataset

TAGS = ["studio-flows"]
DEFAULT_MODEL_ID = "meta-llama/Llama-3.3-70B-Instruct"
NIGHTLY_CRON = "0 2 * * *"
NIGHTLY_TIMEZONE = "UTC"

NIGHTLY_PARAMETERS: dict[str, Any] = {
    "options": {
        "dataset_path": "data/prompts.jsonl",
        "model_id": DEFAULT_MODEL_ID,
        "temperature": 0.7,
        "max_tokens": 512,
        "on_bad_rows": "skip",
        "ambiguous_policy": "resubmit",
    }
}
ADHOC_PARAMETERS: dict[str, Any] = {
    "options": {"dataset_path": "examples/prompts.jsonl", "model_id": DEFAULT_MODEL_ID}
}


def build_deployments() -> list[RunnerDeployment]:
    """The nightly and ad-hoc deployments of ``prefect.yaml``, ready for ``prefect.serve``.

    Example:
        >>> [d.name for d in build_deployments()]  # doctest: +SKIP
        ['nightly-generation', 'adhoc-generation']
    """
    nightly = _deployment(
        name="nightly-generation",
        schedules=[Cron(NIGHTLY_CRON, timezone=NIGHTLY_TIMEZONE)],
        parameters=NIGHTLY_PARAMETERS,
        tags=[*TAGS, "nightly"],
        description=(
            "Every night at 02:00 UTC, generate answers for the rows of data/prompts.jsonl "
            "that have none yet (re-runs are incremental) and keep them in the results "
            "database."
        ),
        # One nightly run at a time: a run that overruns makes the next one wait.
        concurrency_limit=1,
    )
    adhoc = _deployment(
        name="adhoc-generation",
        parameters=ADHOC_PARAMETERS,
        tags=[*TAGS, "adhoc"],
        description=(
            'Run on demand (UI "Run" button, `prefect deployment run`, or run_deployment) '
            "with the dataset, model and options of your choice; no schedule."
        ),
    )
    return [nightly, adhoc]


def _deployment(**kwargs: Any) -> RunnerDeployment:
    # _sync=True: build synchronously even when called under a running event loop.
    built = generate_dataset.to_deployment(**kwargs, _sync=True)  # type: ignore[call-arg]
    assert isinstance(built, RunnerDeployment)  # async_dispatch widens the return type
    return built


def serve(limit: int | None = None) -> None:
    """Serve both deployments until interrupted; run at most ``limit`` flow runs at once.

    Blocks. Every flow run of every process still shares the ``model-studio`` fair-use
    limit on the Prefect server, so ``limit`` bounds local load, not jobs in flight.

    Example:
        >>> serve()  # doctest: +SKIP
    """
    prefect_serve(*build_deployments(), limit=limit)


if __name__ == "__main__":
    serve()
