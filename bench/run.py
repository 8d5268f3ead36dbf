"""Benchmarks of the generation flow (issue 9): ``make bench`` / ``python -m bench.run``.

Each figure is a ratio taken in one run on one machine, with the Prefect guard on (the
``model-studio`` tag limit, held by the flow's lanes):

- P1: makespan of 15 shards at job latency L = 5 s (3 slots) over the ideal ceil(15/3)·L;
  also 30 shards at L = 1 s. Makespan = from the first POST the emulator saw to the moment
  the flow call returned (so the last persist and the run report are inside it); the
  flow's fixed start-up before the first POST (validate, limit check, planning, first slot)
  is reported apart.
- P5: HTTP requests the emulator counted (all API routes) per job, in that same P1 run.
- P2: a naive Prefect flow (one ``model-studio``-tagged task per shard, ``task.map``)
  against ours, 30 shards at L = 0.5 s, same emulator: naive wall / ours.
- P3: 1 M prompt rows, latency 0, SQLite file, shard size 100, in a child process with the
  emulator in another process: wall time, rows/s and a split of thread-seconds.
- P4: peak RSS of the flow's process at 10 k rows and at 1 M rows (same child runs).
- P1 and P3 again on PostgreSQL when ``STUDIO_FLOWS_TEST_POSTGRES_URL`` is set, and P1 on a
  real ``prefect server start``.

Writes ``bench/RESULTS.md``, ``bench/results.json`` and ``bench/makespan.png`` (or into
``--out``). ``--quick`` runs every benchmark at a tiny size (the smoke test uses it).
"""

from __future__ import annotations

from studio_flows.deployments.quiet import quiet_environment

quiet_environment()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import cProfile  # noqa: E402
import functools  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import pstats  # noqa: E402
import resource  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
import uuid  # noqa: E402
from collections import Counter, defaultdict  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ORGANIZATION = "org-bench"
MODEL = "bench-model"
POSTGRES_URL_ENV = "STUDIO_FLOWS_TEST_POSTGRES_URL"


# --------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Sizes:
    p1_shards: int = 15
    p1_latency_s: float = 5.0
    p1_rows_per_shard: int = 10
    p1b_shards: int = 30
    p1b_latency_s: float = 1.0
    p2_shards: int = 30
    p2_latency_s: float = 0.5
    p3_rows: int = 1_000_000
    p4_small_rows: int = 10_000
    # 1 M rows take a few minutes here: PostgreSQL and the profile run on fewer rows so
    # `make bench` stays near 10 min.
    p3_postgres_rows: int = 100_000
    profile_rows: int = 30_000
    shard_size: int = 100
    real_server: bool = True


FULL = Sizes()
QUICK = Sizes(
    p1_shards=3,
    p1_latency_s=0.5,
    p1_rows_per_shard=3,
    p1b_shards=6,
    p1b_latency_s=0.2,
    p2_shards=6,
    p2_latency_s=0.2,
    p3_rows=2_000,
    p4_small_rows=500,
    p3_postgres_rows=500,
    profile_rows=500,
    real_server=False,
)


# --------------------------------------------------------------------------- helpers


def write_prompts(path: Path, count: int, prefix: str = "q") -> Path:
    """A JSONL dataset of ``count`` distinct prompts (ids and prompts need no escaping)."""
    with path.open("w", encoding="utf-8") as out:
        chunk: list[str] = []
        for index in range(count):
            chunk.append(f'{{"id": "{prefix}-{index}", "prompt": "{prefix} question {index}?"}}\n')
            if len(chunk) == 10_000:
                out.write("".join(chunk))
                chunk = []
        out.write("".join(chunk))
    return path


def flow_env(base_url: str, token: str, *, poll_start: float, poll_max: float) -> None:
    """Point the flow's settings at an emulator (the flow reads them from the environment)."""
    os.environ.update(
        MODEL_STUDIO_TOKEN=token,
        MODEL_STUDIO_ORGANIZATION_ID=ORGANIZATION,
        MODEL_STUDIO_BASE_URL=base_url,
        MODEL_STUDIO_POLL_INTERVAL_S=str(poll_start),
        MODEL_STUDIO_POLL_MAX_INTERVAL_S=str(poll_max),
    )


def options(dataset: Path, database_url: str, shard_size: int) -> Any:
    from studio_flows.options import GenerateOptions

    return GenerateOptions(
        dataset_path=str(dataset),
        model_id=MODEL,
        database_url=database_url,
        shard_size=shard_size,
    )


@contextlib.contextmanager
def postgres_database() -> Iterator[str | None]:
    """A fresh PostgreSQL database (dropped after), or None without the env variable."""
    raw = os.environ.get(POSTGRES_URL_ENV, "").strip()
    if not raw:
        yield None
        return
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    server = sa.make_url(raw)
    if server.drivername in ("postgresql", "postgres"):
        server = server.set(drivername="postgresql+psycopg")
    name = f"studio_flows_bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _forget_engines() -> None:
    """Dispose of the flow's cached engines (one per URL per process) between runs."""
    from studio_flows.tasks.jobs import _history_for, engine_for

    engine_for.cache_clear()
    # Each benchmark starts with no timing history, as a fresh process would.
    _history_for.cache_clear()


# --------------------------------------------------------------------------- P1 / P2 (in-process)


def job_intervals(server: Any) -> list[tuple[float, float]]:
    """(created, end) of every job the in-process emulator made, on its monotonic clock."""
    state = server.state
    with state.lock:
        jobs = list(state._jobs.values())
    return sorted((job.created, job.end) for job in jobs)


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
    requests = sum(sum(codes.values()) for codes in stats["requests"].values())
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
        "requests": requests,
        "requests_per_job": round(requests / stats["jobs_created"], 3),
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


class Timers:
    """Thread-seconds spent in wrapped functions, summed over every thread."""

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        # CPU seconds of the calling thread (no GIL waits)
        self.cpu: defaultdict[str, float] = defaultdict(float)
        self._active = threading.local()  # names of the timed calls running in this thread
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started, cpu_started = time.perf_counter(), time.thread_time()
            active = self._active.__dict__.setdefault("names", [])
            active.append(name)
            try:
                return fn(*args, **kwargs)
            finally:
                active.pop()
                spent = time.perf_counter() - started
                cpu = time.thread_time() - cpu_started
                # A job task run pulls its next jobs (reading, planning) from inside: that
                # time is counted apart so it is not taken for Prefect's.
                names = [name] + [f"{name}@{outer}" for outer in set(active)]
                with self._lock:
                    for counted in names:
                        self.seconds[counted] += spent
                        self.cpu[counted] += cpu
                    self.calls[name] += 1

        return timed

    def patch(self, owner: Any, attribute: str, name: str) -> None:
        setattr(owner, attribute, self.wrap(name, getattr(owner, attribute)))


def instrument(timers: Timers) -> None:
    """Wrap the flow's parts where the flow looks them up (module globals, methods)."""
    import studio_flows.flows.generate as generate
    import studio_flows.tasks.jobs as task_jobs
    import studio_flows.tasks.slots as slots

    import studio_flows.client as client
    import studio_flows.datasets as datasets
    import studio_flows.jobs as jobs
    import studio_flows.planning as planning

    timers.patch(datasets, "validate_dataset", "read_validate")
    timers.patch(planning.SharedIterator, "__next__", "read_next")  # read + shard + plan
    timers.patch(planning, "completed_identities", "db_plan")
    timers.patch(planning, "get_shards", "db_plan")
    timers.patch(task_jobs, "run_shard", "job")  # ledger writes + HTTP + poll waits
    timers.patch(jobs, "record_shard_intent", "db_ledger")
    timers.patch(jobs, "record_job_submitted", "db_ledger")
    timers.patch(client.ModelStudioClient, "_send", "http")
    timers.patch(task_jobs, "complete_shard", "db_persist")
    timers.patch(generate._Lane, "_run_task", "lane_job")  # the job task runs, Prefect included
    timers.patch(slots.SlotPool, "acquire", "slot")


def _parts(s: defaultdict[str, float]) -> dict[str, float]:
    return {
        "reading": s["read_validate"] + s["read_next"] - s["db_plan"],
        "persisting": s["db_persist"] + s["db_ledger"] + s["db_plan"],
        "http": s["http"],
        # sleeps between polls + result mapping
        "poll_wait_and_mapping": s["job"] - s["http"] - s["db_ledger"],
        # the job task runs' engine overhead
        "prefect_task_runs": s["lane_job"]
        - s["job@lane_job"]
        - s["db_persist@lane_job"]
        - s["read_next@lane_job"],
        "slot_hold": s["slot"],
    }


def split(timers: Timers, rows: int, wall: float) -> dict[str, Any]:
    parts, cpu = _parts(timers.seconds), _parts(timers.cpu)
    return {
        "thread_seconds": {k: round(v, 3) for k, v in parts.items()},
        "us_per_row": {k: round(v / rows * 1e6, 2) for k, v in parts.items()},
        "cpu_us_per_row": {k: round(v / rows * 1e6, 2) for k, v in cpu.items()},
        "read_plus_persist_us_per_row": round((cpu["reading"] + cpu["persisting"]) / rows * 1e6, 2),
        "read_plus_persist_thread_us_per_row": round(
            (parts["reading"] + parts["persisting"]) / rows * 1e6, 2
        ),
        "calls": dict(timers.calls),
        "wall_us_per_row": round(wall / rows * 1e6, 2),
    }


_WAITS = ("acquire", "sleep", "select", "poll", "wait", "epoll", "recv_into", "_recv", "join")


def profile_top(profiles: list[cProfile.Profile], limit: int = 12) -> list[dict[str, Any]]:
    """Top functions by own time over every thread's profile, waits left out."""
    stats = pstats.Stats(profiles[0], stream=io.StringIO())
    for extra in profiles[1:]:
        stats.add(extra)
    rows = []
    for (file, line, name), (_cc, calls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if any(w in name for w in _WAITS):
            continue
        rows.append(
            {
                "function": f"{Path(file).name}:{line}({name})",
                "calls": calls,
                "tottime_s": round(tottime, 3),
                "cumtime_s": round(cumtime, 3),
            }
        )
    rows.sort(key=lambda r: r["tottime_s"], reverse=True)
    return rows[:limit]


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
    requests = sum(sum(codes.values()) for codes in stats["requests"].values())
    result = {
        "rows": rows,
        "completed": summary.completed,
        "jobs": summary.jobs,
        "wall_s": round(wall, 3),
        "rows_per_s": round(rows / wall, 1),
        "requests_per_job": round(requests / max(stats["jobs_created"], 1), 3),
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


@dataclass
class Results:
    figures: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


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
        log(f"P2: ours, {sizes.p2_shards} shards at L = {sizes.p2_latency_s:.1f} s")
        d["p2_ours"] = run_ours(
            server,
            work,
            shards=sizes.p2_shards,
            latency=sizes.p2_latency_s,
            rows_per_shard=sizes.p1_rows_per_shard,
            database_url=f"sqlite:///{work}/p2.db",
        )
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
    if real_server:
        log("P1 on a real prefect server")
        d["p1_real_server"] = p1_real_server(sizes)
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
    f["machine"] = machine()
    f["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    d["bench_wall_s"] = round(time.monotonic() - wall_started, 1)
    return results


def p1_real_server(sizes: Sizes) -> dict[str, Any]:
    from tests.fixtures.prefect_server import PrefectServer

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


def machine() -> str:
    import psutil

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    from importlib.metadata import version

    return (
        f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} CPUs, "
        f"{psutil.virtual_memory().total / 2**30:.1f} GiB, Python "
        f"{platform.python_version()}, prefect {version('prefect')}"
    )


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- reports


def plot(results: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=False)
    panels = [
        (axes[0], results.details["p1"], None, "P1: ours, 15 jobs of 5 s"),
        (
            axes[1],
            results.details["p2_ours"],
            results.details["p2_naive"],
            "P2: 30 jobs of 0.5 s, ours vs naive task.map",
        ),
    ]
    for ax, ours, naive, title in panels:
        for run, label, colour in ((ours, "ours", "tab:blue"), (naive, "naive", "tab:red")):
            if run is None:
                continue
            times, counts = in_flight_steps(run["intervals"])
            ax.step(
                times,
                counts,
                where="post",
                label=f"{label} ({run['makespan_s']:.1f} s)",
                color=colour,
            )
        ax.axhline(3, color="grey", linestyle=":", linewidth=1)
        ax.axvline(ours["ideal_s"], color="green", linestyle="--", linewidth=1, label="ideal end")
        ax.set_title(title)
        ax.set_ylabel("jobs in flight")
        ax.set_ylim(0, 4)
        ax.legend(loc="upper right")
    axes[1].set_xlabel("seconds since the first POST")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def in_flight_steps(intervals: list[tuple[float, float]]) -> tuple[list[float], list[int]]:
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    times, counts, current = [0.0], [0], 0
    for when, delta in events:
        current += delta
        times.append(when)
        counts.append(current)
    return times, counts


def render(results: Results, sizes: Sizes, quick: bool) -> str:
    f, d = results.figures, results.details
    p1, p1b, po, pn, p3, p4 = (
        d["p1"],
        d["p1_1s"],
        d["p2_ours"],
        d["p2_naive"],
        d["p3"],
        d["p4_small"],
    )

    def ok(value: float, target: float, lower: bool = True) -> str:
        good = value <= target if lower else value >= target
        return "met" if good else "**missed**"

    lines = [
        "# Benchmark results",
        "",
        "Generated by `make bench` (`python -m bench.run`"
        + (" --quick" if quick else "")
        + "); do not edit by hand.",
        "",
        f"- machine: {f['machine']}",
        f"- date: {f['date']}",
        f"- whole benchmark: {d['bench_wall_s']} s",
        "",
        "| key | value | target |",
        "| --- | ---: | --- |",
        f"| p1_makespan_ratio | {f['p1_makespan_ratio']} | <= 1.05: "
        f"{ok(f['p1_makespan_ratio'], 1.05)} |",
        f"| p1_makespan_ratio_1s | {f['p1_makespan_ratio_1s']} | none (fixed cost per job) |",
        f"| p2_speedup_vs_naive | {f['p2_speedup_vs_naive']} | >= 5: "
        f"{ok(f['p2_speedup_vs_naive'], 5, lower=False)} |",
        f"| p3_us_per_row | {f['p3_us_per_row']} | <= 20 (read + persist): "
        f"{ok(f['p3_us_per_row'], 20)} |",
        f"| p3_rows_per_s | {f['p3_rows_per_s']} | >= {sizes.p3_rows / 120:.0f} "
        f"({sizes.p3_rows} rows in <= 2 min): "
        f"{ok(f['p3_rows_per_s'], sizes.p3_rows / 120, lower=False)} |",
        f"| p4_rss_ratio | {f['p4_rss_ratio']} | <= 1.2: {ok(f['p4_rss_ratio'], 1.2)} |",
        f"| p5_requests_per_job | {f['p5_requests_per_job']} | <= 2 + L/2 = "
        f"{2 + p1['latency_s'] / 2:g}: {ok(f['p5_requests_per_job'], 2 + p1['latency_s'] / 2)} |",
        "",
        "![jobs in flight over time](makespan.png)",
        "",
        "## Definitions",
        "",
        "- Every run uses the Prefect guard: the `model-studio` tag limit (3), on the ephemeral",
        "  API of `prefect_test_harness()` (a local server subprocess) unless said otherwise.",
        "- **Makespan** (P1) = from the first POST the emulator received to the commit of the",
        "  last shard's persist transaction. The flow's fixed start-up before the first POST",
        "  (validate the file, check the limit, plan, take the slots) is shown apart as",
        "  *start-up*, and its tail after the last persist (release the slots, the run's",
        "  artifacts, the flow run's final state) as *tail*. Ideal = ceil(shards / 3) x L.",
        "- **P2** compares first POST to the flow call's return for both flows (the naive",
        "  flow has no persist), so ours includes its tail there.",
        "- Jobs in flight (the plot) = the emulator's own (created, end) per job.",
        "- **Requests per job** = every API request the emulator counted (POST + GET, any",
        "  status) / jobs created. Poll settings are the production defaults (first poll",
        "  0.5 s, at most 10 s); the poller predicts a job's end from its progress and from",
        "  the jobs already finished in the process.",
        "- **P3** runs in a child process with the emulator in another process (latency 0: a",
        "  job ends as it is created, so the emulator's fair-use limit of 3 can never refuse,",
        "  and the flow keeps its own 3 lanes). Poll start 1 ms. Each part is measured by",
        "  wrapping the flow's functions, summed over the three lanes (plus the main thread",
        "  for reading), twice: as CPU time of the calling thread (`time.thread_time`: the",
        "  cost, whatever else runs) and as elapsed thread time (which also counts waiting",
        "  for the GIL held by the other lanes, and sleeps). *Prefect* = the job task runs",
        "  minus the work inside them. `p3_us_per_row` = (reading + persisting) CPU",
        "  seconds / rows (the elapsed thread time is in the table as well).",
        "- **P4** = peak RSS of the flow's process (psutil, sampled every 50 ms) at "
        f"{p3['rows']} rows / at {p4['rows']} rows.",
        "",
        "## P1 and P5: makespan against the three-slot ideal",
        "",
        "| run | shards | L (s) | ideal (s) | makespan (s) | ratio | start-up (s) | tail (s) |"
        " max in flight | requests/job |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, run in (
        ("ephemeral, SQLite", p1),
        ("ephemeral, SQLite", p1b),
        ("ephemeral, PostgreSQL", d.get("p1_postgres")),
        ("real prefect server, SQLite", d.get("p1_real_server")),
        ("P2 ours (ephemeral, SQLite)", po),
    ):
        if run is None:
            continue
        lines.append(
            f"| {name} | {run['shards']} | {run['latency_s']:g} | {run['ideal_s']:g} | "
            f"{run['makespan_s']} | {run['ratio']} | {run['startup_s']} | {run['tail_s']} | "
            f"{run['max_active']} | "
            f"{run['requests_per_job']} |"
        )
    if "p1_postgres" not in d:
        lines += ["", f"PostgreSQL: skipped ({POSTGRES_URL_ENV} not set)."]
    if "p1_real_server" not in d:
        lines += ["", "Real prefect server: skipped" + (" (--quick)." if quick else ".")]
    lines += [
        "",
        "## P2: against naive Prefect",
        "",
        f"{pn['shards']} shards at L = {pn['latency_s']:g} s (ideal {pn['ideal_s']:g} s). Naive:"
        ' one `@task(tags=["model-studio"])` per shard that POSTs and polls with',
        "`ModelStudioClient`, `task.map` over the shards, tag limit 3 created with the client.",
        "",
        "| flow | makespan (s) | flow call (s) | max in flight |",
        "| --- | ---: | ---: | ---: |",
        f"| naive | {pn['makespan_s']} | {pn['flow_call_s']} | {pn['max_active']} |",
        f"| ours | {po['makespan_to_return_s']} | {po['flow_call_s']} | {po['max_active']} |",
        "",
        f"naive / ours (makespans) = **{f['p2_speedup_vs_naive']}**",
        "",
        "## P3 and P4: per-row overhead and memory",
        "",
        "| run | rows | jobs | wall (s) | rows/s | wall µs/row | read+persist CPU µs/row |"
        " read+persist elapsed µs/row | requests/job | peak RSS (MB) |"
        " peak RSS with children (MB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, run in (
        ("SQLite", p3),
        ("SQLite (P4 small)", p4),
        ("PostgreSQL", d.get("p3_postgres")),
        ("SQLite, cProfile on", d.get("p3_profile")),
    ):
        if run is None:
            continue
        lines.append(
            f"| {name} | {run['rows']} | {run['jobs']} | {run['wall_s']} | {run['rows_per_s']} | "
            f"{run['split']['wall_us_per_row']} | {run['split']['read_plus_persist_us_per_row']} | "
            f"{run['split']['read_plus_persist_thread_us_per_row']} | "
            f"{run['requests_per_job']} | {run['peak_rss_mb']} | {run['peak_rss_tree_mb']} |"
        )
    lines += [
        "",
        "Split per row (µs): CPU time of the calling threads, and elapsed thread time",
        "(three lanes run at once, so elapsed parts can add up to more than the wall time):",
        "",
        "| part | "
        + " | ".join(
            f"{n} CPU | {n} elapsed"
            for n, r in (("SQLite", p3), ("PostgreSQL", d.get("p3_postgres")))
            if r
        )
        + " |",
        "| --- | " + " | ".join("---: | ---:" for r in (p3, d.get("p3_postgres")) if r) + " |",
    ]
    for part in p3["split"]["us_per_row"]:
        cells = [
            f"{r['split']['cpu_us_per_row'][part]} | {r['split']['us_per_row'][part]}"
            for r in (p3, d.get("p3_postgres"))
            if r
        ]
        lines.append(f"| {part} | " + " | ".join(cells) + " |")
    prof = d.get("p3_profile", {}).get("profile_top", [])
    if prof:
        lines += [
            "",
            f"Top own-time functions (cProfile in every lane thread and the main thread,"
            f" {d['p3_profile']['rows']} rows; waits such as lock acquire, sleep and select"
            " left out):",
            "",
            "| function | calls | own s | cumulative s |",
            "| --- | ---: | ---: | ---: |",
        ]
        lines += [
            f"| `{r['function']}` | {r['calls']} | {r['tottime_s']} | {r['cumtime_s']} |"
            for r in prof
        ]
    notes = HERE / "NOTES.md"
    if notes.exists():
        lines += ["", notes.read_text().strip()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the smoke test)")
    parser.add_argument("--out", type=Path, default=HERE, help="where to write the reports")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-real-server", action="store_true")
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="rewrite RESULTS.md from results.json (after editing NOTES.md), measure nothing",
    )
    parser.add_argument("--child", choices=("emulator", "rows", "p1"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--latency", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--shards", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rows-per-shard", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--shard-size", type=int, default=100, help=argparse.SUPPRESS)
    parser.add_argument("--db", default="sqlite", help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "emulator":
        child_emulator(args.port, args.latency)
        return 0
    if args.child == "rows":
        print(json.dumps(child_rows(args.rows, args.db, args.shard_size, args.profile)))
        return 0
    if args.child == "p1":
        print(json.dumps(child_p1(args.shards, args.latency, args.rows_per_shard, args.db)))
        return 0
    sizes = QUICK if args.quick else FULL
    if args.render_only:
        recorded = json.loads((args.out / "results.json").read_text())
        details = recorded.pop("details")
        results = Results(figures=recorded, details=details)
        (args.out / "RESULTS.md").write_text(render(results, sizes, args.quick))
        return 0
    results = run_all(
        sizes,
        args.out,
        postgres=not args.no_postgres and not args.quick,
        real_server=sizes.real_server and not args.no_real_server,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    plot(results, args.out / "makespan.png")
    (args.out / "results.json").write_text(
        json.dumps({**results.figures, "details": _without_intervals(results.details)}, indent=2)
        + "\n"
    )
    (args.out / "RESULTS.md").write_text(render(results, sizes, args.quick))
    print(json.dumps(results.figures, indent=2))
    return 0


def _without_intervals(details: dict[str, Any]) -> dict[str, Any]:
    return {
        k: {kk: vv for kk, vv in v.items() if kk != "intervals"} if isinstance(v, dict) else v
        for k, v in details.items()
    }


if __name__ == "__main__":
    sys.exit(main())
