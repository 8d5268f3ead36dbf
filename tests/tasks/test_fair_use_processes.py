"""Fair use across processes: two `studio-flows generate` processes on one real Prefect server.

Both processes share the emulator's token; the emulator would accept 50 active jobs, so
what it sees is the shared ``tag:model-studio`` limit (3) at work.

1. Two runs over different datasets at once: at most 3 jobs active, the window of 3 is
   really used (the maximum reaches 3), both complete.
2. Two long runs; one is SIGKILLed while it holds slots. Its slots' leases (60 s, the
   server's minimum, renewed while held) stop being renewed; the server's lease
   repossessor (every second on the suite's servers, 15 s by Prefect's default) frees them
   once expired, and the survivor's waiting lanes take them. The bound is the lease (60 s
   after the last renewal) plus one repossessor period, asserted with slack for a loaded
   machine. The figure of each run is written to bench/CHAOS.md; the test only bounds it.
   Part 2 of this test therefore takes over a minute, most of it waiting for the lease.
3. Children use ``MODEL_STUDIO_SLOT_TURN_S=5``: with the default 60 s, the run that took all
   three slots first keeps them for a minute, and the other has no job in flight until then.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from studio_flows.emulator import EmulatorServer
from tests.fixtures.cli_runs import (
    DATABASES,
    SECRET_TOKEN,
    assert_every_row_completed_once,
    cli_env,
    finish_cli,
    generate_args,
    kill_group,
    ledger,
    start_cli,
    wait_for,
    write_chaos_section,
)
from tests.fixtures.harness import write_prompts
from tests.fixtures.prefect_server import QUICK_REPOSSESSOR_LOOP_S, PrefectServer

LEASE_S = 60.0


def _in_flight(database_url: str) -> int:
    """Jobs of one run between POST and persist, from its own ledger."""
    return sum(1 for r in ledger(database_url) if r["status"] == "submitted")


@pytest.mark.slow
def test_two_processes_share_three_slots_and_a_killed_ones_slots_come_back(
    emulator: EmulatorServer, prefect_server_process: PrefectServer, tmp_path: Path
) -> None:
    api_url = prefect_server_process.api_url
    emulator.configure(job_latency_s=1.0, fair_use_limit=50, tokens=[SECRET_TOKEN])

    def launch(name: str, rows: int, shard_size: int) -> tuple[object, str, float]:
        dataset = write_prompts(tmp_path / f"{name}.jsonl", rows, prefix=name)
        database_url = f"sqlite:///{tmp_path / name}.db"
        DATABASES.append(database_url)
        args = generate_args(
            dataset, database_url, "--shard-size", str(shard_size), "--id-column", "id"
        )
        # Slot turns every 5 s (default 60 s): the two runs interleave within the test's time.
        env = cli_env(
            emulator, tmp_path / f"prefect-{name}", api_url=api_url, MODEL_STUDIO_SLOT_TURN_S="5"
        )
        return start_cli(args, env, tmp_path), database_url, time.monotonic()

    # 1. two runs at once
    a, a_url, a_start = launch("alpha", 60, 5)
    b, b_url, b_start = launch("beta", 60, 5)
    ra, rb = finish_cli(a, a_start), finish_cli(b, b_start)  # type: ignore[arg-type]
    assert ra.returncode == 0, ra
    assert rb.returncode == 0, rb
    stats = emulator.stats()
    assert stats["jobs_created"] == 24
    assert stats["max_active_jobs"] == 3, stats  # never more, and the window was used
    assert_every_row_completed_once(a_url, {f"alpha-{i}" for i in range(60)})
    assert_every_row_completed_once(b_url, {f"beta-{i}" for i in range(60)})
    together_s = max(ra.seconds, rb.seconds)

    # 2. kill one mid-run; the survivor gets all three slots back
    emulator.reset()
    emulator.configure(job_latency_s=2.0)
    killed, killed_url, _ = launch("gamma", 400, 2)
    survivor, survivor_url, survivor_start = launch("delta", 400, 2)
    wait_for(
        lambda: _in_flight(killed_url) >= 1 and _in_flight(survivor_url) >= 1,
        120,
        "both runs to have jobs in flight",
    )
    held_at_kill = _in_flight(killed_url)
    kill_group(killed)  # type: ignore[arg-type]
    killed_at = time.monotonic()
    survivor_at_kill = _in_flight(survivor_url)
    assert survivor_at_kill + held_at_kill <= 3
    wait_for(
        lambda: _in_flight(survivor_url) == 3,
        LEASE_S + QUICK_REPOSSESSOR_LOOP_S + 60,
        "3 slots back",
    )
    recovered_s = time.monotonic() - killed_at
    # Let the survivor finish quickly, then check it lost and doubled nothing.
    emulator.configure(job_latency_s=0.0)
    rs = finish_cli(survivor, survivor_start)  # type: ignore[arg-type]
    assert rs.returncode == 0, rs
    assert_every_row_completed_once(survivor_url, {f"delta-{i}" for i in range(400)})
    assert emulator.stats()["max_active_jobs"] <= 3

    write_chaos_section(
        "Fair use across processes",
        "\n".join(
            [
                "- real `prefect server start` on loopback (filesystem lease storage), two "
                "`studio-flows generate` processes, one token; emulator fair-use limit 50",
                f"- two runs of 60 rows (12 jobs of 1 s each) at once: 24 jobs, at most "
                f"{stats['max_active_jobs']} active, both completed in {together_s:.1f} s",
                f"- SIGKILL of one run while it had {held_at_kill} job(s) in flight (the "
                f"survivor had {survivor_at_kill}): the survivor was back to 3 jobs in flight "
                f"{recovered_s:.1f} s after the kill (slot lease {LEASE_S:.0f} s, repossessor "
                f"every {QUICK_REPOSSESSOR_LOOP_S:g} s: expected at most "
                f"{LEASE_S + QUICK_REPOSSESSOR_LOOP_S:.0f} s)",
                f"- the survivor completed its 400 rows; maximum active jobs over the run: "
                f"{emulator.stats()['max_active_jobs']}",
            ]
        ),
    )
