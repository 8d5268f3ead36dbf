"""P1/P5, P6 and the poll trade-off on every emulator style, and the worst of them.

The API reference is silent on what a running job shows (status names, partial results,
``completed_tasks``, result order); the emulator's styles are readings of that silence
(``studio_flows.emulator.STYLES``). The poller is judged on the worst style:

- **replay** (``bench/poll_replay.py``, a fake clock): per style, steady jobs (15 of 5 s,
  even tasks: P1/P5), P6 (15 jobs of mean 5 s, sigma 0.5, uneven tasks, seeds 1-20) and
  the trade-off against a fixed-interval poller spending the same requests;
- **wall clock, kept short**: per style, the client alone in 3 threads (no Prefect, no
  database) against an in-process emulator of that style: the steady jobs, then seed 21's
  varying jobs with the default budget and with the fixed poller at the same requests. The
  styles run at once, each on its own emulator (the lanes mostly sleep), so the whole
  takes about as long as one style.

``python -m bench.styles`` runs both, merges them into ``bench/results.json`` and rewrites
RESULTS.md; ``--replay-only`` skips the wall clock. ``make bench`` runs them with the rest.
"""

from __future__ import annotations

from studio_flows.cli.quiet import quiet_environment

# Every later import may load Prefect: the environment must be quiet first.
quiet_environment()

import argparse  # noqa: E402
import json  # noqa: E402
import threading  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from bench.common import HERE, Results, log  # noqa: E402
from bench.jitter import (  # noqa: E402
    FULL_JITTER,
    P6_TARGET,
    JitterSizes,
    fixed_interval_for,
    jitter_knobs,
    run_poller,
)
from bench.poll_replay import SEEDS, run_styles_replay  # noqa: E402

P1_TARGET = 1.05
WALL_SEED = 21


def wall_clock_style(style: str, sizes: JitterSizes) -> dict[str, Any]:
    """The short wall-clock runs of one style (client alone, its own emulator)."""
    from studio_flows.emulator import EmulatorConfig, EmulatorServer

    steady_knobs = {"job_latency_s": sizes.mean_s, "fair_use_limit": 3, "seed": 1}
    with EmulatorServer(EmulatorConfig(style=style, **steady_knobs)) as server:
        steady = run_poller(server, sizes.jobs)
        server.configure(**jitter_knobs(sizes, WALL_SEED))
        ours = run_poller(server, sizes.jobs)
        interval = fixed_interval_for(ours["durations_s"], ours["requests_per_job"])
        fixed = run_poller(server, sizes.jobs, interval=interval)
    return {
        "p1_ratio": steady["ratio"],
        "p5_requests_per_job": steady["requests_per_job"],
        "p6_ratio": ours["ratio"],
        "p6_requests_per_job": ours["requests_per_job"],
        "fixed_ratio": fixed["ratio"],
        "fixed_requests_per_job": fixed["requests_per_job"],
        "fixed_interval_s": round(interval, 3),
    }


def run_wall_clock(sizes: JitterSizes) -> dict[str, dict[str, Any]]:
    """:func:`wall_clock_style` for every style, at once (one thread a style)."""
    from studio_flows.emulator import STYLES

    out: dict[str, dict[str, Any]] = {}
    errors: list[BaseException] = []

    def one(name: str) -> None:
        try:
            out[name] = wall_clock_style(name, sizes)
        except BaseException as exc:  # reported below, on the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(name,)) for name in STYLES]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return {name: out[name] for name in STYLES}


def worst(per_style: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The worst figure of each kind over the styles, and the style it came from.

    Example:
        >>> worst({"a": {"p1_ratio": 1.01}, "b": {"p1_ratio": 1.03}})["p1_ratio"]
        [1.03, 'b']
    """
    out: dict[str, Any] = {}
    for name, figures in per_style.items():
        for key, value in figures.items():
            if isinstance(value, bool):
                if key not in out or (not value and out[key][0]):
                    out[key] = [value, name]
            elif isinstance(value, int | float) and (key not in out or value > out[key][0]):
                out[key] = [value, name]
    return out


def run_styles(sizes: JitterSizes = FULL_JITTER, *, wall_clock: bool = True) -> dict[str, Any]:
    """The replay (and the short wall-clock runs) on every style, with the worst of each."""
    seeds = SEEDS if sizes == FULL_JITTER else SEEDS[:2]
    log(f"every style replayed on a fake clock, seeds {seeds[0]}-{seeds[-1]}")
    replayed = run_styles_replay(seeds, sizes.jobs, sizes.mean_s)
    summary = {
        name: {k: v for k, v in figures.items() if k not in ("curve", "seeds")}
        for name, figures in replayed.items()
    }
    out: dict[str, Any] = {
        "styles_date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "styles_replay": replayed,
        "styles_replay_worst": worst(summary),
    }
    if wall_clock:
        log("every style on the wall clock (client alone, the styles at once)")
        measured = run_wall_clock(sizes)
        for figures in measured.values():
            figures["at_or_below_fixed"] = figures["p6_ratio"] <= figures["fixed_ratio"]
        out["styles_wall_clock"] = measured
        out["styles_wall_clock_worst"] = worst(measured)
    return out


def figures(details: dict[str, Any]) -> dict[str, Any]:
    """The summary's worst-style figures (empty if the styles did not run)."""
    replay = details.get("styles_replay_worst")
    if replay is None:
        return {}
    out = {
        "styles_worst_p1_replay_ratio": replay["p1_ratio"][0],
        "styles_worst_p5_replay_requests_per_job": replay["p5_requests_per_job"][0],
        "styles_worst_p6_replay_ratio": replay["p6_ratio"][0],
        "styles_worst_p6_replay_requests_per_job": replay["p6_requests_per_job"][0],
        "styles_tradeoff_at_or_below_fixed": replay["at_or_below_fixed"][0],
    }
    wall = details.get("styles_wall_clock_worst")
    if wall is not None:
        out["styles_worst_p1_wall_ratio"] = wall["p1_ratio"][0]
        out["styles_worst_p6_wall_ratio"] = wall["p6_ratio"][0]
    return out


def summary_rows(results: Results) -> list[str]:
    """Rows of the summary table for the worst style (empty if the styles did not run)."""
    f = results.figures
    d = results.details
    if "styles_worst_p1_replay_ratio" not in f:
        return []
    mean = d.get("jitter_sizes", {}).get("mean_s", 5.0)
    budget = 2 + mean / 2
    replay = d["styles_replay_worst"]

    def ok(value: float, target: float) -> str:
        return "met" if value <= target else "**missed**"

    rows = [
        f"| styles_worst_p1_replay_ratio | {f['styles_worst_p1_replay_ratio']} |"
        f" <= {P1_TARGET:g} on the worst style ({replay['p1_ratio'][1]}):"
        f" {ok(f['styles_worst_p1_replay_ratio'], P1_TARGET)} |",
        f"| styles_worst_p5_replay_requests_per_job |"
        f" {f['styles_worst_p5_replay_requests_per_job']} | <= 2 + L/2 = {budget:g}"
        f" ({replay['p5_requests_per_job'][1]}):"
        f" {ok(f['styles_worst_p5_replay_requests_per_job'], budget)} |",
        f"| styles_worst_p6_replay_ratio | {f['styles_worst_p6_replay_ratio']} |"
        f" <= {P6_TARGET:g} ({replay['p6_ratio'][1]}):"
        f" {ok(f['styles_worst_p6_replay_ratio'], P6_TARGET)} |",
        f"| styles_worst_p6_replay_requests_per_job |"
        f" {f['styles_worst_p6_replay_requests_per_job']} | <= 2 + mean/2 = {budget:g}"
        f" ({replay['p6_requests_per_job'][1]}):"
        f" {ok(f['styles_worst_p6_replay_requests_per_job'], budget)} |",
        f"| styles_tradeoff_at_or_below_fixed | {f['styles_tradeoff_at_or_below_fixed']} |"
        " every style, every budget: "
        + ("met" if f["styles_tradeoff_at_or_below_fixed"] else "**missed**")
        + " |",
    ]
    wall = d.get("styles_wall_clock_worst")
    if wall is not None:
        rows += [
            f"| styles_worst_p1_wall_ratio | {f['styles_worst_p1_wall_ratio']} |"
            f" reported (client alone, one run; {wall['p1_ratio'][1]}) |",
            f"| styles_worst_p6_wall_ratio | {f['styles_worst_p6_wall_ratio']} |"
            f" reported (client alone, seed {WALL_SEED}; {wall['p6_ratio'][1]}) |",
        ]
    return rows


def styles_section(results: Results) -> list[str]:
    """RESULTS.md lines: each style's figures and the worst (empty if they did not run)."""
    d = results.details
    replayed = d.get("styles_replay")
    if replayed is None:
        return []
    first, last = next(iter(replayed.values()))["seeds"]
    lines = [
        "",
        "## Every emulator style",
        "",
        f"Measured {d['styles_date']} by `python -m bench.styles` (or `make bench`). The",
        "styles (`studio_flows.emulator.STYLES`) read what the API reference leaves open:",
        "statuses between `CREATED` and `FINISHED`, results while running, `completed_tasks`",
        "while running, result order. The poller is judged on the worst of them.",
        "",
        f"**Replayed on a fake clock** (`bench/poll_replay.py`; steady: 15 jobs of 5 s, even"
        f" tasks; P6: seeds {first}-{last}, 15 jobs of mean 5 s, sigma 0.5, uneven tasks;"
        " trade-off: ours at budgets 3, 4.5, 6, 10 against a fixed interval spending the"
        " same requests):",
        "",
        "| style | p1_makespan_ratio | p5_requests_per_job | p6_replay_ratio |"
        " p6_requests_per_job | p6 worst seed | trade-off (ours / fixed at each budget) |"
        " at or below fixed |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for name, r in replayed.items():
        curve = "; ".join(
            f"{p['ours_requests_per_job']:.2f}: {p['ours_ratio']:.4f} / {p['fixed_ratio']:.4f}"
            for p in r["curve"]
        )
        lines.append(
            f"| {name} | {r['p1_ratio']} | {r['p5_requests_per_job']} | {r['p6_ratio']} |"
            f" {r['p6_requests_per_job']} | {r['p6_worst_seed_ratio']} | {curve} |"
            f" {r['at_or_below_fixed']} |"
        )
    lines += _worst_row(d["styles_replay_worst"], replay=True)
    wall = d.get("styles_wall_clock")
    if wall is not None:
        lines += [
            "",
            "**Wall clock, kept short** (the client alone in 3 threads, no Prefect or",
            "database, an in-process emulator of the style; every style at once; steady: 15",
            f"jobs of 5 s; P6: seed {WALL_SEED}, the default budget, and the fixed interval",
            "spending the same requests; one run each, so a noisy machine moves them):",
            "",
            "| style | p1_makespan_ratio | p5_requests_per_job | p6_jitter_ratio |"
            " p6_requests_per_job | fixed: ratio | fixed: requests a job | at or below fixed |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for name, w in wall.items():
            lines.append(
                f"| {name} | {w['p1_ratio']} | {w['p5_requests_per_job']} | {w['p6_ratio']} |"
                f" {w['p6_requests_per_job']} | {w['fixed_ratio']} |"
                f" {w['fixed_requests_per_job']} | {w['at_or_below_fixed']} |"
            )
        lines += _worst_row(d["styles_wall_clock_worst"], replay=False)
    return lines


def _worst_row(worst_of: dict[str, Any], *, replay: bool) -> list[str]:
    def cell(key: str) -> str:
        value = worst_of.get(key)
        return "" if value is None else f"{value[0]} ({value[1]})"

    if replay:
        return [
            f"| **worst** | {cell('p1_ratio')} | {cell('p5_requests_per_job')} |"
            f" {cell('p6_ratio')} | {cell('p6_requests_per_job')} |"
            f" {cell('p6_worst_seed_ratio')} | | {cell('at_or_below_fixed')} |"
        ]
    return [
        f"| **worst** | {cell('p1_ratio')} | {cell('p5_requests_per_job')} | {cell('p6_ratio')} |"
        f" {cell('p6_requests_per_job')} | {cell('fixed_ratio')} |"
        f" {cell('fixed_requests_per_job')} | {cell('at_or_below_fixed')} |"
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.styles", description=__doc__)
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--replay-only", action="store_true", help="no wall-clock runs")
    args = parser.parse_args(argv)
    from bench.common import FULL
    from bench.report import render

    recorded = json.loads((args.out / "results.json").read_text())
    details = recorded.pop("details")
    results = Results(figures=recorded, details=details)
    results.details.update(run_styles(FULL_JITTER, wall_clock=not args.replay_only))
    results.figures.update(figures(results.details))
    (args.out / "results.json").write_text(
        json.dumps({**results.figures, "details": results.details}, indent=2) + "\n"
    )
    (args.out / "RESULTS.md").write_text(render(results, FULL, quick=False))
    print(json.dumps(figures(results.details), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
