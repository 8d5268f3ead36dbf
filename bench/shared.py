"""P7 and P8: the fair-use slot pool shared by a user's mapped ``generate`` and by processes.

Both run on a real ``prefect server start`` (not the ephemeral test harness):

- P8: a user's flow maps :func:`studio_flows.generate` over 30 batches at job latency
  0.5 s, in a child process with the emulator in it. Makespan = first POST the emulator saw
  to the moment the mapped results are in the flow's hands; ideal = 30 / 3 x 0.5 s. The
  naive shape (one ``model-studio``-tagged task run per job, ``task.map``, the tag limit the
  only guard) runs in the same child against the same servers.
- P7: two ``studio-flows generate`` processes, 10 jobs of 2 s each, the second started 3 s
  after the first. Combined makespan = first POST to last job end (the emulator's job
  intervals) over a perfect client's greedy schedule of the same 20 jobs on 3 slots, each
  process's jobs available from that process's start.

Each also records a timeline (slot acquire, POST, polls, release per job) to show where
the time goes.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import math
import os
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    MODEL,
    ORGANIZATION,
    ROOT,
    Results,
    flow_env,
    job_intervals,
    log,
    median_run,
    requests_per_job,
    write_prompts,
)
from bench.scenarios import _naive_parts, run_child


@dataclass(frozen=True)
class SharedSizes:
    p8_batches: int = 30
    p8_latency_s: float = 0.5
    p8_rows_per_batch: int = 10
    p7_jobs: int = 10
    p7_latency_s: float = 2.0
    p7_rows_per_job: int = 10
    p7_second_after_s: float = 3.0
    # P7 is the median of this many runs (bench.common.median_run): one run moves by 0.1.
    p7_runs: int = 3


SHARED = SharedSizes()
# A file to write P8's raw timeline to (unset: not written).
TIMELINE_DUMP_ENV = "STUDIO_FLOWS_BENCH_TIMELINE"
SLOTS = 3


# --------------------------------------------------------------------------- schedules


def greedy_makespan(available: list[float], durations: list[float], slots: int = SLOTS) -> float:
    """A perfect client's makespan: each job on the first free slot once it is available.

    >>> greedy_makespan([0.0] * 10 + [3.0] * 10, [2.0] * 20)
    14.0
    """
    free = [0.0] * slots
    end = 0.0
    for ready, duration in sorted(zip(available, durations, strict=True)):
        start = max(heapq.heappop(free), ready)
        heapq.heappush(free, start + duration)
        end = max(end, start + duration)
    return end - min(available)


def idle_slot_seconds(intervals: list[tuple[float, float]], slots: int = SLOTS) -> float:
    """Slot-seconds with no job between the first POST and the last end."""
    start, end = min(a for a, _ in intervals), max(b for _, b in intervals)
    return slots * (end - start) - sum(b - a for a, b in intervals)


# --------------------------------------------------------------------------- timeline


class Timeline:
    """Per-job events in this process: slot acquire, POST, each poll, release."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, str, str]] = []  # (t, thread, kind, job id)
        self._lock = threading.Lock()
        self._job = threading.local()

    def add(self, kind: str, job_id: str = "") -> None:
        with self._lock:
            self.events.append((time.monotonic(), threading.current_thread().name, kind, job_id))

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Wrap the pool and client methods a ``generate`` task run calls."""
        import studio_flows.tasks.generation as generation
        from studio_flows.tasks.fair_use import PrefectSlotApi, SlotPool

        from studio_flows.client import ModelStudioClient

        originals: dict[tuple[type, str], Any] = {
            (SlotPool, "acquire"): SlotPool.acquire,
            (SlotPool, "release"): SlotPool.release,
            (ModelStudioClient, "create_job"): ModelStudioClient.create_job,
            (ModelStudioClient, "get_job"): ModelStudioClient.get_job,
            (PrefectSlotApi, "acquire"): PrefectSlotApi.acquire,
            (PrefectSlotApi, "release"): PrefectSlotApi.release,
        }
        timeline = self

        def acquire(pool: Any, run: Any = None) -> Any:
            timeline.add("acquire")
            lease = originals[(SlotPool, "acquire")](pool, run)
            timeline.add("acquired")
            return lease

        def release(pool: Any, lease: Any) -> None:
            timeline.add("release", getattr(timeline._job, "id", ""))
            originals[(SlotPool, "release")](pool, lease)

        def create_job(client: Any, request: Any) -> Any:
            timeline.add("post")
            created = originals[(ModelStudioClient, "create_job")](client, request)
            timeline._job.id = created.job_id
            timeline.add("posted", created.job_id)
            return created

        def get_job(client: Any, job_id: str) -> Any:
            status = originals[(ModelStudioClient, "get_job")](client, job_id)
            timeline.add(f"poll:{status.job_status}", job_id)
            return status

        def ask(api: Any, limit_name: str, lease_s: float, holder: Any = None) -> Any:
            timeline.add("ask")
            try:
                lease_id = originals[(PrefectSlotApi, "acquire")](api, limit_name, lease_s, holder)
            except Exception as err:
                timeline.add(f"refused:{type(err).__name__}")
                raise
            timeline.add("granted")
            return lease_id

        def give_back(api: Any, lease_id: Any) -> None:
            originals[(PrefectSlotApi, "release")](api, lease_id)
            timeline.add("given-back")

        setattr(PrefectSlotApi, "acquire", ask)  # noqa: B010
        setattr(PrefectSlotApi, "release", give_back)  # noqa: B010
        settings_of = generation._settings

        def task_started(credentials: Any) -> Any:
            timeline.add("task")  # the first thing a generate task run does
            return settings_of(credentials)

        generation._settings = task_started
        patches = {"acquire": acquire, "release": release}
        client_patches = {"create_job": create_job, "get_job": get_job}
        for name, fn in patches.items():
            setattr(SlotPool, name, fn)
        for name, fn in client_patches.items():
            setattr(ModelStudioClient, name, fn)
        try:
            yield
        finally:
            for (owner, name), fn in originals.items():
                setattr(owner, name, fn)
            generation._settings = settings_of

    def per_job(self, jobs: dict[str, tuple[float, float]]) -> dict[str, float]:
        """Mean seconds of each step of a job, against the emulator's (created, end)."""
        steps: dict[str, list[float]] = defaultdict(list)
        posts: dict[str, float] = {}
        terminal: dict[str, float] = {}
        releases: list[float] = []
        for t, thread, kind, job_id in sorted(self.events):
            if kind == "post":
                posts[thread] = t
            elif kind == "posted" and job_id in jobs:
                steps["post_s"].append(t - posts[thread])
                steps["post_to_created_s"].append(jobs[job_id][0] - posts[thread])
            elif kind in ("poll:FINISHED", "poll:FAILED") and job_id in jobs:
                terminal[job_id] = t
                steps["end_to_terminal_poll_s"].append(t - jobs[job_id][1])
            elif kind == "release" and job_id in terminal:
                steps["terminal_to_release_s"].append(t - terminal[job_id])
                releases.append(t)
        created = sorted(a for a, _ in jobs.values())[SLOTS:]
        for released, next_created in zip(sorted(releases), created, strict=False):
            steps["release_to_next_created_s"].append(next_created - released)
        polls = sum(1 for _, _, kind, _ in self.events if kind.startswith("poll:"))
        means = {k: round(sum(v) / len(v), 4) for k, v in steps.items() if v}
        means["polls_per_job"] = round(polls / max(len(jobs), 1), 2)
        return means


def handover_gaps(intervals: list[tuple[float, float]], slots: int = SLOTS) -> float:
    """Mean seconds from a job's end to the next job's POST, over the slots' turns."""
    ends = sorted(b for _, b in intervals)
    starts = sorted(a for a, _ in intervals)[slots:]
    gaps = [s - e for s, e in zip(starts, ends, strict=False) if s >= e]
    return round(sum(gaps) / len(gaps), 4) if gaps else 0.0


# --------------------------------------------------------------------------- P8 (child)


def child_p8(batches: int, latency: float, rows_per_batch: int) -> dict[str, Any]:
    """P8 in this process, against the Prefect API the environment names (a real server)."""
    from studio_flows.emulator import EmulatorConfig, EmulatorServer

    with EmulatorServer(EmulatorConfig(seed=1)) as server:
        flow_env(server.base_url, server.token, poll_start=0.5, poll_max=10.0)
        ours = _p8_ours(server, batches, latency, rows_per_batch)
        naive = _p8_naive(server, batches, latency, rows_per_batch)
    return {"ours": ours, "naive": naive}


def _user_flow() -> Any:
    """The user's flow, as the README's "Use it in your own flow" writes it."""
    from prefect import flow, unmapped

    from studio_flows import generate

    @flow(name="user-mapped-generate")
    def answers(batches: list[list[str]]) -> tuple[int, float]:
        results = generate.map(batches, model_id=unmapped(MODEL)).result()
        return sum(len(batch) for batch in results), time.monotonic()

    return answers


def _p8_ours(server: Any, batches: int, latency: float, rows: int) -> dict[str, Any]:
    server.configure(job_latency_s=latency, task_latency_s=0.0, fair_use_limit=SLOTS)
    server.reset()
    work = [[f"p8 {b}.{r}?" for r in range(rows)] for b in range(batches)]
    answers = _user_flow()
    timeline = Timeline()
    with timeline.recording():
        called = time.monotonic()
        done, answered_at = answers(work)
        returned = time.monotonic()
    assert done == batches * rows, done
    return _mapped_figures(server, batches, latency, called, answered_at, returned, timeline)


def _p8_naive(server: Any, batches: int, latency: float, rows: int) -> dict[str, Any]:
    from prefect import flow
    from prefect.client.orchestration import get_client

    _, naive_generate = _naive_parts()

    @flow(name="naive-mapped-generate")
    def naive_flow(batches: list[list[str]]) -> tuple[int, float]:
        return sum(naive_generate.map(batches).result()), time.monotonic()

    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag="model-studio", concurrency_limit=SLOTS)
    server.configure(job_latency_s=latency, task_latency_s=0.0, fair_use_limit=SLOTS)
    server.reset()
    work = [[f"naive {b}.{r}?" for r in range(rows)] for b in range(batches)]
    called = time.monotonic()
    done, answered_at = naive_flow(work)
    returned = time.monotonic()
    assert done == batches * rows, done
    return _mapped_figures(server, batches, latency, called, answered_at, returned, None)


def _mapped_figures(
    server: Any,
    batches: int,
    latency: float,
    called: float,
    answered: float,
    returned: float,
    timeline: Timeline | None,
) -> dict[str, Any]:
    stats = server.stats()
    intervals = job_intervals(server)
    first_post = intervals[0][0]
    ideal = math.ceil(batches / SLOTS) * latency
    makespan = answered - first_post
    figures: dict[str, Any] = {
        "batches": batches,
        "latency_s": latency,
        "ideal_s": ideal,
        "makespan_s": round(makespan, 3),
        "ratio": round(makespan / ideal, 4),
        "startup_s": round(first_post - called, 3),
        "last_end_s": round(max(b for _, b in intervals) - first_post, 3),
        "flow_call_s": round(returned - called, 3),
        **_slot_figures(stats, intervals, first_post),
    }
    if timeline is not None:
        jobs = _job_times(server)
        figures["timeline"] = timeline.per_job(jobs)
        dump = os.environ.get(TIMELINE_DUMP_ENV)
        if dump:  # every event, for a closer look (bench/NOTES.md)
            Path(dump).write_text(json.dumps({"events": timeline.events, "jobs": jobs}))
    return figures


def _job_times(server: Any) -> dict[str, tuple[float, float]]:
    state = server.state
    with state.lock:
        return {job_id: (job.created, job.end) for job_id, job in state._jobs.items()}


def p8_mapped_generate(sizes: SharedSizes = SHARED) -> dict[str, Any]:
    """P8 in a child process talking to a fresh real Prefect server."""
    from bench.prefect_server import PrefectServer

    with tempfile.TemporaryDirectory(prefix="studio-flows-bench-p8-") as home:
        server = PrefectServer(Path(home)).start()
        try:
            args = ["--child", "p8", "--shards", str(sizes.p8_batches)]
            args += ["--latency", str(sizes.p8_latency_s)]
            args += ["--rows-per-shard", str(sizes.p8_rows_per_batch)]
            return run_child(args, env=server.env(), timeout_s=600)
        finally:
            server.stop()


# --------------------------------------------------------------------------- P7


def p7_shared(sizes: SharedSizes = SHARED) -> dict[str, Any]:
    """Two ``studio-flows generate`` processes on one real Prefect server and one emulator."""
    from bench.prefect_server import PrefectServer
    from studio_flows.emulator import EmulatorConfig, EmulatorServer

    with (
        tempfile.TemporaryDirectory(prefix="studio-flows-bench-p7-") as tmp,
        EmulatorServer(EmulatorConfig(seed=1)) as emulator,
    ):
        work = Path(tmp)
        prefect = PrefectServer(work / "prefect").start()
        try:
            emulator.configure(
                job_latency_s=sizes.p7_latency_s, task_latency_s=0.0, fair_use_limit=SLOTS
            )
            emulator.reset()
            with _terminal_reads(emulator) as seen:
                figures = _p7_runs(emulator, prefect, work, sizes)
            figures["steps"] = _p7_steps(emulator, seen)
            if os.environ.get(TIMELINE_DUMP_ENV):
                jobs = json.dumps(_job_times(emulator))
                Path(f"{os.environ[TIMELINE_DUMP_ENV]}.jobs.json").write_text(jobs)
            return figures
        finally:
            prefect.stop()
            if os.environ.get(TIMELINE_DUMP_ENV):
                Path(f"{os.environ[TIMELINE_DUMP_ENV]}.server.log").write_text(
                    prefect.log_tail(400)
                )


def _p7_runs(emulator: Any, prefect: Any, work: Path, sizes: SharedSizes) -> dict[str, Any]:
    import subprocess

    rows = sizes.p7_jobs * sizes.p7_rows_per_job
    processes: list[tuple[subprocess.Popen[bytes], float]] = []
    logs: list[Path] = []
    for index, name in enumerate(("first", "second")):
        if index:
            time.sleep(max(processes[0][1] + sizes.p7_second_after_s - time.monotonic(), 0.0))
        dataset = write_prompts(work / f"{name}.jsonl", rows, prefix=name)
        env = prefect.env(
            # One user on one machine: both runs share PREFECT_HOME (and its slot holders).
            PREFECT_HOME=str(work / "home"),
            MODEL_STUDIO_TOKEN=emulator.token,
            MODEL_STUDIO_ORGANIZATION_ID=ORGANIZATION,
            MODEL_STUDIO_BASE_URL=emulator.base_url,
            MODEL_STUDIO_POLL_INTERVAL_S="0.5",
            MODEL_STUDIO_POLL_MAX_INTERVAL_S="10",
        )
        dump = os.environ.get(TIMELINE_DUMP_ENV)
        cli = [str(Path(sys.executable).with_name("studio-flows"))]
        if dump:  # the same command, traced (see traced_cli)
            cli = [sys.executable, "-m", "bench.shared", f"{dump}.{name}.json"]
            env["PYTHONPATH"] = str(ROOT)
        args = [
            *cli,
            "generate",
            str(dataset),
            "--model-id",
            MODEL,
            "--database-url",
            f"sqlite:///{work}/{name}.db",
            "--shard-size",
            str(sizes.p7_rows_per_job),
            "--id-column",
            "id",
            "--no-progress",
        ]
        logs.append(work / f"{name}.log")
        with logs[-1].open("wb") as out:
            started = time.monotonic()
            process = subprocess.Popen(
                args, env=env, cwd=work, stdout=out, stderr=subprocess.STDOUT
            )
        processes.append((process, started))
    for (process, _), path in zip(processes, logs, strict=True):
        code = process.wait(timeout=300)
        if os.environ.get(TIMELINE_DUMP_ENV):  # the runs' own logs, for a closer look
            Path(f"{os.environ[TIMELINE_DUMP_ENV]}.{path.name}").write_text(path.read_text())
        if code != 0:
            raise RuntimeError(f"p7: studio-flows generate failed:\n{path.read_text()[-3000:]}")
    return _p7_figures(emulator, [started for _, started in processes], sizes)


@contextlib.contextmanager
def _terminal_reads(emulator: Any) -> Iterator[dict[str, float]]:
    """When the emulator first answered a GET of each job after its end (its clock)."""
    state = emulator.state
    read_job = state.read_job
    seen: dict[str, float] = {}

    def recorded(organization_id: str, job_id: str, authorization: str | None) -> Any:
        response = read_job(organization_id, job_id, authorization)
        job = state._jobs.get(job_id)
        now = time.monotonic()
        if job is not None and now >= job.end:
            seen.setdefault(job_id, now)
        return response

    state.read_job = recorded
    try:
        yield seen
    finally:
        state.read_job = read_job


def _p7_steps(emulator: Any, seen: dict[str, float]) -> dict[str, float]:
    """Mean seconds from a job's end to its terminal GET, and from that to the next POST."""
    jobs = _job_times(emulator)
    late = [seen[j] - end for j, (_, end) in jobs.items() if j in seen]
    created = sorted(a for a, _ in jobs.values())
    handovers = []
    for terminal in sorted(seen.values()):
        later = [c for c in created if c >= terminal]
        if later:
            handovers.append(later[0] - terminal)
            created.remove(later[0])
    return {
        "end_to_terminal_get_s": round(sum(late) / max(len(late), 1), 4),
        "terminal_get_to_next_post_s": round(sum(handovers) / max(len(handovers), 1), 4),
    }


def _p7_figures(emulator: Any, starts: list[float], sizes: SharedSizes) -> dict[str, Any]:
    stats = emulator.stats()
    intervals = job_intervals(emulator)
    first_post, last_end = intervals[0][0], max(b for _, b in intervals)
    makespan = last_end - first_post
    available = [starts[0]] * sizes.p7_jobs + [starts[1]] * sizes.p7_jobs
    greedy = greedy_makespan(available, [sizes.p7_latency_s] * len(available))
    return {
        "jobs": stats["jobs_created"],
        "latency_s": sizes.p7_latency_s,
        "second_after_s": sizes.p7_second_after_s,
        "greedy_s": round(greedy, 3),
        "makespan_s": round(makespan, 3),
        "ratio": round(makespan / greedy, 4),
        "startup_first_s": round(first_post - starts[0], 3),
        **_slot_figures(stats, intervals, first_post),
    }


def _slot_figures(
    stats: dict[str, Any], intervals: list[tuple[float, float]], first_post: float
) -> dict[str, Any]:
    """How the slots were used (P7 and P8 alike), times from the first POST."""
    return {
        "idle_slot_s": round(idle_slot_seconds(intervals), 3),
        "handover_gap_s": handover_gaps(intervals),
        "max_active": stats["max_active_jobs"],
        "fair_use_429": stats["faults"].get("fair_use_429", 0),
        "requests_per_job": requests_per_job(stats),
        "intervals": [(round(a - first_post, 4), round(b - first_post, 4)) for a, b in intervals],
    }


# --------------------------------------------------------------------------- run and report


def run_shared(results: Results) -> None:
    """Measure P8 and P7 into ``results`` (called by ``bench.scenarios.run_all``)."""
    d, f = results.details, results.figures
    log(f"P8: a user's flow mapping generate over {SHARED.p8_batches} batches (real server)")
    p8 = p8_mapped_generate()
    d["p8_ours"], d["p8_naive"] = p8["ours"], p8["naive"]
    log(
        f"P7: two studio-flows generate processes, {SHARED.p7_jobs} jobs each (real server), "
        f"{SHARED.p7_runs} runs"
    )
    d["p7"] = median_run([p7_shared() for _ in range(SHARED.p7_runs)], "ratio")
    f["p8_mapped_generate_ratio"] = d["p8_ours"]["ratio"]
    f["p8_speedup_vs_naive"] = round(d["p8_naive"]["makespan_s"] / d["p8_ours"]["makespan_s"], 2)
    f["p7_shared_ratio"] = d["p7"]["ratio"]


def summary_rows(results: Results) -> list[str]:
    """The P7 / P8 rows of the summary table (none when they were not measured)."""
    f = results.figures
    if "p8_mapped_generate_ratio" not in f:
        return []
    ok = _ok
    return [
        f"| p8_mapped_generate_ratio | {f['p8_mapped_generate_ratio']} | <= 1.15: "
        f"{ok(f['p8_mapped_generate_ratio'], 1.15)} |",
        f"| p8_speedup_vs_naive | {f['p8_speedup_vs_naive']} | >= 5: "
        f"{ok(f['p8_speedup_vs_naive'], 5, lower=False)} |",
        f"| p7_shared_ratio | {f['p7_shared_ratio']} | <= 1.10: {ok(f['p7_shared_ratio'], 1.10)} |",
    ]


def sections(results: Results) -> list[str]:
    """The P8 and P7 sections of RESULTS.md."""
    d = results.details
    if "p8_ours" not in d:
        return ["", "## P7 and P8: shared slots", "", "Skipped (needs a real prefect server)."]
    return _p8_section(d) + _p7_section(d)


def _p8_section(d: dict[str, Any]) -> list[str]:
    ours, naive = d["p8_ours"], d["p8_naive"]
    lines = [
        "",
        "## P8: a user's flow mapping `generate`",
        "",
        f"`generate.map` over {ours['batches']} batches at L = {ours['latency_s']:g} s on a real"
        f" `prefect server start` (ideal {ours['ideal_s']:g} s). Makespan = first POST to the",
        "mapped results in the flow's hands, for both flows. Naive: one",
        '`@task(tags=["model-studio"])` per batch, `task.map`, the tag limit the only guard.',
        "",
        "| flow | makespan (s) | ratio | start-up (s) | idle slot-s | end to next POST (s) |"
        " max in flight | requests/job |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, run in (("ours", ours), ("naive", naive)):
        lines.append(
            f"| {name} | {run['makespan_s']} | {run['ratio']} | {run['startup_s']} | "
            f"{run['idle_slot_s']} | {run['handover_gap_s']} | {run['max_active']} | "
            f"{run['requests_per_job']} |"
        )
    lines += [
        "",
        f"naive / ours = **{d['p8_naive']['makespan_s'] / ours['makespan_s']:.2f}**; a perfect"
        f" client (makespan = ideal) would be {naive['makespan_s'] / ours['ideal_s']:.2f} x"
        " faster than this naive run.",
    ]
    steps = ours.get("timeline", {})
    if steps:
        lines += [
            "",
            "Where a job's time goes (ours, mean seconds): "
            + ", ".join(f"{k} {v}" for k, v in steps.items()),
        ]
    return lines


def _p7_section(d: dict[str, Any]) -> list[str]:
    p7 = d["p7"]
    return [
        "",
        "## P7: two processes share the limit",
        "",
        f"Two `studio-flows generate` processes on one real Prefect server, {p7['jobs'] // 2}"
        f" jobs of {p7['latency_s']:g} s each, the second started {p7['second_after_s']:g} s"
        " after the first. Makespan = first POST to the last job's end (the emulator's job",
        "intervals); greedy = a perfect client's schedule of the same jobs on 3 slots, each",
        "process's jobs available from its start. The row is the median of "
        f"{len(p7['runs'])} runs made one after another (their ratios: "
        f"{', '.join(str(r) for r in p7['runs'])}).",
        "",
        "| jobs | greedy (s) | makespan (s) | ratio | idle slot-s | end to next POST (s) |"
        " max in flight | fair-use 429s | requests/job |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {p7['jobs']} | {p7['greedy_s']} | {p7['makespan_s']} | {p7['ratio']} | "
        f"{p7['idle_slot_s']} | {p7['handover_gap_s']} | {p7['max_active']} | "
        f"{p7['fair_use_429']} | {p7['requests_per_job']} |",
    ]


def _ok(value: float, target: float, lower: bool = True) -> str:
    good = value <= target if lower else value >= target
    return "met" if good else "**missed**"


def traced_cli(dump: str, argv: list[str]) -> int:
    """Run the command line with the timeline on; write its events to ``dump`` at exit."""
    from studio_flows.cli import main

    timeline = Timeline()
    with timeline.recording():
        sys.argv = ["studio-flows", *argv]
        try:
            main()
        except SystemExit as done:
            code = done.code
        else:
            code = 0
        finally:
            Path(dump).write_text(json.dumps(timeline.events))
    return int(code or 0)


if __name__ == "__main__":
    # python -m bench.shared DUMP ARGS...: `studio-flows ARGS...`, traced (P7's runs).
    sys.exit(traced_cli(sys.argv[1], sys.argv[2:]))
