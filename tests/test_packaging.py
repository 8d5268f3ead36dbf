"""What a user installs: the wheel carries the example datasets and runs ``studio-flows demo``.

The slow test is the whole path of a plain ``pip install``: build the wheel from this clone,
install it with its dependencies into a fresh virtual environment outside the clone (no
``--system-site-packages``, so a file the wheel forgets is missing there too), and run that
environment's ``studio-flows demo`` from a folder outside the clone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import pytest

from studio_flows.emulator import EmulatorConfig, EmulatorServer
from studio_flows.resources import EXAMPLE_DATASETS, examples_dir

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_SUFFIXES = {".jsonl", ".csv", ".parquet"}  # the examples' datasets, not their scripts


def test_examples_dir_holds_every_example_dataset() -> None:
    found = examples_dir()

    data = [p.name for p in found.iterdir() if p.suffix in DATA_SUFFIXES]
    assert sorted(data) == sorted(EXAMPLE_DATASETS)
    # From this editable install: the clone's own top-level folder (linked, not copied).
    assert (found / EXAMPLE_DATASETS[0]).resolve() == REPO_ROOT / "examples" / EXAMPLE_DATASETS[0]


def test_the_package_ships_exactly_the_example_datasets() -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    shipped = pyproject["tool"]["setuptools"]["package-data"]["studio_flows.examples"]
    on_disk = sorted(
        p.name for p in (REPO_ROOT / "examples").iterdir() if p.suffix in DATA_SUFFIXES
    )

    assert sorted(EXAMPLE_DATASETS) == on_disk  # a new example file must be shipped too
    assert sorted(shipped) == on_disk


def run(args: list[str], *, cwd: Path, timeout_s: float, env: dict[str, str] | None = None) -> str:
    """Run a command to completion; fail the test with its output when it exits non-zero."""
    done = subprocess.run(
        args,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def build_wheel(out: Path) -> Path:
    """``pip wheel --no-deps`` of this clone, as a user or a CI job would build it."""
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), "."],
        cwd=REPO_ROOT,
        timeout_s=300,
    )
    (wheel,) = out.glob("studio_flows-*.whl")
    return wheel


def user_env(home: Path) -> dict[str, str]:
    """A shell with nothing of this test run: no Prefect or Model Studio settings, a new home."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "MODEL_STUDIO_", "VIRTUAL_ENV", "PYTHON"))
    }
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    return env


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment outside the clone with the built wheel installed."""
    tmp = tmp_path_factory.mktemp("wheel")
    wheel = build_wheel(tmp / "dist")
    with zipfile.ZipFile(wheel) as archive:
        shipped = set(archive.namelist())
    assert {f"studio_flows/examples/{n}" for n in EXAMPLE_DATASETS} <= shipped
    # The schema's Alembic revisions, which every database's first use reads.
    revisions = REPO_ROOT / "src" / "studio_flows" / "storage" / "_migrations" / "versions"
    assert {
        f"studio_flows/storage/_migrations/versions/{p.name}" for p in revisions.glob("v*.py")
    } <= shipped
    # One import root: nothing else at the top level of the wheel.
    top_level = {name.split("/")[0] for name in shipped}
    assert {name for name in top_level if not name.endswith(".dist-info")} == {"studio_flows"}

    venv = tmp / "user-venv"
    started = time.monotonic()
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp, timeout_s=120)
    pip_install = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)]
    run(pip_install, cwd=tmp, timeout_s=900)
    print(f"fresh venv + pip install of the wheel: {time.monotonic() - started:.1f} s")
    return venv


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_pip_installed_wheel_runs_the_demo_from_outside_the_clone(
    installed_wheel: Path, tmp_path: Path
) -> None:
    workdir = tmp_path / "somewhere-else"
    workdir.mkdir()
    studio_flows, env = (
        str(installed_wheel / "bin" / "studio-flows"),
        user_env(tmp_path / "prefect-home"),
    )
    started = time.monotonic()
    try:
        output = run([studio_flows, "demo"], cwd=workdir, env=env, timeout_s=600)
    finally:  # the local Prefect server the demo started must not outlive the test
        run([studio_flows, "server", "stop"], cwd=workdir, env=env, timeout_s=120)
    print(f"studio-flows demo from the installed wheel: {time.monotonic() - started:.1f} s")

    # Exit 0 means every row completed; the summary and the emulator's line say so too.
    assert "rows in source" in output and "answers completed" in output, output
    assert "Emulator: 4 jobs created, at most 3 active at once." in output, output
    assert "Traceback" not in output and "Warning" not in output, output
    # The demo's rows are in its own database, not in the user's folder's studio_flows.db.
    assert not (workdir / "studio_flows.db").exists()
    assert (tmp_path / "prefect-home" / "studio-flows" / "demo.db").is_file()


USERS_FLOW = """
from flows.report import summarise          # the team's own flows/ package
from tasks.jobs import TEAM_JOB             # ... and its own tasks/jobs.py
from studio_flows import GenerateOptions, generate_dataset

if __name__ == "__main__":
    summary = generate_dataset(
        GenerateOptions(dataset_path="prompts.jsonl", model_id="m", shard_size=2)
    )
    print(TEAM_JOB, summarise(summary.completed))
"""


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_users_project_with_its_own_flows_and_tasks_packages_imports_both(
    installed_wheel: Path, tmp_path: Path
) -> None:
    """Their flows/ and tasks/ (with a tasks/jobs.py, a name we use too) and ours coexist."""
    project = tmp_path / "team-project"
    for package, module, body in (
        ("flows", "report", "def summarise(n: int) -> str:\n    return f'{n} answers'\n"),
        ("tasks", "jobs", "TEAM_JOB = 'team job'\n"),
    ):
        (project / package).mkdir(parents=True)
        (project / package / "__init__.py").write_text("")
        (project / package / f"{module}.py").write_text(body)
    (project / "pipeline.py").write_text(USERS_FLOW)
    (project / "prompts.jsonl").write_text(
        "".join(f'{{"prompt": "question {i}?"}}\n' for i in range(4))
    )
    with EmulatorServer(EmulatorConfig(job_latency_s=0.05, tokens=["team-token"])) as emulator:
        env = user_env(tmp_path / "prefect-home")
        env.update(
            MODEL_STUDIO_TOKEN="team-token",
            MODEL_STUDIO_ORGANIZATION_ID="team",
            MODEL_STUDIO_BASE_URL=emulator.base_url,
            PREFECT_SERVER_ALLOW_EPHEMERAL_MODE="true",
            # Prefect gives its temporary server 20 s to start; a loaded CI machine has
            # taken longer, and this test is about imports, not that start.
            PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",
        )
        output = run(
            [str(installed_wheel / "bin" / "python"), "pipeline.py"],
            cwd=project,
            env=env,
            timeout_s=600,
        )
        created = emulator.stats()["jobs_created"]

    assert "team job 4 answers" in output, output
    assert created == 2
