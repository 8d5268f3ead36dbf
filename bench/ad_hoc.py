"""The ad-hoc path's figures: the installed CLI against an emulator, on the shared local server.

Measured as a user types it (``studio-flows generate FILE --model-id M``), no
``PREFECT_API_URL``, so every run uses the one local Prefect server of its ``PREFECT_HOME``:

- mistakes the API must answer (wrong token, base URL without ``/api/v1``, unknown model):
  process start to exit on a fresh ``PREFECT_HOME``, and whether a server was started;
- a rerun with nothing to submit, the server warm;
- a first run on a new ``PREFECT_HOME`` (it starts the server);
- two first runs at once on a new ``PREFECT_HOME``: how many tries both succeed;
- end to end, 15 jobs of 5 s (shard size 1) with the server warm, as a ratio of the
  perfect client's makespan (15 jobs / 3 slots x 5 s = 25 s).

Used by :mod:`bench.first_contact`, which writes the figures to ``bench/FIRST_CONTACT.md``.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.common import free_port, write_prompts

CLI = shutil.which("studio-flows", path=os.path.dirname(sys.executable)) or "studio-flows"
TOKEN = "bench-token"
RUNS = 5
PAIRS = 10
END_TO_END_RUNS = 3
JOB_S = 5.0
JOBS = 15
IDEAL_S = JOBS / 3 * JOB_S


@contextmanager
def emulator(*flags: str) -> Iterator[str]:
    """Serve ``studio-flows emulator`` on a free port; yield its API base URL."""
    port = free_port()
    process = subprocess.Popen(
        [CLI, "emulator", "--port", str(port), "--token", TOKEN, *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        # The banner's first line names the base URL once the emulator serves.
        first = process.stdout.readline().decode()
        yield first.strip().split("=", 1)[1]
    finally:
        process.terminate()
        process.wait(timeout=30)


def _env(home: Path, base_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MODEL_STUDIO_"))}
    env.update(
        {
            "PREFECT_HOME": str(home),
            "MODEL_STUDIO_TOKEN": TOKEN,
            "MODEL_STUDIO_ORGANIZATION_ID": "bench-org",
            "MODEL_STUDIO_BASE_URL": base_url,
            "MODEL_STUDIO_DATABASE_URL": f"sqlite:///{home.parent / (home.name + '.db')}",
            **extra,
        }
    )
    return env


def _run(argv: list[str], env: dict[str, str]) -> tuple[float, int]:
    started = time.monotonic()
    done = subprocess.run(argv, env=env, capture_output=True, timeout=600, check=False)
    return time.monotonic() - started, done.returncode


def _generate(dataset: Path, model: str = "m") -> list[str]:
    return [CLI, "generate", str(dataset), "--model-id", model, "--no-progress"]


def _stop_server(home: Path, base_url: str) -> None:
    subprocess.run([CLI, "server", "stop"], env=_env(home, base_url), capture_output=True)


def api_mistakes(folder: Path) -> dict[str, tuple[float, int, bool]]:
    """Median seconds to exit, exit code and whether a server started, per API mistake."""
    dataset = write_prompts(folder / "mistakes.jsonl", 3)
    figures: dict[str, tuple[float, int, bool]] = {}
    with emulator("--known-model", "m") as base_url:
        cases = {
            "wrong token": (_generate(dataset), {"MODEL_STUDIO_TOKEN": "wrong"}),
            "base URL without /api/v1": (
                _generate(dataset),
                {"MODEL_STUDIO_BASE_URL": base_url.removesuffix("/api/v1")},
            ),
            "unknown model": (_generate(dataset, "no-such-model"), {}),
        }
        for name, (argv, extra) in cases.items():
            seconds, codes, started = [], set(), False
            for run in range(RUNS):
                home = folder / f"mistake-{len(figures)}-{run}"
                took, code = _run(argv, _env(home, base_url, **extra))
                seconds.append(took)
                codes.add(code)
                started |= (home / "studio-flows" / "local-server.log").exists()
                _stop_server(home, base_url)
            figures[name] = (statistics.median(seconds), max(codes), started)
    return figures


def server_figures(folder: Path) -> dict[str, float]:
    """First run on a new home, warm rerun with nothing to submit, two first runs at once."""
    figures: dict[str, float] = {}
    with emulator() as base_url:
        first, warm = [], []
        for run in range(RUNS):
            home = folder / f"first-{run}"
            dataset = write_prompts(folder / f"first-{run}.jsonl", 6)
            first.append(_run(_generate(dataset), _env(home, base_url))[0])
            if run == 0:  # the same home, warm: nothing left to submit
                warm = [_run(_generate(dataset), _env(home, base_url))[0] for _ in range(RUNS)]
            _stop_server(home, base_url)
        figures["first run on a new PREFECT_HOME (s)"] = statistics.median(first)
        figures["rerun with nothing to submit, server warm (s)"] = statistics.median(warm)
        figures[f"two first runs at once: both succeed (of {PAIRS})"] = _pairs(folder, base_url)
    return figures


def _pairs(folder: Path, base_url: str) -> int:
    both = 0
    for attempt in range(PAIRS):
        home = folder / f"pair-{attempt}"
        runs = [
            subprocess.Popen(
                _generate(write_prompts(folder / f"pair-{attempt}-{side}.jsonl", 3, side)),
                env=_env(home, base_url, MODEL_STUDIO_DATABASE_URL=f"sqlite:///{home}-{side}.db"),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for side in ("a", "b")
        ]
        both += all(run.wait(timeout=600) == 0 for run in runs)
        _stop_server(home, base_url)
    return both


def end_to_end(folder: Path) -> dict[str, float]:
    """Command start to exit for 15 jobs of 5 s, server warm, over the perfect makespan."""
    home = folder / "e2e"
    walls = []
    with emulator("--job-latency-s", str(JOB_S)) as base_url:
        env = _env(home, base_url, MODEL_STUDIO_SHARD_SIZE="1")
        _run(_generate(write_prompts(folder / "warm-up.jsonl", 1, "w")), env)
        for run in range(END_TO_END_RUNS):
            dataset = write_prompts(folder / f"e2e-{run}.jsonl", JOBS, f"r{run}-")
            walls.append(_run(_generate(dataset), env)[0])
        _stop_server(home, base_url)
    wall = statistics.median(walls)
    return {
        f"{JOBS} jobs of {JOB_S:.0f} s, command start to exit (s)": wall,
        "ratio to the perfect client's makespan": wall / IDEAL_S,
    }


def measure() -> tuple[dict[str, tuple[float, int, bool]], dict[str, float]]:
    """Every figure of the ad-hoc path, in one temporary folder."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        mistakes = api_mistakes(folder)
        figures = server_figures(folder) | end_to_end(folder)
    return mistakes, figures
