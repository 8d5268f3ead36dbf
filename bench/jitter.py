"""P6 and the poll trade-off: job times that vary, against a perfect client.

- **P6** (``p6_jitter_ratio``): the generation flow (Prefect, SQLite), 15 shards of 10 rows,
  emulator jobs of mean 5 s with ``job_latency_jitter`` 0.5 and ``uneven_tasks``; makespan
  (first POST to the last persist) over a perfect client's: a greedy schedule on 3 slots of
  the durations the emulator recorded (``GET /_emulator/jobs``), in the order it created
  them, each job starting the instant a slot frees.
- **The trade-off curve**: the client alone (no Prefect, no database) in 3 threads against
  an in-process emulator with the same knobs and seed, for poll budgets of 3, 4.5, 6 and 10
  requests a job; and a fixed-interval poller whose interval is the shortest that spends
  no more requests than ours did, over the same recorded job times. Makespan = first POST
  to the last job seen done, over the same perfect schedule.

``python -m bench.jitter`` runs these alone (and ``--with-p1`` P1/P5 on the steady
emulator), merges them into ``bench/results.json`` and rewrites RESULTS.md and
``bench/poll_tradeoff.png``; ``make bench`` runs them with the rest.
"""

from __future__ import annotations

from studio_flows.cli.quiet import quiet_environment

# Every later import may load Prefect: the environment must be quiet first.
quiet_environment()

import argparse  # noqa: E402
import heapq  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from bench.common import HERE, MODEL, ORGANIZATION, Results, job_intervals, log  # noqa: E402

SLOTS = 3
TASKS = 10
SIGMA = 0.5
P6_TARGET = 1.10


@dataclass(frozen=True)
class JitterSizes:
    jobs: int = 15
    mean_s: float = 5.0
    budgets: tuple[float, ...] = (3.0, 4.5, 6.0, 10.0)
    # Each seed is one set of job times; one set's figure depends on where its few long
    # jobs fall, so the figures are the mean over the seeds (each seed's are listed).
    seeds: tuple[int, ...] = (21, 22, 23)


FULL_JITTER = JitterSizes()
QUICK_JITTER = JitterSizes(jobs=6, mean_s=0.3, budgets=(3.0, 6.0), seeds=(21,))


def perfect_makespan(durations: list[float], slots: int = SLOTS) -> float:
    """Makespan of a client that starts the next job the instant a slot frees.

    Example:
        >>> perfect_makespan([5.0, 5.0, 5.0, 1.0, 1.0], slots=3)
        6.0
    """
    free = [0.0] * slots
    end = 0.0
    for duration in durations:
        start = heapq.heappop(free)
        end = max(end, start + duration)
        heapq.heappush(free, start + duration)
    return end


def jitter_knobs(sizes: JitterSizes, seed: int) -> dict[str, Any]:
    return {
        "job_latency_s": sizes.mean_s,
        "task_latency_s": 0.0,
        "job_latency_jitter": SIGMA,
        "uneven_tasks": True,
        "fair_use_limit": SLOTS,
        "seed": seed,
    }


# --------------------------------------------------------------------------- P6: the flow


def run_p6(server: Any, work: Path, sizes: JitterSizes) -> dict[str, Any]:
    """The flow once per seed; the mean ratio and requests a job over the seeds."""
    runs = [run_p6_once(server, work, sizes, seed) for seed in sizes.seeds]
    mean = len(runs)
    return {
        "how": runs[0]["how"],
        "jobs": runs[0]["jobs"],
        "ratio": round(sum(run["ratio"] for run in runs) / mean, 4),
        "requests_per_job": round(sum(run["requests_per_job"] for run in runs) / mean, 3),
        "budget": runs[0]["budget"],
        "runs": runs,
    }


def run_p6_once(server: Any, work: Path, sizes: JitterSizes, seed: int) -> dict[str, Any]:
    """The generation flow over jittered, uneven jobs; ratio to the perfect schedule."""
    from bench.scenarios import run_ours

    server.configure(**jitter_knobs(sizes, seed))
    server.reset()
    try:
        run = run_ours(
            server,
            work,
            shards=sizes.jobs,
            rows_per_shard=TASKS,
            latency=sizes.mean_s,
            database_url=f"sqlite:///{work}/p6-{seed}.db",
        )
        durations = [job["duration_s"] for job in server.jobs()]
    finally:
        # The other benchmarks run on the steady emulator.
        server.configure(job_latency_jitter=0.0, uneven_tasks=False, seed=1)
    perfect = perfect_makespan(durations)
    return {
        "how": "generation flow (Prefect ephemeral API, SQLite), in-process emulator",
        "seed": seed,
        "jobs": run["jobs"],
        "mean_job_s": round(sum(durations) / len(durations), 3),
        "durations_s": [round(d, 3) for d in durations],
        "perfect_s": round(perfect, 3),
        "makespan_s": run["makespan_s"],
        "ratio": round(run["makespan_s"] / perfect, 4),
        "requests_per_job": run["requests_per_job"],
        "budget": round(2 + sizes.mean_s / 2, 2),
    }


# --------------------------------------------------------------------------- the curve


def _client(server: Any, *, budget: float | None, stats: Any, history: Any) -> Any:
    from studio_flows.client import ModelStudioClient

    client = ModelStudioClient(
        base_url=server.base_url,
        token=server.token,
        organization_id=ORGANIZATION,
        poll_interval_s=0.5,
        poll_max_interval_s=10.0,
        poll_budget=budget,
        history=history,
    )
    client.stats = stats
    return client


def _request(index: int) -> Any:
    from studio_flows.models import GenerateRequest, Message

    conversations = [[Message(role="user", content=f"j{index} q{t}?")] for t in range(TASKS)]
    return GenerateRequest(model_id=MODEL, messages=conversations)


def _lanes(jobs: int, wait: Callable[[Any, str], None], make_client: Callable[[], Any]) -> float:
    """Run the jobs in 3 threads, one job at a time each; the last time a job was seen done."""
    queue = list(range(jobs))
    lock = threading.Lock()
    seen_done: list[float] = []

    def lane() -> None:
        with make_client() as client:
            while True:
                with lock:
                    if not queue:
                        return
                    index = queue.pop(0)
                job = client.create_job(_request(index))
                wait(client, job.job_id)
                with lock:
                    seen_done.append(time.monotonic())

    threads = [threading.Thread(target=lane) for _ in range(SLOTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return max(seen_done)


def run_poller(
    server: Any, jobs: int, *, budget: float | None = None, interval: float | None = None
) -> dict[str, Any]:
    """One run of ``jobs`` by ours (``budget``) or a fixed-interval poller (``interval``)."""
    from studio_flows.client import ClientStats
    from studio_flows.polling import DurationHistory

    server.reset()  # the same seed: the k-th job created takes the same time in every run
    stats, history = ClientStats(), DurationHistory()

    def make_client() -> Any:
        return _client(server, budget=budget, stats=stats, history=history)

    def wait_ours(client: Any, job_id: str) -> None:
        client.wait_for_job(job_id, total_tasks=TASKS)

    def wait_fixed(client: Any, job_id: str) -> None:
        assert interval is not None
        while True:  # what prefect-dbt and curator do: look every `interval` seconds
            time.sleep(interval)
            if client.get_job(job_id).is_terminal:
                return

    last_seen = _lanes(jobs, wait_ours if interval is None else wait_fixed, make_client)
    durations = [job["duration_s"] for job in server.jobs()]
    makespan = last_seen - job_intervals(server)[0][0]  # from the first POST
    perfect = perfect_makespan(durations)
    return {
        "makespan_s": round(makespan, 3),
        "perfect_s": round(perfect, 3),
        "ratio": round(makespan / perfect, 4),
        "requests_per_job": round(stats.requests / stats.jobs_created, 3),
        "durations_s": durations,
    }


def fixed_interval_for(durations: list[float], requests_per_job: float) -> float:
    """The shortest interval whose polls would spend at most ``requests_per_job``.

    A fixed poller asks ``ceil(D / interval)`` times for a job of ``D`` seconds, plus its POST.

    Example:
        >>> fixed_interval_for([5.0, 5.0], 3.0)
        2.5
    """

    def spent(interval: float) -> float:
        looks = sum(math.ceil(d / interval - 1e-9) for d in durations)
        return 1 + looks / len(durations)

    candidates = sorted({d / k for d in durations for k in range(1, 200)}, reverse=True)
    best = candidates[0]
    for interval in candidates:
        if spent(interval) > requests_per_job:
            break
        best = interval
    return best


def run_tradeoff(sizes: JitterSizes) -> list[dict[str, Any]]:
    """Per budget: ours and the fixed poller, as means over the seeds (and per seed)."""
    per_seed = [_tradeoff_of_seed(sizes, seed) for seed in sizes.seeds]
    points = []
    for index, budget in enumerate(sizes.budgets):
        runs = [points_of_seed[index] for points_of_seed in per_seed]

        def mean(key: str, runs: list[dict[str, Any]] = runs) -> float:
            return round(sum(float(run[key]) for run in runs) / len(runs), 4)

        points.append(
            {
                "budget": budget,
                "ours_ratio": mean("ours_ratio"),
                "ours_requests_per_job": mean("ours_requests_per_job"),
                "fixed_ratio": mean("fixed_ratio"),
                "fixed_requests_per_job": mean("fixed_requests_per_job"),
                "runs": runs,
            }
        )
    return points


def _tradeoff_of_seed(sizes: JitterSizes, seed: int) -> list[dict[str, Any]]:
    from studio_flows.emulator import EmulatorConfig, EmulatorServer

    points = []
    with EmulatorServer(EmulatorConfig(**jitter_knobs(sizes, seed))) as server:
        for budget in sizes.budgets:
            log(f"trade-off, seed {seed}: ours at a budget of {budget:g} requests a job")
            ours = run_poller(server, sizes.jobs, budget=budget)
            interval = fixed_interval_for(ours["durations_s"], ours["requests_per_job"])
            log(f"trade-off: fixed interval {interval:.3f} s")
            fixed = run_poller(server, sizes.jobs, interval=interval)
            assert fixed["durations_s"] == ours["durations_s"], "the job times differ"
            points.append(
                {
                    "seed": seed,
                    "budget": budget,
                    "ours_ratio": ours["ratio"],
                    "ours_requests_per_job": ours["requests_per_job"],
                    "fixed_interval_s": round(interval, 3),
                    "fixed_ratio": fixed["ratio"],
                    "fixed_requests_per_job": fixed["requests_per_job"],
                    "perfect_s": ours["perfect_s"],
                }
            )
    return points


def run_jitter(server: Any, work: Path, sizes: JitterSizes = FULL_JITTER) -> dict[str, Any]:
    """P6 (on ``server``, the flow's emulator) and the trade-off curve (its own emulator)."""
    log(f"P6: {sizes.jobs} jobs of mean {sizes.mean_s:g} s, sigma {SIGMA:g}, uneven tasks")
    p6 = run_p6(server, work, sizes)
    from bench.poll_replay import SEEDS, run_replay

    log(f"P6 and the trade-off replayed on a fake clock, seeds {SEEDS[0]}-{SEEDS[-1]}")
    replay_seeds = SEEDS if sizes == FULL_JITTER else SEEDS[:2]
    from bench.styles import run_styles

    return {
        **run_styles(sizes),
        "p6": p6,
        "poll_replay": run_replay(replay_seeds, sizes.jobs, sizes.mean_s),
        "poll_tradeoff": run_tradeoff(sizes),
        "jitter_sizes": asdict(sizes),
        "jitter_date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def figures(details: dict[str, Any]) -> dict[str, Any]:
    from bench.styles import figures as style_figures

    p6 = details["p6"]
    curve = details["poll_tradeoff"]
    replayed = details.get("poll_replay", {})
    return {
        "p6_jitter_ratio": p6["ratio"],
        "p6_requests_per_job": p6["requests_per_job"],
        **({"p6_replay_ratio": replayed["p6_ratio"]} if replayed else {}),
        "poll_tradeoff_ours_at_or_below_fixed": all(
            point["ours_ratio"] <= point["fixed_ratio"] for point in curve
        ),
        **style_figures(details),
    }


# --------------------------------------------------------------------------- report


def plot_tradeoff(details: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = details["poll_tradeoff"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(
        [p["ours_requests_per_job"] for p in curve],
        [p["ours_ratio"] for p in curve],
        "o-",
        color="tab:blue",
        label="ours (budget 3, 4.5, 6, 10)",
    )
    ax.plot(
        [p["fixed_requests_per_job"] for p in curve],
        [p["fixed_ratio"] for p in curve],
        "s--",
        color="tab:red",
        label="fixed interval, same requests",
    )
    ax.axhline(1.0, color="green", linestyle=":", linewidth=1, label="perfect client")
    ax.set_xlabel("requests a job (POST + polls)")
    ax.set_ylabel("makespan / perfect client's")
    sizes = details["jitter_sizes"]
    ax.set_title(
        f"{sizes['jobs']} jobs, mean {sizes['mean_s']:g} s, sigma {SIGMA:g}, uneven tasks, 3 slots"
    )
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def jitter_section(results: Results) -> list[str]:
    """RESULTS.md lines for P6 and the trade-off curve (empty if they did not run)."""
    d = results.details
    if "p6" not in d:
        return []
    p6, curve, sizes = d["p6"], d["poll_tradeoff"], d["jitter_sizes"]
    seeds = ", ".join(str(seed) for seed in sizes["seeds"])
    lines = [
        "",
        "## P6 and the poll trade-off: job times that vary",
        "",
        f"Measured {d['jitter_date']} by `python -m bench.jitter` (or `make bench`).",
        f"Emulator jobs of mean {sizes['mean_s']:g} s (`job_latency_jitter` {SIGMA:g}: a",
        "lognormal factor of mean 1, so the mean is kept and the median is 0.88 of it),",
        "`uneven_tasks` (tasks end at uniform points inside the job), 10 tasks a job, on each",
        f"of the seeds {seeds}. The perfect client is a greedy schedule on 3 slots of the",
        "durations the emulator recorded in that very run (`GET /_emulator/jobs`), in its",
        "creation order. Each figure is the mean over the seeds (one seed's figure depends",
        "on where its few long jobs fall); each seed's is listed.",
        "",
        f"**P6** ({p6['how']}, {p6['jobs']} jobs of 10 rows; makespan = first POST to the",
        f"last persist): mean ratio **{p6['ratio']}** at **{p6['requests_per_job']}** requests",
        "a job (every request the emulator counted / jobs; budget 2 + mean/2 ="
        f" {p6['budget']:g}; the poll budget left to its default).",
        "",
        "| seed | mean job (s) | perfect (s) | makespan (s) | ratio | requests a job |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in p6["runs"]:
        lines.append(
            f"| {run['seed']} | {run['mean_job_s']} | {run['perfect_s']} | {run['makespan_s']} |"
            f" {run['ratio']} | {run['requests_per_job']} |"
        )
    lines += [
        "",
        "**The trade-off** (the client alone in 3 threads, no Prefect or database, against an",
        "in-process emulator with the same knobs and seed; makespan = first POST to the last",
        "job seen done). Ours at each budget (`poll_budget`, POST included), then a",
        "fixed-interval poller whose interval is the shortest that would spend no more",
        "requests than ours did on the same recorded job times:",
        "",
        "| budget | ours: requests a job | ours: ratio | fixed: requests a job | fixed: ratio |"
        " per seed (ours / fixed ratio, fixed interval) |",
        "| ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for point in curve:
        per_seed = "; ".join(
            f"{r['seed']}: {r['ours_ratio']} / {r['fixed_ratio']}, {r['fixed_interval_s']} s"
            for r in point["runs"]
        )
        lines.append(
            f"| {point['budget']:g} | {point['ours_requests_per_job']} | {point['ours_ratio']} |"
            f" {point['fixed_requests_per_job']} | {point['fixed_ratio']} | {per_seed} |"
        )
    from bench.poll_replay import replay_section

    lines += ["", "![makespan ratio against requests a job](poll_tradeoff.png)"]
    lines += replay_section(d)
    p1 = d.get("p1_after_jitter_poller")
    if p1 is not None:
        lines += [
            "",
            "P1 and P5 on the steady emulator, re-measured with this poller in the same run:"
            f" makespan {p1['makespan_s']} s / ideal {p1['ideal_s']:g} s = **{p1['ratio']}** at"
            f" **{p1['requests_per_job']}** requests a job (the summary table above keeps the"
            " last whole `make bench`).",
        ]
    return lines


def summary_rows(results: Results) -> list[str]:
    """Rows of the summary table for P6 (empty if it did not run)."""
    f = results.figures
    if "p6_jitter_ratio" not in f:
        return []
    budget = 2 + results.details["jitter_sizes"]["mean_s"] / 2
    ratio_ok = "met" if f["p6_jitter_ratio"] <= P6_TARGET else "**missed**"
    requests_ok = "met" if f["p6_requests_per_job"] <= budget else "**missed**"
    curve_ok = "met" if f["poll_tradeoff_ours_at_or_below_fixed"] else "**missed**"
    replayed = results.details.get("poll_replay")
    replay_rows = []
    if "p6_replay_ratio" in f and replayed is not None:
        first, last = replayed["seeds"]
        replay_rows.append(
            f"| p6_replay_ratio | {f['p6_replay_ratio']} | reported (seeds {first}-{last} on a"
            f" fake clock, at {replayed['p6_requests_per_job']} requests a job) |"
        )
    return [
        f"| p6_jitter_ratio | {f['p6_jitter_ratio']} | <= {P6_TARGET:g}: {ratio_ok} |",
        *replay_rows,
        f"| p6_requests_per_job | {f['p6_requests_per_job']} | <= 2 + mean/2 = {budget:g}:"
        f" {requests_ok} |",
        f"| poll_tradeoff_ours_at_or_below_fixed | {f['poll_tradeoff_ours_at_or_below_fixed']}"
        f" | at every budget: {curve_ok} |",
    ]


# --------------------------------------------------------------------------- alone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.jitter", description=__doc__)
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument(
        "--with-p1", action="store_true", help="also P1 and P5 on the steady emulator"
    )
    args = parser.parse_args(argv)
    from prefect.testing.utilities import prefect_test_harness

    from bench.common import FULL, flow_env
    from bench.report import render
    from bench.scenarios import run_ours
    from studio_flows.emulator import EmulatorConfig, EmulatorServer

    recorded = json.loads((args.out / "results.json").read_text())
    details = recorded.pop("details")
    results = Results(figures=recorded, details=details)
    with (
        tempfile.TemporaryDirectory(prefix="studio-flows-bench-") as tmp,
        prefect_test_harness(server_startup_timeout=90),
        EmulatorServer(EmulatorConfig(seed=1)) as server,
    ):
        flow_env(server.base_url, server.token, poll_start=0.5, poll_max=10.0)
        if args.with_p1:
            log("P1/P5: 15 shards at L = 5 s, steady emulator")
            p1 = run_ours(
                server,
                Path(tmp),
                shards=FULL.p1_shards,
                latency=FULL.p1_latency_s,
                rows_per_shard=FULL.p1_rows_per_shard,
                database_url=f"sqlite:///{tmp}/p1.db",
            )
            p1.pop("intervals")
            results.details["p1_after_jitter_poller"] = p1
        results.details.update(run_jitter(server, Path(tmp), FULL_JITTER))
    results.figures.update(figures(results.details))
    plot_tradeoff(results.details, args.out / "poll_tradeoff.png")
    (args.out / "results.json").write_text(
        json.dumps({**results.figures, "details": results.details}, indent=2) + "\n"
    )
    (args.out / "RESULTS.md").write_text(render(results, FULL, quick=False))
    print(json.dumps({k: results.figures[k] for k in figures(results.details)}, indent=2))
    if "p1_after_jitter_poller" in results.details:
        p1 = results.details["p1_after_jitter_poller"]
        print(json.dumps({"p1_ratio": p1["ratio"], "p5": p1["requests_per_job"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
