"""Every benchmark of ``bench/`` still runs, at a tiny size (``--quick``). No timing asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KEYS = {
    "p1_makespan_ratio",
    "p1_makespan_ratio_1s",
    "p2_speedup_vs_naive",
    "p3_us_per_row",
    "p3_rows_per_s",
    "p4_rss_ratio",
    "p5_requests_per_job",
    "p6_jitter_ratio",
    "p6_requests_per_job",
    "p6_replay_ratio",
    "machine",
    "date",
}


@pytest.mark.slow
def test_every_benchmark_runs_at_a_tiny_size(tmp_path: Path) -> None:
    # A child process: the benchmark starts its own Prefect API, emulator and children.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MODEL_STUDIO_"))}
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        env={**env, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads((tmp_path / "results.json").read_text())
    assert figures.keys() >= KEYS
    assert all(figures[key] > 0 for key in KEYS - {"machine", "date"})
    assert (tmp_path / "makespan.png").stat().st_size > 0
    assert (tmp_path / "poll_tradeoff.png").stat().st_size > 0
    assert "p1_makespan_ratio" in (tmp_path / "RESULTS.md").read_text()

    # --render-only rewrites the page from results.json alone, identically.
    written = (tmp_path / "RESULTS.md").read_text()
    (tmp_path / "RESULTS.md").unlink()
    rendered = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--render-only", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rendered.returncode == 0, rendered.stderr[-3000:]
    assert (tmp_path / "RESULTS.md").read_text() == written
