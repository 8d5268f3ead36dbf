"""Two processes mapping ``generate`` in their own flows on one real Prefect server.

Each child runs a small user flow (written to a file, as a user's project would have it)
that maps :func:`studio_flows.generate` over its batches; both share the emulator's token,
which would accept 50 active jobs, so what the emulator sees is the shared
``tag:model-studio`` limit (3) at work across the two processes.

1. Both run to the end: at most 3 jobs active, every answer maps to its own prompt.
2. One is SIGKILLed while it holds slots: the other still finishes, within the lease
   (60 s, the server's minimum) of the kill, and the server's count of active slots comes
   back to 0 within the lease plus one period of the server's lease repossessor (15 s)
   and a margin. Both runs share ``PREFECT_HOME``, as two runs of one user on one machine
   do, so the survivor finds the dead process's holder file and gives the leases it lists
   back at once; a lease granted to an ask still in flight at the kill is in no file and
   comes back when it expires.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from studio_flows.emulator import EmulatorServer
from tests.fixtures.cli_runs import (
    SECRET_TOKEN,
    CliResult,
    cli_env,
    finish_cli,
    kill_group,
    start_cli,
    wait_for,
)
from tests.fixtures.prefect_server import PrefectServer, active_slots

LEASE_S = 60.0
REPOSSESSOR_LOOP_S = 15.0
MARGIN_S = 15.0

MODEL = "chaos-model"
USER_FLOW = """
import json
import sys

from prefect import flow, unmapped

from studio_flows import generate


@flow
def answer(batches: list[list[str]]) -> list[list[str | None]]:
    answered = generate.map(batches, model_id=unmapped("chaos-model")).result()
    return [[g.text for g in batch] for batch in answered]


if __name__ == "__main__":
    prefix, count = sys.argv[1], int(sys.argv[2])
    batches = [[f"{prefix} {b}.{i}" for i in range(3)] for b in range(count)]
    print(json.dumps({"batches": batches, "answers": answer(batches)}))
"""


@pytest.mark.slow
def test_two_processes_mapping_generate_share_three_slots(
    emulator: EmulatorServer, prefect_server_process: PrefectServer, tmp_path: Path
) -> None:
    emulator.configure(job_latency_s=1.0, fair_use_limit=50, tokens=[SECRET_TOKEN])
    script = tmp_path / "user_flow.py"
    script.write_text(USER_FLOW, encoding="utf-8")

    def launch(prefix: str) -> tuple[object, float]:
        env = cli_env(
            emulator,
            tmp_path / f"prefect-{prefix}",
            api_url=prefect_server_process.api_url,
            MODEL_STUDIO_SLOT_TURN_S="3",  # the two runs interleave within the test's time
        )
        args = [sys.executable, str(script), prefix, "8"]
        return start_cli(args, env, tmp_path), time.monotonic()

    runs = [launch("alpha"), launch("beta")]
    results = [finish_cli(process, started) for process, started in runs]  # type: ignore[arg-type]

    for result in results:
        _assert_answers(result)
        assert "Traceback" not in result.stderr and "Warning" not in result.stderr, result
    stats = emulator.stats()
    assert stats["jobs_created"] == 16
    assert stats["max_active_jobs"] <= 3, stats
    assert stats["rejections"] == {}, stats
    print(
        f"two processes, 16 jobs of 1 s: {[round(r.seconds, 1) for r in results]} s, "
        f"at most {stats['max_active_jobs']} active"
    )


def _assert_answers(result: CliResult) -> None:
    assert result.returncode == 0, result
    out = json.loads(result.stdout.strip().splitlines()[-1])
    for prompts, answers in zip(out["batches"], out["answers"], strict=True):
        assert answers == [f"{MODEL} answers: {p}" for p in prompts]


def _leases_held_by(home: Path, pid: int) -> int:
    """Leases the holder file of process ``pid`` lists (0 before it has one)."""
    held = 0
    for path in (home / "studio-flows" / "slot-holders").glob(f"{pid}-*.json"):
        with contextlib.suppress(OSError, ValueError):  # caught mid-write: read again later
            held += len(json.loads(path.read_text(encoding="utf-8")).get("leases", []))
    return held


@pytest.mark.slow
def test_a_killed_process_slots_come_back_and_the_other_finishes(
    emulator: EmulatorServer, prefect_server_process: PrefectServer, tmp_path: Path
) -> None:
    emulator.configure(job_latency_s=1.0, fair_use_limit=50, tokens=[SECRET_TOKEN])
    script = tmp_path / "user_flow.py"
    script.write_text(USER_FLOW, encoding="utf-8")
    home = tmp_path / "prefect-home"  # shared: one user, one machine

    def launch(prefix: str, batches: int) -> subprocess.Popen[str]:
        # Turns every 3 s: the two runs interleave before the kill.
        env = cli_env(
            emulator, home, api_url=prefect_server_process.api_url, MODEL_STUDIO_SLOT_TURN_S="3"
        )
        return start_cli([sys.executable, str(script), prefix, str(batches)], env, tmp_path)

    doomed = launch("doomed", 60)
    wait_for(lambda: _leases_held_by(home, doomed.pid) > 0, 120, "the first run to hold slots")
    survivor, survivor_started = launch("survivor", 8), time.monotonic()
    wait_for(lambda: _leases_held_by(home, survivor.pid) > 0, 120, "the second run to hold slots")
    wait_for(lambda: _leases_held_by(home, doomed.pid) > 0, 60, "the first run to hold a slot")
    shared = emulator.stats()  # both runs at once, up to the kill
    kill_group(doomed)  # type: ignore[arg-type]
    killed = time.monotonic()

    result = finish_cli(survivor, survivor_started)  # type: ignore[arg-type]
    _assert_answers(result)
    ended_after_kill = time.monotonic() - killed
    assert ended_after_kill < LEASE_S, f"{ended_after_kill:.0f} s after the kill\n{result}"
    # Nothing stays counted: the survivor gave back its own leases and those the dead one's
    # holder file lists; any other lease of the dead one expired.
    api_url = prefect_server_process.api_url
    left_s = LEASE_S + REPOSSESSOR_LOOP_S + MARGIN_S - (time.monotonic() - killed)
    wait_for(lambda: active_slots(api_url) == 0, left_s, "0 active slots")
    # Up to the kill: the two runs never had more than 3 jobs active. (After it, the dead
    # run's last jobs still run at the provider for up to a job's time while the survivor
    # reuses their slots; a real account answers that POST 429, which the client absorbs.)
    assert shared["max_active_jobs"] <= 3, shared
    print(
        f"survivor ended {ended_after_kill:.1f} s after the kill; 0 slots active "
        f"{time.monotonic() - killed:.1f} s after it; "
        f"at most {shared['max_active_jobs']} active before the kill, "
        f"{emulator.stats()['max_active_jobs']} in all"
    )
