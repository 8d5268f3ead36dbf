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
from pathlib import Path

import pytest
import sqlalchemy as sa
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter

from studio_flows.client import ModelStudioClient, RetryPolicy
from studio_flows.emulator import EmulatorServer
from studio_flows.errors import ModelStudioError
from studio_flows.models import GenerateRequest
from tests.fixtures.cli_runs import (
    CAPTURED_OUTPUT,
    DATABASES,
    PREFECT_HOMES,
    SECRET_TOKEN,
    cli_env,
    generate_args,
    run_cli,
)
from tests.fixtures.emulator import TEST_ORGANIZATION
from tests.fixtures.harness import write_prompts
from tests.fixtures.prefect_server import PrefectServer

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


def _files_with_token(folder: Path) -> list[str]:
    hits = []
    for path in folder.rglob("*"):
        if path.is_file():
            try:
                if NEEDLE in path.read_bytes():
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
    )
    dataset = write_prompts(tmp_path / "secrets.jsonl", 40)
    database_url = f"sqlite:///{tmp_path}/secrets.db"
    DATABASES.append(database_url)
    result = run_cli(
        generate_args(
            dataset,
            database_url,
            "--shard-size",
            "4",
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

    hits: list[str] = []
    hits += [f"CLI output #{i}" for i, text in enumerate(CAPTURED_OUTPUT) if SECRET_TOKEN in text]
    for url in DATABASES:
        if SECRET_TOKEN in _tables_text(url):
            hits.append(f"tables of {url}")
        if url.startswith("sqlite:///"):
            for suffix in ("", "-wal"):
                file = Path(url.removeprefix("sqlite:///") + suffix)
                if file.exists() and NEEDLE in file.read_bytes():
                    hits.append(f"file {file}")
    texts = asyncio.run(_prefect_texts())
    hits += [f"Prefect API text: {t[:200]}" for t in texts if SECRET_TOKEN in t]
    hits += [f"file {f}" for f in _files_with_token(prefect_server_process.home)]
    for home in set(PREFECT_HOMES):
        if home.exists():
            hits += [f"file {f}" for f in _files_with_token(home)]
    hits += [f"exception {t[:200]}" for t in exception_texts if SECRET_TOKEN in t]
    hits += ["pickled exception" for blob in pickled if NEEDLE in blob]
    hits += [
        f"log record {r.getMessage()[:200]}"
        for r in caplog.records
        if SECRET_TOKEN in r.getMessage()
    ]

    assert not hits, "the token leaked:\n" + "\n".join(hits)
    print(
        f"secrets: scanned {len(CAPTURED_OUTPUT)} CLI outputs, {len(DATABASES)} databases, "
        f"{len(texts)} Prefect API texts, {len(set(PREFECT_HOMES))} PREFECT_HOMEs, "
        f"{len(errors)} exceptions: 0 hits"
    )
