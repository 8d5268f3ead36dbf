"""The measuring children: the emulator and the flow in processes of their own."""

from __future__ import annotations

import cProfile
import json
import resource
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.common import flow_env, options, requests_per_job, write_prompts
from bench.instrument import Timers, instrument, profile_top, split
from bench.scenarios import run_ours, start_emulator_process


def child_emulator(port: int, latency: float) -> None:
    from studio_flows.emulator import EmulatorConfig, EmulatorServer

    # Latency 0: every job ends as it is created, so none is ever active and the fair-use
    # limit (left at 3) can never refuse; the flow's own lanes keep 3 in flight anyway.
    config = EmulatorConfig(job_latency_s=latency, task_latency_s=0.0, seed=1)
    with EmulatorServer(config, port=port):
        while True:
            time.sleep(3600)


def child_rows(rows: int, database_url: str, shard_size: int, profile: bool) -> dict[str, Any]:
    """P3/P4: one flow run over ``rows`` prompts in this (fresh) process; print a JSON line."""
    from studio_flows.emulator import DEFAULT_TOKEN

    emulator, root = start_emulator_process(0.0)
    try:
        with tempfile.TemporaryDirectory(prefix="studio-flows-bench-") as tmp:
            dataset = write_prompts(Path(tmp) / "rows.jsonl", rows)
            # Latency 0: the first poll comes after the poller's start interval; keep it short.
            flow_env(root + "/api/v1", DEFAULT_TOKEN, poll_start=0.001, poll_max=0.05)
            if database_url == "sqlite":
                database_url = f"sqlite:///{tmp}/bench.db"
            timers = Timers()
            instrument(timers)
            profiles: list[cProfile.Profile] = []
            if profile:
                _profile_lanes(profiles)
            from studio_flows.flows.generate import generate_dataset

            main_profile = cProfile.Profile() if profile else None
            rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            started = time.perf_counter()
            if main_profile is not None:
                main_profile.enable()
            summary = generate_dataset(options(dataset, database_url, shard_size))
            if main_profile is not None:
                main_profile.disable()
                profiles.append(main_profile)
            wall = time.perf_counter() - started
            with urllib.request.urlopen(root + "/_emulator/stats") as answer:
                stats = json.load(answer)
    finally:
        emulator.terminate()
        emulator.wait(10)
    result = {
        "rows": rows,
        "completed": summary.completed,
        "jobs": summary.jobs,
        "wall_s": round(wall, 3),
        "rows_per_s": round(rows / wall, 1),
        "requests_per_job": requests_per_job(stats),
        "split": split(timers, rows, wall),
        "ru_maxrss_mb_before_flow": round(rss_before / 1024, 1),
        "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if profile:
        result["profile_top"] = profile_top(profiles)
    return result


def _profile_lanes(profiles: list[cProfile.Profile]) -> None:
    """Give every lane thread its own cProfile (a profiler sees one thread only)."""
    import studio_flows.flows.generate as generate

    inner = generate._Lane.run

    def run(self: Any) -> None:
        profiler = cProfile.Profile()
        profiler.enable()
        try:
            inner(self)
        finally:
            profiler.disable()
            profiles.append(profiler)

    generate._Lane.run = run  # type: ignore[method-assign]


def child_p1(shards: int, latency: float, rows_per_shard: int, database_url: str) -> dict[str, Any]:
    """P1 against whatever Prefect API the environment names (the real server)."""
    from studio_flows.emulator import EmulatorConfig, EmulatorServer

    with EmulatorServer(EmulatorConfig(seed=1)) as server, tempfile.TemporaryDirectory() as tmp:
        flow_env(server.base_url, server.token, poll_start=0.5, poll_max=10.0)
        url = f"sqlite:///{tmp}/bench.db" if database_url == "sqlite" else database_url
        return run_ours(
            server,
            Path(tmp),
            shards=shards,
            rows_per_shard=rows_per_shard,
            latency=latency,
            database_url=url,
        )


# --------------------------------------------------------------------------- the whole run
