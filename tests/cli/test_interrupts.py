"""Interrupted and killed runs leave nothing stuck, on ONE ``PREFECT_HOME`` as a user's is.

Every run here is the installed ``studio-flows generate`` as a subprocess in its own
process group, with no ``PREFECT_API_URL`` (so it uses the one local Prefect server of
the shared ``PREFECT_HOME``, which no signal to a run stops), against the emulator over
loopback. Between runs the state
a user's machine keeps (``prefect.db``, its lease files) is kept too.

Figures (signal to exit, rerun start to first POST) go to bench/CHAOS.md.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from studio_flows.emulator import EmulatorServer
from tests.fixtures.cli_runs import (
    DATABASES,
    SECRET_TOKEN,
    CliResult,
    assert_every_row_completed_once,
    cli_env,
    finish_cli,
    generate_args,
    kill_group,
    ledger,
    run_cli,
    start_cli,
    summary_value,
    wait_for,
    write_chaos_section,
)
from tests.fixtures.harness import write_prompts

ROWS = 300
SHARD = 10
SHARDS = ROWS // SHARD
JOB_S = 1.0
# The rerun proves re-attaching and paying nothing twice, not patience: its new jobs are quick
# (the interrupted run's jobs keep the end they were created with).
RERUN_JOB_S = 0.1
ADOPTED_JOB_S = 10.0  # longer than a rerun's start, shorter than a lease
FIGURES: dict[str, list[float]] = {}
LOCAL_SERVER_PROCESS = "studio_flows.cli.local_server_process"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prefect_home(shared_prefect_home: Path) -> Iterator[Path]:
    """One PREFECT_HOME for every run of this module, as on a user's machine: the session's
    (its server may have served other tests' runs, as a user's serves other commands)."""
    yield shared_prefect_home
    _write_figures()


@pytest.fixture
def slow_emulator(emulator: EmulatorServer) -> EmulatorServer:
    emulator.configure(job_latency_s=JOB_S, fair_use_limit=3, tokens=[SECRET_TOKEN])
    return emulator


class Scenario:
    """A dataset, its results database and the runs made over it."""

    def __init__(self, emulator: EmulatorServer, home: Path, folder: Path) -> None:
        self.emulator = emulator
        self.home = home
        self.folder = folder
        dataset = write_prompts(folder / "prompts.jsonl", ROWS)
        self.database_url = f"sqlite:///{folder / 'results.db'}"
        DATABASES.append(self.database_url)
        self.args = generate_args(
            dataset, self.database_url, "--shard-size", str(SHARD), "--id-column", "id"
        )
        self.row_keys = {f"question-{i}" for i in range(ROWS)}

    def env(self) -> dict[str, str]:
        return cli_env(self.emulator, self.home)

    def start(self) -> tuple[subprocess.Popen[str], float]:
        return start_cli(self.args, self.env(), self.folder), time.monotonic()

    def start_writing_stderr_to(self, path: Path) -> subprocess.Popen[bytes]:
        """Start a run whose stderr a test can read while it runs (a pipe is read at the end)."""
        with path.open("w") as err:
            return subprocess.Popen(
                self.args,
                env=self.env(),
                cwd=self.folder,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )

    def jobs_created(self) -> int:
        return int(self.emulator.stats()["jobs_created"])

    def wait_for_finished_jobs(self, process: subprocess.Popen[str], count: int) -> None:
        def enough() -> bool:
            done = [r for r in ledger(self.database_url) if r["status"] == "finished"]
            return len(done) >= count or process.poll() is not None

        wait_for(enough, 120, f"{count} finished jobs")
        assert process.poll() is None, "the run ended before it could be interrupted"

    def rerun_to_the_end(self, figure: str) -> CliResult:
        """Run again; record the seconds from start to its first POST; it must complete."""
        self.emulator.configure(job_latency_s=RERUN_JOB_S)
        before = self.jobs_created()
        process, started = self.start()
        first_post = wait_for(
            lambda: self.jobs_created() > before or process.poll() is not None, 120, "a POST"
        )
        FIGURES.setdefault(figure, []).append(first_post)
        result = finish_cli(process, started)
        assert result.returncode == 0, str(result)
        return result


def active_slots(home: Path) -> int:
    """The fair-use limit's active slots, as the shared Prefect database holds them (0 before
    its first run)."""
    with sqlite3.connect(home / "prefect.db") as conn:
        try:
            row = conn.execute(
                "SELECT active_slots FROM concurrency_limit_v2 WHERE name = 'tag:model-studio'"
            ).fetchone()
        except sqlite3.OperationalError:  # no table yet: no server has started on the home
            return 0
    return int(row[0]) if row else 0


def processes_using(home: Path) -> list[str]:
    """Processes of ours or of Prefect's still running with this PREFECT_HOME."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            if process.environ().get("PREFECT_HOME") == str(home):
                found.append(" ".join(process.info["cmdline"] or []))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def assert_nothing_left_running(home: Path) -> None:
    wait_for(lambda: not processes_using(home), 15, "no process left on the PREFECT_HOME")


def assert_only_the_server_left(home: Path) -> None:
    """Every run on ``home`` ended; only its one local server (which outlives runs) is left."""

    def runs_ended() -> bool:
        return not [p for p in processes_using(home) if LOCAL_SERVER_PROCESS not in p]

    wait_for(runs_ended, 15, "no run left on the PREFECT_HOME")
    servers = [p for p in processes_using(home) if LOCAL_SERVER_PROCESS in p]
    assert len(servers) == 1, servers


def interrupt(
    scenario: Scenario, number: signal.Signals, *, whole_group: bool
) -> tuple[CliResult, float]:
    """Start a run, signal it after a few jobs; return what it printed and the seconds to exit."""
    process, started = scenario.start()
    scenario.wait_for_finished_jobs(process, 6)
    signalled = time.monotonic()
    if whole_group:
        os.killpg(process.pid, number)  # a terminal's Ctrl-C reaches the whole group
    else:
        process.send_signal(number)  # a plain `kill`
    result = finish_cli(process, started, timeout_s=60)
    return result, time.monotonic() - signalled


@pytest.mark.parametrize(
    ("number", "code", "whole_group"),
    [(signal.SIGINT, 130, True), (signal.SIGTERM, 143, False)],
    ids=["ctrl-c", "kill"],
)
def test_a_signal_stops_the_run_at_once_and_the_next_run_re_attaches(
    slow_emulator: EmulatorServer,
    prefect_home: Path,
    tmp_path: Path,
    number: signal.Signals,
    code: int,
    whole_group: bool,
) -> None:
    scenario = Scenario(slow_emulator, prefect_home, tmp_path)

    result, seconds = interrupt(scenario, number, whole_group=whole_group)
    FIGURES.setdefault(f"{number.name}: signal to exit (s)", []).append(seconds)

    assert result.returncode == code, str(result)
    assert seconds < 10, str(result)
    assert f"interrupted by {number.name}" in result.stderr, str(result)
    assert "left; run the same command again" in result.stderr
    assert "Traceback" not in result.output and "Error logging to API" not in result.output
    assert active_slots(prefect_home) == 0, "the interrupted run kept fair-use slots"
    assert_only_the_server_left(prefect_home)
    in_flight = [r for r in ledger(scenario.database_url) if r["status"] == "submitted"]

    rerun = scenario.rerun_to_the_end(f"after {number.name}: rerun start to first POST (s)")

    assert summary_value(rerun.stdout, "jobs re-attached") == len(in_flight)
    assert scenario.jobs_created() == SHARDS, "a job was paid twice"
    assert_every_row_completed_once(scenario.database_url, scenario.row_keys)
    assert active_slots(prefect_home) == 0
    assert_only_the_server_left(prefect_home)


def test_a_second_ctrl_c_exits_at_once(
    slow_emulator: EmulatorServer, prefect_home: Path, tmp_path: Path
) -> None:
    scenario = Scenario(slow_emulator, prefect_home, tmp_path)
    stderr = tmp_path / "stderr.txt"
    process = scenario.start_writing_stderr_to(stderr)
    scenario.wait_for_finished_jobs(process, 3)  # type: ignore[arg-type]

    os.killpg(process.pid, signal.SIGINT)
    wait_for(lambda: "stopping" in stderr.read_text(), 10, "the first Ctrl-C to be seen")
    os.killpg(process.pid, signal.SIGINT)
    signalled = time.monotonic()
    code = process.wait(timeout=30)
    FIGURES.setdefault("second Ctrl-C to exit (s)", []).append(time.monotonic() - signalled)

    output = stderr.read_text()
    assert code == 130, output
    assert "exiting now" in output
    assert "Traceback" not in output
    assert_only_the_server_left(prefect_home)
    scenario.rerun_to_the_end("after a double Ctrl-C: rerun start to first POST (s)")
    assert_every_row_completed_once(scenario.database_url, scenario.row_keys)
    # "Exiting now" gives no slot back (its jobs may still run): the rerun adopted them and
    # freed each as its job ended; a lease the exit caught between two jobs expires on the
    # server (a 60 s lease, a 1 s repossessor here).
    wait_for(lambda: active_slots(prefect_home) == 0, 150, "the exited run's slots to come back")


@pytest.mark.timeout(900)
def test_five_kills_in_a_row_then_a_clean_run_and_every_slot_comes_back(
    slow_emulator: EmulatorServer, prefect_home: Path, tmp_path: Path
) -> None:
    """SIGKILL of the whole group (no handler runs) five times, each once jobs are in flight.

    Each next run adopts the killed run's slots: each is free as its job ends, or, for a
    POST the kill cut off, once a job it may have made would have ended.
    """
    scenario = Scenario(slow_emulator, prefect_home, tmp_path)
    in_flight_at_kills = 0
    for _ in range(5):
        before = scenario.jobs_created()
        process, _ = scenario.start()
        waited = wait_for(
            lambda b=before, p=process: scenario.jobs_created() >= b + 3 or p.poll() is not None,
            240,
            "three jobs of this run",
        )
        FIGURES.setdefault("after SIGKILL: start to first 3 POSTs (s)", []).append(waited)
        assert process.poll() is None, "the run ended before it was killed"
        kill_group(process)
        in_flight_at_kills += 3
        assert_only_the_server_left(prefect_home)

    scenario.rerun_to_the_end("after 5 SIGKILLs: rerun start to first POST (s)")

    assert_every_row_completed_once(scenario.database_url, scenario.row_keys)
    # A kill may land between a POST and the recording of its job_id: at most the POSTs
    # in flight at each kill are paid again.
    assert SHARDS <= scenario.jobs_created() <= SHARDS + in_flight_at_kills
    # Every slot comes back: adopted ones from the runs that adopted them, the rest (a lease
    # handed to a lane the kill stopped before its intent) from the server's repossessor
    # once they expire (a 60 s lease, a 1 s repossessor loop here).
    wait_for(lambda: active_slots(prefect_home) == 0, 150, "the killed runs' slots to come back")
    assert_only_the_server_left(prefect_home)


def test_a_rerun_right_after_a_sigkill_adopts_the_killed_jobs_slots_as_they_end(
    slow_emulator: EmulatorServer, prefect_home: Path, tmp_path: Path
) -> None:
    """SIGKILL once three jobs of 10 s are recorded (none pending); a rerun at once.

    The killed run's leases name a holder that is gone: the rerun adopts them, so its first
    new POST comes as a killed job ends, not once the leases expire (60 s, the server's
    shortest), and never beside three jobs still running (the emulator, three jobs at once,
    would refuse a 4th with 429).
    """
    wait_for(lambda: active_slots(prefect_home) == 0, 150, "earlier runs' leases to expire")
    slow_emulator.configure(job_latency_s=ADOPTED_JOB_S)
    scenario = Scenario(slow_emulator, prefect_home, tmp_path)
    process, _ = scenario.start()

    def three_recorded() -> bool:
        recorded = [r for r in ledger(scenario.database_url) if r["status"] == "submitted"]
        return len(recorded) >= 3 or process.poll() is not None

    wait_for(three_recorded, 120, "three recorded jobs")
    kill_group(process)
    assert process.returncode == -signal.SIGKILL, "the run ended before it was killed"
    killed = slow_emulator.jobs()
    assert len(killed) == 3, killed
    refused_before = _post_429s(slow_emulator)

    scenario.rerun_to_the_end("after SIGKILL of 3 recorded jobs: rerun start to first POST (s)")

    new = [
        job for job in slow_emulator.jobs() if job["job_id"] not in {j["job_id"] for j in killed}
    ]
    first_new_post = min(job["created_s"] for job in new)
    assert first_new_post >= min(job["end_s"] for job in killed) - 0.05  # no 4th job
    # Expiry would free the first slot a lease (60 s) after the killed run's last renewal.
    assert first_new_post < max(job["created_s"] for job in killed) + 40, (killed, new)
    assert _post_429s(slow_emulator) == refused_before
    assert slow_emulator.stats()["max_active_jobs"] <= 3
    assert_every_row_completed_once(scenario.database_url, scenario.row_keys)
    assert len(new) + len(killed) == SHARDS  # the recorded jobs were re-attached, not paid again


def _post_429s(emulator: EmulatorServer) -> int:
    return int(emulator.stats()["requests"].get("POST /generate", {}).get("429", 0))


def _write_figures() -> None:
    if not FIGURES:
        return
    lines = [
        f"{ROWS} rows, shards of {SHARD}, jobs of {JOB_S:.0f} s (a rerun's new jobs "
        f"{RERUN_JOB_S:g} s), one shared PREFECT_HOME (tests/cli/test_interrupts.py).",
        "",
        "| figure | runs | median | max |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, values in FIGURES.items():
        ordered = sorted(values)
        median = ordered[len(ordered) // 2]
        lines.append(f"| {name} | {len(values)} | {median:.1f} | {ordered[-1]:.1f} |")
    write_chaos_section("Interrupted and killed runs on one PREFECT_HOME", "\n".join(lines))


def test_a_run_that_finds_every_slot_taken_says_so_and_gives_up_clearly(
    slow_emulator: EmulatorServer, prefect_api: str, tmp_path: Path
) -> None:
    """Another holder keeps all three slots of a real server; the run waits, then exits 2.

    The account's limit is one of its own (MODEL_STUDIO_CONCURRENCY_LIMIT_NAME): on the
    session's server, a killed run of another test may hold tag:model-studio until its
    leases expire.
    """
    from studio_flows.tasks.fair_use import PrefectSlotApi, SlotPool, ensure_concurrency_limit

    limit_name = "tag:model-studio-all-taken"
    ensure_concurrency_limit(limit=3, limit_name=limit_name)
    other = SlotPool(limit_name, api=PrefectSlotApi())
    leases = [other.acquire() for _ in range(3)]
    scenario = Scenario(slow_emulator, tmp_path / "home", tmp_path)
    env = cli_env(
        slow_emulator,
        tmp_path / "home",
        api_url=prefect_api,
        MODEL_STUDIO_SLOT_WAIT_LIMIT_S="6",
        MODEL_STUDIO_CONCURRENCY_LIMIT_NAME=limit_name,
    )
    try:
        result = run_cli(scenario.args, env, tmp_path, timeout_s=120)
    finally:
        for lease in leases:
            other.release(lease)

    assert result.returncode == 2, str(result)
    assert "waiting for a fair-use slot since" in result.stderr
    assert "3 of 3 slots are taken" in result.stderr
    assert "No fair-use slot came free in 6 s" in result.stderr
    assert f"prefect gcl inspect {limit_name}" in result.stderr
    assert "Traceback" not in result.output
    assert scenario.jobs_created() == 0


def test_an_unreachable_prefect_api_is_one_sentence_naming_it(
    slow_emulator: EmulatorServer, tmp_path: Path
) -> None:
    scenario = Scenario(slow_emulator, tmp_path / "home", tmp_path)
    env = cli_env(slow_emulator, tmp_path / "home", PREFECT_API_URL="http://127.0.0.1:9/api")

    result = run_cli(scenario.args, env, tmp_path, timeout_s=60)

    assert result.returncode == 2, str(result)
    assert "PREFECT_API_URL=http://127.0.0.1:9/api does not answer" in result.stderr
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_local_server_that_cannot_start_is_one_sentence_and_leaves_no_process(
    slow_emulator: EmulatorServer, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    scenario = Scenario(slow_emulator, home, tmp_path)
    env = cli_env(
        slow_emulator,
        home,
        PREFECT_SERVER_DATABASE_CONNECTION_URL="postgresql+asyncpg://nobody@127.0.0.1:9/none",
    )

    result = run_cli(scenario.args, env, tmp_path, timeout_s=120)

    assert result.returncode == 2, str(result)
    assert "The local Prefect server could not start" in result.stderr
    assert "PREFECT_API_URL" in result.stderr
    assert "Traceback" not in result.output
    assert_nothing_left_running(home)


def test_a_ctrl_c_while_the_local_server_starts_leaves_it_starting_for_the_next_run(
    slow_emulator: EmulatorServer, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    scenario = Scenario(slow_emulator, home, tmp_path)
    stderr = tmp_path / "stderr.txt"
    process = scenario.start_writing_stderr_to(stderr)
    wait_for(lambda: "starting the local Prefect server" in stderr.read_text(), 60, "the start")

    os.killpg(process.pid, signal.SIGINT)
    code = process.wait(timeout=30)

    output = stderr.read_text()
    assert code == 130, output
    assert "interrupted by SIGINT" in output and "Traceback" not in output
    assert scenario.jobs_created() == 0 or "left; run the same command again" in output
    # The server was in its own session: it goes on starting, and the next run uses it.
    url = output.split("starting the local Prefect server of PREFECT_HOME at ")[1].split()[0]
    rerun = scenario.rerun_to_the_end("after a Ctrl-C during the server's start: to first POST")
    assert f"using the local Prefect server at {url}" in rerun.stderr
    assert_only_the_server_left(home)
