"""A service that accepts the connection and never answers ends a run in bounded time.

Each test points ``studio-flows generate``, run as a user types it, at a
:class:`~tests.fixtures.hung_server.HungServer` in the place of one service: Model Studio,
the Prefect API or the results database, hung from the start or (through the server's
relay) half-way through a run. The timeouts are set low (``MODEL_STUDIO_*_TIMEOUT_S``) so
each test takes seconds; the only bound on time is the generous one of ``run_cli``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from studio_flows.emulator import EmulatorServer
from tests.fixtures.cli_runs import (
    SECRET_TOKEN,
    CliResult,
    cli_env,
    finish_cli,
    generate_args,
    kill_group,
    ledger,
    run_cli,
    start_cli,
    summary_value,
    wait_for,
    write_id_prompts,
)
from tests.fixtures.hung_server import HungServer

pytestmark = pytest.mark.slow

SHARDS = 6
ENDS_WITHIN_S = 90  # the configured timeouts are 1-2 s: this only catches a run that sits


@pytest.fixture
def emulator(emulator: EmulatorServer) -> EmulatorServer:
    """The session's emulator taking the token the CLI runs send: only the hang can fail."""
    emulator.configure(tokens=[SECRET_TOKEN])
    return emulator


def _dataset(tmp_path: Path, rows: int) -> Path:
    return write_id_prompts(tmp_path / "prompts.jsonl", rows, id_prefix="row-")


def _one_sentence(result: CliResult) -> str:
    """The single ``error:`` line a user reads (exit 2, no traceback, no secret)."""
    assert result.returncode == 2, result
    assert "Traceback" not in result.output, result
    assert SECRET_TOKEN not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result
    return lines[0]


def _nothing_posted(emulator: EmulatorServer) -> None:
    stats = emulator.stats()
    assert stats["jobs_created"] == 0
    assert not stats["requests"].get("POST /generate"), stats["requests"]


def test_a_hung_database_ends_before_any_job_naming_it_with_the_password_hidden(
    emulator: EmulatorServer, hung_server: HungServer, tmp_path: Path
) -> None:
    database_url = f"postgresql+psycopg://u:secret@{hung_server.address}/db"
    env = cli_env(emulator, tmp_path / "home", MODEL_STUDIO_DATABASE_CONNECT_TIMEOUT_S="2")

    result = run_cli(
        generate_args(_dataset(tmp_path, 4), database_url), env, tmp_path, ENDS_WITHIN_S
    )

    line = _one_sentence(result)
    assert f"Cannot open database postgresql+psycopg://u:***@{hung_server.address}/db" in line
    assert "timeout" in line and "MODEL_STUDIO_DATABASE_CONNECT_TIMEOUT_S" in line
    assert "secret" not in result.output
    assert hung_server.accepted >= 1  # it did reach the hung server, and gave up
    _nothing_posted(emulator)


def test_a_hung_model_studio_fails_the_preflight_naming_the_url_and_the_timeout(
    emulator: EmulatorServer, prefect_server: str, hung_server: HungServer, tmp_path: Path
) -> None:
    base_url = f"http://{hung_server.address}/api/v1"
    database_url = f"sqlite:///{tmp_path}/results.db"
    env = cli_env(
        emulator,
        tmp_path / "home",
        api_url=prefect_server,
        MODEL_STUDIO_BASE_URL=base_url,
        MODEL_STUDIO_REQUEST_TIMEOUT_S="1",
    )

    result = run_cli(
        generate_args(_dataset(tmp_path, 4), database_url), env, tmp_path, ENDS_WITHIN_S
    )

    line = _one_sentence(result)
    assert f"Cannot reach Model Studio at {base_url}: read timeout after 1 s" in line
    assert "(MODEL_STUDIO_REQUEST_TIMEOUT_S)" in line
    assert hung_server.accepted >= 1
    assert ledger(database_url) == []  # nothing was planned, let alone paid
    _nothing_posted(emulator)


def test_a_hung_prefect_api_is_one_sentence_like_a_dead_one(
    emulator: EmulatorServer, hung_server: HungServer, tmp_path: Path
) -> None:
    api_url = f"http://{hung_server.address}/api"
    env = cli_env(
        emulator,
        tmp_path / "home",
        api_url=api_url,
        MODEL_STUDIO_PREFECT_CHECK_TIMEOUT_S="1",
    )

    result = run_cli(
        generate_args(_dataset(tmp_path, 4), f"sqlite:///{tmp_path}/results.db"),
        env,
        tmp_path,
        ENDS_WITHIN_S,
    )

    line = _one_sentence(result)
    assert f"The Prefect API at PREFECT_API_URL={api_url} does not answer" in line
    assert "no answer within 1 s, MODEL_STUDIO_PREFECT_CHECK_TIMEOUT_S" in line
    assert hung_server.accepted >= 1
    _nothing_posted(emulator)


def _port(url: str) -> int:
    return int(url.split(":")[2].split("/")[0])


def _hang_half_way(
    relay: HungServer,
    emulator: EmulatorServer,
    args: list[str],
    env: dict[str, str],
    cwd: Path,
) -> CliResult:
    """Run the CLI through ``relay``; hang it once three jobs were paid; wait for the end."""
    process = start_cli(args, env, cwd)
    started = time.monotonic()
    try:
        wait_for(lambda: emulator.stats()["jobs_created"] >= 3, 60, "three jobs")
    except AssertionError:
        kill_group(process)
        raise
    relay.hang()
    return finish_cli(process, started, ENDS_WITHIN_S)


def test_a_model_studio_that_hangs_mid_run_ends_it_with_its_rows_left_for_the_next(
    emulator: EmulatorServer, prefect_server: str, tmp_path: Path
) -> None:
    """POSTs answered for the first jobs, then every request hangs: the run still ends."""
    emulator.configure(job_latency_s=1.0, fair_use_limit=50)
    upstream = ("127.0.0.1", _port(emulator.base_url))
    database_url = f"sqlite:///{tmp_path}/results.db"
    with HungServer(upstream=upstream) as relay:
        env = cli_env(
            emulator,
            tmp_path / "home",
            api_url=prefect_server,
            MODEL_STUDIO_BASE_URL=f"http://{relay.address}/api/v1",
            MODEL_STUDIO_REQUEST_TIMEOUT_S="1",
            MODEL_STUDIO_MAX_RETRIES="1",
        )
        args = generate_args(_dataset(tmp_path, SHARDS * 2), database_url, "--shard-size", "2")
        result = _hang_half_way(relay, emulator, args, env, tmp_path)
    assert result.returncode == 1, result
    assert "Traceback" not in result.output, result
    errors = result.stdout.split("errors:", 1)[1].strip().splitlines()
    assert len(errors) == SHARDS, result  # one line per shard, each naming the cause
    assert all("read timeout" in line for line in errors), errors
    assert any("(MODEL_STUDIO_REQUEST_TIMEOUT_S)" in line for line in errors), errors
    assert summary_value(result.stdout, "unfinished") == SHARDS * 2
    # The jobs that were paid for are recorded by job_id: the next run re-attaches to them.
    jobs = ledger(database_url)
    recorded = {job["job_id"] for job in jobs if job["status"] == "submitted"}
    assert len(recorded) == emulator.stats()["jobs_created"] >= 3, jobs
    assert not {job["status"] for job in jobs} - {"submitted", "ambiguous"}, jobs


def test_a_prefect_api_that_hangs_mid_run_ends_it_in_bounded_time(
    emulator: EmulatorServer, prefect_server: str, tmp_path: Path
) -> None:
    """The Prefect API answers the check and the first slots, then hangs: the run ends."""
    emulator.configure(job_latency_s=1.0, fair_use_limit=50)
    upstream = ("127.0.0.1", _port(prefect_server))
    database_url = f"sqlite:///{tmp_path}/results.db"
    with HungServer(upstream=upstream) as relay:
        env = cli_env(
            emulator,
            tmp_path / "home",
            api_url=f"http://{relay.address}/api",
            PREFECT_API_REQUEST_TIMEOUT="1",
            PREFECT_CLIENT_MAX_RETRIES="0",
        )
        args = generate_args(_dataset(tmp_path, SHARDS * 2), database_url, "--shard-size", "2")
        result = _hang_half_way(relay, emulator, args, env, tmp_path)
    # Before the sentence, only the fair-use pool's notices: a slot it could not give back
    # (its lease expires), a Prefect API it asks again.
    notices = ("could not give a fair-use slot back (", "Prefect API unavailable (")
    lines = result.stderr.strip().splitlines()
    assert all(line.startswith(notices) for line in lines[:-1]), result
    line = _one_sentence(dataclasses.replace(result, stderr=lines[-1]))
    assert f"The Prefect API at http://{relay.address}/api stopped answering" in line
    assert "ReadTimeout after 1 try of PREFECT_API_REQUEST_TIMEOUT=1 s" in line
    # "Jobs already submitted are recorded": every job the emulator made has its job_id.
    recorded = [job for job in ledger(database_url) if job["job_id"]]
    assert len(recorded) == emulator.stats()["jobs_created"] >= 3, recorded
