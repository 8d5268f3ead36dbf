"""Our tasks mapped on a Dask cluster of worker processes (the ``studio-flows[dask]`` extra).

Two worker processes of two threads each, with the session's Prefect server: the fair-use
limit then spans processes, and a flow's twelve task runs share four threads. The emulator
accepts 50 active jobs here (its default is the account's 3): the maximum it sees is the
tasks' own fair-use discipline, not its 429s. The last scenario is a user's script that
names no Prefect server and runs its flow inside ``studio_flows.prefect_api()``.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect import flow, unmapped
from prefect.settings import PREFECT_API_URL
from prefect_dask import DaskTaskRunner
from studio_flows.tasks.generation import (
    generate,
    submit_generation_job,
    wait_for_generation_job,
)

from studio_flows.emulator import EmulatorServer
from studio_flows.generation import Generation, GenerationResult
from tests.fixtures.cli_runs import SECRET_TOKEN, cli_env, run_cli
from tests.fixtures.harness import LIMIT_NAME_VARIABLE

MODEL = "dask-model"
BATCHES = [[f"d {b}.{i}" for i in range(2)] for b in range(12)]

# Each scenario takes about 25 s on a loaded machine; a hang fails the test instead of the suite.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture
def env(flow_env: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmulatorServer]:
    """The emulator, with jobs of 2 s; Prefect's API URL in the environment.

    The Dask workers are processes spawned when the flow starts its task runner: they read
    the emulator's and the fair-use limit's ``MODEL_STUDIO_*`` variables from the
    environment ``flow_env`` set, and without ``PREFECT_API_URL`` there each would start a
    temporary Prefect server of its own (the harness sets it in this process's settings only).
    """
    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
    flow_env.configure(fair_use_limit=50, job_latency_s=2.0)
    yield flow_env


def dask_runner() -> DaskTaskRunner:
    """A local cluster of 2 worker processes x 2 threads, made when a flow starts."""
    return DaskTaskRunner(
        cluster_kwargs={"n_workers": 2, "threads_per_worker": 2, "processes": True}
    )


@flow
def mapped_generate(batches: list[list[str]]) -> list[list[Generation]]:
    return generate.map(batches, model_id=unmapped(MODEL)).result()  # type: ignore[no-any-return]


@flow
def mapped_submit_then_wait(batches: list[list[str]]) -> list[list[Generation]]:
    jobs = submit_generation_job.map(batches, model_id=unmapped(MODEL))
    results: list[GenerationResult] = wait_for_generation_job.map(jobs).result()
    return [result.generations for result in results]


def assert_answers_in_order(answered: list[list[Generation]]) -> None:
    """Result ``i`` answers batch ``i``, every prompt in its place."""
    assert len(answered) == len(BATCHES)
    for prompts, generations in zip(BATCHES, answered, strict=True):
        assert [g.text for g in generations] == [f"{MODEL} answers: {p}" for p in prompts]
        assert all(g.ok and g.error is None for g in generations)


def assert_three_jobs_at_most_and_reached(emulator: EmulatorServer) -> None:
    stats = emulator.stats()
    assert stats["jobs_created"] == len(BATCHES), stats
    assert stats["max_active_jobs"] == 3, stats
    assert stats["rejections"] == {}, stats  # no 429: nothing leaned on the service's limit


def test_mapped_generate_on_dask_processes_answers_in_order_with_three_jobs_active(
    env: EmulatorServer,
) -> None:
    answered = mapped_generate.with_options(task_runner=dask_runner())(BATCHES)

    assert_answers_in_order(answered)
    assert_three_jobs_at_most_and_reached(env)


def test_mapped_submit_then_wait_on_dask_processes_completes_with_three_jobs_active(
    env: EmulatorServer,
) -> None:
    # Twelve submits on four threads: a submit without a free slot must not keep its thread
    # from the waits that would free one (all four sat in submit before the watchers).
    answered = mapped_submit_then_wait.with_options(task_runner=dask_runner())(BATCHES)

    assert_answers_in_order(answered)
    assert_three_jobs_at_most_and_reached(env)


# A user's script that names no Prefect server: ``prefect_api()`` runs the flow on the
# local server of PREFECT_HOME, and Prefect ships that setting to the Dask workers with
# each task run (its serialized settings context).
NO_SERVER_SCRIPT = """
import json
from prefect import flow, unmapped
from prefect_dask import DaskTaskRunner
import studio_flows
from studio_flows.tasks.generation import generate

BATCHES = [[f"d {b}.{i}" for i in range(2)] for b in range(12)]


@flow(task_runner=DaskTaskRunner(
    cluster_kwargs={"n_workers": 2, "threads_per_worker": 2, "processes": True}
))
def mapped_generate(batches):
    return generate.map(batches, model_id=unmapped("dask-model")).result()


if __name__ == "__main__":
    with studio_flows.prefect_api():
        answered = mapped_generate(BATCHES)
    print("ANSWERS " + json.dumps([[g.text for g in batch] for batch in answered]))
"""


def test_mapped_generate_on_dask_with_no_prefect_server_named_shares_the_local_servers_limit(
    emulator: EmulatorServer, shared_prefect_home: Path, tmp_path: Path
) -> None:
    # Four threads in two worker processes: had each worker a Prefect server of its own
    # (the temporary one Prefect starts without an API URL), four jobs would run at once.
    emulator.configure(fair_use_limit=50, job_latency_s=2.0, tokens=[SECRET_TOKEN])
    script = tmp_path / "my_flow.py"
    script.write_text(NO_SERVER_SCRIPT)
    env = cli_env(
        emulator,
        shared_prefect_home,
        **{LIMIT_NAME_VARIABLE: f"tag:model-studio-dask-{uuid.uuid4().hex[:8]}"},
    )

    result = run_cli([sys.executable, str(script)], env, tmp_path, timeout_s=170)

    assert result.returncode == 0, result
    line = next(x for x in result.stdout.splitlines() if x.startswith("ANSWERS "))
    answered = json.loads(line.removeprefix("ANSWERS "))
    assert answered == [[f"{MODEL} answers: {p}" for p in batch] for batch in BATCHES]
    assert "temporary server" not in result.output.lower(), result
    assert_three_jobs_at_most_and_reached(emulator)
