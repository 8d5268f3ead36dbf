"""Serve the deployments of ``prefect.yaml`` from one machine, without a work pool or worker.

``prefect.serve`` registers the deployments with the Prefect API this process points at
(``PREFECT_API_URL``, or a Cloud login) and runs their flow runs as subprocesses of this
process until it is stopped. Use it for one machine; use ``prefect deploy --all`` and a
``process`` worker when several machines share the work (docs/deployments.md).

The two deployments mirror ``prefect.yaml`` (tests/test_deployments.py checks that they
agree) under their own names, ``nightly-generation-served`` and ``adhoc-generation-served``:
a served deployment has no work pool and no pull step, and ``prefect.serve`` pauses it when
the process stops, so a shared name would overwrite the worker's deployment and leave it
paused. As in ``prefect.yaml``, the nightly one has no dataset until one is named (its
schedule stays off until then) and no secret is passed: credentials come from this
process's environment or a block named in the parameters.

Example:
    >>> from studio_flows.deployments.serve import serve
    >>> serve(limit=2, nightly_dataset="data/prompts.jsonl")  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import signal
import threading
from typing import Any

from prefect import serve as prefect_serve
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron
from prefect.types.entrypoint import EntrypointType
from studio_flows.flows.generate import generate_dataset

TAGS = ["studio-flows"]
DEFAULT_MODEL_ID = "meta-llama/Llama-3.3-70B-Instruct"
NIGHTLY_CRON = "0 2 * * *"
NIGHTLY_TIMEZONE = "UTC"
NIGHTLY_NAME = "nightly-generation"
ADHOC_NAME = "adhoc-generation"
SERVED_SUFFIX = "-served"

# No dataset_path: the nightly run's dataset is the operator's to name, never a guess.
NIGHTLY_OPTIONS: dict[str, Any] = {
    "model_id": DEFAULT_MODEL_ID,
    "temperature": 0.7,
    "max_tokens": 512,
    "on_bad_rows": "skip",
    "ambiguous_policy": "resubmit",
}
ADHOC_PARAMETERS: dict[str, Any] = {
    "options": {"dataset_path": "examples/prompts.jsonl", "model_id": DEFAULT_MODEL_ID}
}
NIGHTLY_DESCRIPTION = (
    "Every night at 02:00 UTC, generate answers for the rows of options.dataset_path that "
    "have none yet (re-runs are incremental) and keep them in the results database. The "
    "dataset has no default: the schedule is off until an operator names one."
)
ADHOC_DESCRIPTION = (
    'Run on demand (UI "Run" button, `prefect deployment run`, or run_deployment) '
    "with the dataset, model and options of your choice; no schedule."
)


def served_name(name: str) -> str:
    """The name ``serve`` registers for the ``prefect.yaml`` deployment called ``name``.

    Example:
        >>> served_name("nightly-generation")
        'nightly-generation-served'
    """
    return f"{name}{SERVED_SUFFIX}"


def nightly_parameters(dataset_path: str | None) -> dict[str, Any]:
    """The nightly deployment's parameters, with ``dataset_path`` only when one is named.

    Example:
        >>> nightly_parameters("data/prompts.jsonl")["options"]["dataset_path"]
        'data/prompts.jsonl'
        >>> "dataset_path" in nightly_parameters(None)["options"]
        False
    """
    dataset = {} if dataset_path is None else {"dataset_path": dataset_path}
    return {"options": {**dataset, **NIGHTLY_OPTIONS}}


def build_deployments(nightly_dataset: str | None = None) -> list[RunnerDeployment]:
    """The nightly and ad-hoc deployments of ``prefect.yaml``, under their served names.

    Without ``nightly_dataset`` the nightly schedule is registered inactive, as in
    ``prefect.yaml``: a run would have no dataset to read.

    Example:
        >>> [d.name for d in build_deployments()]  # doctest: +SKIP
        ['nightly-generation-served', 'adhoc-generation-served']
    """
    nightly = _deployment(
        name=served_name(NIGHTLY_NAME),
        schedules=[
            Cron(NIGHTLY_CRON, timezone=NIGHTLY_TIMEZONE, active=nightly_dataset is not None)
        ],
        parameters=nightly_parameters(nightly_dataset),
        tags=[*TAGS, "nightly"],
        description=NIGHTLY_DESCRIPTION,
        # One nightly run at a time: a run that overruns makes the next one wait.
        concurrency_limit=1,
    )
    adhoc = _deployment(
        name=served_name(ADHOC_NAME),
        parameters=ADHOC_PARAMETERS,
        tags=[*TAGS, "adhoc"],
        description=ADHOC_DESCRIPTION,
    )
    return [nightly, adhoc]


def _deployment(**kwargs: Any) -> RunnerDeployment:
    # _sync=True: build synchronously even when called under a running event loop.
    # A module path, not a file: it loads the installed package wherever it lives (a wheel's
    # site-packages, an editable install's link tree), as prefect.yaml's file path cannot.
    built = generate_dataset.to_deployment(  # type: ignore[call-arg]
        **kwargs, entrypoint_type=EntrypointType.MODULE_PATH, _sync=True
    )
    assert isinstance(built, RunnerDeployment)  # async_dispatch widens the return type
    return built


def serve(limit: int | None = None, nightly_dataset: str | None = None) -> None:
    """Serve both deployments until interrupted; run at most ``limit`` flow runs at once.

    Blocks. The nightly schedule is on only when ``nightly_dataset`` names its dataset.
    Every flow run of every process still shares the ``model-studio`` fair-use limit on
    the Prefect server, so ``limit`` bounds local load, not jobs in flight.

    Ctrl-C (SIGINT) stops it even when it was started with SIGINT ignored, as a script's
    ``studio-flows serve &`` starts it: Prefect would keep serving through every SIGINT.

    Example:
        >>> serve(nightly_dataset="/data/prompts.jsonl")  # doctest: +SKIP
    """
    answer_sigint()
    prefect_serve(*build_deployments(nightly_dataset), limit=limit)


def answer_sigint() -> None:
    """Make SIGINT interrupt this process again if it was started with SIGINT ignored.

    A shell without job control starts ``command &`` with SIGINT ignored; Python keeps
    that, and ``asyncio.run`` (inside ``prefect.serve``) then installs no Ctrl-C handler.

    Example:
        >>> import signal
        >>> previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        >>> answer_sigint()
        >>> signal.getsignal(signal.SIGINT) is signal.default_int_handler
        True
        >>> _ = signal.signal(signal.SIGINT, previous)
    """
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: list[str] | None = None) -> None:
    """``python -m studio_flows.deployments.serve [--nightly-dataset PATH] [--limit N]``.

    Example:
        >>> main(["--nightly-dataset", "/data/prompts.jsonl"])  # doctest: +SKIP
    """
    parser = argparse.ArgumentParser(
        prog="python -m studio_flows.deployments.serve",
        description="Serve the nightly and ad-hoc deployments from this process.",
    )
    parser.add_argument(
        "--nightly-dataset", metavar="PATH", help="dataset of the nightly run; turns it on"
    )
    parser.add_argument("--limit", type=int, metavar="N", help="at most N flow runs at once")
    args = parser.parse_args(argv)
    serve(limit=args.limit, nightly_dataset=args.nightly_dataset)


if __name__ == "__main__":
    main()
