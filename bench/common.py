"""What every benchmark shares: sizes, datasets, the emulator's timeline, logging."""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    # P2 ours is the median of this many runs (see median_run).
    p2_runs: int = 3
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
    p2_runs=1,
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

    from bench.postgres import drop_database

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
        drop_database(admin, name)
        admin.dispose()


def requests_made(stats: dict[str, Any]) -> int:
    """The emulator's API requests, of every route and status, from its ``stats()``."""
    return sum(int(count) for codes in stats["requests"].values() for count in codes.values())


def requests_per_job(stats: dict[str, Any]) -> float:
    """:func:`requests_made` per job the emulator created."""
    return round(requests_made(stats) / max(int(stats["jobs_created"]), 1), 3)


def median_run(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The run whose ``key`` is the median, with every run's ``key`` under ``runs``.

    A figure whose single run moves by 0.1 on this machine (P2, P7) is reported as the
    median of a few runs made one after another.

    >>> median_run([{"ratio": 1.2}, {"ratio": 1.0}, {"ratio": 1.1}], "ratio")
    {'ratio': 1.1, 'runs': [1.2, 1.0, 1.1]}
    """
    middle = sorted(runs, key=lambda run: run[key])[(len(runs) - 1) // 2]
    return {**middle, "runs": [run[key] for run in runs]}


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


@dataclass
class Results:
    figures: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


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
