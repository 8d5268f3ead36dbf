"""The local Prefect server bare runs share: one per ``PREFECT_HOME``, reused, replaced, stopped.

Every run is the installed ``studio-flows`` as a subprocess with no ``PREFECT_API_URL``,
against the emulator over loopback; the servers they start are stopped by
``studio-flows server stop`` (tests/fixtures/cli_runs.py) after each test.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from studio_flows.emulator import EmulatorServer
from tests.fixtures.cli_runs import (
    SECRET_TOKEN,
    STUDIO_FLOWS,
    CliResult,
    cli_env,
    finish_cli,
    generate_args,
    run_cli,
    start_cli,
    summary_value,
    wait_for,
)
from tests.fixtures.harness import write_prompts

pytestmark = pytest.mark.slow

SERVER_MODULE = "studio_flows.cli.local_server_process"


def server_pids(home: Path) -> list[int]:
    """The local-server processes of ``home`` (its folder is on their command line)."""
    folder = str(home / "studio-flows")
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        if SERVER_MODULE in cmdline and folder in cmdline:
            found.append(process.info["pid"])
    return found


def recorded(home: Path) -> dict[str, object]:
    """What ``$PREFECT_HOME/studio-flows/local-server.json`` records (pid, port, ...)."""
    state: dict[str, object] = json.loads((home / "studio-flows/local-server.json").read_text())
    return state


class Runs:
    """Small generate runs of one dataset on one ``PREFECT_HOME``."""

    def __init__(self, emulator: EmulatorServer, folder: Path, home: Path, **env: str) -> None:
        emulator.configure(tokens=[SECRET_TOKEN], job_latency_s=0.2)
        self.folder = folder
        self.home = home
        self.env = cli_env(emulator, home, **env)
        folder.mkdir(parents=True, exist_ok=True)
        self.dataset = write_prompts(folder / "prompts.jsonl", 4)

    def args(self, name: str = "results") -> list[str]:
        database = f"sqlite:///{self.folder / f'{name}.db'}"
        return generate_args(self.dataset, database, "--id-column", "id")

    def run(self, name: str = "results") -> CliResult:
        result = run_cli(self.args(name), self.env, self.folder)
        assert result.returncode == 0, str(result)
        assert summary_value(result.stdout, "completed") == 4
        return result

    def command(self, *words: str) -> CliResult:
        assert STUDIO_FLOWS is not None
        return run_cli([STUDIO_FLOWS, *words], self.env, self.folder, timeout_s=120)


def test_a_second_command_reuses_the_server_and_status_and_stop_report_it(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    runs = Runs(emulator, tmp_path, tmp_path / "home")

    first = runs.run("first")
    url = f"http://127.0.0.1:{recorded(runs.home)['port']}"
    pid = recorded(runs.home)["pid"]
    second = runs.run("second")

    assert f"starting the local Prefect server of PREFECT_HOME at {url}" in first.stderr
    assert f"using the local Prefect server at {url}" in second.stderr
    assert "starting" not in second.stderr
    assert server_pids(runs.home) == [pid], "the second command started a server of its own"
    assert second.seconds < first.seconds

    status = runs.command("server", "status")
    assert status.returncode == 0, str(status)
    assert f"{url} (pid {pid}, up " in status.stdout
    assert "tag:model-studio: 0 of 3 slots taken" in status.stdout

    stop = runs.command("server", "stop")
    assert stop.returncode == 0, str(stop)
    assert f"Stopped the local Prefect server at {url} after " in stop.stdout
    assert server_pids(runs.home) == []
    assert "No local Prefect server runs" in runs.command("server", "status").stdout


def test_status_names_the_leases_that_hold_fair_use_slots(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings
    from studio_flows.tasks.fair_use import PrefectSlotApi, SlotPool, ensure_concurrency_limit

    runs = Runs(emulator, tmp_path, tmp_path / "home")
    runs.run()
    api_url = f"http://127.0.0.1:{recorded(runs.home)['port']}/api"
    with temporary_settings({PREFECT_API_URL: api_url, PREFECT_HOME: runs.home}):
        ensure_concurrency_limit(limit=3)
        other = SlotPool(api=PrefectSlotApi())  # asks again when a busy server answers 503
        leases = [other.acquire() for _ in range(2)]
        try:
            status = runs.command("server", "status")
        finally:
            for lease in leases:
                other.release(lease)

    assert status.returncode == 0, str(status)
    assert "tag:model-studio: 2 of 3 slots taken" in status.stdout
    for lease in leases:
        assert f"lease {str(lease.lease_id)[:8]}: 1 slot(s), " in status.stdout


def test_two_first_runs_at_once_on_a_new_home_both_succeed_on_one_server(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    for attempt in range(3):
        runs = Runs(emulator, tmp_path / f"try-{attempt}", tmp_path / f"home-{attempt}")
        started = time.monotonic()
        both = [start_cli(runs.args(name), runs.env, runs.folder) for name in ("a", "b")]
        results = [finish_cli(process, started) for process in both]

        for result in results:
            assert result.returncode == 0, f"try {attempt}: {result}"
            assert summary_value(result.stdout, "completed") == 4
        assert server_pids(runs.home) == [recorded(runs.home)["pid"]]
        assert sum("starting the local Prefect server" in r.stderr for r in results) == 1


def test_a_killed_server_is_replaced_with_one_sentence(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    runs = Runs(emulator, tmp_path, tmp_path / "home")
    runs.run("first")
    old = recorded(runs.home)
    os.kill(int(str(old["pid"])), signal.SIGKILL)

    rerun = runs.run("second")

    url = f"http://127.0.0.1:{old['port']}"
    assert f"the local Prefect server at {url} is gone; starting a new one" in rerun.stderr
    assert server_pids(runs.home) == [recorded(runs.home)["pid"]] != [old["pid"]]


def test_a_hung_server_is_replaced_in_bounded_time(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    runs = Runs(emulator, tmp_path, tmp_path / "home", MODEL_STUDIO_PREFECT_CHECK_TIMEOUT_S="2")
    runs.run("first")
    old = recorded(runs.home)
    os.kill(int(str(old["pid"])), signal.SIGSTOP)  # accepts connections, answers nothing

    rerun = runs.run("second")

    url = f"http://127.0.0.1:{old['port']}"
    assert (
        f"the local Prefect server at {url} did not answer its health check in 2 s; "
        "starting a new one"
    ) in rerun.stderr
    assert server_pids(runs.home) == [recorded(runs.home)["pid"]] != [old["pid"]]


def test_a_ctrl_c_does_not_stop_the_server(emulator: EmulatorServer, tmp_path: Path) -> None:
    runs = Runs(emulator, tmp_path, tmp_path / "home")
    runs.run("first")
    pid = recorded(runs.home)["pid"]
    emulator.configure(job_latency_s=30.0)
    process = start_cli(runs.args("second"), runs.env, runs.folder)
    wait_for(lambda: emulator.stats()["jobs_created"] > 1, 60, "a job of the second run")

    os.killpg(process.pid, signal.SIGINT)  # the terminal's Ctrl-C: the run's whole group
    result = finish_cli(process, time.monotonic(), timeout_s=60)

    assert result.returncode == 130, str(result)
    assert server_pids(runs.home) == [pid]


def test_an_idle_server_stops_by_itself(emulator: EmulatorServer, tmp_path: Path) -> None:
    runs = Runs(emulator, tmp_path, tmp_path / "home", MODEL_STUDIO_LOCAL_SERVER_IDLE_S="3")
    runs.run()
    assert server_pids(runs.home)

    wait_for(lambda: not server_pids(runs.home), 60, "the idle server to stop", poll_s=0.5)

    assert not (runs.home / "studio-flows/local-server.json").exists()


def test_a_rerun_with_nothing_to_submit_needs_no_fair_use_slot_and_no_flow_run(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    """Another process holds every slot: a rerun whose rows are all done still ends at once,
    exit 0, instead of waiting for a slot it would not use; it does not even start a flow
    run on the server (it reads the database as a dry run does)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings
    from studio_flows.tasks.fair_use import PrefectSlotApi, SlotPool

    runs = Runs(emulator, tmp_path, tmp_path / "home", MODEL_STUDIO_SLOT_WAIT_LIMIT_S="20")
    runs.run()
    jobs = emulator.stats()["jobs_created"]
    api_url = f"http://127.0.0.1:{recorded(runs.home)['port']}/api"
    with temporary_settings({PREFECT_API_URL: api_url, PREFECT_HOME: runs.home}):
        other = SlotPool(api=PrefectSlotApi())
        leases = [other.acquire() for _ in range(3)]
        try:
            rerun = run_cli(runs.args(), runs.env, runs.folder, timeout_s=120)
        finally:
            for lease in leases:
                other.release(lease)

    assert rerun.returncode == 0, str(rerun)
    assert summary_value(rerun.stdout, "already done") == 4
    assert summary_value(rerun.stdout, "submitted") == 0
    assert "slot" not in rerun.stderr, rerun.stderr
    assert "nothing to submit, no Prefect flow run started" in rerun.stderr, rerun.stderr
    assert "using the local Prefect server" not in rerun.stderr, rerun.stderr
    assert emulator.stats()["jobs_created"] == jobs


def test_work_handed_to_a_start_runs_while_the_server_starts_and_its_runs_send_no_heartbeats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``prefect_api(while_starting=...)``: a command's imports overlap a new server's start
    (seconds of Prefect's own start-up), and run once as well when the server is up."""
    from prefect.settings import get_current_settings, temporary_settings

    from studio_flows.cli import local_server

    # A stand-in server that answers only once the work handed to the start has run: were
    # that work run after the wait for an answer, the start would time out.
    monkeypatch.setattr(local_server, "SERVER_MODULE", "tests.fixtures.stub_local_server")
    monkeypatch.setattr(local_server, "START_TIMEOUT_S", 30.0)
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[2]))
    files = local_server.ServerFiles.of(tmp_path / "home")
    seen: list[object] = []

    def imports() -> None:
        seen.append(local_server.read_server(files))
        (files.folder / "go").touch()

    try:
        with temporary_settings(updates={"home": str(tmp_path / "home")}):
            with local_server.local_prefect_api(print, while_starting=imports):
                assert get_current_settings().flows.heartbeat_frequency is None
            with local_server.local_prefect_api(print, while_starting=imports):
                pass
    finally:
        local_server.stop_server(files)

    started, reused = seen
    assert started is not None and not started.ready  # recorded, not answering yet
    assert reused is not None and reused.ready


def test_a_server_whose_prefect_home_was_deleted_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its state file went with the folder, so no command would find it again: the idle
    watchdog stops it (it used to die on the missing lock file, leaving the server on)."""
    import shutil
    import threading

    from studio_flows.cli import local_server_process
    from studio_flows.cli.local_server import ServerFiles

    files = ServerFiles.of(tmp_path / "home")
    signals: list[int] = []
    monkeypatch.setattr(local_server_process.os, "kill", lambda pid, sig: signals.append(sig))
    monkeypatch.setattr(local_server_process, "LONGEST_CHECK_S", 0.05)  # an hour's idle limit
    shutil.rmtree(tmp_path / "home")

    watchdog = threading.Thread(
        target=local_server_process._watch_idle, args=(files, 3600.0), daemon=True
    )
    watchdog.start()
    watchdog.join(timeout=10)

    assert signals == [signal.SIGTERM]
