"""P6 and the poll trade-off replayed on a fake clock, over many seeds.

The real runs (``bench/jitter.py``) take minutes per seed, so their figures are a mean of
three seeds, and one seed's figure moves with where its few long jobs fall. This replay
runs the same scenario without sleeping: the emulator's own timing generator gives each
seed's job times and task ends (``EmulatorState.next_timing``), three lanes poll them with
the client's :class:`~studio_flows.polling.PollPlan` (or a fixed interval) on a simulated
clock, and a GET sees the tasks ended by the time it was sent, as the emulator's does. It
leaves out what the real run has besides polling (Prefect, the database, the network: a
fixed 4 ms a POST and 3 ms a GET here), so its ratios are a little lower than the real
ones; it is the figure to compare pollers by.

``python -m bench.poll_replay`` prints the figures; ``make bench`` writes them into
RESULTS.md with the rest.
"""

from __future__ import annotations

import argparse
import heapq
import json
from dataclasses import dataclass, field
from typing import Any

from bench.jitter import SIGMA, SLOTS, TASKS, fixed_interval_for, perfect_makespan
from studio_flows.emulator import STYLES, EmulatorConfig, EmulatorState, EmulatorStyle
from studio_flows.polling import DurationHistory, PollPlan

POST_S = 0.004
GET_S = 0.003
SEEDS = tuple(range(1, 21))
BUDGETS = (3.0, 4.5, 6.0, 10.0)


@dataclass
class _Job:
    duration: float
    ends: list[float]
    created: float
    plan: PollPlan | None
    last_running: float = 0.0
    seen_running: bool = False


@dataclass
class _Run:
    """One replay: the next free lane's event, the jobs still to create, requests made."""

    timings: list[tuple[float, list[float]]]
    budget: float | None
    interval: float | None
    style: EmulatorStyle
    history: DurationHistory = field(default_factory=DurationHistory)
    events: list[tuple[float, int, int, _Job | None]] = field(default_factory=list)
    created: int = 0
    requests: int = 0
    last_seen: float = 0.0
    _order: int = 0

    def push(self, at: float, lane: int, job: _Job | None) -> None:
        self._order += 1
        heapq.heappush(self.events, (at, self._order, lane, job))

    def create(self, now: float, lane: int) -> None:
        if self.created == len(self.timings):
            return
        duration, ends = self.timings[self.created]
        self.created += 1
        self.requests += 1
        plan = None
        if self.interval is None:
            plan = PollPlan(start=0.5, maximum=10.0, history=self.history, budget=self.budget)
        job = _Job(duration, ends, now + POST_S, plan)
        first = self.interval if plan is None else plan.first_delay(tasks=TASKS)
        self.push(job.created + (first or 0.0), lane, job)

    def look(self, sent: float, lane: int, job: _Job) -> None:
        self.requests += 1
        elapsed, answered = sent - job.created, sent + GET_S
        if elapsed >= job.duration:
            if job.plan is not None:
                # What the client teaches its history (see client._Waiter.seen).
                done = answered - job.created if job.seen_running else elapsed
                job.plan.learn(
                    running_until=job.last_running,
                    done_by=done,
                    tasks=TASKS,
                    seen_running=job.seen_running,
                )
            self.last_seen = max(self.last_seen, answered)
            self.push(answered, lane, None)
            return
        job.seen_running, job.last_running = True, answered - job.created
        if job.plan is None:
            assert self.interval is not None
            self.push(answered + self.interval, lane, job)
            return
        completed = visible_count(self.style, job.ends, elapsed)
        delay = job.plan.next_delay(elapsed=job.last_running, completed=completed, total=TASKS)
        self.push(answered + delay, lane, job)


def visible_count(style: EmulatorStyle, ends: list[float], elapsed: float) -> int:
    """The tasks a running job shows done in ``style``: its count, or its listed results
    (what the client reads, ``JobStatus.tasks_done``).

    Example:
        >>> styles = ("quiet", "queued", "lowercase")
        >>> [visible_count(STYLES[name], [1.0, 2.0], 1.5) for name in styles]
        [0, 1, 1]
    """
    shows = style.progress or style.partial_results
    return sum(1 for end in ends if end <= elapsed) if shows else 0


def steady_timings(jobs: int = 15, latency_s: float = 5.0) -> list[tuple[float, list[float]]]:
    """P1's jobs: each ``latency_s`` long, its tasks ending evenly."""
    return [(latency_s, [latency_s * (i + 1) / TASKS for i in range(TASKS)])] * jobs


def timings(seed: int, jobs: int, mean_s: float) -> list[tuple[float, list[float]]]:
    """The job times and task ends the emulator gives P6's jobs on ``seed``."""
    config = EmulatorConfig(
        job_latency_s=mean_s, job_latency_jitter=SIGMA, uneven_tasks=True, seed=seed
    )
    state = EmulatorState(config)
    out = []
    for _ in range(jobs):
        duration, ends = state.next_timing(TASKS)
        out.append((duration, ends or [duration]))
    return out


def replay(
    jobs: list[tuple[float, list[float]]],
    *,
    budget: float | None = None,
    interval: float | None = None,
    style: EmulatorStyle = STYLES["reference"],
) -> dict[str, float]:
    """Makespan ratio to the perfect client and requests a job, of ours or a fixed poller.

    Example:
        >>> steady = [(1.0, [0.5, 1.0])] * 6
        >>> replay(steady, interval=0.5)["requests_per_job"]
        3.0
    """
    run = _Run(jobs, budget, interval, style)
    for lane in range(SLOTS):
        run.push(0.0, lane, None)
    while run.events:
        at, _, lane, job = heapq.heappop(run.events)
        if job is None:
            run.create(at, lane)
        else:
            run.look(at, lane, job)
    perfect = perfect_makespan([duration for duration, _ in jobs])
    return {"ratio": run.last_seen / perfect, "requests_per_job": run.requests / len(jobs)}


def _mean(runs: list[dict[str, float]], key: str) -> float:
    return round(sum(run[key] for run in runs) / len(runs), 4)


def run_replay(
    seeds: tuple[int, ...] = SEEDS,
    jobs: int = 15,
    mean_s: float = 5.0,
    style: EmulatorStyle = STYLES["reference"],
) -> dict[str, Any]:
    """P1/P5 (steady jobs), P6 (the default budget) and the trade-off on ``style``.

    P6 and the trade-off are means over ``seeds``; steady jobs need no seed.
    """
    steady = replay(steady_timings(jobs, mean_s), style=style)
    per_seed = {seed: timings(seed, jobs, mean_s) for seed in seeds}
    p6 = [replay(per_seed[seed], style=style) for seed in seeds]
    curve = []
    for budget in BUDGETS:
        ours = [replay(per_seed[seed], budget=budget, style=style) for seed in seeds]
        fixed = [
            replay(
                per_seed[seed],
                interval=fixed_interval_for(
                    [duration for duration, _ in per_seed[seed]], run["requests_per_job"]
                ),
                style=style,
            )
            for seed, run in zip(seeds, ours, strict=True)
        ]
        curve.append(
            {
                "budget": budget,
                "ours_ratio": _mean(ours, "ratio"),
                "ours_requests_per_job": _mean(ours, "requests_per_job"),
                "fixed_ratio": _mean(fixed, "ratio"),
                "fixed_requests_per_job": _mean(fixed, "requests_per_job"),
            }
        )
    return {
        "seeds": [seeds[0], seeds[-1]],
        "p1_ratio": round(steady["ratio"], 4),
        "p5_requests_per_job": round(steady["requests_per_job"], 4),
        "p6_ratio": _mean(p6, "ratio"),
        "p6_requests_per_job": _mean(p6, "requests_per_job"),
        "p6_worst_seed_ratio": round(max(run["ratio"] for run in p6), 4),
        "curve": curve,
        "at_or_below_fixed": all(p["ours_ratio"] <= p["fixed_ratio"] for p in curve),
    }


def run_styles_replay(
    seeds: tuple[int, ...] = SEEDS, jobs: int = 15, mean_s: float = 5.0
) -> dict[str, dict[str, Any]]:
    """:func:`run_replay` on every emulator style, by style name.

    The client reads only the tasks done (a count, or the results listed) and whether the
    status is terminal (in any case), so styles that differ only in status names or result
    order give the poller the same looks: each reading of the tasks done is replayed once.
    """
    by_reading: dict[bool, dict[str, Any]] = {}
    out = {}
    for name, style in STYLES.items():
        shows = style.progress or style.partial_results
        if shows not in by_reading:
            by_reading[shows] = run_replay(seeds, jobs, mean_s, style)
        out[name] = by_reading[shows]
    return out


def replay_section(details: dict[str, Any]) -> list[str]:
    """RESULTS.md lines for the replay (empty if it did not run)."""
    replayed = details.get("poll_replay")
    if replayed is None:
        return []
    first, last = replayed["seeds"]
    lines = [
        "",
        f"**Replayed on a fake clock** (`bench/poll_replay.py`, seeds {first}-{last}: the",
        "emulator's own job times, the client's poller, no Prefect or database, so a little",
        f"below the real runs): P6 **{replayed['p6_ratio']}** at"
        f" {replayed['p6_requests_per_job']} requests a job (worst seed"
        f" {replayed['p6_worst_seed_ratio']}).",
        "",
        "| budget | ours: requests a job | ours: ratio | fixed: requests a job | fixed: ratio |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for point in replayed["curve"]:
        lines.append(
            f"| {point['budget']:g} | {point['ours_requests_per_job']} | {point['ours_ratio']} |"
            f" {point['fixed_requests_per_job']} | {point['fixed_ratio']} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.poll_replay", description=__doc__)
    parser.add_argument("--first-seed", type=int, default=SEEDS[0])
    parser.add_argument("--seeds", type=int, default=len(SEEDS))
    parser.add_argument("--style", choices=["all", *STYLES], default="all")
    parser.add_argument("--brief", action="store_true", help="one line a style, no curve")
    args = parser.parse_args(argv)
    seeds = tuple(range(args.first_seed, args.first_seed + args.seeds))
    for name in list(STYLES) if args.style == "all" else [args.style]:
        figures = run_replay(seeds, style=STYLES[name])
        if args.brief:
            figures.pop("curve")
        print(name, json.dumps(figures, indent=None if args.brief else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
