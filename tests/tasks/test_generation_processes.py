"""Two processes mapping ``generate`` in their own flows on one real Prefect server.

Each child runs a small user flow (written to a file, as a user's project would have it)
that maps :func:`studio_flows.generate` over its batches; both share the emulator's token,
which would accept 50 active jobs, so what the emulator sees is the shared
``tag:model-studio`` limit (3) at work across the two processes.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from studio_flows.emulator import EmulatorServer
from tests.fixtures.cli_runs import SECRET_TOKEN, cli_env, finish_cli, start_cli
from tests.fixtures.prefect_server import PrefectServer

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
        assert result.returncode == 0, result
        assert "Traceback" not in result.stderr and "Warning" not in result.stderr, result
        out = json.loads(result.stdout.strip().splitlines()[-1])
        for prompts, answers in zip(out["batches"], out["answers"], strict=True):
            assert answers == [f"{MODEL} answers: {p}" for p in prompts]
    stats = emulator.stats()
    assert stats["jobs_created"] == 16
    assert stats["max_active_jobs"] <= 3, stats
    assert stats["rejections"] == {}, stats
    print(
        f"two processes, 16 jobs of 1 s: {[round(r.seconds, 1) for r in results]} s, "
        f"at most {stats['max_active_jobs']} active"
    )
