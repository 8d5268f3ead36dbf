"""Crash: the `studio-flows generate` process is SIGKILLed, then run again to completion.

Also home of the helpers the other scenario modules share (subprocess runs of the CLI,
ledger reads, the invariants, the secret collector): they import them from here.

The CLI runs as a real subprocess in its own process group; the emulator serves from a
thread of the test process, so it outlives the killed flow process. Each killed child runs
Prefect's ephemeral server (a fresh PREFECT_HOME, the server is a child in the same process
group, so the group SIGKILL takes both): a killed process then leaks no fair-use slot into
the real Prefect server that later tests share.

Kill points, without any hook in the product code:

(a) after a submit: the ledger (``generation_jobs``) shows every shard the lanes took as
    ``submitted`` with its job_id;
(b) between job end and persist: the test holds SQLite's write lock (``BEGIN IMMEDIATE``)
    once the jobs are recorded; the jobs end, the child reads FINISHED (the emulator counts
    that GET) and blocks in the persist transaction; then it is killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from studio_flows.emulator import EmulatorServer
from studio_flows.storage import make_engine
from tests.fixtures.emulator import TEST_ORGANIZATION
from tests.fixtures.harness import write_prompts

REPO_ROOT = Path(__file__).resolve().parents[1]
STUDIO_FLOWS = shutil.which("studio-flows", path=os.path.dirname(sys.executable))
# A token that looks like nothing else in the code base: the secrets scan looks for it.
SECRET_TOKEN = "ms-chaos-secret-7f3c9a1e5b2d4f60a8c1e9b7d3f5a2c4"
MODEL = "chaos-model"

# Everything the subprocesses printed and every database they wrote, for test_secrets.
CAPTURED_OUTPUT: list[str] = []
DATABASES: list[str] = []
PREFECT_HOMES: list[Path] = []


# --------------------------------------------------------------------------- helpers


def cli_env(
    emulator: EmulatorServer, prefect_home: Path, *, api_url: str | None = None, **extra: str
) -> dict[str, str]:
    """The child's environment: MODEL_STUDIO_* at the emulator, its own PREFECT_HOME.

    Without ``api_url`` the child starts Prefect's ephemeral server (about 10 s).
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "MODEL_STUDIO_")) and k != "DO_NOT_TRACK"
    }
    prefect_home.mkdir(parents=True, exist_ok=True)
    PREFECT_HOMES.append(prefect_home)
    env.update(
        PREFECT_HOME=str(prefect_home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        MODEL_STUDIO_TOKEN=SECRET_TOKEN,
        MODEL_STUDIO_ORGANIZATION_ID=TEST_ORGANIZATION,
        MODEL_STUDIO_BASE_URL=emulator.base_url,
        MODEL_STUDIO_POLL_INTERVAL_S="0.1",
        MODEL_STUDIO_POLL_MAX_INTERVAL_S="0.5",
    )
    if api_url is not None:
        env["PREFECT_API_URL"] = api_url
    env.update(extra)
    return {k: v for k, v in env.items() if v != ""}  # "" removes a variable


def generate_args(dataset: Path, database_url: str, *extra: str) -> list[str]:
    assert STUDIO_FLOWS is not None, "the studio-flows console script is not installed"
    return [
        STUDIO_FLOWS,
        "generate",
        str(dataset),
        "--model-id",
        MODEL,
        "--database-url",
        database_url,
        "--no-progress",
        *extra,
    ]


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def __str__(self) -> str:
        return (
            f"exit {self.returncode} after {self.seconds:.1f} s\n--- stdout\n{self.stdout}"
            f"\n--- stderr\n{self.stderr}"
        )


def start_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    """Start the CLI in its own process group (so a group kill takes its Prefect server)."""
    return subprocess.Popen(
        args,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish_cli(process: subprocess.Popen[str], started: float, timeout_s: float = 240) -> CliResult:
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_group(process)
        stdout, stderr = process.communicate()
        CAPTURED_OUTPUT.append(stdout + stderr)
        message = f"studio-flows did not end in {timeout_s} s:\n{stdout}\n{stderr}"
        raise AssertionError(message) from None
    CAPTURED_OUTPUT.append(stdout + stderr)
    return CliResult(process.returncode, stdout, stderr, time.monotonic() - started)


def run_cli(args: list[str], env: dict[str, str], cwd: Path, timeout_s: float = 240) -> CliResult:
    """Run the CLI to its end and capture what it printed."""
    started = time.monotonic()
    return finish_cli(start_cli(args, env, cwd), started, timeout_s)


def kill_group(process: subprocess.Popen[str]) -> None:
    """SIGKILL the child's whole process group (the CLI and its ephemeral Prefect server)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    out, err = process.communicate(timeout=30)
    CAPTURED_OUTPUT.append((out or "") + (err or ""))


def wait_for(
    condition: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.05
) -> float:
    """Wait until ``condition()``; return the seconds waited."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(poll_s)
    return time.monotonic() - started


def ledger(database_url: str) -> list[dict[str, object]]:
    """Rows of generation_jobs, or [] before the schema exists."""
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("generation_jobs"):
                return []
            rows = conn.execute(
                sa.text("SELECT shard_key, job_id, status, attempts FROM generation_jobs")
            )
            return [dict(row._mapping) for row in rows]
    except sa.exc.OperationalError:
        return []  # the file is being created
    finally:
        engine.dispose()


def results_table(database_url: str) -> list[dict[str, object]]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT row_key, prompt_hash, model_id, params_hash, status, result, job_id,"
                    " messages FROM generation_results"
                )
            )
            return [dict(row._mapping) for row in rows]
    finally:
        engine.dispose()


def assert_every_row_completed_once(database_url: str, row_keys: set[str]) -> None:
    """Invariants 1 and 2: one result per row identity, all completed, answer matches row."""
    rows = results_table(database_url)
    identities = [(r["row_key"], r["prompt_hash"], r["model_id"], r["params_hash"]) for r in rows]
    assert len(identities) == len(set(identities)), "a row identity has two results"
    assert {r["row_key"] for r in rows} == row_keys
    assert len(rows) == len(row_keys)
    not_done = [r for r in rows if r["status"] != "completed"]
    assert not not_done, f"{len(not_done)} rows not completed, e.g. {not_done[:1]}"
    for row in rows:
        messages = row["messages"]
        if isinstance(messages, str):
            messages = json.loads(messages)
        assert row["result"] == f"{MODEL} answers: {messages[-1]['content']}"  # type: ignore[index]


def summary_value(stdout: str, label: str) -> int:
    """A figure from the summary table the CLI prints (``│ label │ value │``)."""
    match = re.search(rf"{re.escape(label)}\s*│\s*([\d.]+)", stdout)
    assert match, f"no {label!r} in the summary:\n{stdout}"
    return int(float(match.group(1)))


@contextlib.contextmanager
def sqlite_write_lock(path: Path) -> Iterator[None]:
    """Hold SQLite's write lock on ``path`` (readers go on in WAL mode, writers wait)."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def get_count(emulator: EmulatorServer) -> int:
    return sum(emulator.stats()["requests"].get("GET /generate/{job_id}", {}).values())


def polls_stopped(emulator: EmulatorServer, quiet_s: float) -> Callable[[], bool]:
    """A condition: no job was read for ``quiet_s`` seconds."""
    last = {"count": -1, "since": time.monotonic()}

    def check() -> bool:
        count = get_count(emulator)
        if count != last["count"]:
            last.update(count=count, since=time.monotonic())
        return time.monotonic() - last["since"] >= quiet_s

    return check


# --------------------------------------------------------------------------- the test


@pytest.mark.slow
def test_sigkill_after_submit_and_before_persist_loses_nothing_and_pays_nothing_twice(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    """10 rows, 5 shards of 2, jobs of 3 s; the emulator would accept 50 jobs at once.

    Run 1 is killed once its three lanes have each recorded a job (3 created). Run 2
    re-attaches those three, persists them, submits shards 4 and 5, and is killed while
    blocked persisting them (their jobs FINISHED, results not written). Run 3 re-attaches
    shards 4 and 5. The emulator created exactly 5 jobs: nothing was paid twice.
    """
    emulator.configure(job_latency_s=3.0, fair_use_limit=50, tokens=[SECRET_TOKEN])
    dataset = write_prompts(tmp_path / "crash.jsonl", 10)
    db_file = tmp_path / "crash.db"
    database_url = f"sqlite:///{db_file}"
    DATABASES.append(database_url)
    args = generate_args(dataset, database_url, "--shard-size", "2", "--id-column", "id")

    # (a) killed right after its submits
    started = time.monotonic()
    run1 = start_cli(args, cli_env(emulator, tmp_path / "prefect-1"), tmp_path)

    def three_submitted() -> bool:
        rows = ledger(database_url)
        return len(rows) == 3 and all(r["status"] == "submitted" and r["job_id"] for r in rows)

    wait_for(lambda: three_submitted() or run1.poll() is not None, 120, "3 submitted shards")
    kill_group(run1)
    assert run1.returncode == -signal.SIGKILL, f"run 1 ended by itself: {run1.returncode}"
    first_jobs = {str(r["job_id"]) for r in ledger(database_url)}
    assert len(first_jobs) == 3
    assert emulator.stats()["jobs_created"] == 3
    kill_a_at = time.monotonic() - started

    # (b) killed between job end and persist
    run2 = start_cli(args, cli_env(emulator, tmp_path / "prefect-2"), tmp_path)

    def two_new_jobs_submitted() -> bool:
        rows = ledger(database_url)
        new = [r for r in rows if r["status"] == "submitted" and r["job_id"] not in first_jobs]
        return len(rows) == 5 and len(new) == 2

    wait_for(
        lambda: two_new_jobs_submitted() or run2.poll() is not None,
        120,
        "shards 4 and 5 submitted",
    )
    assert run2.poll() is None, f"run 2 ended early:\n{run2.communicate()}"
    assert emulator.stats()["jobs_created"] == 5  # the 3 recorded jobs were not resubmitted
    with sqlite_write_lock(db_file):
        wait_for(lambda: emulator.stats()["active_jobs"] == 0, 30, "jobs 4 and 5 to end")
        # Every lane read FINISHED and now blocks in its persist transaction: the polls stop.
        wait_for(polls_stopped(emulator, quiet_s=1.5), 30, "the lanes to stop polling")
        kill_group(run2)
    new_jobs = {str(r["job_id"]) for r in ledger(database_url)} - first_jobs
    assert run2.returncode == -signal.SIGKILL
    rows = ledger(database_url)
    open_jobs = {str(r["job_id"]) for r in rows if r["status"] == "submitted"}
    # Shards 4 and 5 (and a re-attached job not persisted yet): ended, never closed.
    assert len(open_jobs) >= 2, rows
    assert {str(r["job_id"]) for r in rows if r["status"] == "submitted"} >= new_jobs
    assert all(str(r["job_id"]) in new_jobs | first_jobs for r in rows)
    persisted = {str(r["job_id"]) for r in results_table(database_url)}
    assert not persisted & open_jobs  # nothing of the killed persists was written

    # run to completion
    run3 = run_cli(args, cli_env(emulator, tmp_path / "prefect-3"), tmp_path)
    assert run3.returncode == 0, run3
    assert summary_value(run3.stdout, "jobs re-attached") == len(open_jobs)
    assert summary_value(run3.stdout, "already done") == 10 - 2 * len(open_jobs)
    stats = emulator.stats()
    assert stats["jobs_created"] == 5, "a recorded job was paid for twice"
    assert stats["max_active_jobs"] <= 3
    assert_every_row_completed_once(database_url, {f"question-{i}" for i in range(10)})
    final = ledger(database_url)
    assert {r["status"] for r in final} == {"finished"}
    assert {str(r["job_id"]) for r in results_table(database_url)} == first_jobs | new_jobs
    write_chaos_section(
        "Crash (SIGKILL of `studio-flows generate`)",
        f"- 10 rows, 5 shards of 2, jobs of 3 s; each process group SIGKILLed\n"
        f"- kill (a) {kill_a_at:.1f} s after start, right after 3 submits (3 job_ids "
        "recorded as `submitted`)\n"
        f"- kill (b) with {len(open_jobs)} jobs FINISHED at the emulator, their persist "
        "blocked: ledger still `submitted`, no result rows\n"
        f"- completion run: re-attached {len(open_jobs)} jobs (the run before re-attached "
        f"3), exit 0 in {run3.seconds:.1f} s\n"
        f"- emulator: {stats['jobs_created']} jobs created for 5 shards (nothing paid twice), "
        f"at most {stats['max_active_jobs']} active; 10 rows, each completed exactly once",
    )


CHAOS_MD = REPO_ROOT / "bench" / "CHAOS.md"
WRITE_CHAOS_ENV = "STUDIO_FLOWS_WRITE_CHAOS"


def write_chaos_section(name: str, markdown: str) -> None:
    """Put ``markdown`` under ``## name`` in bench/CHAOS.md (only with STUDIO_FLOWS_WRITE_CHAOS=1).

    Sections written by other tests are kept, so the file is the union of the last runs.
    """
    print(f"\n## {name}\n\n{markdown}")
    if os.environ.get(WRITE_CHAOS_ENV) != "1":
        return
    head = (
        "# What the chaos suite survived\n\n"
        "Written by the scenario tests (`STUDIO_FLOWS_WRITE_CHAOS=1 pytest tests/test_chaos.py "
        "tests/test_crash.py tests/test_fair_use_processes.py`), not by hand. Each section is "
        "replaced by the test that owns it.\n"
    )
    text = CHAOS_MD.read_text(encoding="utf-8") if CHAOS_MD.exists() else head
    sections = re.split(r"(?m)^(?=## )", text)
    body = f"## {name}\n\n{markdown.strip()}\n\n"
    kept = [s for s in sections[1:] if not s.startswith(f"## {name}\n")]
    CHAOS_MD.write_text(
        head.rstrip() + "\n\n" + "".join(sorted([*kept, body])).rstrip() + "\n",
        encoding="utf-8",
    )


@pytest.mark.slow
def test_a_retried_job_task_re_attaches_instead_of_paying_again(
    flow_env: EmulatorServer, tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job task's Prefect retry after its POST succeeded must poll the recorded job_id.

    A 1 s job deadline against 3 s jobs makes the first attempt give up after the POST; the
    task's retry (5 s later) must find the job_id in the ledger, not submit the shard again.
    """
    from studio_flows.flows.generate import generate_dataset

    from studio_flows.options import GenerateOptions

    monkeypatch.setenv("MODEL_STUDIO_JOB_DEADLINE_S", "1")
    flow_env.configure(job_latency_s=3.0, fair_use_limit=50)
    dataset = write_prompts(tmp_path / "retry.jsonl", 2)

    summary = generate_dataset(
        GenerateOptions(
            dataset_path=str(dataset), model_id=MODEL, database_url=sqlite_url, id_column="id"
        )
    )

    assert flow_env.stats()["jobs_created"] == 1, "the retry paid for the shard again"
    assert summary.completed == 2
    assert_every_row_completed_once(sqlite_url, {"question-0", "question-1"})
