"""Where a run's time goes: timers wrapped around the flow's parts, and profiles."""

from __future__ import annotations

import cProfile
import functools
import io
import pstats
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any


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
    import studio_flows.tasks.fair_use as slots
    import studio_flows.tasks.jobs as task_jobs

    import studio_flows.client as client
    import studio_flows.datasets.scan as datasets
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
