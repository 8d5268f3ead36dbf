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
- P6 and the poll trade-off (``bench/jitter.py``): jobs whose times vary, against a
  perfect client's schedule of the emulator's own job times.
- P1 and P3 again on PostgreSQL when ``STUDIO_FLOWS_TEST_POSTGRES_URL`` is set, and P1 on a
  real ``prefect server start``.

Writes ``bench/RESULTS.md``, ``bench/results.json`` and ``bench/makespan.png`` (or into
``--out``). ``--quick`` runs every benchmark at a tiny size (the smoke test uses it).
"""

from __future__ import annotations

from studio_flows.cli.quiet import quiet_environment

# Every later import may load Prefect: the environment must be quiet first.
quiet_environment()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from bench.child import child_emulator, child_p1, child_rows  # noqa: E402
from bench.common import FULL, HERE, QUICK, Results  # noqa: E402
from bench.jitter import plot_tradeoff  # noqa: E402
from bench.report import plot, render  # noqa: E402
from bench.scenarios import run_all  # noqa: E402
from bench.shared import child_p8  # noqa: E402


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
    parser.add_argument("--child", choices=("emulator", "rows", "p1", "p8"), help=argparse.SUPPRESS)
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
    if args.child == "p8":
        print(json.dumps(child_p8(args.shards, args.latency, args.rows_per_shard)))
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
    plot_tradeoff(results.details, args.out / "poll_tradeoff.png")
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
