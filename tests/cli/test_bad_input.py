"""Bad input and bad configuration through `studio-flows generate`: exit 2, one clear message.

Hypothesis writes JSONL, CSV and Parquet files with one bad record among good ones (broken
JSON, missing columns, wrong types, huge lines, binary garbage, non-UTF-8) or no bytes at
all. Most examples call the typer app in-process (typer's CliRunner; Prefect starts once,
the session's ``prefect_test_harness``); a few real subprocesses prove that nothing prints
a traceback. Under ``--on-bad-rows=fail`` the emulator sees no job; under ``skip`` the good
rows complete and the skipped ones are listed.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from studio_flows.cli import app
from studio_flows.emulator import EmulatorServer
from tests.fixtures.cli_runs import (
    DATABASES,
    MODEL,
    SECRET_TOKEN,
    STUDIO_FLOWS,
    assert_every_row_completed_once,
    cli_env,
    finish_cli,
    generate_args,
    ledger,
    run_cli,
    start_cli,
)
from tests.fixtures.prefect_server import free_port

_counter = itertools.count()


@dataclass
class BadFile:
    path: Path
    kind: str
    line: int | None  # the line/row the error must name; None: a whole-file problem
    empty: bool = False


def _good(i: int) -> dict[str, object]:
    return {"id": f"row-{i}", "prompt": f"question {i}?"}


def _write_jsonl(path: Path, good: int, at: int, kind: str, garbage: bytes) -> BadFile:
    bad = {
        "broken json": b'{"id": "x", "prompt": "unterminated',
        "missing column": b'{"id": "x", "text": "no prompt here"}',
        "wrong type": b'{"id": "x", "prompt": 42}',
        "huge line": b'{"id": "x", "prompt": "' + b"a" * 3_000_000,  # broken, 3 MB
        "binary garbage": b"\xff\xfe" + garbage,
        "non-utf8": b'{"id": "x", "prompt": "caf\xe9 cr\xe8me"}',
    }[kind]
    lines = [json.dumps(_good(i)).encode() for i in range(good)]
    lines.insert(at, bad)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return BadFile(path, kind, at + 1)


def _write_csv(path: Path, good: int, at: int, kind: str, garbage: bytes) -> BadFile:
    if kind == "missing column":
        rows = [b"id,text"] + [f"row-{i},question {i}?".encode() for i in range(good + 1)]
        path.write_bytes(b"\n".join(rows) + b"\n")
        return BadFile(path, kind, None)
    bad = {
        "wrong field count": b"x,one,two,three",
        "empty prompt": b"x,",
        "binary garbage": b"\xff\xfe" + garbage,
        "non-utf8": b"x,caf\xe9 cr\xe8me",
        "huge line": b"x," + b"b" * 3_000_000 + b",extra",
    }[kind]
    rows = [f"row-{i},question {i}?".encode() for i in range(good)]
    rows.insert(at, bad)
    path.write_bytes(b"id,prompt\n" + b"\n".join(rows) + b"\n")
    return BadFile(path, kind, at + 2)  # line 1 is the header


def _write_parquet(path: Path, good: int, at: int, kind: str, garbage: bytes) -> BadFile:
    ids = [f"row-{i}" for i in range(good + 1)]
    prompts: list[object] = [f"question {i}?" for i in range(good + 1)]
    if kind == "garbage file":
        path.write_bytes(b"PAR1" + garbage + b"not parquet")
        return BadFile(path, kind, None)
    if kind == "missing column":
        table = pa.table({"id": ids, "text": prompts})
        pq.write_table(table, path)
        return BadFile(path, kind, None)
    if kind == "null prompt":
        prompts[at] = None
    elif kind == "wrong type":
        # A struct where a string belongs (a mixed column cannot be written at all).
        table = pa.table(
            {
                "id": ids,
                "prompt": pa.array([{"n": 1} if i == at else {"n": 0} for i in range(good + 1)]),
            }
        )
        pq.write_table(table, path)
        return BadFile(path, kind, at + 1)
    pq.write_table(pa.table({"id": ids, "prompt": pa.array(prompts, pa.string())}), path)
    return BadFile(path, kind, at + 1)


KINDS = {
    "jsonl": (
        _write_jsonl,
        ["broken json", "missing column", "wrong type", "huge line", "binary garbage", "non-utf8"],
    ),
    "csv": (
        _write_csv,
        [
            "missing column",
            "wrong field count",
            "empty prompt",
            "binary garbage",
            "non-utf8",
            "huge line",
        ],
    ),
    "parquet": (_write_parquet, ["garbage file", "missing column", "null prompt", "wrong type"]),
}


@st.composite
def bad_files(draw: st.DrawFn, folder: Path) -> BadFile:
    fmt = draw(st.sampled_from(sorted(KINDS)))
    writer, kinds = KINDS[fmt]
    path = folder / f"bad-{next(_counter)}.{fmt}"
    if draw(st.integers(0, 9)) == 0:
        path.write_bytes(b"")
        return BadFile(path, "empty file", None, empty=True)
    kind = draw(st.sampled_from(kinds))
    good = draw(st.integers(0, 6))
    at = draw(st.integers(0, good))
    garbage = draw(st.binary(min_size=1, max_size=200).map(lambda b: b.replace(b"\n", b"\x00")))
    return writer(path, good, at, kind, garbage.replace(b"\r", b"\x01"))


def _check_error(output: str, stderr: str, bad: BadFile) -> None:
    assert "Traceback" not in output, output
    message = stderr.strip()
    assert message.startswith("error:"), stderr
    assert "\n\n" not in message, "more than one paragraph"
    assert str(bad.path) in message, message
    if bad.line is not None:
        assert re.search(rf"{re.escape(str(bad.path))}:{bad.line}\b", message), (bad.kind, message)


@pytest.fixture
def cli(flow_env: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> EmulatorServer:
    flow_env.configure(tokens=[SECRET_TOKEN])
    monkeypatch.setenv("MODEL_STUDIO_TOKEN", SECRET_TOKEN)
    return flow_env


@pytest.mark.slow
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_a_bad_file_fails_with_exit_2_naming_file_and_line_and_submits_nothing(
    cli: EmulatorServer, tmp_path: Path, data: st.DataObject
) -> None:
    bad = data.draw(bad_files(tmp_path))
    database_url = f"sqlite:///{tmp_path}/bad.db"
    cli.reset()
    result = CliRunner().invoke(
        app,
        [
            "generate",
            str(bad.path),
            "--model-id",
            MODEL,
            "--database-url",
            database_url,
            "--id-column",
            "id",
            "--no-progress",
        ],
    )
    output = result.stdout + result.stderr
    assert cli.stats()["jobs_created"] == 0
    assert ledger(database_url) == []
    assert result.exit_code == 2, (bad.kind, output, result.exception)
    _check_error(output, result.stderr, bad)
    if bad.empty:  # a file without rows is a mistake, not a run of nothing
        assert result.stderr.strip() == f"error: {bad.path}: no rows"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "content"),
    [("empty.jsonl", b""), ("blank.jsonl", b"\n \n\n"), ("header.csv", b"id,prompt\n")],
)
def test_a_dataset_without_rows_is_exit_2_naming_the_file(
    cli: EmulatorServer, tmp_path: Path, name: str, content: bytes
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    database_url = f"sqlite:///{tmp_path}/none.db"
    args = ["generate", str(path), "--model-id", MODEL, "--database-url", database_url]
    result = CliRunner().invoke(app, [*args, "--id-column", "id", "--no-progress"])
    assert result.exit_code == 2, result.stdout + result.stderr
    assert result.stderr.strip() == f"error: {path}: no rows"
    assert cli.stats()["jobs_created"] == 0


@pytest.mark.slow
def test_under_skip_the_good_rows_complete_and_the_bad_ones_are_listed(
    cli: EmulatorServer, tmp_path: Path
) -> None:
    path = tmp_path / "mixed.jsonl"
    good = [json.dumps(_good(i)).encode() for i in range(8)]
    lines = [
        *good[:3],
        b"{broken",
        *good[3:6],
        b'{"id": "w", "prompt": 3}',
        b"\xff\xfe\x00",
        *good[6:],
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    database_url = f"sqlite:///{tmp_path}/skip.db"
    DATABASES.append(database_url)

    result = CliRunner().invoke(
        app,
        [
            "generate",
            str(path),
            "--model-id",
            MODEL,
            "--database-url",
            database_url,
            "--id-column",
            "id",
            "--on-bad-rows",
            "skip",
            "--shard-size",
            "3",
            "--no-progress",
        ],
    )

    assert result.exit_code == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    for line in (4, 8, 9):
        assert f"{path}:{line}:" in result.stdout, result.stdout
    assert re.search(r"bad rows skipped\s*│\s*3", result.stdout)
    assert cli.stats()["conversations"] == 8
    assert_every_row_completed_once(database_url, {f"row-{i}" for i in range(8)})


@pytest.mark.slow
def test_real_processes_print_no_traceback_for_bad_files(
    emulator: EmulatorServer, prefect_server: str, tmp_path: Path
) -> None:
    """Three true subprocesses (one per format), at once, on the session's Prefect server."""
    emulator.configure(tokens=[SECRET_TOKEN])
    files = [
        _write_jsonl(tmp_path / "broken.jsonl", 5, 2, "broken json", b""),
        _write_csv(tmp_path / "latin1.csv", 5, 4, "non-utf8", b""),
        _write_parquet(tmp_path / "garbage.parquet", 5, 0, "garbage file", b"\x00\x01"),
    ]
    started = time.monotonic()
    processes = [
        start_cli(
            generate_args(
                bad.path, f"sqlite:///{tmp_path}/{bad.path.stem}.db", "--id-column", "id"
            ),
            cli_env(emulator, tmp_path / f"prefect-{bad.path.stem}", api_url=prefect_server),
            tmp_path,
        )
        for bad in files
    ]
    for bad, process in zip(files, processes, strict=True):
        result = finish_cli(process, started)
        assert result.returncode == 2, result
        _check_error(result.output, result.stderr, bad)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert emulator.stats()["jobs_created"] == 0


@pytest.mark.slow
def test_bad_configuration_is_one_line_and_exit_2_with_nothing_written(
    emulator: EmulatorServer, prefect_server: str, tmp_path: Path
) -> None:
    """Missing token, wrong token (401), unreachable API, unwritable database, PostgreSQL down.

    Five real processes at once on the session's Prefect server.
    """
    emulator.configure(tokens=[SECRET_TOKEN])
    dataset = tmp_path / "ok.jsonl"
    dataset.write_text("".join(json.dumps(_good(i)) + "\n" for i in range(6)), encoding="utf-8")
    pg_password = "pg-pass-must-not-show-4d1e"
    closed = free_port()
    cases = {
        "missing token": ({"MODEL_STUDIO_TOKEN": ""}, None, "MODEL_STUDIO_TOKEN"),
        "wrong token": ({"MODEL_STUDIO_TOKEN": "wrong-token-0000"}, None, "401"),
        "unreachable API": (
            {"MODEL_STUDIO_BASE_URL": f"http://127.0.0.1:{free_port()}/api/v1"},
            None,
            "Cannot reach Model Studio",
        ),
        "unwritable database": (
            {},
            f"sqlite:///{tmp_path}/no-such-folder/sub/results.db",
            "Cannot open database",
        ),
        "PostgreSQL down": (
            {},
            f"postgresql+psycopg://studio:{pg_password}@127.0.0.1:{closed}/results",
            "Cannot open database",
        ),
    }
    started = time.monotonic()
    running = {}
    for name, (extra, database_url, _) in cases.items():
        url = database_url or f"sqlite:///{tmp_path}/{name.replace(' ', '-')}.db"
        env = cli_env(
            emulator,
            tmp_path / f"prefect-{name.replace(' ', '-')}",
            api_url=prefect_server,
            **extra,
        )
        running[name] = (
            url,
            start_cli(generate_args(dataset, url, "--id-column", "id"), env, tmp_path),
        )
    problems = []
    for name, (url, process) in running.items():
        result = finish_cli(process, started)
        expected = cases[name][2]
        message = result.stderr.strip()
        if not (
            result.returncode == 2
            and "Traceback" not in result.output
            and len(message.splitlines()) == 1
            and message.startswith("error:")
            and expected in message
            and pg_password not in result.output
        ):
            problems.append(f"{name}: {result}")
        elif url.startswith("sqlite") and "no-such-folder" not in url and ledger(url):
            problems.append(f"{name}: ledger rows written: {ledger(url)}")
        print(f"{name}: exit {result.returncode} in {result.seconds:.1f} s: {message}")
    assert not problems, "\n\n".join(problems)
    assert emulator.stats()["jobs_created"] == 0
    assert not (tmp_path / "no-such-folder").exists()


@pytest.mark.slow
def test_a_model_the_service_does_not_know_stops_the_run_at_once_with_exit_2(
    emulator: EmulatorServer, prefect_server: str, tmp_path: Path
) -> None:
    """A 404 on the POST that names the model: one line, exit 2, no job, no retry."""
    emulator.configure(tokens=[SECRET_TOKEN], known_models=["the-real-model"])
    dataset = tmp_path / "many.jsonl"
    dataset.write_text("".join(json.dumps(_good(i)) + "\n" for i in range(200)), "utf-8")
    database_url = f"sqlite:///{tmp_path}/wrong-model.db"
    env = cli_env(emulator, tmp_path / "prefect-wrong-model", api_url=prefect_server)
    args = generate_args(dataset, database_url, "--id-column", "id", "--shard-size", "10")

    result = finish_cli(start_cli(args, env, tmp_path), time.monotonic())

    assert result.returncode == 2, result
    assert "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [
        f"error: Model Studio refused the generation request for model '{MODEL}' "
        f"(HTTP 404: Model '{MODEL}' not found); no job was created."
    ]
    stats = emulator.stats()
    assert stats["jobs_created"] == 0
    # Each of the run's lanes (3) may have sent its first POST; none was retried.
    assert 1 <= stats["rejections"]["POST /generate"]["404"] <= 3
    # Nothing paid, nothing left to guess: each refused shard is closed failed.
    assert {row["status"] for row in ledger(database_url)} <= {"failed"}


@pytest.mark.slow
def test_a_malformed_url_is_one_line_naming_the_option_and_exit_2_without_the_password(
    emulator: EmulatorServer, prefect_server: str, tmp_path: Path
) -> None:
    """A port that is not a number, given as each option and setting that takes a URL, to
    each command that reads one: seven real processes at once."""
    emulator.configure(tokens=[SECRET_TOKEN])
    dataset = tmp_path / "ok.jsonl"
    dataset.write_text("".join(json.dumps(_good(i)) + "\n" for i in range(3)), encoding="utf-8")
    password = "url-pass-must-not-show-9c2b"
    bad = f"postgresql://studio:{password}@127.0.0.1:notaport/results"
    good = f"sqlite:///{tmp_path}/results.db"
    assert STUDIO_FLOWS is not None
    run = [STUDIO_FLOWS, "generate", str(dataset), "--model-id", MODEL, "--no-progress"]
    query = [STUDIO_FLOWS, "generate", "--sql", "SELECT 'hi' AS prompt", "--model-id", MODEL]
    cases: dict[str, tuple[list[str], dict[str, str], str]] = {
        "--database-url": ([*run, "--database-url", bad], {}, "--database-url"),
        "--source-url": ([*query, "--source-url", bad, "--database-url", good], {}, "--source-url"),
        "MODEL_STUDIO_DATABASE_URL": (
            run,
            {"MODEL_STUDIO_DATABASE_URL": bad},
            "MODEL_STUDIO_DATABASE_URL",
        ),
        "MODEL_STUDIO_BASE_URL": (
            [*run, "--database-url", good],
            {"MODEL_STUDIO_BASE_URL": f"http://studio:{password}@127.0.0.1:notaport/api/v1"},
            "MODEL_STUDIO_BASE_URL",
        ),
        "results": ([STUDIO_FLOWS, "results", "--database-url", bad], {}, "--database-url"),
        "db upgrade": ([STUDIO_FLOWS, "db", "upgrade", "--database-url", bad], {}, "database URL"),
        "demo": ([STUDIO_FLOWS, "demo", "--database-url", bad], {}, "--database-url"),
    }
    started = time.monotonic()
    running = {
        name: start_cli(
            args,
            cli_env(emulator, tmp_path / f"prefect-{index}", api_url=prefect_server, **extra),
            tmp_path,
        )
        for index, (name, (args, extra, _)) in enumerate(cases.items())
    }
    problems = []
    for name, process in running.items():
        result = finish_cli(process, started)
        message = result.stderr.strip()
        if not (
            result.returncode == 2
            and "Traceback" not in result.output
            and len(message.splitlines()) == 1
            and message.startswith("error:")
            and cases[name][2] in message
            and password not in result.output
        ):
            problems.append(f"{name}: {result}")
        print(f"{name}: exit {result.returncode}: {message}")
    assert not problems, "\n\n".join(problems)
    assert emulator.stats()["jobs_created"] == 0


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"MODEL_STUDIO_TOKEN": "wrong-token-0000"}, "Model Studio refused the token (HTTP 401)"),
        ("root", "No Model Studio API answers at http://127.0.0.1:"),
    ],
    ids=["wrong token", "base URL without /api/v1"],
)
def test_credentials_and_base_url_are_checked_before_any_prefect_server_starts(
    emulator: EmulatorServer, tmp_path: Path, extra: dict[str, str] | str, expected: str
) -> None:
    emulator.configure(tokens=[SECRET_TOKEN])
    dataset = tmp_path / "ok.jsonl"
    dataset.write_text("".join(json.dumps(_good(i)) + "\n" for i in range(3)), encoding="utf-8")
    if extra == "root":
        extra = {"MODEL_STUDIO_BASE_URL": emulator.base_url.removesuffix("/api/v1")}
    home = tmp_path / "prefect-home"
    env = cli_env(emulator, home, **extra)  # no PREFECT_API_URL: a bare run
    args = generate_args(dataset, f"sqlite:///{tmp_path}/r.db", "--id-column", "id")

    result = run_cli(args, env, tmp_path)

    assert result.returncode == 2, result
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {expected}"), line
    assert SECRET_TOKEN not in result.output
    # Nothing of Prefect was started or written: the answer came before it.
    assert list(home.iterdir()) == [], list(home.iterdir())
    assert emulator.stats()["jobs_created"] == 0
