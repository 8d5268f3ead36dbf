"""Two processes mapping ``generate`` in their own flows on one real Prefect server.

Each child runs a small user flow (written to a file, as a user's project would have it)
that maps :func:`studio_flows.generate` over its batches; both share the emulator's token,
which would accept 50 active jobs, so what the emulator sees is the shared
``tag:model-studio`` limit (3) at work across the two processes.

1. Both run to the end: at most 3 jobs active, every answer maps to its own prompt.
2. One is SIGKILLed while both hold slots: its leases stay counted until the server's
   repossessor reclaims them (a 60 s lease, the server's minimum, and its loop), since
   its jobs may still run at the service; the other waits for them, then finishes, and the
   server's count of active slots comes back to 0. At no time, kill included, are more than
   3 jobs active. Each run has a token of its own, so the emulator tells whose jobs run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from studio_flows.emulator import EmulatorServer
from studio_flows.emulator.config import token_key
from tests.fixtures.cli_runs import (
    SECRET_TOKEN,
    CliResult,
    cli_env,
    finish_cli,
    kill_group,
    start_cli,
    wait_for,
)
from tests.fixtures.prefect_server import QUICK_REPOSSESSOR_LOOP_S, PrefectServer, active_slots

LEASE_S = 60.0
MARGIN_S = 30.0  # a loaded machine

MODEL = "chaos-model"
OTHER_TOKEN = "survivor-token"
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


def _active_jobs(emulator: EmulatorServer, token: str) -> int:
    """Jobs of ``token`` active at the emulator now."""
    return int(emulator.stats()["per_token"].get(token_key(token), {}).get("active_jobs", 0))


def _most_active_at_once(emulator: EmulatorServer) -> int:
    """The most jobs of every token active at one moment, from the jobs' true times."""
    edges = sorted(
        (t, step)
        for job in emulator.jobs()
        for t, step in ((job["created_s"], 1), (job["end_s"], -1))
    )
    active = most = 0
    for _, step in edges:  # an end sorts before a start at the same instant
        active += step
        most = max(most, active)
    return most


@pytest.mark.slow
def test_a_killed_process_slots_come_back_and_the_other_finishes(
    emulator: EmulatorServer, prefect_server_process: PrefectServer, tmp_path: Path
) -> None:
    emulator.configure(job_latency_s=1.0, fair_use_limit=50, tokens=[SECRET_TOKEN, OTHER_TOKEN])
    script = tmp_path / "user_flow.py"
    script.write_text(USER_FLOW, encoding="utf-8")
    home = tmp_path / "prefect-home"  # shared: one user, one machine
    api_url = prefect_server_process.api_url

    def launch(prefix: str, batches: int, token: str) -> subprocess.Popen[str]:
        # Turns every 3 s: the two runs interleave before the kill.
        env = cli_env(
            emulator, home, api_url=api_url, MODEL_STUDIO_SLOT_TURN_S="3", MODEL_STUDIO_TOKEN=token
        )
        return start_cli([sys.executable, str(script), prefix, str(batches)], env, tmp_path)

    doomed = launch("doomed", 60, SECRET_TOKEN)
    wait_for(lambda: _active_jobs(emulator, SECRET_TOKEN) > 0, 120, "the first run's jobs")
    survivor, survivor_started = launch("survivor", 8, OTHER_TOKEN), time.monotonic()
    wait_for(lambda: _active_jobs(emulator, OTHER_TOKEN) > 0, 120, "the second run's jobs")
    wait_for(lambda: _active_jobs(emulator, SECRET_TOKEN) > 0, 60, "a job of the first run")
    kill_group(doomed)
    killed = time.monotonic()

    result = finish_cli(survivor, survivor_started)
    _assert_answers(result)
    ended_after_kill = time.monotonic() - killed
    reclaimed_s = LEASE_S + QUICK_REPOSSESSOR_LOOP_S + MARGIN_S
    assert ended_after_kill < reclaimed_s + 60, f"{ended_after_kill:.0f} s after the kill\n{result}"
    # Nothing on the client gave the dead run's leases back: they expired on the server.
    wait_for(lambda: active_slots(api_url) == 0, reclaimed_s, "0 active slots")
    most = _most_active_at_once(emulator)
    assert most <= 3, f"{most} jobs active at once"
    print(
        f"survivor ended {ended_after_kill:.1f} s after the kill; 0 slots active "
        f"{time.monotonic() - killed:.1f} s after it; at most {most} jobs active at once"
    )
