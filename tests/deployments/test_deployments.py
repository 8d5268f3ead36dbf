"""prefect.yaml, the credentials block, the database block, and a real deploy-and-run.

The last test is the whole path a data team takes: a real ``prefect server``, the work pool,
``prefect deploy --all`` from the repository root, an ad-hoc run triggered through the API,
a ``process`` worker that runs it against the emulator, rows in the results table.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from cronsim import CronSim
from prefect import Flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.schedules import CronSchedule
from prefect.deployments import run_deployment
from prefect.deployments.runner import RunnerDeployment
from prefect.exceptions import ObjectNotFound
from prefect.flows import load_flow_from_entrypoint
from prefect_sqlalchemy import ConnectionComponents, SqlAlchemyConnector, SyncDriver
from pydantic import SecretStr
from studio_flows.deployments.serve import build_deployments, served_name
from studio_flows.tasks.database import resolve_database_url, safe_url

from studio_flows.blocks import ModelStudioCredentials, resolve_settings
from studio_flows.emulator import EmulatorServer
from studio_flows.errors import ConfigurationError
from studio_flows.options import GenerateOptions
from studio_flows.settings import DEFAULT_BASE_URL, Settings
from studio_flows.storage import count_results, make_engine
from tests.fixtures.cli_runs import interrupt
from tests.fixtures.emulator import TEST_ORGANIZATION
from tests.fixtures.prefect_server import PREFECT_CLI, PrefectServer, stop_process_group
from tests.fixtures.workers import prefect_cli

REPO_ROOT = Path(__file__).resolve().parents[2]
PREFECT_YAML = REPO_ROOT / "prefect.yaml"
EXPECTED_DEPLOYMENTS = {"nightly-generation", "adhoc-generation"}
SECRET_TOKEN = "ms-token-must-never-leak-0123456789"


def prefect_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(PREFECT_YAML.read_text(encoding="utf-8"))
    return config


def deployments() -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in prefect_config()["deployments"]}


@pytest.fixture
def clean_model_studio_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No MODEL_STUDIO_* variable and no .env file from the developer's machine."""
    for name in list(os.environ):
        if name.startswith("MODEL_STUDIO_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


# -- 1. entrypoints ------------------------------------------------------------------------


def test_prefect_yaml_declares_both_deployments_on_the_process_pool() -> None:
    config = prefect_config()
    found = deployments()

    assert set(found) == EXPECTED_DEPLOYMENTS
    for deployment in found.values():
        assert deployment["work_pool"]["name"] == "studio-flows"
        assert "studio-flows" in deployment["tags"]
        assert deployment["description"].strip()
    assert found["nightly-generation"]["concurrency_limit"] == 1
    assert not found["adhoc-generation"].get("schedules")
    (step,) = config["pull"]
    assert "directory" in step["prefect.deployments.steps.set_working_directory"]


@pytest.mark.parametrize("name", sorted(EXPECTED_DEPLOYMENTS))
def test_every_entrypoint_imports_a_prefect_flow(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Entrypoints are relative to the working directory the pull step sets: the repo root.
    monkeypatch.chdir(REPO_ROOT)
    entrypoint = deployments()[name]["entrypoint"]

    loaded = load_flow_from_entrypoint(entrypoint, use_placeholder_flow=False)

    assert isinstance(loaded, Flow)
    assert loaded.name == "generate-dataset"


# -- 2. schedule and parameters --------------------------------------------------------------


def test_the_nightly_cron_schedule_parses_and_fires_at_two_utc() -> None:
    (schedule,) = deployments()["nightly-generation"]["schedules"]

    parsed = CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])
    start = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    fires = CronSim(parsed.cron, start)

    assert parsed.timezone == "UTC"
    assert next(fires) == datetime(2025, 1, 2, 2, 0, tzinfo=UTC)
    assert next(fires) == datetime(2025, 1, 3, 2, 0, tzinfo=UTC)


def declared_options(name: str, **extra: Any) -> dict[str, Any]:
    """The ``options`` parameter ``prefect.yaml`` declares for ``name``, plus ``extra``."""
    options: dict[str, Any] = deployments()[name]["parameters"]["options"]
    return {**options, **extra}


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("adhoc-generation", {}),
        # The nightly deployment is complete once the operator names its dataset.
        ("nightly-generation", {"dataset_path": "/srv/data/prompts.jsonl"}),
    ],
)
def test_deployment_parameters_validate_against_the_flow(
    name: str, extra: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    flow = load_flow_from_entrypoint(deployments()[name]["entrypoint"], use_placeholder_flow=False)
    parameters = {"options": declared_options(name, **extra)}

    options = GenerateOptions.model_validate(parameters["options"])
    validated = flow.validate_parameters(parameters)

    assert validated["options"] == options
    assert options.model_id


def test_the_nightly_deployment_names_no_dataset_and_its_schedule_is_off() -> None:
    # Nothing ships a nightly dataset: a default path would fail every night at 02:00.
    nightly = deployments()["nightly-generation"]
    (schedule,) = nightly["schedules"]

    assert "dataset_path" not in nightly["parameters"]["options"]
    assert schedule["active"] is False
    with pytest.raises(ValueError, match="dataset_path"):
        GenerateOptions.model_validate(declared_options("nightly-generation"))


def test_parameters_that_break_the_options_model_are_refused() -> None:
    # The check above must be able to fail: a typo'd field is refused (extra="forbid").
    options = dict(deployments()["adhoc-generation"]["parameters"]["options"], shard_sise=10)
    with pytest.raises(ValueError, match="shard_sise"):
        GenerateOptions.model_validate(options)


# -- deployments/serve.py mirrors prefect.yaml ---------------------------------------------


def schedules_of(runner: RunnerDeployment) -> list[tuple[str, str, bool]]:
    return [
        (s.schedule.cron, s.schedule.timezone, s.active)  # type: ignore[union-attr]
        for s in runner.schedules or []
    ]


def test_served_deployments_match_prefect_yaml_under_their_own_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    served = {d.name: d for d in build_deployments()}

    assert set(served) == {served_name(n) for n in EXPECTED_DEPLOYMENTS}
    assert not set(served) & EXPECTED_DEPLOYMENTS  # serve never overwrites `prefect deploy`
    for name, declared in deployments().items():
        runner = served[served_name(name)]
        # The same flow: the served one by module path, prefect.yaml's by file.
        assert runner.entrypoint == "studio_flows.flows.generate.generate_dataset"
        served_flow = load_flow_from_entrypoint(runner.entrypoint, use_placeholder_flow=False)
        declared_flow = load_flow_from_entrypoint(
            declared["entrypoint"], use_placeholder_flow=False
        )
        assert served_flow.name == declared_flow.name == "generate-dataset"
        assert Path(inspect.getfile(served_flow.fn)).resolve() == (
            REPO_ROOT / declared["entrypoint"].split(":")[0]
        )
        assert runner.parameters == declared["parameters"]
        assert sorted(runner.tags) == sorted(declared["tags"])
        assert runner.concurrency_limit == declared.get("concurrency_limit")
        assert runner.description == declared["description"]
        assert schedules_of(runner) == [
            (c["cron"], c["timezone"], c["active"]) for c in declared.get("schedules") or []
        ]


def test_naming_the_nightly_dataset_sets_it_and_turns_the_schedule_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    nightly, _ = build_deployments(nightly_dataset="/srv/data/prompts.jsonl")

    assert nightly.parameters == {
        "options": declared_options("nightly-generation", dataset_path="/srv/data/prompts.jsonl")
    }
    assert schedules_of(nightly) == [("0 2 * * *", "UTC", True)]


def fake_prefect_serve(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Replace ``prefect.serve`` in deployments.serve; the dict records what it was given."""
    import studio_flows.deployments.serve as serve_module

    seen: dict[str, Any] = {}

    def fake_serve(*served: RunnerDeployment, limit: int | None = None) -> None:
        seen.update(
            names=[d.name for d in served],
            limit=limit,
            nightly=served[0].parameters["options"].get("dataset_path"),
        )

    monkeypatch.setattr(serve_module, "prefect_serve", fake_serve)
    return seen


def test_serve_hands_both_deployments_and_the_limit_to_prefect(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from studio_flows.deployments.serve import serve

    seen = fake_prefect_serve(monkeypatch)
    serve(limit=2)

    assert seen == {
        "names": ["nightly-generation-served", "adhoc-generation-served"],
        "limit": 2,
        "nightly": None,
    }


def test_python_m_deployments_serve_takes_the_nightly_dataset_and_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from studio_flows.deployments.serve import main

    seen = fake_prefect_serve(monkeypatch)
    main(["--nightly-dataset", "/srv/data/prompts.jsonl", "--limit", "3"])

    assert (seen["limit"], seen["nightly"]) == (3, "/srv/data/prompts.jsonl")


def test_serve_takes_sigint_back_when_started_with_it_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import studio_flows.deployments.serve as serve_module

    handlers: list[object] = []
    monkeypatch.setattr(
        serve_module,
        "prefect_serve",
        lambda *served, limit=None: handlers.append(signal.getsignal(signal.SIGINT)),
    )
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as `studio-flows serve &` starts
    try:
        serve_module.serve()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert handlers == [signal.default_int_handler]  # asyncio.run turns it into Ctrl-C


def test_the_serve_command_passes_the_nightly_dataset_and_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from typer.testing import CliRunner

    from studio_flows.cli import app

    seen = fake_prefect_serve(monkeypatch)
    args = ["serve", "--nightly-dataset", "/srv/data/prompts.jsonl", "--limit", "3"]
    done = CliRunner().invoke(app, args)

    assert done.exit_code == 0, done.output
    assert seen == {
        "names": ["nightly-generation-served", "adhoc-generation-served"],
        "limit": 3,
        "nightly": "/srv/data/prompts.jsonl",
    }


# -- 3. no secret in prefect.yaml ------------------------------------------------------------

# "MODEL_STUDIO_TOKEN", "password", "api_key"; not "max_tokens" or "credentials_block".
SECRET_KEY = re.compile(r"(?:^|[_-])(?:token|password|passwd|secret|api[_-]?key)(?:$|[_-])", re.I)
SECRET_VALUE = re.compile(r"(?i)bearer\s+\S+|://[^/\s:@]+:[^@\s]+@")


def find_secrets(node: Any, path: str = "") -> list[str]:
    """Paths of keys that look secret and carry a value, and of values that embed one."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{path}.{key}" if path else str(key)
            if SECRET_KEY.search(str(key)) and value not in (None, "", {}, []):
                found.append(here)
            found.extend(find_secrets(value, here))
    elif isinstance(node, list):
        for index, item in enumerate(node):
            found.extend(find_secrets(item, f"{path}[{index}]"))
    elif isinstance(node, str) and SECRET_VALUE.search(node):
        found.append(path)
    return found


def test_prefect_yaml_holds_no_secret() -> None:
    assert find_secrets(prefect_config()) == []
    assert "MODEL_STUDIO_TOKEN:" not in PREFECT_YAML.read_text(encoding="utf-8")


def test_the_secret_scan_catches_a_token_and_a_password_url() -> None:
    leaky = {
        "deployments": [
            {"job_variables": {"env": {"MODEL_STUDIO_TOKEN": "abc"}}},
            {"parameters": {"options": {"database_url": "postgresql://app:pw@db/r"}}},
            {"parameters": {"options": {"credentials_block": "prod", "max_tokens": 5}}},
        ]
    }
    assert find_secrets(leaky) == [
        "deployments[0].job_variables.env.MODEL_STUDIO_TOKEN",
        "deployments[1].parameters.options.database_url",
    ]


# -- 4. the credentials block -----------------------------------------------------------------


def test_the_block_masks_its_token_in_repr_and_str() -> None:
    block = ModelStudioCredentials(token=SECRET_TOKEN, organization_id="org-1")

    assert SECRET_TOKEN not in repr(block)
    assert SECRET_TOKEN not in str(block)
    assert "org-1" in repr(block)
    assert block.base_url == DEFAULT_BASE_URL
    assert SECRET_TOKEN not in repr(block.get_client())


def test_apply_to_copies_credentials_over_the_settings() -> None:
    settings = Settings(_env_file=None, organization_id="env-org", shard_size=7)
    block = ModelStudioCredentials(
        token=SECRET_TOKEN, organization_id="block-org", base_url="http://127.0.0.1:9/api/v1"
    )

    applied = block.apply_to(settings)

    assert applied.require_credentials() == (SecretStr(SECRET_TOKEN), "block-org")
    assert applied.base_url == "http://127.0.0.1:9/api/v1"
    assert applied.shard_size == 7
    assert settings.organization_id == "env-org"  # a copy: the original is unchanged


def test_the_block_round_trips_and_the_api_stores_no_readable_token(
    prefect_harness: None, clean_model_studio_env: None
) -> None:
    ModelStudioCredentials(
        token=SECRET_TOKEN, organization_id="org-rt", base_url="http://127.0.0.1:1/api/v1"
    ).save("round-trip", overwrite=True)

    loaded = ModelStudioCredentials.load("round-trip")

    assert loaded.token.get_secret_value() == SECRET_TOKEN
    assert (loaded.organization_id, loaded.base_url) == ("org-rt", "http://127.0.0.1:1/api/v1")
    assert SECRET_TOKEN not in repr(loaded) and SECRET_TOKEN not in str(loaded)

    async def stored_document() -> str:
        async with get_client() as client:
            document = await client.read_block_document_by_name(
                "round-trip", ModelStudioCredentials.get_block_type_slug(), include_secrets=False
            )
            return document.model_dump_json()

    stored = asyncio.run(stored_document())
    assert "org-rt" in stored  # the document is the block's...
    assert SECRET_TOKEN not in stored  # ...with its token obfuscated


def test_resolve_settings_applies_the_named_block(
    prefect_harness: None, clean_model_studio_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODEL_STUDIO_ORGANIZATION_ID", "env-org")
    monkeypatch.setenv("MODEL_STUDIO_SHARD_SIZE", "9")
    ModelStudioCredentials(token=SECRET_TOKEN, organization_id="block-org").save(
        "resolve-me", overwrite=True
    )

    from_env = resolve_settings(None)
    from_block = resolve_settings("resolve-me")
    from_slug = resolve_settings("model-studio-credentials/resolve-me")

    assert from_env.organization_id == "env-org" and from_env.token is None
    assert from_block.require_credentials() == (SecretStr(SECRET_TOKEN), "block-org")
    assert from_block.shard_size == 9  # everything else still comes from the environment
    assert from_slug.organization_id == "block-org"


def test_a_missing_credentials_block_is_a_configuration_error_naming_it(
    prefect_harness: None, clean_model_studio_env: None
) -> None:
    with pytest.raises(ConfigurationError, match="'no-such-credentials'") as caught:
        resolve_settings("no-such-credentials")
    assert "prefect block register -m studio_flows.blocks" in str(caught.value)


# -- the results database from a SqlAlchemyConnector block ----------------------------------


def test_the_database_url_comes_from_the_argument_then_the_block_then_settings(
    prefect_harness: None, clean_model_studio_env: None, tmp_path: Path
) -> None:
    settings = Settings(_env_file=None, database_url="sqlite:///settings.db")
    SqlAlchemyConnector(
        connection_info=ConnectionComponents(
            driver=SyncDriver.POSTGRESQL_PSYCOPG2,
            username="app",
            password="db-password-must-not-leak",
            host="db.example",
            port=5432,
            database="results",
        )
    ).save("results-db", overwrite=True)

    from_block = resolve_database_url(None, "results-db", settings)

    assert resolve_database_url("sqlite:///given.db", None, settings) == "sqlite:///given.db"
    assert resolve_database_url("sqlite:///given.db", "results-db", settings) == (
        "sqlite:///given.db"
    )
    assert resolve_database_url(None, None, settings) == "sqlite:///settings.db"
    # The engine needs the password, so the rendered URL carries it; safe_url() masks it.
    assert from_block == (
        "postgresql+psycopg2://app:db-password-must-not-leak@db.example:5432/results"
    )
    assert "db-password-must-not-leak" not in safe_url(from_block)


def test_a_connector_block_given_as_a_url_string_is_used_as_is(
    prefect_harness: None, clean_model_studio_env: None, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'from-block.db'}"
    SqlAlchemyConnector(connection_info=url).save("results-sqlite", overwrite=True)

    resolved = resolve_database_url(None, "results-sqlite", Settings(_env_file=None))

    assert resolved == url
    engine = make_engine(resolved)  # and the core can open it
    try:
        assert count_results(engine) == {"completed": 0, "failed": 0}
    finally:
        engine.dispose()


def test_a_missing_database_block_is_a_configuration_error_naming_it(
    prefect_harness: None, clean_model_studio_env: None
) -> None:
    with pytest.raises(ConfigurationError, match="'no-such-database'"):
        resolve_database_url(None, "no-such-database", Settings(_env_file=None))


# -- 5. deploy and run for real ----------------------------------------------------------------


@contextlib.contextmanager
def worker_process(env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``prefect worker start --pool studio-flows --run-once``, stopped by process group."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*PREFECT_CLI, "worker", "start", "--pool", "studio-flows", "--run-once"],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the flow-run subprocess goes down with it
        )
        try:
            yield process
        finally:
            stop_process_group(process)


async def deployment_snapshot(name: str) -> dict[str, Any]:
    """What ``serve`` clobbered before: the work pool, pull steps, pause and schedule state."""
    async with get_client() as client:
        found = await client.read_deployment_by_name(f"generate-dataset/{name}")
        return {
            "work_pool": found.work_pool_name,
            "pull_steps": found.pull_steps,
            "paused": found.paused,
            "schedules": [(s.schedule.cron, s.active) for s in found.schedules],  # type: ignore[union-attr]
            "parameters": found.parameters,
            "description": found.description,
        }


async def polled_since(name: str, since: datetime) -> bool:
    """Whether a runner or worker has polled for the deployment's runs since ``since``."""
    async with get_client() as client:
        try:
            found = await client.read_deployment_by_name(f"generate-dataset/{name}")
        except ObjectNotFound:
            return False
        return found.last_polled is not None and found.last_polled > since


def wait_until_served(
    names: set[str], serve: subprocess.Popen[bytes], log: Path, since: datetime
) -> None:
    """Return once ``serve`` has registered every deployment of ``names`` and polls for runs.

    A poll since ``since`` (the start of ``serve``), not the READY status: an earlier serve
    leaves them READY for a minute, and a Ctrl-C then lands while this one still starts.
    """
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert serve.poll() is None, f"serve exited early:\n{log.read_text(errors='replace')}"
        if all(asyncio.run(polled_since(name, since)) for name in names):
            return
        time.sleep(1)
    pytest.fail(f"serve was not polling after 180 s:\n{log.read_text(errors='replace')}")


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def start_serve(env: dict[str, str], log: Path, *, sigint_ignored: bool = False) -> Any:
    """``studio-flows serve`` in its own process group, once it polls for both deployments.

    ``sigint_ignored`` starts it as a shell without job control starts ``command &``.
    """
    since = datetime.now(UTC)
    with log.open("wb") as out:
        serve = subprocess.Popen(
            [str(Path(sys.executable).with_name("studio-flows")), "serve"],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_ignore_sigint if sigint_ignored else None,
        )
    try:
        wait_until_served({served_name(n) for n in EXPECTED_DEPLOYMENTS}, serve, log, since)
    except BaseException:
        stop_process_group(serve)
        raise
    return serve


def assert_served_ones_paused() -> None:
    for name in EXPECTED_DEPLOYMENTS:  # what serve paused on Ctrl-C is its own
        mine = asyncio.run(deployment_snapshot(served_name(name)))
        assert (mine["work_pool"], mine["paused"]) == (None, True)


@pytest.mark.slow
def test_serve_and_deploy_on_one_server_leave_each_other_alone(
    prefect_server_process: PrefectServer, prefect_api: str, tmp_path: Path
) -> None:
    # The reported sequence: `prefect deploy --all`, then `studio-flows serve`, then Ctrl-C.
    env = prefect_server_process.env(PWD=str(REPO_ROOT))
    prefect_cli(["work-pool", "create", "studio-flows", "--type", "process", "--overwrite"], env)
    prefect_cli(["--no-prompt", "deploy", "--all"], env)
    before = {name: asyncio.run(deployment_snapshot(name)) for name in EXPECTED_DEPLOYMENTS}

    log = tmp_path / "serve.log"
    serve = start_serve(env, log)
    try:
        code = interrupt(serve)  # what Ctrl-C sends to a terminal's job
    finally:
        stop_process_group(serve)
    served_log = log.read_text(errors="replace")

    after = {name: asyncio.run(deployment_snapshot(name)) for name in EXPECTED_DEPLOYMENTS}
    assert code == 0, served_log
    assert after == before, served_log
    assert before["nightly-generation"]["work_pool"] == "studio-flows"
    assert before["nightly-generation"]["pull_steps"]
    assert "Traceback" not in served_log, served_log
    assert_served_ones_paused()


@pytest.mark.slow
def test_serve_started_with_sigint_ignored_stops_on_one_ctrl_c(
    prefect_server_process: PrefectServer, prefect_api: str, tmp_path: Path
) -> None:
    # `studio-flows serve &` in a script, then `kill -INT`: Prefect alone serves on forever.
    log = tmp_path / "serve.log"
    serve = start_serve(prefect_server_process.env(PWD=str(REPO_ROOT)), log, sigint_ignored=True)
    try:
        code = interrupt(serve)
    finally:
        stop_process_group(serve)
    served_log = log.read_text(errors="replace")
    assert code == 0, served_log
    assert "Traceback" not in served_log, served_log
    assert_served_ones_paused()


@pytest.mark.slow
def test_a_run_of_the_nightly_deployment_without_a_dataset_is_refused_by_name(
    prefect_server_process: PrefectServer, prefect_api: str
) -> None:
    env = prefect_server_process.env(PWD=str(REPO_ROOT))
    prefect_cli(["work-pool", "create", "studio-flows", "--type", "process", "--overwrite"], env)
    prefect_cli(["--no-prompt", "deploy", "--name", "nightly-generation"], env)
    assert asyncio.run(deployment_snapshot("nightly-generation"))["schedules"] == [
        ("0 2 * * *", False)
    ]

    refused = subprocess.run(
        [*PREFECT_CLI, "deployment", "run", "generate-dataset/nightly-generation"],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert refused.returncode != 0
    # The form needs a file unless it names a query (options.sql).
    assert "'dataset_path' is a required property" in refused.stdout, refused


async def flow_run_state_and_logs(flow_run_id: Any) -> tuple[Any, dict[str, Any], str]:
    async with get_client() as client:
        (run,) = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
        logs = await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
        return run.state, run.parameters, "\n".join(log.message for log in logs)


@pytest.mark.slow
def test_deploy_all_then_a_process_worker_runs_the_adhoc_deployment(
    prefect_server_process: PrefectServer,
    prefect_api: str,
    emulator: EmulatorServer,
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    results_url = f"sqlite:///{tmp_path / 'results.db'}"
    # As a shell in the clone's root: prefect.yaml's pull step stores {{ $PWD }}.
    cli_env = prefect_server_process.env(PWD=str(REPO_ROOT))
    worker_env = prefect_server_process.env(
        PWD=str(REPO_ROOT),
        # Credentials reach the flow run through the worker's environment, never parameters.
        MODEL_STUDIO_TOKEN=emulator.token,
        MODEL_STUDIO_ORGANIZATION_ID=TEST_ORGANIZATION,
        MODEL_STUDIO_BASE_URL=emulator.base_url,
        MODEL_STUDIO_POLL_INTERVAL_S="0.05",
        MODEL_STUDIO_POLL_MAX_INTERVAL_S="0.5",
    )

    prefect_cli(
        ["work-pool", "create", "studio-flows", "--type", "process", "--overwrite"], cli_env
    )
    prefect_cli(["block", "register", "-m", "studio_flows.blocks"], cli_env)
    deployed = prefect_cli(["--no-prompt", "deploy", "--all"], cli_env)
    assert "generate-dataset/nightly-generation" in deployed
    assert "generate-dataset/adhoc-generation" in deployed

    parameters = {
        "options": {
            "dataset_path": str(REPO_ROOT / "examples" / "prompts.jsonl"),
            "model_id": "e2e-model",
            "database_url": results_url,
            "shard_size": 5,
        }
    }
    flow_run = run_deployment("generate-dataset/adhoc-generation", parameters=parameters, timeout=0)

    log_path = tmp_path / "worker.log"
    with worker_process(worker_env, log_path) as worker:
        try:
            worker.wait(timeout=240)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the worker did not finish:\n{log_path.read_text()[-4000:]}")

    state, stored_parameters, run_logs = asyncio.run(flow_run_state_and_logs(flow_run.id))
    worker_log = log_path.read_text(errors="replace")
    assert state.is_completed(), f"{state!r}\n{worker_log[-6000:]}"

    engine = make_engine(results_url)
    try:
        counts = count_results(engine, flow_run_id=str(flow_run.id))
    finally:
        engine.dispose()
    assert counts == {"completed": 40, "failed": 0}
    stats = emulator.stats()
    assert stats["jobs_created"] == 8 and stats["max_active_jobs"] <= 3
    for text in (worker_log, run_logs, repr(stored_parameters)):
        assert emulator.token not in text
    print(f"deploy-and-run end to end: {time.monotonic() - started:.1f} s")
