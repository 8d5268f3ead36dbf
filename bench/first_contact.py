"""How fast `studio-flows generate` reports the errors a new user makes first.

Process start to exit, median of 5 runs each, of the installed console script, with a
fresh ``PREFECT_HOME`` each time (so a server start would show): a missing token, a bad
row in a 3-row CSV, a missing file and a bad setting. None of them needs a Prefect
server, so none should start one. Then the ad-hoc path's figures (:mod:`bench.ad_hoc`):
mistakes only the API can show, the shared local server cold and warm, two first runs at
once, and a 15-job run end to end. Writes ``bench/FIRST_CONTACT.md``.

Usage: ``python -m bench.first_contact``
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import ad_hoc

HERE = Path(__file__).resolve().parent
RUNS = 5
CLI = shutil.which("studio-flows", path=os.path.dirname(sys.executable)) or "studio-flows"


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MODEL_STUDIO_"))}
    env.update(
        {
            "PREFECT_HOME": str(home),
            "MODEL_STUDIO_TOKEN": "bench-token",
            "MODEL_STUDIO_ORGANIZATION_ID": "bench-org",
            "MODEL_STUDIO_DATABASE_URL": f"sqlite:///{home.parent / (home.name + '.db')}",
            **extra,
        }
    )
    return {k: v for k, v in env.items() if v != ""}


def _cases(folder: Path) -> dict[str, tuple[list[str], dict[str, str]]]:
    good = folder / "good.csv"
    good.write_text("prompt\nHello?\nHi?\n", encoding="utf-8")
    bad = folder / "bad.csv"
    bad.write_text('prompt\nHello?\n""\nHi?\n', encoding="utf-8")
    return {
        "missing token": ([str(good)], {"MODEL_STUDIO_TOKEN": ""}),
        "bad row (3-row CSV, an empty prompt)": ([str(bad)], {}),
        "missing file": ([str(folder / "nope.jsonl")], {}),
        "MODEL_STUDIO_SHARD_SIZE=1000": ([str(good)], {"MODEL_STUDIO_SHARD_SIZE": "1000"}),
    }


def measure() -> dict[str, tuple[float, int, bool]]:
    """Median seconds to exit, the exit code and whether a Prefect server started, per case."""
    figures: dict[str, tuple[float, int, bool]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, (args, extra) in _cases(folder).items():
            seconds, codes, servers = [], set(), False
            for run in range(RUNS):
                home = folder / f"home-{len(figures)}-{run}"
                started = time.monotonic()
                done = subprocess.run(
                    [CLI, "generate", *args, "--model-id", "m", "--no-progress"],
                    env=_env(home, **extra),
                    capture_output=True,
                    text=True,
                    timeout=300,
                    check=False,
                )
                seconds.append(time.monotonic() - started)
                codes.add(done.returncode)
                # A start of the local server writes its log.
                servers |= (home / "studio-flows" / "local-server.log").exists()
            figures[name] = (statistics.median(seconds), max(codes), servers)
    return figures


def _error_table(figures: dict[str, tuple[float, int, bool]]) -> list[str]:
    return [
        "| input | exit code | median (s) | a Prefect server started |",
        "| --- | ---: | ---: | --- |",
    ] + [
        f"| {name} | {code} | {sec:.2f} | {'yes' if started else 'no'} |"
        for name, (sec, code, started) in figures.items()
    ]


def render(
    figures: dict[str, tuple[float, int, bool]],
    mistakes: dict[str, tuple[float, int, bool]],
    server: dict[str, float],
) -> str:
    lines = [
        "# First contact: how fast a wrong input is reported",
        "",
        f"Written by `python -m bench.first_contact` ({time.strftime('%Y-%m-%d')}): process",
        f"start to exit of `studio-flows generate`, median of {RUNS} runs, fresh PREFECT_HOME.",
        "Target: about a second, no Prefect server started.",
        "",
        *_error_table(figures),
        "",
        "## Mistakes only the API can show (an emulator running)",
        "",
        f"Median of {ad_hoc.RUNS} runs, fresh PREFECT_HOME each. Target: at most 2 s, exit 2,",
        "no Prefect server started.",
        "",
        *_error_table(mistakes),
    ]
    lines += [
        "",
        "## The shared local server (no PREFECT_API_URL)",
        "",
        f"Medians of {ad_hoc.RUNS} runs ({ad_hoc.END_TO_END_RUNS} end to end). Targets: warm",
        "rerun at most 2.0 s, first run at most 12 s, two first runs at once 10 of 10, end to",
        "end at most 1.10 x the perfect makespan.",
        "",
        "| figure | value |",
        "| --- | ---: |",
    ]
    lines += [f"| {name} | {value:.2f} |" for name, value in server.items()]
    lines += ["", f"Machine load while measured: {os.getloadavg()[0]:.1f} (1-minute average).", ""]
    return "\n".join(lines)


def main() -> int:
    figures = measure()
    mistakes, server = ad_hoc.measure()
    text = render(figures, mistakes, server)
    (HERE / "FIRST_CONTACT.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
