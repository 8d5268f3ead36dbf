"""The benchmark scenarios: our flow and a naive tagged task.map, then the whole run."""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import (
    MODEL,
    QUICK,
    ROOT,
    Results,
    Sizes,
    _forget_engines,
    flow_env,
    free_port,
    job_intervals,
    log,
    machine,
    median_run,
    options,
    postgres_database,
    requests_made,
    requests_per_job,
    write_prompts,
)


def run_ours(
    server: Any, work: Path, *, shards: int, rows_per_shard: int, latency: float, database_url: str
) -> dict[str, Any]:
    """One run of the generation flow against the in-process emulator."""
    from studio_flows.flows.generate import generate_dataset

    server.configure(job_latency_s=latency, task_latency_s=0.0, fair_use_limit=3)
    server.reset()
    dataset = write_prompts(work / f"p1-{uuid.uuid4().hex[:8]}.jsonl", shards * rows_per_shard)
    _forget_engines()
    persisted: list[float] = []
    with _recording_persists(persisted):
        called = time.monotonic()
        summary = generate_dataset(options(dataset, database_url, rows_per_shard))
        returned = time.monotonic()
    _forget_engines()
    stats = server.stats()
    intervals = job_intervals(server)
    first_post = intervals[0][0]
    ideal = math.ceil(shards / 3) * latency
    makespan = max(persisted) - first_post
    assert summary.completed == shards * rows_per_shard, summary
    return {
        "shards": shards,
        "latency_s": latency,
        "ideal_s": ideal,
        "makespan_s": round(makespan, 3),
        "ratio": round(makespan / ideal, 4),
        "startup_s": round(first_post - called, 3),
        "flow_call_s": round(returned - called, 3),
        # First POST to the flow call's return: what P2 compares with the naive flow.
        "makespan_to_return_s": round(returned - first_post, 3),
        "tail_s": round(returned - max(persisted), 3),
        "jobs": stats["jobs_created"],
        "max_active": stats["max_active_jobs"],
        "requests": requests_made(stats),
        "requests_per_job": requests_per_job(stats),
        "intervals": [(round(a - first_post, 4), round(b - first_post, 4)) for a, b in intervals],
    }


@contextlib.contextmanager
def _recording_persists(ends: list[float]) -> Iterator[None]:
    """Record when each shard's persist transaction committed (the makespan's end)."""
    import studio_flows.tasks.jobs as task_jobs

    inner = getattr(task_jobs, "complete_shard")  # noqa: B009

    def recorded(*args: Any, **kwargs: Any) -> Any:
        try:
            return inner(*args, **kwargs)
        finally:
            ends.append(time.monotonic())

    setattr(task_jobs, "complete_shard", recorded)  # noqa: B010 - where the task looks it up
    try:
        yield
    finally:
        setattr(task_jobs, "complete_shard", inner)  # noqa: B010


def _naive_parts() -> tuple[Any, Any]:
    """The naive shape, as a Prefect user would first write it (built lazily: imports Prefect)."""
    from prefect import flow, task

    from studio_flows.client import ModelStudioClient
    from studio_flows.models import GenerateRequest, Message
    from studio_flows.settings import load_settings

    @task(tags=["model-studio"])
    def naive_generate(prompts: list[str]) -> int:
        with ModelStudioClient.from_settings(load_settings()) as client:
            request = GenerateRequest(
                model_id=MODEL,
                messages=[[Message(role="user", content=p)] for p in prompts],
            )
            job = client.create_job(request)
            status = client.wait_for_job(job.job_id, total_tasks=len(prompts))
        return status.completed_tasks

    @flow(name="naive-generate")
    def naive_flow(shards: list[list[str]]) -> int:
        return sum(naive_generate.map(shards).result())

    return naive_flow, naive_generate


def run_naive(server: Any, *, shards: int, rows_per_shard: int, latency: float) -> dict[str, Any]:
    from prefect.client.orchestration import get_client

    naive_flow, _ = _naive_parts()
    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag="model-studio", concurrency_limit=3)
    server.configure(job_latency_s=latency, task_latency_s=0.0, fair_use_limit=3)
    server.reset()
    work = [[f"naive {s}-{r}?" for r in range(rows_per_shard)] for s in range(shards)]
    called = time.monotonic()
    done = naive_flow(work)
    returned = time.monotonic()
    assert done == shards * rows_per_shard
    stats = server.stats()
    intervals = job_intervals(server)
    first_post = intervals[0][0]
    return {
        "shards": shards,
        "latency_s": latency,
        "ideal_s": math.ceil(shards / 3) * latency,
        "makespan_s": round(returned - first_post, 3),
        "flow_call_s": round(returned - called, 3),
        "max_active": stats["max_active_jobs"],
        "rejections": stats["rejections"],
        "intervals": [(round(a - first_post, 4), round(b - first_post, 4)) for a, b in intervals],
    }


# --------------------------------------------------------------------------- P3 / P4 (child)


def start_emulator_process(latency: float) -> tuple[subprocess.Popen[bytes], str]:
    """The emulator in its own process (so its work does not share the flow's GIL)."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--child",
            "emulator",
            "--port",
            str(port),
            "--latency",
            str(latency),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    root = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(root + "/_emulator/stats", timeout=1):
                return process, root
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the emulator process did not start")


def run_child(
    args: list[str], env: dict[str, str] | None = None, timeout_s: float = 2400
) -> dict[str, Any]:
    """Run ``bench.run --child ...`` and follow its peak RSS (process and its children)."""
    import psutil

    process = subprocess.Popen(
        [sys.executable, "-m", "bench.run", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        env=env or os.environ.copy(),
    )
    watched = psutil.Process(process.pid)
    peak_self = peak_tree = 0
    deadline = time.monotonic() + timeout_s
    output: list[bytes] = []
    reader = threading.Thread(target=lambda: output.append(process.stdout.read()))  # type: ignore[union-attr]
    reader.start()
    while process.poll() is None:
        with contextlib.suppress(psutil.Error):
            own = watched.memory_info().rss
            tree = own
            for child in watched.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    tree += child.memory_info().rss
            peak_self, peak_tree = max(peak_self, own), max(peak_tree, tree)
        if time.monotonic() > deadline:
            process.kill()
            raise TimeoutError(f"bench child {args} ran over {timeout_s} s")
        time.sleep(0.05)
    reader.join()
    if process.returncode != 0:
        raise RuntimeError(f"bench child {args} failed with {process.returncode}")
    last = output[0].decode().strip().splitlines()[-1]
    result: dict[str, Any] = json.loads(last)
    result["peak_rss_mb"] = round(peak_self / 2**20, 1)
    result["peak_rss_tree_mb"] = round(peak_tree / 2**20, 1)
    return result


def run_p3_sql(env: dict[str, str], rows: int, shard_size: int) -> dict[str, Any] | None:
    from bench.sql_source import run_p3_sql as run

    return run(env, rows, shard_size)


def run_all(sizes: Sizes, out: Path, *, postgres: bool, real_server: bool) -> Results:
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from studio_flows.emulator import EmulatorConfig, EmulatorServer

    results = Results()
    d = results.details
    wall_started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="studio-flows-bench-") as tmp,
        prefect_test_harness(server_startup_timeout=90),
        EmulatorServer(EmulatorConfig(seed=1)) as server,
    ):
        work = Path(tmp)
        api_url = PREFECT_API_URL.value()
        # Production poll settings: 0.5 s first poll, 10 s at most (the Settings defaults).
        flow_env(server.base_url, server.token, poll_start=0.5, poll_max=10.0)
        sqlite = f"sqlite:///{work}/p1.db"
        log(f"P1: {sizes.p1_shards} shards at L = {sizes.p1_latency_s:.1f} s")
        d["p1"] = run_ours(
            server,
            work,
            shards=sizes.p1_shards,
            latency=sizes.p1_latency_s,
            rows_per_shard=sizes.p1_rows_per_shard,
            database_url=sqlite,
        )
        log(f"P1 (1 s): {sizes.p1b_shards} shards at L = {sizes.p1b_latency_s:.1f} s")
        d["p1_1s"] = run_ours(
            server,
            work,
            shards=sizes.p1b_shards,
            latency=sizes.p1b_latency_s,
            rows_per_shard=sizes.p1_rows_per_shard,
            database_url=f"sqlite:///{work}/p1b.db",
        )
        log(
            f"P2: ours, {sizes.p2_shards} shards at L = {sizes.p2_latency_s:.1f} s, "
            f"{sizes.p2_runs} runs"
        )
        d["p2_ours"] = median_run(
            [
                run_ours(
                    server,
                    work,
                    shards=sizes.p2_shards,
                    latency=sizes.p2_latency_s,
                    rows_per_shard=sizes.p1_rows_per_shard,
                    database_url=f"sqlite:///{work}/p2-{run}.db",
                )
                for run in range(sizes.p2_runs)
            ],
            "makespan_to_return_s",
        )
        # P6 and the poll trade-off (bench/jitter.py): job times that vary.
        from bench.jitter import FULL_JITTER, QUICK_JITTER, run_jitter

        d.update(run_jitter(server, work, QUICK_JITTER if sizes == QUICK else FULL_JITTER))
        log("P2: naive")
        d["p2_naive"] = run_naive(
            server,
            shards=sizes.p2_shards,
            latency=sizes.p2_latency_s,
            rows_per_shard=sizes.p1_rows_per_shard,
        )
        if postgres:
            with postgres_database() as pg:
                if pg is not None:
                    log("P1 on PostgreSQL")
                    d["p1_postgres"] = run_ours(
                        server,
                        work,
                        shards=sizes.p1_shards,
                        latency=sizes.p1_latency_s,
                        rows_per_shard=sizes.p1_rows_per_shard,
                        database_url=pg,
                    )
        # P3/P4 in child processes, talking to this same ephemeral Prefect server.
        env = {**os.environ, "PREFECT_API_URL": str(api_url)}
        for key, rows, db, prof in (
            ("p4_small", sizes.p4_small_rows, "sqlite", False),
            ("p3", sizes.p3_rows, "sqlite", False),
            ("p3_profile", sizes.profile_rows, "sqlite", True),
        ):
            log(f"{key}: {rows} rows")
            d[key] = run_child(
                [
                    "--child",
                    "rows",
                    "--rows",
                    str(rows),
                    "--db",
                    db,
                    "--shard-size",
                    str(sizes.shard_size),
                ]
                + (["--profile"] if prof else []),
                env=env,
            )
        if postgres:
            with postgres_database() as pg:
                if pg is not None:
                    log(f"p3 on PostgreSQL: {sizes.p3_postgres_rows} rows")
                    d["p3_postgres"] = run_child(
                        [
                            "--child",
                            "rows",
                            "--rows",
                            str(sizes.p3_postgres_rows),
                            "--db",
                            pg,
                            "--shard-size",
                            str(sizes.shard_size),
                        ],
                        env=env,
                    )
        if postgres:
            d["p3_sql"] = run_p3_sql(env, sizes.p3_rows, sizes.shard_size)
    if real_server:
        log("P1 on a real prefect server")
        d["p1_real_server"] = p1_real_server(sizes)
        from bench.shared import run_shared  # P7 / P8 (bench/shared.py)

        run_shared(results)
    f = results.figures
    f["p1_makespan_ratio"] = d["p1"]["ratio"]
    f["p1_makespan_ratio_1s"] = d["p1_1s"]["ratio"]
    f["p2_speedup_vs_naive"] = round(
        d["p2_naive"]["makespan_s"] / d["p2_ours"]["makespan_to_return_s"], 2
    )
    f["p3_us_per_row"] = d["p3"]["split"]["read_plus_persist_us_per_row"]
    f["p3_rows_per_s"] = d["p3"]["rows_per_s"]
    f["p4_rss_ratio"] = round(d["p3"]["peak_rss_mb"] / d["p4_small"]["peak_rss_mb"], 3)
    f["p5_requests_per_job"] = d["p1"]["requests_per_job"]
    if d.get("p3_sql"):
        f["p3_sql_rows_per_s"] = d["p3_sql"]["p3_sql_rows_per_s"]
        f["p3_sql_vs_jsonl"] = d["p3_sql"]["p3_sql_vs_jsonl"]
    from bench.jitter import figures as jitter_figures

    f.update(jitter_figures(d))
    f["machine"] = machine()
    f["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    d["bench_wall_s"] = round(time.monotonic() - wall_started, 1)
    return results


def p1_real_server(sizes: Sizes) -> dict[str, Any]:
    from bench.prefect_server import PrefectServer

    with tempfile.TemporaryDirectory(prefix="studio-flows-bench-server-") as home:
        server = PrefectServer(Path(home)).start()
        try:
            env = server.env()
            return run_child(
                [
                    "--child",
                    "p1",
                    "--shards",
                    str(sizes.p1_shards),
                    "--latency",
                    str(sizes.p1_latency_s),
                    "--rows-per-shard",
                    str(sizes.p1_rows_per_shard),
                    "--db",
                    "sqlite",
                ],
                env=env,
            )
        finally:
            server.stop()
