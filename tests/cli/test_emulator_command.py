"""`studio-flows emulator`, run as docs/emulator.md gives it: the installed console script.

The process serves on a free port; the test reads the token it prints, checks the token
check (401) and the fair-use rule (429 on a 4th active job), then stops it with SIGINT as
Ctrl-C would. The knob defaults of the command, of :class:`EmulatorConfig` and of the
knob table of docs/emulator.md must agree.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer.main

from studio_flows.cli import app
from studio_flows.emulator import EmulatorConfig
from tests.fixtures.cli_runs import STUDIO_FLOWS
from tests.fixtures.prefect_server import free_port

KNOB_TABLE = Path(__file__).resolve().parents[2] / "docs" / "emulator.md"
BANNER_LINES = 4
BODY = {"model_id": "m", "messages": [[{"role": "user", "content": "The capital of France is"}]]}


def _start_emulator(*args: str) -> subprocess.Popen[str]:
    assert STUDIO_FLOWS is not None, "the studio-flows console script is not installed"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_STUDIO_")}
    return subprocess.Popen(
        [STUDIO_FLOWS, "emulator", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _read_banner(process: subprocess.Popen[str]) -> dict[str, str]:
    """The ``NAME=value`` lines the command prints once its port is bound."""
    assert process.stdout is not None
    lines = [process.stdout.readline() for _ in range(BANNER_LINES)]
    pairs = (line.strip().split("=", 1) for line in lines if "=" in line)
    return {name: value for name, value in pairs}


def _stop(process: subprocess.Popen[str]) -> tuple[str, str]:
    """Send SIGINT (Ctrl-C) and collect what is left of the output."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        return process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        raise AssertionError(f"the emulator ignored SIGINT:\n{out}\n{err}") from None


def test_the_console_script_answers_401_and_429_and_stops_cleanly_on_sigint() -> None:
    # Jobs of a minute stay active, so the 4th POST meets three active jobs.
    process = _start_emulator("--port", str(free_port()), "--job-latency-s", "60")
    try:
        banner = _read_banner(process)
        url = f"{banner['MODEL_STUDIO_BASE_URL']}/organizations/org/generate"
        auth = {"Authorization": f"Bearer {banner['MODEL_STUDIO_TOKEN']}"}
        unauthenticated = httpx.post(url, json=BODY, timeout=10)
        answers = [httpx.post(url, json=BODY, headers=auth, timeout=10) for _ in range(4)]
    finally:
        rest_out, err = _stop(process)

    assert unauthenticated.status_code == 401
    assert [answer.status_code for answer in answers] == [200, 200, 200, 429]
    assert answers[3].headers["Retry-After"] == "1"
    assert process.returncode == 0, (rest_out, err)
    assert "Traceback" not in rest_out + err
    assert err == ""
    assert rest_out.strip() == "emulator stopped"


def test_jitter_uneven_tasks_and_style_flags_reach_the_emulator() -> None:
    process = _start_emulator(
        "--port",
        str(free_port()),
        "--job-latency-jitter",
        "0.5",
        "--uneven-tasks",
        "--style",
        "queued",
    )
    try:
        root = _read_banner(process)["MODEL_STUDIO_BASE_URL"].removesuffix("/api/v1")
        knobs = httpx.post(f"{root}/_emulator/config", json={}, timeout=10).json()
        timeline = httpx.get(f"{root}/_emulator/jobs", timeout=10).json()
    finally:
        _stop(process)
    assert (knobs["job_latency_jitter"], knobs["uneven_tasks"]) == (0.5, True)
    assert knobs["style"] == "queued"
    assert timeline == {"jobs": []}


def test_the_banner_settings_can_be_exported_in_bash_as_printed() -> None:
    process = _start_emulator("--port", str(free_port()))
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(BANNER_LINES)]
    finally:
        _stop(process)
    exports = [f"export {line.strip()}" for line in lines if line.startswith("MODEL_STUDIO_")]
    script = "\n".join([*exports, 'echo "$MODEL_STUDIO_ORGANIZATION_ID"'])
    shell = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert (shell.returncode, shell.stderr) == (0, ""), shell
    assert len(exports) == 3
    assert shell.stdout.strip()


def test_a_port_in_use_is_one_line_and_exit_2() -> None:
    port = free_port()
    holder = _start_emulator("--port", str(port))
    try:
        _read_banner(holder)
        second = _start_emulator("--port", str(port))
        out, err = second.communicate(timeout=60)
    finally:
        _stop(holder)
    assert second.returncode == 2
    assert out == ""
    assert err.strip() == f"error: cannot listen on 127.0.0.1:{port}: Address already in use"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rate-429", "2"], "--rate-429: Input should be less than or equal to 1"),
        (["--token", " "], "--token: tokens may not be blank"),
        (
            ["--style", "noisy"],
            "--style: unknown style 'noisy': one of reference, quiet, queued, lowercase",
        ),
    ],
)
def test_a_bad_knob_value_names_its_flag_and_exits_2(args: list[str], message: str) -> None:
    process = _start_emulator("--port", str(free_port()), *args)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert out == ""
    assert err.strip() == f"error: Invalid options: {message}"


# --- the defaults agree: command, config, docs/emulator.md ---------------------------------


def _command_defaults() -> dict[str, Any]:
    command = typer.main.get_command(app).commands["emulator"]  # type: ignore[attr-defined]
    return {param.name: param.default for param in command.params}


def _documented_knobs() -> dict[str, str]:
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \|", KNOB_TABLE.read_text(encoding="utf-8"), re.M)
    return {name: value.strip().strip("`") for name, value in rows}


def test_every_command_knob_has_help_and_the_config_default() -> None:
    command = typer.main.get_command(app).commands["emulator"]  # type: ignore[attr-defined]
    defaults = _command_defaults()
    assert all(param.help for param in command.params), [p.name for p in command.params]
    knobs = {name for name in defaults if name in EmulatorConfig.model_fields}
    assert knobs == set(EmulatorConfig.model_fields) - {"prefix", "tokens"}
    for name in knobs:
        assert defaults[name] == EmulatorConfig.model_fields[name].default, name


@pytest.mark.parametrize("name", ["job_latency_s", "task_latency_s", "fair_use_limit"])
def test_the_documented_knob_table_gives_the_command_defaults(name: str) -> None:
    assert _documented_knobs()[name] == str(_command_defaults()[name])


def test_the_documented_knob_table_lists_every_command_knob() -> None:
    knobs = {name for name in _command_defaults() if name in EmulatorConfig.model_fields}
    assert knobs <= set(_documented_knobs())
