"""Every command of README.md, docs/*.md and examples/README.md, run as a user types it.

The commands are read from the pages' ``bash`` blocks (``\\`` continues a line, ``#``
starts a comment), so a command that changes there fails here until its test changes too:
the table below must list exactly the commands the blocks hold. Only placeholders are
replaced: ``...`` and ``<model-id>`` by the emulator's values, a port by a free one, an
optional ``[...]`` part left out or given a scratch folder. Each runs as a subprocess: the
installed ``studio-flows`` and ``prefect`` console scripts, ``make``, the venv's Python.
The table is grouped by page (a bold row names it); a page of docs/ with a ``bash`` block
needs a group of its own.

| command | test |
| --- | --- |
| **README.md** | |
| `make demo` | test_readme.py::test_make_demo_prints_what_the_readme_shows |
| `make test` | test_readme.py::test_make_test_runs_ruff_mypy_and_the_suite (dry run: it is this suite) |
| `python -m pip wheel --no-deps -w dist .` | test_packaging.py::test_a_pip_installed_wheel_runs_the_demo_from_outside_the_clone |
| `pip install dist/studio_flows-0.1.0-py3-none-any.whl` | test_packaging.py::test_a_pip_installed_wheel_runs_the_demo_from_outside_the_clone |
| `studio-flows demo` | test_packaging.py::test_a_pip_installed_wheel_runs_the_demo_from_outside_the_clone |
| `export MODEL_STUDIO_TOKEN=...` | test_readme.py::test_the_use_it_block_generates_and_exports |
| `export MODEL_STUDIO_ORGANIZATION_ID=...` | test_readme.py::test_the_use_it_block_generates_and_exports |
| `studio-flows generate prompts.jsonl --model-id <model-id> [--database-url postgresql://...]` | test_readme.py::test_the_use_it_block_generates_and_exports |
| `studio-flows results --dataset prompts.jsonl --format jsonl --output answers.jsonl` | test_readme.py::test_the_use_it_block_generates_and_exports |
| `studio-flows results prompts.parquet --format csv --output answers.csv` | test_readme.py::test_the_use_it_block_generates_and_exports |
| `python examples/own_flow.py --model-id <model-id>` | test_readme.py::test_the_own_flow_example_runs_as_typed |
| `prefect config set PREFECT_API_URL=http://prefect.example.internal:4200/api` | test_readme.py::test_prefect_config_set_points_the_profile_at_the_server |
| `prefect work-pool create studio-flows --type process` | test_readme.py::test_the_three_commands_and_an_adhoc_run |
| `prefect deploy --all` | test_readme.py::test_the_three_commands_and_an_adhoc_run |
| `prefect worker start --pool studio-flows` | test_readme.py::test_the_three_commands_and_an_adhoc_run (a run to the end: deployments/test_deployments.py::test_deploy_all_then_a_process_worker_runs_the_adhoc_deployment) |
| `studio-flows generate examples/eval.jsonl --model-id <model-id> --id-column id --template '{{ question }}' --response-schema examples/answer.schema.json` | test_readme.py::test_the_training_block_generates_with_a_schema_and_exports |
| `studio-flows export-training --dataset eval.jsonl --model-id <model-id> --output train.jsonl --eval-output heldout.jsonl` | test_readme.py::test_the_training_block_generates_with_a_schema_and_exports |
| **docs/command-line.md** | |
| `python -c …` | test_readme.py::test_the_sql_block_dry_runs_generates_and_exports (the table the others read) |
| `studio-flows generate --sql 'SELECT id, question FROM faq WHERE id > 0' --dataset-name faq --id-column id --template 'Answer in one word: {{ question }}' --model-id <model-id> --dry-run` | test_readme.py::test_the_sql_block_dry_runs_generates_and_exports |
| `studio-flows generate --sql 'SELECT id, question FROM faq WHERE id > 0' --dataset-name faq --id-column id --template 'Answer in one word: {{ question }}' --model-id <model-id>` | test_readme.py::test_the_sql_block_dry_runs_generates_and_exports |
| `studio-flows results --dataset faq --format csv --output faq.csv` | test_readme.py::test_the_sql_block_dry_runs_generates_and_exports |
| `studio-flows generate examples/eval.jsonl --model-id <model-id> --model-id <model-id>-tuned --id-column id --template '{{ question }}' --expected-column expected` | test_readme.py::test_the_compare_models_block_scores_and_exports_side_by_side |
| `studio-flows results --dataset eval.jsonl --wide --format csv --output side_by_side.csv` | test_readme.py::test_the_compare_models_block_scores_and_exports_side_by_side |
| **docs/configuration.md** | |
| `prefect block register -m studio_flows.blocks` | test_readme.py::test_the_three_commands_and_an_adhoc_run |
| `studio-flows db upgrade [--database-url postgresql://...]` | test_readme.py::test_db_upgrade_upgrades_an_old_database_as_typed |
| **docs/deployments.md** | |
| `prefect deployment run generate-dataset/adhoc-generation --params …` | test_readme.py::test_the_three_commands_and_an_adhoc_run |
| `prefect concurrency-limit inspect model-studio` | test_readme.py::test_the_fair_use_limit_commands |
| `prefect gcl update tag:model-studio --limit 5` | test_readme.py::test_the_fair_use_limit_commands |
| **docs/emulator.md** | |
| `studio-flows emulator --port 8000` | test_readme.py::test_the_emulator_command_serves_and_stops_on_sigint |
| **docs/evaluation.md** | |
| `studio-flows generate examples/eval.jsonl --id-column id --template '{{ question }}' --expected-column expected --model-id <base-model-id> --model-id <tuned-model-id> --judge-model <judge-model-id>` | test_readme.py::test_the_evaluation_block_judges_and_shows_the_scores |
| `studio-flows scores --dataset eval.jsonl` | test_readme.py::test_the_evaluation_block_judges_and_shows_the_scores |
| `studio-flows results --wide --dataset eval.jsonl --format csv --output scored.csv` | test_readme.py::test_the_evaluation_block_judges_and_shows_the_scores |
| **examples/README.md** | |
| `.venv/bin/python examples/make_examples.py [OUTPUT_DIR]` | test_readme.py::test_make_examples_regenerates_the_shipped_datasets |

Commands named in the prose, outside the blocks: `prefect --no-prompt deploy --all`,
`prefect deploy --name nightly-generation` and `prefect deployment run
generate-dataset/nightly-generation` (deployments/test_deployments.py's slow tests), `studio-flows
serve [--nightly-dataset PATH]` (deployments/test_deployments.py::test_serve_and_deploy_on_one_server_leave_each_other_alone,
deployments/test_deployments.py::test_the_serve_command_passes_the_nightly_dataset_and_the_limit).
"""  # noqa: E501 - a table row is one line

from __future__ import annotations

import csv
import os
import re
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
from sqlalchemy import make_url

from studio_flows.emulator import EmulatorServer
from studio_flows.storage import SCHEMA_VERSION
from tests.fixtures.cli_runs import CliResult, interrupt, run_cli
from tests.fixtures.emulator import TEST_ORGANIZATION
from tests.fixtures.old_schemas import create_old_database, old_result_row
from tests.fixtures.prefect_server import PrefectServer, free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
READMES = (
    REPO_ROOT / "README.md",
    *sorted((REPO_ROOT / "docs").glob("*.md")),
    REPO_ROOT / "examples" / "README.md",
)
BIN = Path(sys.executable).parent  # the venv's console scripts: what `studio-flows` runs
BLOCK = re.compile(r"^( *)```bash\n(.*?)^\1```", re.M | re.S)
TEXT_BLOCK = re.compile(r"^```text\n(.*?)^```", re.M | re.S)
MODEL = "readme-model"


# --------------------------------------------------------------------------- the commands


def readme_commands(pages: tuple[Path, ...] = READMES) -> list[str]:
    """Each command of the pages' bash blocks, comments dropped, continuations joined."""
    commands: list[str] = []
    for page in pages:
        for _indent, body in BLOCK.findall(page.read_text(encoding="utf-8")):
            joined = body.replace("\\\n", " ")
            commands += [" ".join(words) for words in map(_words, joined.splitlines()) if words]
    return commands


def _words(line: str) -> list[str]:
    return [shlex.quote(word) if " " in word else word for word in shlex.split(line, True)]


def command(prefix: str) -> list[str]:
    """The one README command that starts with ``prefix``, as argv."""
    (found,) = [c for c in readme_commands() if c.startswith(prefix)]
    return shlex.split(found)


def substitute(argv: list[str], values: dict[str, str]) -> list[str]:
    """``argv`` with its placeholders replaced and ``[optional]`` parts left out."""
    out: list[str] = []
    optional = False
    for word in argv:
        if word.startswith("["):
            optional = word not in values and not word.endswith("]")
            if word in values:
                out.append(values[word])
            continue
        if optional:
            optional = not word.endswith("]")
            continue
        for placeholder, value in values.items():
            word = word.replace(placeholder, value)
        out.append(word)
    return out


def _tabled(doc: str = __doc__ or "") -> dict[str, str]:
    rows = re.findall(r"^\| `(.+?)` \| (.+) \|$", doc, re.M)
    return dict(rows)


def _covered(commands: list[str], tabled: dict[str, str]) -> list[str]:
    """The commands no row of ``tabled`` names (a row ending in `` …`` names a prefix)."""
    return [
        c
        for c in commands
        if not any(c == t or (t.endswith(" …") and c.startswith(t[:-2])) for t in tabled)
    ]


def test_the_docstring_table_lists_every_readme_command_and_no_other() -> None:
    tabled = _tabled()
    commands = readme_commands()
    assert _covered(commands, tabled) == []
    assert len(tabled) == len(commands), sorted(tabled)
    named = re.findall(r"((?:\w+/)?test_\w+\.py)::(test_\w+)", __doc__ or "")
    for module, name in named:
        assert f"def {name}(" in (REPO_ROOT / "tests" / module).read_text(), (module, name)


def test_the_docstring_table_groups_each_command_under_its_page() -> None:
    groups = re.split(r"^\| \*\*(.+?)\*\* \| \|$", __doc__ or "", flags=re.M)[1:]
    pairs = zip(groups[::2], groups[1::2], strict=True)
    tabled = {REPO_ROOT / name: _tabled(rows) for name, rows in pairs}
    with_commands = [page for page in READMES if readme_commands((page,))]
    assert sorted(tabled) == sorted(with_commands)
    for page, rows in tabled.items():
        commands = readme_commands((page,))
        assert _covered(commands, rows) == [], page
        assert len(rows) == len(commands), page


def test_the_readme_opens_with_make_demo_and_make_test() -> None:
    assert readme_commands()[:2] == ["make demo", "make test"]


# --------------------------------------------------------------------------- helpers


def _env(prefect_home: Path, **extra: str) -> dict[str, str]:
    """A user's shell: the venv's scripts first on PATH, no settings of this test run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MODEL_STUDIO_"))}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        PREFECT_HOME=str(prefect_home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        **extra,
    )
    return env


def _run(argv: list[str], env: dict[str, str], cwd: Path, timeout_s: float = 300) -> CliResult:
    done = run_cli(argv, env, cwd, timeout_s)
    assert "Traceback" not in done.output, done
    return done


def _read_until(process: subprocess.Popen[str], text: str, timeout_s: float) -> str:
    """What ``process`` printed until a line holding ``text`` (fails after ``timeout_s``)."""
    assert process.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline and selector.select(deadline - time.monotonic()):
            line = process.stdout.readline()
            seen.append(line)
            if text in line or not line:
                return line
    raise AssertionError(f"no line with {text!r} in {timeout_s} s:\n{''.join(seen)}")


def _lines_in_order(expected: list[str], output: str) -> None:
    """Each pattern matches a line of ``output``, after the line the previous one matched."""
    lines = [line.strip() for line in output.splitlines()]
    at = 0
    for pattern in expected:
        while at < len(lines) and not re.fullmatch(pattern, lines[at]):
            at += 1
        assert at < len(lines), f"no line matching {pattern!r} in order in:\n{output}"
        at += 1


def _shown_lines(text: str) -> list[str]:
    """Patterns for the lines a README ``text`` block shows ("..." lines are left out)."""
    patterns = []
    for line in (raw.strip() for raw in text.splitlines()):
        if not line or "..." in line:
            continue
        pattern = re.escape(line)
        pattern = re.sub(r"(\\ )+", " +", pattern)  # column widths follow the widest value
        pattern = re.sub("─+", "─+", pattern)
        pattern = pattern.replace("127\\.0\\.0\\.1:45643", "127\\.0\\.0\\.1:\\d+")
        pattern = re.sub(r"\d+\\\.\d+", r"\\d+\\.\\d+", pattern)  # the wall time
        # The demo's database is under the test's PREFECT_HOME, not the README's.
        pattern = pattern.replace(re.escape("/home/you/.prefect/"), r"\S+/")
        patterns.append(pattern)
    return patterns


# --------------------------------------------------------------------------- the first screen


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_make_demo_prints_what_the_readme_shows(tmp_path: Path, shared_prefect_home: Path) -> None:
    # A user's own database setting: the demo leaves it alone and keeps a database of its own.
    mine = tmp_path / "mine.db"
    # The session's local server: a first start is tests/cli/test_local_server.py's subject.
    env = _env(shared_prefect_home, MODEL_STUDIO_DATABASE_URL=f"sqlite:///{mine}")
    demo_db = shared_prefect_home / "studio-flows" / "demo.db"
    demo_db.unlink(missing_ok=True)  # the first run below is a first demo
    # The README's first text block is the demo's output.
    shown = TEXT_BLOCK.findall((REPO_ROOT / "README.md").read_text(encoding="utf-8"))[0]

    first = _run(command("make demo"), env, REPO_ROOT, timeout_s=800)
    second = _run(command("make demo"), env, REPO_ROOT, timeout_s=800)

    assert first.returncode == 0, first
    _lines_in_order(_shown_lines(shown), first.stdout)
    # "Run it twice: the second run finds every row already done and submits no job."
    assert second.returncode == 0, second
    _lines_in_order(
        [r"│ answers already done +│ +40 │", r"Emulator: 0 jobs created.*"], second.stdout
    )
    assert demo_db.is_file()
    assert not mine.exists()


@pytest.mark.slow
def test_make_test_runs_ruff_mypy_and_the_suite() -> None:
    """`make test` is this very suite: run dry, it must name ruff, mypy and pytest."""
    argv = command("make test")
    dry = subprocess.run(
        [argv[0], "-n", *argv[1:]], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    steps = [line.split()[0].rsplit("/", 1)[-1] for line in dry.stdout.splitlines() if line]
    assert [s for s in steps if s in ("ruff", "mypy", "pytest")] == [
        "ruff", "ruff", "mypy", "pytest",
    ]  # fmt: skip
    # One process runs the suite and the docstring examples.
    (suite,) = [line for line in dry.stdout.splitlines() if "pytest" in line.split()[0]]
    assert "-m" not in suite.split()  # the whole suite, slow tests included
    assert "tests" in suite.split()
    assert {"--doctest-modules", "--pyargs", "studio_flows"} <= set(suite.split())


# --------------------------------------------------------------------------- use it


@pytest.mark.slow
def test_the_use_it_block_generates_and_exports(
    emulator: EmulatorServer, prefect_server: str, tmp_path: Path
) -> None:
    for name in ("prompts.jsonl", "prompts.parquet"):
        shutil.copy(REPO_ROOT / "examples" / name, tmp_path / name)
    env = _env(tmp_path / "prefect", PREFECT_API_URL=prefect_server,
               MODEL_STUDIO_BASE_URL=emulator.base_url)  # fmt: skip
    for name, value in (("MODEL_STUDIO_TOKEN", emulator.token),
                        ("MODEL_STUDIO_ORGANIZATION_ID", TEST_ORGANIZATION)):  # fmt: skip
        (assignment,) = substitute(command(f"export {name}=")[1:], {"...": value})
        env.update([assignment.split("=", 1)])
    values = {"<model-id>": MODEL}

    generated = _run(substitute(command("studio-flows generate prompts"), values), env, tmp_path)
    by_name = _run(command("studio-flows results --dataset prompts"), env, tmp_path)
    by_file = _run(command("studio-flows results prompts.parquet"), env, tmp_path)

    assert generated.returncode == 0, generated
    assert re.search(r"│ answers completed +│ +40 │", generated.stdout), generated
    assert by_name.returncode == 0, by_name
    assert by_name.stderr.strip() == "wrote 40 rows to answers.jsonl"
    assert len((tmp_path / "answers.jsonl").read_text(encoding="utf-8").splitlines()) == 40
    assert by_file.stderr.strip() == "wrote 40 rows to answers.csv"
    csv_lines = (tmp_path / "answers.csv").read_text(encoding="utf-8").splitlines()
    assert csv_lines[0].startswith("line,dataset,")
    assert [line.split(",")[0] for line in csv_lines[1:]] == [str(n) for n in range(1, 41)]


def test_db_upgrade_upgrades_an_old_database_as_typed(tmp_path: Path, database_url: str) -> None:
    """Once as typed (the default database, what the README prints), once with the option."""
    work = tmp_path / "work"  # its own folder: the sqlite case of database_url is in tmp_path
    work.mkdir()
    create_old_database(f"sqlite:///{work}/studio_flows.db", 2, [old_result_row(0)])
    create_old_database(database_url, 2, [old_result_row(0)])
    env = _env(tmp_path / "prefect", MODEL_STUDIO_DATABASE_AUTO_UPGRADE="false")
    typed = substitute(command("studio-flows db upgrade"), {})
    given = substitute(
        command("studio-flows db upgrade"),
        {"[--database-url": "--database-url", "postgresql://...]": database_url},
    )

    outputs = [_run(argv, env, work).stdout.strip() for argv in (typed, typed, given)]

    assert outputs[:2] == [
        f"upgraded sqlite:///studio_flows.db from schema 2 to {SCHEMA_VERSION}",
        f"sqlite:///studio_flows.db is already at schema {SCHEMA_VERSION}",
    ]
    assert outputs[2].startswith("upgraded ")
    assert outputs[2].endswith(f" from schema 2 to {SCHEMA_VERSION}")
    password = make_url(database_url).password
    assert password is None or password not in outputs[2]


@pytest.mark.slow
def test_the_sql_block_dry_runs_generates_and_exports(
    emulator: EmulatorServer, prefect_server: str, tmp_path: Path
) -> None:
    env = _env(tmp_path / "prefect", PREFECT_API_URL=prefect_server,
               MODEL_STUDIO_BASE_URL=emulator.base_url, MODEL_STUDIO_TOKEN=emulator.token,
               MODEL_STUDIO_ORGANIZATION_ID=TEST_ORGANIZATION)  # fmt: skip
    dry, run = (
        substitute(shlex.split(c), {"<model-id>": MODEL})
        for c in readme_commands()
        if c.startswith("studio-flows generate --sql")
    )
    emulator.reset()

    table = _run(command("python -c"), env, tmp_path)  # faq, in the default results database
    assert table.returncode == 0, table
    planned = _run(dry, env, tmp_path)
    assert planned.returncode == 0, planned
    assert re.search(r"│ jobs that would be submitted +│ +1 │", planned.stdout), planned
    assert emulator.stats()["jobs_created"] == 0
    generated = _run(run, env, tmp_path)
    assert re.search(r"│ answers completed +│ +2 │", generated.stdout), generated  # WHERE id > 0
    exported = _run(command("studio-flows results --dataset faq"), env, tmp_path)
    assert exported.stderr.strip() == "wrote 2 rows to faq.csv", exported
    assert "Answer in one word: Largest planet?" in (tmp_path / "faq.csv").read_text()
    assert "France" not in (tmp_path / "faq.csv").read_text()


def _eval_example_env(
    emulator: EmulatorServer, prefect_server: str, tmp_path: Path
) -> dict[str, str]:
    """examples/eval.jsonl copied under ``tmp_path``, and a run's environment at the emulator."""
    (tmp_path / "examples").mkdir()
    shutil.copy(REPO_ROOT / "examples" / "eval.jsonl", tmp_path / "examples" / "eval.jsonl")
    return _env(tmp_path / "prefect", PREFECT_API_URL=prefect_server, COLUMNS="200",
                MODEL_STUDIO_BASE_URL=emulator.base_url, MODEL_STUDIO_TOKEN=emulator.token,
                MODEL_STUDIO_ORGANIZATION_ID=TEST_ORGANIZATION)  # fmt: skip


@pytest.mark.slow
def test_the_compare_models_block_scores_and_exports_side_by_side(
    emulator: EmulatorServer, prefect_server: str, tmp_path: Path
) -> None:
    env = _eval_example_env(emulator, prefect_server, tmp_path)
    emulator.reset()

    compared = _run(
        substitute(
            command("studio-flows generate examples/eval.jsonl --model-id <model-id> --model-id"),
            {"<model-id>": MODEL},
        ),
        env,
        tmp_path,
    )
    assert compared.returncode == 0, compared
    assert emulator.stats()["jobs_created"] == 2  # 8 rows, one job per model
    # The emulator's answers repeat the question: none is the expected answer alone.
    for model in (MODEL, f"{MODEL}-tuned"):
        assert re.search(rf"│ {re.escape(model)} +│ +8 │.*│ +0\.0 % +│", compared.stdout), compared
    exported = _run(command("studio-flows results --dataset eval.jsonl"), env, tmp_path)
    assert exported.stderr.strip() == "wrote 8 rows to side_by_side.csv", exported
    with (tmp_path / "side_by_side.csv").open(encoding="utf-8", newline="") as stream:
        header = next(csv.reader(stream))
    assert header == [
        "row_key", "expected", "prompt", f"answer:{MODEL}", f"status:{MODEL}",
        f"answer:{MODEL}-tuned", f"status:{MODEL}-tuned",
    ]  # fmt: skip


def test_the_evaluation_block_judges_and_shows_the_scores(
    emulator: EmulatorServer, prefect_server: str, tmp_path: Path
) -> None:
    env = _eval_example_env(emulator, prefect_server, tmp_path)
    emulator.reset()
    emulator.configure(json_answers=True)  # the judge answers its rubric in JSON
    models = {"<base-model-id>": "base", "<tuned-model-id>": "tuned", "<judge-model-id>": "judge"}
    page = (REPO_ROOT / "docs" / "evaluation.md").read_text(encoding="utf-8")

    judged = _run(
        substitute(command("studio-flows generate examples/eval.jsonl --id-column"), models),
        env,
        tmp_path,
    )
    assert judged.returncode == 0, judged
    assert emulator.stats()["jobs_created"] == 3  # 8 rows: a job per model, one of verdicts
    assert emulator.stats()["max_active_jobs"] <= 3
    sentence = "tuned wins 5, ties 0, loses 3 against base (p = 0.6484)"
    assert sentence in judged.stdout and sentence in page, judged
    for line in ("│ judge │ base  │           8 │ 2.75 [1.88, 3.75] │", "5/0/3 │ 0.6484 │"):
        assert line in judged.stdout and line in page, judged
    history = _run(command("studio-flows scores --dataset eval.jsonl"), env, tmp_path)
    assert history.returncode == 0, history
    assert re.search(r"│ judge │ \w+ +│ tuned │ 8 +│ 2\.88 │ 0 +│", history.stdout), history
    exported = _run(command("studio-flows results --wide"), env, tmp_path)
    assert exported.stderr.strip() == "wrote 8 rows to scored.csv", exported
    with (tmp_path / "scored.csv").open(encoding="utf-8", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert list(rows[0])[-2:] == ["score:base", "score:tuned"]
    assert sum(float(row["score:tuned"]) for row in rows) / len(rows) == 2.875


def test_the_training_block_generates_with_a_schema_and_exports(
    emulator: EmulatorServer, prefect_server: str, tmp_path: Path
) -> None:
    (tmp_path / "examples").mkdir()
    for name in ("eval.jsonl", "answer.schema.json"):
        shutil.copy(REPO_ROOT / "examples" / name, tmp_path / "examples" / name)
    env = _env(tmp_path / "prefect", PREFECT_API_URL=prefect_server, COLUMNS="200",
               MODEL_STUDIO_BASE_URL=emulator.base_url, MODEL_STUDIO_TOKEN=emulator.token,
               MODEL_STUDIO_ORGANIZATION_ID=TEST_ORGANIZATION)  # fmt: skip
    emulator.reset()
    emulator.configure(json_answers=True)  # a model that answers in JSON

    generated = _run(
        substitute(command("studio-flows generate examples/eval.jsonl --model-id <model-id> --id"),
                   {"<model-id>": MODEL}),
        env,
        tmp_path,
    )  # fmt: skip
    assert generated.returncode == 0, generated
    assert re.search(r"│ invalid answers +│ +0 │", generated.stdout), generated
    exported = _run(
        substitute(command("studio-flows export-training"), {"<model-id>": MODEL}), env, tmp_path
    )

    assert exported.returncode == 0, exported
    match = re.fullmatch(
        r"wrote (\d+) rows to train\.jsonl, (\d+) rows to heldout\.jsonl; "
        r"manifest train\.jsonl\.manifest\.json",
        exported.stdout.strip(),
    )
    assert match and int(match[1]) + int(match[2]) == 8, exported
    lines = (tmp_path / "train.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == int(match[1])
    assert (tmp_path / "train.jsonl.manifest.json").exists()


@pytest.mark.slow
def test_the_emulator_command_serves_and_stops_on_sigint(tmp_path: Path) -> None:
    port = str(free_port())
    argv = [port if word == "8000" else word for word in command("studio-flows emulator")]
    process = subprocess.Popen(
        argv, env=_env(tmp_path / "prefect"), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        assert base_url == f"MODEL_STUDIO_BASE_URL=http://127.0.0.1:{port}/api/v1"
        answer = httpx.get(f"{base_url.split('=', 1)[1]}/organizations/o/generate/j")
        assert answer.status_code == 401  # "a bearer-token check"
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert out.strip().endswith("emulator stopped")


# --------------------------------------------------------------------------- run on a schedule


@pytest.fixture(scope="module")
def own_prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """A Prefect server of this module's own: its deployments and limit touch no other test."""
    server = PrefectServer(tmp_path_factory.mktemp("readme-prefect")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.slow
def test_prefect_config_set_points_the_profile_at_the_server(tmp_path: Path) -> None:
    env = _env(tmp_path / "prefect")
    set_done = _run(command("prefect config set"), env, tmp_path, timeout_s=120)
    view = _run(["prefect", "config", "view"], env, tmp_path, timeout_s=120)
    assert set_done.returncode == 0, set_done
    assert "PREFECT_API_URL='http://prefect.example.internal:4200/api'" in view.stdout, view


@pytest.mark.slow
def test_the_three_commands_and_an_adhoc_run(
    own_prefect_server: PrefectServer, tmp_path: Path
) -> None:
    env = own_prefect_server.env(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                                 PWD=str(REPO_ROOT))  # fmt: skip

    pool = _run(command("prefect work-pool create"), env, REPO_ROOT)
    blocks = _run(command("prefect block register"), env, REPO_ROOT)
    deployed = _run(command("prefect deploy --all"), env, REPO_ROOT)
    worker = subprocess.Popen(
        command("prefect worker start"), cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        started = _read_until(worker, "started", timeout_s=120)
    finally:
        interrupt(worker)  # Ctrl-C; no flow run exists yet for it to take
    run = _run(command("prefect deployment run generate-dataset/adhoc-generation"), env, REPO_ROOT)

    assert pool.returncode == 0 and "Created work pool 'studio-flows'" in pool.stdout, pool
    assert blocks.returncode == 0 and "Successfully registered 2 blocks" in blocks.output, blocks
    assert deployed.returncode == 0, deployed
    for name in ("nightly-generation", "adhoc-generation"):
        assert f"generate-dataset/{name}" in deployed.stdout, deployed
    assert "Worker" in started, started
    assert run.returncode == 0 and "Created flow run" in run.stdout, run


@pytest.mark.slow
def test_the_fair_use_limit_commands(own_prefect_server: PrefectServer, tmp_path: Path) -> None:
    # A terminal wide enough that Rich does not cut the tag's name.
    env = own_prefect_server.env(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                                 COLUMNS="160")  # fmt: skip
    # What the first flow run does on a server without the limit.
    _run(["prefect", "gcl", "create", "tag:model-studio", "--limit", "3"], env, tmp_path)

    inspected = _run(command("prefect concurrency-limit inspect"), env, tmp_path)
    updated = _run(command("prefect gcl update"), env, tmp_path)
    after = _run(["prefect", "gcl", "inspect", "tag:model-studio"], env, tmp_path)

    assert inspected.returncode == 0, inspected
    assert re.search(r"│ model-studio +│ 3 ", inspected.stdout), inspected
    assert updated.returncode == 0, updated
    assert re.search(r"limit\W+5\b", after.stdout), after


# --------------------------------------------------------------------------- examples/README.md


@pytest.mark.slow
@pytest.mark.slow
def test_the_own_flow_example_runs_as_typed(
    emulator: EmulatorServer, prefect_server: str, tmp_path: Path
) -> None:
    argv = substitute(command("python examples/own_flow.py"), {"<model-id>": MODEL})
    env = _env(
        tmp_path / "prefect",
        PREFECT_API_URL=prefect_server,
        MODEL_STUDIO_BASE_URL=emulator.base_url,
        MODEL_STUDIO_TOKEN=emulator.token,
        MODEL_STUDIO_ORGANIZATION_ID=TEST_ORGANIZATION,
    )

    done = _run(argv, env, REPO_ROOT)

    assert done.returncode == 0, done
    assert f"  -> {MODEL} answers: What is 12 times 12?" in done.stdout, done
    assert emulator.stats()["max_active_jobs"] <= 3


def test_make_examples_regenerates_the_shipped_datasets(tmp_path: Path) -> None:
    argv = substitute(command(".venv/bin/python examples/make_examples.py"),
                      {"[OUTPUT_DIR]": str(tmp_path)})  # fmt: skip
    done = _run(argv, _env(tmp_path / "prefect"), REPO_ROOT, timeout_s=120)

    assert done.returncode == 0, done
    examples = REPO_ROOT / "examples"
    for name in ("prompts.jsonl", "prompts.csv"):
        assert (tmp_path / name).read_bytes() == (examples / name).read_bytes(), name
    assert pq.read_table(tmp_path / "prompts.parquet").equals(
        pq.read_table(examples / "prompts.parquet")
    )
