"""A slow Prefect start is not a failure: a first run on a machine whose cores are all busy.

A fresh ``PREFECT_HOME`` (its first server start migrates the database) while one
CPU-bound process per core runs: Prefect's own 20 s start timeout failed one run in two
here; the local server gets the time it needs and the run completes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from studio_flows.emulator import EmulatorServer
from tests.fixtures.cli_runs import SECRET_TOKEN, cli_env, generate_args, run_cli, summary_value
from tests.fixtures.harness import write_prompts

pytestmark = pytest.mark.slow


@pytest.fixture
def busy_cores() -> Iterator[None]:
    """One busy loop per core for the test's length."""
    loops = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(os.cpu_count() or 2)
    ]
    try:
        yield
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


def test_a_first_run_on_a_busy_machine_completes(
    emulator: EmulatorServer, tmp_path: Path, busy_cores: None
) -> None:
    emulator.configure(tokens=[SECRET_TOKEN])
    dataset = write_prompts(tmp_path / "six.jsonl", 6)
    args = generate_args(dataset, f"sqlite:///{tmp_path / 'r.db'}", "--id-column", "id")

    result = run_cli(args, cli_env(emulator, tmp_path / "fresh-home"), tmp_path, timeout_s=400)

    assert result.returncode == 0, str(result)
    assert summary_value(result.stdout, "completed") == 6
    assert "Traceback" not in result.output
