"""Secrets: after the scenarios, the token is nowhere a user or operator could read it.

Runs last (file order). It adds its own faulty run (errors of every kind, the
``stop`` policy so failed task runs store exception texts in Prefect) and then scans:

- what every CLI subprocess of the session printed (stdout + stderr);
- every results database the scenarios wrote (all tables, every column, as text) and the
  raw bytes of the SQLite files;
- the Prefect server the processes used: flow runs (parameters, state messages), task run
  states, logs and artifacts, read through the Prefect client; and the raw bytes of its
  database and of every PREFECT_HOME the children used (ephemeral servers, local storage);
- exception texts (str, repr, pickle) of the client's errors, and the captured log records.
"""

from __future__ import annotations

import asyncio
import pickle
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter
from sqlalchemy.engine import make_url
from studio_flows.flows.rows import generate_rows

from studio_flows.blocks import ResultsDatabase
from studio_flows.client import ModelStudioClient, RetryPolicy
from studio_flows.emulator import EmulatorServer
from studio_flows.errors import ModelStudioError
from studio_flows.models import GenerateRequest
from tests.fixtures.cli_runs import (
    CAPTURED_OUTPUT,
    DATABASES,
    MODEL,
    PREFECT_HOMES,
    SECRET_TOKEN,
    cli_env,
    finish_cli,
    generate_args,
    run_cli,
    start_cli,
)
from tests.fixtures.emulator import TEST_ORGANIZATION
from tests.fixtures.harness import write_prompts
from tests.fixtures.prefect_server import PrefectServer
from tests.fixtures.workers import (
    Api,
    Worker,
    adhoc_parameters,
    deploy_adhoc,
    emulator_worker_env,
)

NEEDLE = SECRET_TOKEN.encode()


def _tables_text(database_url: str) -> str:
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            texts = []
            for table in sa.inspect(conn).get_table_names():
                for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')):
                    texts.append(repr(tuple(row)))
            return "\n".join(texts)
    except sa.exc.OperationalError:
        return ""  # a PostgreSQL test database already dropped
    finally:
        engine.dispose()


def _files_with_token(folder: Path, needle: bytes = NEEDLE) -> list[str]:
    hits = []
    for path in folder.rglob("*"):
        if path.is_file():
            try:
                if needle in path.read_bytes():
                    hits.append(str(path))
            except OSError:
                pass
    return hits


async def _prefect_texts() -> list[str]:
    texts: list[str] = []
    async with get_client() as client:
        for flow_run in await client.read_flow_runs(limit=200):
            texts.append(repr(flow_run.parameters))
            texts.append(str(flow_run.state and flow_run.state.message))
        for task_run in await client.read_task_runs(limit=200):
            texts.append(str(task_run.state and task_run.state.message))
            # Task runs keep no parameter values, only their inputs' references and a name.
            texts.append(task_run.name + repr(task_run.task_inputs))
        offset = 0
        while True:
            logs = await client.read_logs(log_filter=LogFilter(), limit=200, offset=offset)
            texts.extend(log.message for log in logs)
            if len(logs) < 200:
                break
            offset += 200
        for artifact in await client.read_artifacts(limit=200):
            texts.append(repr(artifact.data) + repr(artifact.description))
    return texts


def _around(blob: bytes, needle: bytes, width: int = 80) -> bytes:
    """What surrounds ``needle`` in ``blob``, the needle itself masked (where it leaked)."""
    at = blob.index(needle)
    return blob[max(at - width, 0) : at] + b"<TOKEN>" + blob[at + len(needle) : at + width]


def _leaks(secret: str, server: PrefectServer) -> list[str]:
    """Where ``secret`` shows: CLI outputs, results databases, the Prefect API's texts (flow
    run parameters and states, task runs, logs, artifacts), the raw bytes of the server's
    database and of every PREFECT_HOME the children used."""
    needle = secret.encode()
    hits = [f"CLI output #{i}" for i, text in enumerate(CAPTURED_OUTPUT) if secret in text]
    for url in DATABASES:
        if secret in _tables_text(url):
            hits.append(f"tables of {url}")
        if url.startswith("sqlite:///"):
            for suffix in ("", "-wal"):
                file = Path(url.removeprefix("sqlite:///") + suffix)
                if file.exists() and needle in file.read_bytes():
                    hits.append(f"file {file}")
    texts = asyncio.run(_prefect_texts())
    assert texts, "the Prefect API gave nothing to scan"
    hits += [f"Prefect API text: {t[:200]}" for t in texts if secret in t]
    hits += [f"file {f}" for f in _files_with_token(server.home, needle)]
    for home in set(PREFECT_HOMES):
        if home.exists():
            hits += [f"file {f}" for f in _files_with_token(home, needle)]
    return hits


@pytest.mark.slow
def test_the_token_appears_nowhere(
    emulator: EmulatorServer,
    prefect_server_process: PrefectServer,
    prefect_api: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A run that meets every error: its exceptions end up in task states and logs.
    emulator.configure(
        tokens=[SECRET_TOKEN],
        job_latency_s=0.2,
        error_5xx_rate=0.2,
        drop_connection_rate=0.1,
        rate_429=0.1,
        lost_post_response_rate=0.3,
        failed_job_rate=0.2,
        task_failure_rate=0.2,
        not_found_window_s=0.3,
        fair_use_limit=50,
        seed=99,
        echo_authorization_in_errors=True,  # every 5xx and 429 quotes the token
    )
    dataset = write_prompts(tmp_path / "secrets.jsonl", 40)
    database_url = f"sqlite:///{tmp_path}/secrets.db"
    DATABASES.append(database_url)
    result = run_cli(
        generate_args(
            dataset,
            database_url,
            "--shard-size",
            "2",  # 20 POSTs: with 10, none lost (0.7 ** 10, 3 %) failed a run here
            "--ambiguous-policy",
            "stop",
            "--id-column",
            "id",
        ),
        cli_env(emulator, tmp_path / "prefect-secrets", api_url=prefect_api),
        tmp_path,
    )
    assert result.returncode in (0, 1), result
    assert emulator.stats()["faults"]["lost_post_response"] > 0

    # Exception texts, as shown and as Prefect would persist them.
    errors: list[BaseException] = []
    with ModelStudioClient(
        base_url=emulator.base_url,
        token=SECRET_TOKEN,
        organization_id=TEST_ORGANIZATION,
        retry=RetryPolicy(max_retries=0, max_rate_limit_retries=0),
        timeout_s=5,
    ) as client:
        request = GenerateRequest.model_validate(
            {"model_id": "m", "messages": [[{"role": "user", "content": "hi"}]]}
        )
        for _ in range(40):
            for call in (lambda: client.create_job(request), lambda: client.get_job("nope")):
                try:
                    call()
                except ModelStudioError as err:
                    errors.append(err)
    assert len(errors) > 20
    exception_texts = [str(e) + repr(e) + repr(e.__dict__) for e in errors]
    pickled = [pickle.dumps(e) for e in errors]

    planted = tmp_path / "control" / "planted.bin"  # the scanner does find a planted token
    planted.parent.mkdir()
    planted.write_bytes(b"x" + NEEDLE + b"y")
    assert _files_with_token(planted.parent) == [str(planted)]

    hits = _leaks(SECRET_TOKEN, prefect_server_process)
    hits += [f"exception {t[:200]}" for t in exception_texts if SECRET_TOKEN in t]
    hits += [
        f"pickled {type(e).__name__}: ...{_around(blob, NEEDLE)!r}..."
        for e, blob in zip(errors, pickled, strict=True)
        if NEEDLE in blob
    ]
    hits += [
        f"log record {r.getMessage()[:200]}"
        for r in caplog.records
        if SECRET_TOKEN in r.getMessage()
    ]

    assert not hits, "the token leaked:\n" + "\n".join(hits)
    print(
        f"secrets: scanned {len(CAPTURED_OUTPUT)} CLI outputs, {len(DATABASES)} databases, "
        f"{len(set(PREFECT_HOMES))} PREFECT_HOMEs, {len(errors)} exceptions: 0 hits"
    )


@pytest.mark.slow
def test_a_token_the_server_echoes_in_an_error_is_shown_logged_and_stored_nowhere(
    emulator: EmulatorServer,
    prefect_server_process: PrefectServer,
    prefect_api: str,
    tmp_path: Path,
) -> None:
    # The token is revoked while the run's first jobs run: every later request is a 401
    # whose detail quotes the request's "Authorization: Bearer <token>".
    emulator.configure(tokens=[SECRET_TOKEN], job_latency_s=2.0, echo_authorization_in_errors=True)
    dataset = write_prompts(tmp_path / "revoked.jsonl", 4)
    database_url = f"sqlite:///{tmp_path}/revoked.db"
    DATABASES.append(database_url)
    args = generate_args(dataset, database_url, "--id-column", "id", "--shard-size", "2")
    env = cli_env(emulator, tmp_path / "prefect-revoked", api_url=prefect_api)

    started = time.monotonic()
    process = start_cli(args, env, tmp_path)
    while emulator.stats()["jobs_created"] == 0:
        assert process.poll() is None and time.monotonic() - started < 120, "no job created"
        time.sleep(0.05)  # polling for the moment to revoke, not waiting for an outcome
    emulator.configure(tokens=["the-one-token-still-valid"])
    result = finish_cli(process, started)

    assert result.returncode == 2, result
    assert "HTTP 401" in result.output, result
    # The echo reached Prefect (the failed task run's log and state), scrubbed.
    texts = asyncio.run(_prefect_texts())
    assert any("token revoked: Bearer ***" in t for t in texts), result
    hits = _leaks(SECRET_TOKEN, prefect_server_process)
    assert not hits, "the token leaked:\n" + "\n".join(hits)


def _ci_password(url: str) -> str:
    password = make_url(url).password
    assert password, f"the test database URL has no password to look for: {url}"
    return str(password)


async def _stored_parameters() -> list[dict[str, Any]]:
    async with get_client() as client:
        return [run.parameters for run in await client.read_flow_runs(limit=200)]


@flow(name="user-pipeline")
def _user_pipeline(questions: list[str], database: ResultsDatabase) -> list[str | None]:
    """A user's own flow handing its results database (a block) to generate_rows."""
    rows = [{"id": f"u{i}", "prompt": q} for i, q in enumerate(questions)]
    return [a.text for a in generate_rows(rows, MODEL, id_column="id", database=database)]


@pytest.mark.slow
@pytest.mark.postgres
def test_a_database_password_appears_nowhere(
    emulator: EmulatorServer,
    prefect_server_process: PrefectServer,
    prefect_api: str,
    postgres_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A PostgreSQL results URL with a password, through (a) the CLI, (b) generate_rows in a
    user's flow and (c) a deployment run: the password is in no parameter, state, log,
    artifact, output or byte of Prefect's database."""
    password = _ci_password(postgres_url)
    emulator.configure(tokens=[SECRET_TOKEN])
    dataset = write_prompts(tmp_path / "pg.jsonl", 6)

    # (a) the command line, --database-url with the password
    cli = run_cli(
        generate_args(dataset, postgres_url, "--id-column", "id"),
        cli_env(emulator, tmp_path / "prefect-pg", api_url=prefect_api),
        tmp_path,
    )
    assert cli.returncode == 0, cli

    # (b) generate_rows from a user's flow, the database an unsaved block
    for name, value in cli_env(emulator, tmp_path / "prefect-rows").items():
        if name.startswith("MODEL_STUDIO_"):
            monkeypatch.setenv(name, value)
    answers = _user_pipeline(["one?", "two?"], ResultsDatabase(url=postgres_url))
    assert all(answers), answers

    # (c) a deployment run whose database is a saved block, picked by reference
    block_id = ResultsDatabase(url=postgres_url).save("pg-results", overwrite=True)
    worker_env = emulator_worker_env(prefect_server_process, emulator)
    deploy_adhoc(worker_env)
    parameters: dict[str, Any] = adhoc_parameters(dataset, "", 3)
    del parameters["options"]["database_url"]
    parameters["database"] = {"$ref": {"block_document_id": str(block_id)}}
    api = Api(prefect_server_process.api_url)
    worker = Worker(worker_env, tmp_path / "worker.log", "--run-once")
    try:
        run_id = api.run_deployment(parameters)
        worker.process.wait(timeout=240)
        assert api.state(run_id) == "COMPLETED", worker.log()[-4000:]
    finally:
        worker.stop()
        api.close()
    CAPTURED_OUTPUT.append(worker.log())

    stored = repr(asyncio.run(_stored_parameters()))
    assert make_url(postgres_url).render_as_string(hide_password=True) in stored  # (a), masked
    assert "'url': '**********'" in stored  # (b): the block's URL as Prefect writes a secret
    hits = _leaks(password, prefect_server_process)
    assert not hits, "the database password leaked:\n" + "\n".join(hits)
